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
    /// Re-hashes every indexed blob through the verified read path, as fast as it can
    /// (`stagecache-server scrub`, with the server stopped).
    pub async fn scrub(&self) -> Result<ScrubReport> {
        self.scrub_at(None).await
    }

    /// [`Store::scrub`] reading at most `rate` bytes a second on average (a periodic scrub
    /// beside the server's own reads). Blobs a collection removes meanwhile are passed
    /// over.
    pub async fn scrub_at(&self, rate: Option<u64>) -> Result<ScrubReport> {
        let started = Instant::now();
        let digests = self.with_index(|i| i.blob_digests()).await?;
        let mut report = ScrubReport::default();
        let mut damaged = HashSet::new();
        for d in digests {
            if let Some(rate) = rate.filter(|r| *r > 0) {
                let due = std::time::Duration::from_secs_f64(report.bytes as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
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
            if let Err(ServerError::NotFound(_)) = outcome {
                // Collected since the list was taken: nothing to check.
                continue;
            }
            report.blobs += 1;
            report.bytes += d.size();
            if let Some(m) = crate::metrics::metrics() {
                m.scrubbed_bytes.inc_by(d.size());
            }
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
        if let Some(m) = crate::metrics::metrics() {
            m.scrub_runs.inc();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use stagecache_proto::Digest;

    /// A rate-bound scrub reads no faster than its rate (a lower bound: a slow machine
    /// only makes it longer), checks every blob all the same, and finds a damaged one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_periodic_scrub_keeps_to_its_rate_and_finds_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        let blobs: Vec<(Digest, Bytes)> = (0..4u8)
            .map(|i| {
                let data = Bytes::from(vec![i; 512 * 1024]);
                (Digest::of_bytes(&data), data)
            })
            .collect();
        for r in store.put_blobs(blobs.clone()).await.unwrap() {
            r.unwrap();
        }
        let damaged = blobs[2].0;
        let hex = damaged.hash_hex();
        let path = dir.path().join("blobs/cas").join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&path, bytes).unwrap();

        let rate = 1024 * 1024;
        let started = Instant::now();
        let r = store.scrub_at(Some(rate)).await.unwrap();
        let took = started.elapsed().as_secs_f64();
        assert_eq!(r.blobs, 4);
        assert_eq!(r.bytes, 4 * 512 * 1024);
        assert_eq!(r.damaged, [damaged.to_string()]);
        // The last blob may start once the three before it (1.5 MiB) are due: 1.5 s.
        assert!(took >= 1.5, "a scrub at 1 MiB/s read 2 MiB in {took:.2} s");
        assert!(store.has_blob(blobs[0].0).await.unwrap());
        assert!(!store.has_blob(damaged).await.unwrap());
    }
}
