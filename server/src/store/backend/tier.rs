//! A local read-through tier in front of any backend (`--local-tier DIR`): blobs read from
//! the store behind it are kept in a local directory up to a size bound, and later reads
//! of them come from there. A Validate-Publish run reads the same ~50 GB in a dozen stages;
//! with the tier, a server in front of Azure Blob or S3 fetches each blob from the cloud
//! once.
//!
//! Only blobs (`cas/...`: immutable, named by their content) enter the tier. Every write,
//! the journal, the lease, listings and signed URLs go to the store behind it, which stays
//! the system of record: the tier may be lost at any time, and a server started without
//! it simply reads the store again.
//!
//! - **What enters.** A blob enters when a read of all of it, from its first byte, passed
//!   the read's check (a verified read: every byte hashed to its digest), so the tier
//!   holds only verified bytes; and when it is put whole (a small blob uploaded). The copy
//!   is written beside the read (staged, published by rename when complete); a read that
//!   fails or is dropped publishes nothing.
//! - **What leaves.** Past the bound, the least recently read blobs leave first. A blob
//!   deleted or quarantined in the store leaves the tier with it.
//! - **Rot in the tier.** A tier copy that fails a read's check is dropped, and the read
//!   fails with UNAVAILABLE ("read again"): the client's retry then reads the store. The
//!   store's copy is not quarantined for the tier's damage.

use super::local::LocalBackend;
use super::{
    Backend, ByteStream, Entry, PutMode, ReadCheck, StorageError, Upload, Version, Written,
};
use bytes::Bytes;
use futures::stream::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The least-recently-read order of the tier's blobs and their total size.
#[derive(Default)]
struct Lru {
    /// name -> (size, tick of its last read)
    entries: HashMap<String, (u64, u64)>,
    /// tick -> name, oldest first
    order: BTreeMap<u64, String>,
    bytes: u64,
    tick: u64,
}

impl Lru {
    fn touch(&mut self, name: &str) -> bool {
        let Some((_, tick)) = self.entries.get_mut(name) else {
            return false;
        };
        self.tick += 1;
        self.order.remove(tick);
        *tick = self.tick;
        self.order.insert(self.tick, name.to_string());
        true
    }

    fn insert(&mut self, name: &str, size: u64) {
        self.remove(name);
        self.tick += 1;
        self.entries.insert(name.to_string(), (size, self.tick));
        self.order.insert(self.tick, name.to_string());
        self.bytes += size;
    }

    fn remove(&mut self, name: &str) -> bool {
        match self.entries.remove(name) {
            Some((size, tick)) => {
                self.order.remove(&tick);
                self.bytes -= size;
                true
            }
            None => false,
        }
    }

    /// Takes the oldest entries out until the rest fit in `max`; returns their names.
    fn evict_to(&mut self, max: u64) -> Vec<String> {
        let mut out = Vec::new();
        while self.bytes > max {
            let Some((_, name)) = self.order.pop_first() else {
                break;
            };
            if let Some((size, _)) = self.entries.remove(&name) {
                self.bytes -= size;
            }
            out.push(name);
        }
        out
    }
}

/// The tier itself: its directory, its bound, the least-recently-read order of its copies,
/// and a lock that publishing a copy (rename, then entry) and removing copies (entries,
/// then unlinks) each hold throughout, so that an unlink never removes a copy published
/// after its entry went.
struct Tier {
    files: LocalBackend,
    root: PathBuf,
    max_bytes: u64,
    order: Mutex<Lru>,
    lock: tokio::sync::Mutex<()>,
}

impl Tier {
    fn order(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.order.lock().expect("tier order")
    }

    /// Publishes a copy of `name` (`size` bytes): `write` (its rename) and then its entry,
    /// under the lock. Whether it was published.
    async fn publish(
        &self,
        name: &str,
        size: u64,
        write: impl std::future::Future<Output = Result<(), StorageError>>,
    ) -> bool {
        let published = {
            let _lock = self.lock.lock().await;
            let r = write.await;
            if r.is_ok() {
                self.order().insert(name, size);
            }
            r
        };
        match published {
            Ok(()) => {
                count("filled");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, path = name, "read-through tier: copy not published");
                false
            }
        }
    }

    /// Removes the copies `pick` takes out of the order (entries, then files, under the
    /// lock); each is counted as `event`, when given.
    async fn remove_where(&self, pick: impl FnOnce(&mut Lru) -> Vec<String>, event: Option<&str>) {
        let _lock = self.lock.lock().await;
        let gone = pick(&mut self.order());
        if gone.is_empty() {
            return;
        }
        if let Some(event) = event {
            for _ in &gone {
                count(event);
            }
        }
        if let Err(e) = self.files.delete_many(gone).await {
            tracing::warn!(error = %e, "read-through tier: could not remove copies");
        }
    }

    /// Removes the copies of `names` the tier holds (a blob deleted or moved in the store:
    /// a copy left behind would only be space).
    async fn remove(&self, names: Vec<String>) {
        self.remove_where(
            |order| names.into_iter().filter(|n| order.remove(n)).collect(),
            None,
        )
        .await
    }

    /// Removes the least recently read copies past the bound.
    async fn evict(&self) {
        let max = self.max_bytes;
        self.remove_where(|order| order.evict_to(max), Some("evicted"))
            .await
    }

    /// Drops a copy that failed a read (damaged, short, gone, unreadable), and makes the
    /// error that read answers: "read again" (UNAVAILABLE), so the client's retry reads
    /// the store, whose copy is not quarantined for the tier's fault.
    async fn dropped(&self, describe: &str, path: &str, why: &str) -> StorageError {
        self.remove(vec![path.to_string()]).await;
        count("dropped");
        StorageError::failed(
            describe,
            "read",
            path,
            format!("{why}; the tier's copy was dropped: read again"),
        )
    }

    /// Whether the tier's file system has room for `len` more bytes and a margin: the
    /// tier never fills the disk it shares with the index.
    fn room_for(&self, len: u64) -> bool {
        match crate::metrics::free_bytes(&self.root) {
            Some(free) => free >= len.saturating_add(TIER_FREE_MARGIN),
            None => true,
        }
    }
}

/// A backend with a local read-through tier in front of it.
pub struct ReadThrough {
    inner: Arc<dyn Backend>,
    tier: Arc<Tier>,
    describe: String,
}

fn is_blob(path: &str) -> bool {
    path.starts_with("cas/")
}

fn count(event: &str) {
    if let Some(m) = crate::metrics::metrics() {
        m.read_tier.with_label_values(&[event]).inc();
    }
}

impl ReadThrough {
    /// A tier of at most `max_bytes` in `root` (created if missing) in front of `inner`;
    /// what an earlier server left there is kept, oldest first in line to leave.
    pub fn open(
        inner: Arc<dyn Backend>,
        root: &Path,
        max_bytes: u64,
    ) -> Result<Self, StorageError> {
        let files = LocalBackend::open(root.to_path_buf())?;
        let swept = files.sweep_staging();
        let mut found: Vec<(std::time::SystemTime, String, u64)> =
            walkdir::WalkDir::new(root.join("cas"))
                .into_iter()
                .flatten()
                .filter(|e| e.file_type().is_file())
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    let rel = e.path().strip_prefix(root).ok()?.to_str()?.to_string();
                    Some((meta.modified().ok()?, rel, meta.len()))
                })
                .collect();
        found.sort();
        let mut order = Lru::default();
        for (_, name, size) in found {
            order.insert(&name, size);
        }
        let describe = format!(
            "{} (read-through tier {})",
            inner.describe(),
            root.display()
        );
        tracing::info!(
            tier = %root.display(),
            blobs = order.entries.len(),
            bytes = order.bytes,
            max_bytes,
            staging_files_swept = swept,
            "read-through tier"
        );
        let t = ReadThrough {
            inner,
            tier: Arc::new(Tier {
                files,
                root: root.to_path_buf(),
                max_bytes,
                order: Mutex::new(order),
                lock: Default::default(),
            }),
            describe,
        };
        t.evict_spawned();
        Ok(t)
    }

    /// Bytes the tier holds now.
    pub fn tier_bytes(&self) -> u64 {
        self.tier.order().bytes
    }

    /// Removes the oldest blobs past the bound, in the background.
    fn evict_spawned(&self) {
        let tier = self.tier.clone();
        let run = async move { tier.evict().await };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(run);
            }
            Err(_) => futures::executor::block_on(run),
        }
    }

    /// Reads a tier copy; any failure of it drops it and answers "read again".
    async fn read_copy(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<ByteStream, StorageError> {
        let s = match self.tier.files.read(path, offset, len, chunk, check).await {
            Ok(s) => s,
            Err(e) => {
                let why = e.to_string();
                return Err(self.tier.dropped(&self.describe, path, &why).await);
            }
        };
        let (tier, describe, name) = (self.tier.clone(), self.describe.clone(), path.to_string());
        Ok(s.then(move |r| {
            let (tier, describe, name) = (tier.clone(), describe.clone(), name.clone());
            async move {
                match r {
                    Err(e) => Err(tier.dropped(&describe, &name, &e.to_string()).await),
                    ok => ok,
                }
            }
        })
        .boxed())
    }

    /// Reads the store behind the tier; a whole verified read from the first byte is
    /// copied into the tier as it passes, published when it completes.
    async fn read_through(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<ByteStream, StorageError> {
        // Only a read that may verify the whole blob (from its first byte, with a check)
        // can fill the tier, and then only if the check says it did (`Watched`).
        let check = match check {
            Some(c) if offset == 0 && len <= self.tier.max_bytes && self.tier.room_for(len) => c,
            other => return self.inner.read(path, offset, len, chunk, other).await,
        };
        let verified = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watched = Box::new(Watched {
            inner: check,
            verified: verified.clone(),
        });
        let s = self
            .inner
            .read(path, offset, len, chunk, Some(watched))
            .await?;
        let copy = match self.tier.files.upload(path, len).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, path, "read-through tier: cannot stage a copy");
                return Ok(s);
            }
        };
        struct Fill {
            inner: ByteStream,
            copy: Option<Box<dyn Upload>>,
            verified: Arc<std::sync::atomic::AtomicBool>,
            name: String,
            size: u64,
            tier: Arc<Tier>,
        }
        let fill = Fill {
            inner: s,
            copy: Some(copy),
            verified,
            name: path.to_string(),
            size: len,
            tier: self.tier.clone(),
        };
        Ok(futures::stream::unfold(fill, |mut f| async move {
            match f.inner.next().await {
                Some(Ok(bytes)) => {
                    if let Some(copy) = &mut f.copy {
                        if let Err(e) = copy.write(bytes.clone()).await {
                            tracing::warn!(error = %e, path = %f.name, "read-through tier: copy abandoned");
                            if let Some(c) = f.copy.take() {
                                c.abort().await;
                            }
                        }
                    }
                    if f.verified.load(std::sync::atomic::Ordering::Acquire) {
                        // The last chunk passed the check: the whole blob verified. The
                        // copy is published, and the tier trimmed, off the read's path.
                        if let Some(c) = f.copy.take() {
                            let (tier, name, size) = (f.tier.clone(), f.name.clone(), f.size);
                            tokio::spawn(async move {
                                if tier.publish(&name, size, c.finish()).await {
                                    tier.evict().await;
                                }
                            });
                        }
                    }
                    Some((Ok(bytes), f))
                }
                Some(Err(e)) => {
                    if let Some(c) = f.copy.take() {
                        c.abort().await;
                    }
                    Some((Err(e), f))
                }
                None => None,
            }
        })
        .boxed())
    }
}

/// Free space the tier leaves on its file system.
const TIER_FREE_MARGIN: u64 = 1 << 30;

/// A read's check, watched: `verified` is set once the check says the whole blob hashed
/// to its digest.
struct Watched {
    inner: Box<dyn ReadCheck>,
    verified: Arc<std::sync::atomic::AtomicBool>,
}

impl ReadCheck for Watched {
    fn check(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.inner.check(chunk)?;
        if self.inner.verified_whole() {
            self.verified
                .store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    fn verified_whole(&self) -> bool {
        self.inner.verified_whole()
    }
}

#[async_trait::async_trait]
impl Backend for ReadThrough {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn sweep_staging(&self) -> usize {
        self.inner.sweep_staging()
    }

    async fn put(
        &self,
        path: &str,
        data: Vec<Bytes>,
        mode: PutMode,
    ) -> Result<Written, StorageError> {
        let copy = (is_blob(path) && matches!(mode, PutMode::Overwrite)).then(|| data.clone());
        let written = self.inner.put(path, data, mode).await?;
        if let Some(data) = copy {
            // Blobs are put only after their bytes hashed to their name.
            let size: u64 = data.iter().map(|b| b.len() as u64).sum();
            if size <= self.tier.max_bytes {
                let write = async {
                    self.tier
                        .files
                        .put(path, data, PutMode::Overwrite)
                        .await
                        .map(|_| ())
                };
                if self.tier.publish(path, size, write).await {
                    self.evict_spawned();
                }
            }
        }
        Ok(written)
    }

    async fn upload(&self, path: &str, size: u64) -> Result<Box<dyn Upload>, StorageError> {
        self.inner.upload(path, size).await
    }

    async fn read(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<ByteStream, StorageError> {
        if !is_blob(path) {
            return self.inner.read(path, offset, len, chunk, check).await;
        }
        let hit = self.tier.order().touch(path);
        if hit {
            count("hit");
            self.read_copy(path, offset, len, chunk, check).await
        } else {
            count("miss");
            self.read_through(path, offset, len, chunk, check).await
        }
    }

    async fn read_origin(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        chunk: usize,
        check: Option<Box<dyn ReadCheck>>,
    ) -> Result<ByteStream, StorageError> {
        self.inner
            .read_origin(path, offset, len, chunk, check)
            .await
    }

    async fn get(&self, path: &str) -> Result<Option<(Bytes, Version)>, StorageError> {
        self.inner.get(path).await
    }

    async fn delete(&self, path: &str) -> Result<(), StorageError> {
        self.inner.delete(path).await?;
        if is_blob(path) {
            self.tier.remove(vec![path.to_string()]).await;
        }
        Ok(())
    }

    async fn delete_many(&self, paths: Vec<String>) -> Result<(), StorageError> {
        self.inner.delete_many(paths.clone()).await?;
        // The store's delete is what counts; a copy left behind is only space.
        self.tier.remove(paths).await;
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> Result<bool, StorageError> {
        let moved = self.inner.rename(from, to).await?;
        if is_blob(from) {
            self.tier.remove(vec![from.to_string()]).await;
        }
        Ok(moved)
    }

    async fn list(&self, prefix: &str, after: Option<&str>) -> Result<Vec<Entry>, StorageError> {
        self.inner.list(prefix, after).await
    }

    async fn has_any(&self, prefix: &str) -> Result<bool, StorageError> {
        self.inner.has_any(prefix).await
    }

    async fn signed_urls(
        &self,
        paths: &[String],
        expires: Duration,
    ) -> Result<Option<Vec<url::Url>>, StorageError> {
        self.inner.signed_urls(paths, expires).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::cloud::CloudBackend;
    use stagecache_proto::Digest;

    fn blob(n: u8, size: usize) -> (String, Bytes, Digest) {
        let data = Bytes::from(vec![n; size]);
        let d = Digest::of_bytes(&data);
        (crate::store::blobs::BlobStore::location(&d), data, d)
    }

    fn memory() -> Arc<dyn Backend> {
        Arc::new(CloudBackend::new(
            Arc::new(object_store::memory::InMemory::new()),
            "memory://".into(),
            "memory",
        ))
    }

    async fn read_all(
        b: &dyn Backend,
        path: &str,
        d: Digest,
        verified: bool,
    ) -> Result<Vec<u8>, StorageError> {
        let check = verified.then(|| crate::store::verified::verifying(d));
        let mut s = b.read(path, 0, d.size(), 300, check).await?;
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    /// Waits (up to 10 s) until the tier holds `bytes`: copies are published, and the
    /// tier trimmed, on a task of their own after the read's last chunk.
    async fn settled(tier: &ReadThrough, bytes: u64) {
        for _ in 0..1000 {
            if tier.tier_bytes() == bytes && tier.tier.order().bytes == bytes {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                if tier.tier_bytes() == bytes {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the tier holds {} bytes, not {bytes}", tier.tier_bytes());
    }

    #[tokio::test]
    async fn verified_whole_reads_fill_the_tier_and_later_reads_come_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let inner = memory();
        let tier = ReadThrough::open(inner.clone(), dir.path(), 1 << 20).unwrap();
        let (path, data, d) = blob(1, 1000);
        // Put behind the tier's back: not in the tier yet.
        inner
            .put(&path, vec![data.clone()], PutMode::Overwrite)
            .await
            .unwrap();
        // An unverified read, or a range, leaves nothing in the tier.
        assert_eq!(read_all(&tier, &path, d, false).await.unwrap(), data);
        let mut s = tier.read(&path, 10, 20, 300, None).await.unwrap();
        while s.next().await.is_some() {}
        // Nor does a checked read from the first byte that stops short of the end: its
        // check never saw the whole blob verified.
        let check = Some(crate::store::verified::verifying(d));
        let mut s = tier.read(&path, 0, 600, 300, check).await.unwrap();
        while s.next().await.is_some() {}
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(tier.tier_bytes(), 0);
        // A verified read of all of it does.
        assert_eq!(read_all(&tier, &path, d, true).await.unwrap(), data);
        settled(&tier, 1000).await;
        // Gone from the store behind it (behind the tier's back): still read, from the tier.
        inner.delete(&path).await.unwrap();
        assert_eq!(read_all(&tier, &path, d, true).await.unwrap(), data);
        // A tier opened again on the same directory keeps what is there.
        let again = ReadThrough::open(inner.clone(), dir.path(), 1 << 20).unwrap();
        assert_eq!(again.tier_bytes(), 1000);
        // Deleting through the tier removes its copy too.
        tier.delete(&path).await.unwrap();
        assert_eq!(tier.tier_bytes(), 0);
        assert!(read_all(&tier, &path, d, true).await.is_err());
    }

    #[tokio::test]
    async fn the_least_recently_read_leave_first() {
        let dir = tempfile::tempdir().unwrap();
        let inner = memory();
        let tier = ReadThrough::open(inner.clone(), dir.path(), 2500).unwrap();
        let blobs: Vec<_> = (1..=3).map(|n| blob(n, 1000)).collect();
        for (path, data, _) in &blobs {
            inner
                .put(path, vec![data.clone()], PutMode::Overwrite)
                .await
                .unwrap();
        }
        let [(pa, _, a), (pb, _, b), (pc, _, c)] =
            [blobs[0].clone(), blobs[1].clone(), blobs[2].clone()];
        read_all(&tier, &pa, a, true).await.unwrap();
        settled(&tier, 1000).await;
        read_all(&tier, &pb, b, true).await.unwrap();
        settled(&tier, 2000).await;
        read_all(&tier, &pa, a, true).await.unwrap(); // a is now the most recent
        read_all(&tier, &pc, c, true).await.unwrap(); // over the bound: b leaves
        settled(&tier, 2000).await;
        // The evicted file goes a moment after its entry.
        for _ in 0..500 {
            if !dir.path().join(&pb).exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for (path, d, kept) in [(&pa, a, true), (&pb, b, false), (&pc, c, true)] {
            assert_eq!(
                tier.tier.order().entries.contains_key(path.as_str()),
                kept,
                "{d}"
            );
            assert_eq!(dir.path().join(path).exists(), kept, "{d}");
        }
    }

    #[tokio::test]
    async fn a_damaged_copy_is_dropped_and_the_store_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let inner = memory();
        let tier = ReadThrough::open(inner.clone(), dir.path(), 1 << 20).unwrap();
        let (path, data, d) = blob(7, 1000);
        tier.put(&path, vec![data.clone()], PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(
            tier.tier_bytes(),
            1000,
            "a put blob is copied into the tier"
        );
        let mut rotten = data.to_vec();
        rotten[999] ^= 1;
        std::fs::write(dir.path().join(&path), rotten).unwrap();
        // The rot is in the tier, not in the store: "read again", the copy dropped...
        let e = read_all(&tier, &path, d, true).await.unwrap_err();
        assert!(matches!(e, StorageError::Failed { .. }), "{e}");
        assert!(e.to_string().contains("read again"), "{e}");
        assert_eq!(tier.tier_bytes(), 0);
        assert!(!dir.path().join(&path).exists());
        // ...and the next read comes from the store, whose copy is good, refilling it.
        assert_eq!(read_all(&tier, &path, d, true).await.unwrap(), data);
        settled(&tier, 1000).await;
    }

    #[tokio::test]
    async fn a_read_that_fails_its_check_leaves_nothing_in_the_tier() {
        let dir = tempfile::tempdir().unwrap();
        let inner = memory();
        let tier = ReadThrough::open(inner.clone(), dir.path(), 1 << 20).unwrap();
        let (path, data, d) = blob(9, 1000);
        let mut rotten = data.to_vec();
        rotten[500] ^= 1;
        inner
            .put(&path, vec![Bytes::from(rotten)], PutMode::Overwrite)
            .await
            .unwrap();
        let e = read_all(&tier, &path, d, true).await.unwrap_err();
        assert!(matches!(e, StorageError::Damaged { .. }), "{e}");
        assert_eq!(tier.tier_bytes(), 0);
        let staged: Vec<_> = walkdir::WalkDir::new(dir.path())
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .collect();
        assert!(staged.is_empty(), "{staged:?}");
    }
}
