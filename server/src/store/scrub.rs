//! Scrub: re-hash every stored blob, quarantine the damaged ones (as a verified read
//! does), and list the refs whose manifests name a blob that is now gone.

use super::Store;
use crate::error::{Result, ServerError};
use futures::stream::StreamExt;
use stagecache_proto::CHUNK_BYTES;
use std::collections::HashSet;
use std::time::Instant;

/// What a scrub found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScrubReport {
    /// Blobs re-hashed.
    pub blobs: u64,
    /// Bytes re-hashed.
    pub bytes: u64,
    pub seconds: f64,
    /// Blobs whose bytes did not hash to their digest (or were missing): quarantined.
    pub damaged: Vec<String>,
    /// Refs (`namespace/name -> manifest`) whose manifest names a damaged blob: fetching
    /// them fails until the blob is uploaded again (a new `register` heals them).
    pub damaged_refs: Vec<String>,
}

impl Store {
    /// Re-hashes every indexed blob through the verified read path.
    pub async fn scrub(&self) -> Result<ScrubReport> {
        let started = Instant::now();
        let digests = self.with_index(|i| i.blob_digests()).await?;
        let mut report = ScrubReport::default();
        let mut damaged = HashSet::new();
        for d in digests {
            let mut s = self.read_blob(d, 0, d.size(), CHUNK_BYTES).await;
            let outcome = match &mut s {
                Ok(s) => {
                    let mut r = Ok(());
                    while let Some(chunk) = s.next().await {
                        if let Err(e) = chunk {
                            r = Err(e);
                            break;
                        }
                    }
                    r
                }
                Err(_) => s.map(|_| ()),
            };
            report.blobs += 1;
            report.bytes += d.size();
            match outcome {
                Ok(()) => {}
                Err(ServerError::DataLoss(_)) => {
                    report.damaged.push(d.to_string());
                    damaged.insert(d);
                }
                Err(e) => return Err(e),
            }
        }
        if !damaged.is_empty() {
            // Every manifest that names a damaged blob is marked, so a plan that would
            // skip a stage for it says its bytes are damaged (until a register heals it).
            let now = self.now_ms();
            let mut hit = HashSet::new();
            for m in self.with_index(|i| i.manifest_digests()).await? {
                let Some(manifest) = self.get_manifest(m).await? else {
                    continue;
                };
                if let Some(e) = manifest
                    .entries()
                    .iter()
                    .find(|e| damaged.contains(&e.digest))
                {
                    let blob = e.digest;
                    self.with_index(move |i| i.mark_damaged(&m, &blob, now))
                        .await?;
                    hit.insert(m);
                }
            }
            for (ns, name, target) in self.with_index(|i| i.all_refs()).await? {
                if hit.contains(&target) {
                    report.damaged_refs.push(format!("{ns}/{name} -> {target}"));
                }
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// Bytes per second of a scrub, as GiB/s.
pub fn gib_per_second(r: &ScrubReport) -> f64 {
    if r.seconds <= 0.0 {
        return 0.0;
    }
    r.bytes as f64 / r.seconds / (1u64 << 30) as f64
}
