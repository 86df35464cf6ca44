//! Scrub: re-hash every stored blob, quarantine the damaged ones (as a verified read
//! does), and list the refs whose manifests name a blob that is now gone.

use super::Store;
use crate::error::{Result, ServerError};
use stagecache_proto::Digest;
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
    /// Blobs that could not be read for another reason (the store unreachable, say):
    /// `digest: error`. Passed over; the next scrub checks them again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
    /// Whether this run went on from where an earlier, interrupted one stopped.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
}

/// Blobs scrubbed between two saves of a periodic scrub's place.
const CURSOR_EVERY: u64 = 1_000;

impl Store {
    /// Re-hashes every indexed blob from the store of record, as fast as it can
    /// (`stagecache-server scrub`, with the server stopped).
    pub async fn scrub(&self) -> Result<ScrubReport> {
        self.scrub_at(None, false).await
    }

    /// Re-hashes every indexed blob from the store of record itself (past a local tier,
    /// filling none), reading at most `rate` bytes a second on average (a periodic scrub
    /// beside the server's own reads). A damaged blob is quarantined and the manifests
    /// naming it are marked at once; a blob a collection removes meanwhile is passed
    /// over, as is one that cannot be read (listed as unreadable). With `resume`, the run
    /// goes on after the last blob an interrupted run saved as done (saved every 1,000
    /// blobs); a whole pass records when it finished (see [`Store::scrub_schedule`]).
    pub async fn scrub_at(&self, rate: Option<u64>, resume: bool) -> Result<ScrubReport> {
        let started = Instant::now();
        let mut report = ScrubReport::default();
        let after = if resume {
            self.with_index(|i| i.scrub_cursor()).await?
        } else {
            None
        };
        report.resumed = after.is_some();
        let digests = self.with_index(|i| i.blob_digests()).await?;
        let mut hit = HashSet::new();
        let mut since_saved = 0;
        for d in digests {
            if after.is_some_and(|a| *d.hash() <= a) {
                continue;
            }
            if let Some(rate) = rate.filter(|r| *r > 0) {
                let due = std::time::Duration::from_secs_f64(report.bytes as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            match self.read_blob_at_origin(d).await {
                Ok(()) => {}
                // Collected since the list was taken: nothing to check.
                Err(ServerError::NotFound(_)) => continue,
                Err(ServerError::DataLoss(_)) => {
                    report.damaged.push(d.to_string());
                    hit.extend(self.mark_manifests_naming(d).await?);
                }
                Err(e) => {
                    report.unreadable.push(format!("{d}: {e}"));
                    continue;
                }
            }
            report.blobs += 1;
            report.bytes += d.size();
            if let Some(m) = crate::metrics::metrics() {
                m.scrubbed_bytes.inc_by(d.size());
            }
            since_saved += 1;
            if resume && since_saved >= CURSOR_EVERY {
                since_saved = 0;
                let at = *d.hash();
                self.with_index(move |i| i.set_scrub_cursor(Some(at)))
                    .await?;
            }
        }
        if !hit.is_empty() {
            for (ns, name, target) in self.with_index(|i| i.all_refs()).await? {
                if hit.contains(&target) {
                    report.damaged_refs.push(format!("{ns}/{name} -> {target}"));
                }
            }
        }
        let now = self.now_ms();
        self.with_index(move |i| {
            i.set_scrub_cursor(None)?;
            i.set_scrub_finished_at(now)
        })
        .await?;
        report.seconds = started.elapsed().as_secs_f64();
        if let Some(m) = crate::metrics::metrics() {
            m.scrub_runs.inc();
        }
        Ok(report)
    }

    /// Marks every manifest that names `blob` (just found damaged), so a plan that would
    /// skip a stage for it says its bytes are damaged (until a register heals it).
    /// Returns the manifests marked.
    async fn mark_manifests_naming(&self, blob: Digest) -> Result<Vec<Digest>> {
        let now = self.now_ms();
        let mut marked = Vec::new();
        for m in self.with_index(|i| i.manifest_digests()).await? {
            let Some(manifest) = self.get_manifest(m).await? else {
                continue;
            };
            if manifest.entries().iter().any(|e| e.digest == blob) {
                self.with_index(move |i| i.mark_damaged(&m, &blob, now))
                    .await?;
                marked.push(m);
            }
        }
        Ok(marked)
    }

    /// When a periodic scrub should start next, `interval` apart: at once when a run was
    /// interrupted (it goes on where it stopped), else `interval` after the last whole
    /// pass. A store never scrubbed counts from now (recorded), so that restarts do not
    /// put the first run off again and again.
    pub async fn scrub_schedule(
        &self,
        interval: std::time::Duration,
    ) -> Result<std::time::Duration> {
        let now = self.now_ms();
        let (cursor, finished) = self
            .with_index(|i| Ok((i.scrub_cursor()?, i.scrub_finished_at()?)))
            .await?;
        if cursor.is_some() {
            return Ok(std::time::Duration::ZERO);
        }
        let finished = match finished {
            Some(t) => t,
            None => {
                self.with_index(move |i| i.set_scrub_finished_at(now))
                    .await?;
                now
            }
        };
        let due = finished.saturating_add(interval.as_millis() as i64);
        Ok(std::time::Duration::from_millis(
            due.saturating_sub(now).max(0) as u64,
        ))
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
        let path = dir
            .path()
            .join("blobs")
            .join(crate::store::blobs::BlobStore::location(&damaged));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&path, bytes).unwrap();

        let rate = 1024 * 1024;
        let started = Instant::now();
        let r = store.scrub_at(Some(rate), false).await.unwrap();
        let took = started.elapsed().as_secs_f64();
        assert_eq!(r.blobs, 4);
        assert_eq!(r.bytes, 4 * 512 * 1024);
        assert_eq!(r.damaged, [damaged.to_string()]);
        // The last blob may start once the three before it (1.5 MiB) are due: 1.5 s.
        assert!(took >= 1.5, "a scrub at 1 MiB/s read 2 MiB in {took:.2} s");
        assert!(store.has_blob(blobs[0].0).await.unwrap());
        assert!(!store.has_blob(damaged).await.unwrap());
    }

    /// A periodic scrub keeps its schedule and its place in the index: a store never
    /// scrubbed counts from its first start, a whole pass from when it finished, and an
    /// interrupted pass goes on at once after the last blob it saved as done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_schedule_and_the_place_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        // Never scrubbed: a whole interval from now, and the same after a "restart" a
        // little later (not put off again).
        let first = store.scrub_schedule(day).await.unwrap();
        assert!(first <= day && first > day - std::time::Duration::from_secs(60));
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert!(store.scrub_schedule(day).await.unwrap() < first);

        let mut blobs: Vec<(Digest, Bytes)> = (0..5u8)
            .map(|i| {
                let data = Bytes::from(vec![i; 1000]);
                (Digest::of_bytes(&data), data)
            })
            .collect();
        for r in store.put_blobs(blobs.clone()).await.unwrap() {
            r.unwrap();
        }
        blobs.sort_by_key(|(d, _)| *d.hash());
        // Interrupted after the second blob (in index order): it goes on at once, with
        // the other three.
        let at = *blobs[1].0.hash();
        store
            .with_index(move |i| i.set_scrub_cursor(Some(at)))
            .await
            .unwrap();
        assert_eq!(
            store.scrub_schedule(day).await.unwrap(),
            std::time::Duration::ZERO
        );
        let r = store.scrub_at(None, true).await.unwrap();
        assert!(r.resumed);
        assert_eq!(r.blobs, 3);
        // A whole pass done: the place is cleared and the next one is a day away.
        assert_eq!(store.with_index(|i| i.scrub_cursor()).await.unwrap(), None);
        let next = store.scrub_schedule(day).await.unwrap();
        assert!(next > day - std::time::Duration::from_secs(60), "{next:?}");
        let r = store.scrub_at(None, true).await.unwrap();
        assert!(!r.resumed);
        assert_eq!(r.blobs, 5);
    }
}
