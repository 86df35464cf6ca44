//! The store: blob bytes (a [`backend::Backend`]) plus the index (RocksDB). It keeps the storage
//! invariants — a blob is visible only after its bytes hashed to its digest, a manifest
//! only while every blob it names is present — and knows nothing of pipelines.

pub mod backend;
pub mod blobs;
pub mod gc;
pub mod heads_cache;
pub mod index;
pub mod journal;
pub mod lease;
pub mod ledger;
pub mod scrub;
pub mod space;
pub mod verified;

use crate::error::{Result, ServerError};
use blobs::{BlobStore, SINGLE_PUT_MAX_BYTES};
use bytes::Bytes;
use index::Index;
use stagecache_proto::verify::Mismatch;
use stagecache_proto::{Digest, Manifest, Verifier};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Blobs of at least this size bypass the page cache on a local blob store unless
/// `--direct-io` says otherwise: every streamed upload, and a single put of exactly
/// this size (why this size: `bench/RESULTS.md`, "Direct I/O by size").
pub const DEFAULT_DIRECT_IO_MIN: u64 = SINGLE_PUT_MAX_BYTES;

/// Index and blob bytes together; cheap to clone.
#[derive(Clone)]
pub struct Store {
    index: Arc<Index>,
    blobs: Arc<BlobStore>,
    /// Blobs found damaged (bytes that do not hash to their digest, or missing) and
    /// quarantined since the server started; see `verified.rs`.
    damaged_blobs: Arc<AtomicU64>,
    /// Where acknowledged changes go before the answer; set by [`Store::start_journal`]
    /// (a server always does; offline tools that only read need not).
    journal: Arc<std::sync::OnceLock<journal::Journal>>,
    /// Limits on the bytes stored; set by [`Store::limit_space`] (a server always does).
    space: Arc<std::sync::OnceLock<Arc<space::Space>>>,
    /// Time for blob stamps, ref expiry and collections (a server's injectable clock).
    clock: Arc<dyn crate::clock::Clock>,
    /// What retention keeps; [`gc::Retention::default`] until [`Store::set_retention`].
    retention: Arc<std::sync::OnceLock<gc::Retention>>,
    /// Blobs being published and blobs a collection is deleting: one waits for the other.
    busy: Arc<gc::Busy>,
    /// One collection at a time; woken early when an upload is refused for room.
    pub(crate) gc: Arc<gc::GcState>,
    /// Whether reads hash what they serve (`verified.rs`); off only for the benchmark's
    /// same-run measure of what verification costs.
    verify_reads: Arc<std::sync::atomic::AtomicBool>,
}

impl Store {
    /// Opens the index under `<data_dir>/index` and the blob backend named by `blob_url`.
    pub fn open(data_dir: &Path, blob_url: Option<&str>) -> Result<Self> {
        Self::open_configured(data_dir, blob_url, &[])
    }

    /// [`Store::open`] with the blob store's options from the configuration file
    /// ([`BlobStore::open_configured`]).
    pub fn open_configured(
        data_dir: &Path,
        blob_url: Option<&str>,
        blob_options: &[(String, String)],
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            ServerError::Internal(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let index = Index::open(&data_dir.join("index"))?;
        let blobs = BlobStore::open_configured(blob_url, data_dir, blob_options)?;
        Ok(Store {
            index: Arc::new(index),
            blobs: Arc::new(blobs),
            damaged_blobs: Arc::new(AtomicU64::new(0)),
            journal: Arc::new(std::sync::OnceLock::new()),
            space: Arc::new(std::sync::OnceLock::new()),
            clock: Arc::new(crate::clock::SystemClock),
            retention: Arc::new(std::sync::OnceLock::new()),
            busy: Arc::new(gc::Busy::default()),
            gc: Arc::new(gc::GcState::default()),
            verify_reads: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        })
    }

    /// Puts a local read-through tier of at most `max_bytes` in `dir` in front of the blob
    /// store (see [`backend::tier`]); refused for a local blob store, which needs none.
    pub fn with_local_tier(mut self, dir: &Path, max_bytes: u64) -> Result<Self> {
        let inner = self.blobs.backend().clone();
        if inner.local_root().is_some() {
            return Err(ServerError::InvalidArgument(format!(
                "--local-tier {}: the blob store {} is already on local disk; a read-through tier is for a cloud store",
                dir.display(),
                inner.describe()
            )));
        }
        let tier = backend::tier::ReadThrough::open(inner, dir, max_bytes)?;
        self.blobs = Arc::new(BlobStore::over(Arc::new(tier)));
        Ok(self)
    }

    /// Blobs of at least `min_bytes` bypass the page cache on a local blob store
    /// (`--direct-io`; 0: none): written and read with O_DIRECT. `None` is the default,
    /// [`DEFAULT_DIRECT_IO_MIN`] where the blob store is local and nothing where it is
    /// not; a size given for a store that is not local is refused.
    pub fn set_direct_io(&self, min_bytes: Option<u64>) -> Result<()> {
        let backend = self.blobs.backend();
        let done = backend.set_direct_io(min_bytes.unwrap_or(DEFAULT_DIRECT_IO_MIN));
        if !done && min_bytes.is_some_and(|n| n > 0) {
            return Err(ServerError::InvalidArgument(format!(
                "--direct-io: the blob store {} is not on local disk; direct I/O is for a local blob store (use --direct-io 0, or leave it out)",
                backend.describe()
            )));
        }
        Ok(())
    }

    /// Turns the hashing of what reads serve off (`--unverified-reads`, for the
    /// benchmark) or on.
    pub fn set_verify_reads(&self, on: bool) {
        self.verify_reads
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn verifies_reads(&self) -> bool {
        self.verify_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Uses `clock` for stamps, expiry and collections (before the store is shared).
    pub fn with_clock(mut self, clock: Arc<dyn crate::clock::Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Sets what retention keeps (once; a server does at start).
    pub fn set_retention(&self, r: gc::Retention) {
        let _ = self.retention.set(r);
    }

    pub fn retention(&self) -> &gc::Retention {
        static DEFAULT: std::sync::OnceLock<gc::Retention> = std::sync::OnceLock::new();
        self.retention
            .get()
            .unwrap_or_else(|| DEFAULT.get_or_init(gc::Retention::default))
    }

    /// [`index::Index::protect_blobs`] with this store's clock and grace: the digests not
    /// stored; those stored stay through a collection that starts within half the grace
    /// period.
    pub async fn protect_blobs(&self, digests: Vec<Digest>) -> Result<Vec<Digest>> {
        let now = self.now_ms();
        let refresh_before = now - self.retention().grace_ms / 2;
        self.with_index(move |i| i.protect_blobs(&digests, now, refresh_before))
            .await
    }

    /// Whether `d` is a stored manifest whose blob and every entry are stored and not
    /// being collected; protects them all from a collection as [`Store::protect_blobs`]
    /// does (a ref moved to it, or a record naming it as outputs, is then never left
    /// naming bytes a collection removes).
    pub async fn protect_manifest(&self, d: Digest) -> Result<bool> {
        let Some(m) = self.get_manifest(d).await? else {
            return Ok(false);
        };
        let mut digests: Vec<Digest> = m.entries().iter().map(|e| e.digest).collect();
        digests.push(d);
        Ok(self.protect_blobs(digests).await?.is_empty())
    }

    /// Which of these subjects are neither a stored blob nor a stored manifest (a blob
    /// being collected counts as neither); those stored are protected from a collection.
    pub async fn protect_subjects(&self, subjects: Vec<Digest>) -> Result<Vec<Digest>> {
        let missing = self.protect_blobs(subjects).await?;
        if missing.is_empty() {
            return Ok(missing);
        }
        self.with_index(move |i| {
            let entries = i.blob_entries(&missing)?;
            let mut unknown = Vec::new();
            for (d, e) in missing.iter().zip(entries) {
                // A manifest whose own blob has no entry (quarantined) is still a subject;
                // one whose blob is being collected is not.
                if e.is_some() || !i.has_manifest(d)? {
                    unknown.push(*d);
                }
            }
            Ok(unknown)
        })
        .await
    }

    /// Starts journaling every change (after a rebuild, if the index was empty and the
    /// blob store holds a journal). Returns the rebuild's report when one ran.
    /// Takes the blob store's lease first (one writer per store; `take_over`: even from a
    /// server that looks alive), returned for the server to keep renewing and release.
    pub async fn start_journal(
        &self,
        take_over: bool,
    ) -> Result<(Option<journal::RebuildReport>, Arc<lease::Lease>)> {
        let id = self.with_index(|i| i.data_dir_id()).await?;
        let held = lease::Lease::acquire(self.blobs.clone(), &id, take_over).await?;
        // Only the lease holder sweeps: another server sharing a local blob store must not
        // remove the staging files of the one writing to it.
        let blobs = self.blobs.clone();
        let swept = tokio::task::spawn_blocking(move || blobs.sweep_staging()).await?;
        if swept > 0 {
            tracing::info!(swept, "removed staging files of interrupted uploads");
        }
        let index = self.index.clone();
        let empty = self.with_index(|i| i.is_empty()).await?;
        let mut report = None;
        if empty && journal::has_journal(&self.blobs).await? {
            tracing::info!(
                blob_store = self.blobs.description(),
                "empty index and a journal in the blob store: rebuilding"
            );
            let r =
                journal::rebuild(index, &self.blobs, |p| tracing::info!("rebuild: {p}")).await?;
            tracing::info!(?r, "rebuilt the index from the blob store");
            report = Some(r);
        }
        if report.is_none() {
            // The journal may hold what this index has not seen (another server wrote to
            // the store while this one was stopped or fenced).
            let r = journal::catch_up(self.index.clone(), &self.blobs).await?;
            if r.journal_entries > 0 {
                tracing::info!(?r, "caught up with the journal");
            }
        }
        let mark = self.with_index(|i| i.journal_mark()).await?;
        let j = journal::Journal::open(self.blobs.clone(), held.clone(), mark).await?;
        let _ = self.journal.set(j);
        gc::finish_pending(self).await?;
        Ok((report, held))
    }

    /// Limits the bytes stored from now on ([`space::Space`]): `max_bytes` of blobs, and
    /// `min_free` bytes kept free on the file systems of `data_dir` and of a local blob
    /// store. Counts what the index holds first (after a rebuild, when one ran).
    pub async fn limit_space(
        &self,
        max_bytes: Option<u64>,
        min_free: u64,
        data_dir: &Path,
    ) -> Result<()> {
        let used = self.with_index(|i| i.blob_bytes()).await?;
        let mut dirs = vec![(data_dir.to_path_buf(), false)];
        if let Some(root) = self.blobs.backend().local_root() {
            dirs.push((root.to_path_buf(), true));
        }
        tracing::info!(used, ?max_bytes, min_free, "blob bytes stored");
        let _ = self
            .space
            .set(Arc::new(space::Space::new(max_bytes, min_free, dirs, used)));
        Ok(())
    }

    /// The limits on the bytes stored, once set.
    pub fn space(&self) -> Option<&space::Space> {
        self.space.get().map(|s| s.as_ref())
    }

    /// Room for an upload of `bytes` (held until dropped), or `RESOURCE_EXHAUSTED`.
    fn reserve(&self, bytes: u64, what: &str) -> Result<space::Reservation> {
        let r = match self.space.get() {
            Some(s) => s.reserve(bytes, what),
            None => Ok(space::Reservation::none()),
        };
        if r.is_err() {
            // Full: a collection may make room for the retry.
            self.gc.wake();
        }
        r
    }

    fn indexed(&self, added: u64) {
        if let Some(s) = self.space.get() {
            s.added(added);
        }
    }

    /// Rebuilds the index from the blob store (`stagecache-server rebuild`).
    pub async fn rebuild(&self, progress: impl Fn(&str) + Sync) -> Result<journal::RebuildReport> {
        journal::rebuild(self.index.clone(), &self.blobs, progress).await
    }

    async fn journal(
        &self,
        change: stagecache_proto::records::journal_entry::Change,
    ) -> Result<()> {
        match self.journal.get() {
            Some(j) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let seq = j.append(change, now).await?;
                self.with_index(move |i| i.raise_journal_mark(seq)).await
            }
            None => Ok(()),
        }
    }

    /// The journal's state for `/status`: `None` before [`Store::start_journal`].
    pub fn journal_state(&self) -> Option<JournalState> {
        self.journal.get().map(|j| JournalState {
            next_entry: j.next_seq(),
            lease_holder: j.lease().holder(),
            writable: j.check().is_ok(),
        })
    }

    /// `Err` when this server must not change anything any more (it lost the blob store
    /// to another server). Checked before every index write, so that a refused write never
    /// reaches the index and a retried call cannot be acknowledged from it.
    pub fn check_writable(&self) -> Result<()> {
        match self.journal.get() {
            Some(j) => j.check(),
            None => Ok(()),
        }
    }

    /// Runs a ledger transaction ([`index::Index::ledger_txn`]) and journals the records it
    /// appended before returning.
    pub async fn ledger<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ledger::LedgerTxn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.check_writable()?;
        let (out, appended) = self.with_index(move |i| i.ledger_txn_journaled(f)).await?;
        if !appended.is_empty() {
            use stagecache_proto::records::{journal_entry::Change, JournalLedger};
            use stagecache_proto::v1::StageStatus;
            for r in &appended {
                let status = r
                    .record
                    .as_ref()
                    .and_then(|r| StageStatus::try_from(r.status).ok())
                    .unwrap_or(StageStatus::Unspecified);
                if let Some(m) = crate::metrics::metrics() {
                    m.ledger_records
                        .with_label_values(&[status_label(status)])
                        .inc();
                }
            }
            self.journal(Change::Ledger(JournalLedger { records: appended }))
                .await?;
        }
        Ok(out)
    }

    /// Journals a ref move the index made ([`index::Index::set_ref`]).
    pub async fn journal_ref(
        &self,
        ns: &stagecache_proto::Namespace,
        name: &stagecache_proto::RefName,
        record: &stagecache_proto::records::RefRecord,
        change: &stagecache_proto::records::RefChangeRecord,
    ) -> Result<()> {
        use stagecache_proto::records::{journal_entry::Change, JournalRefSet};
        self.journal(Change::RefSet(JournalRefSet {
            namespace: ns.as_str().to_string(),
            name: name.as_str().to_string(),
            record: Some(record.clone()),
            change: Some(change.clone()),
        }))
        .await
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Runs a blocking index operation off the async workers (RocksDB reads and synced
    /// writes block).
    pub async fn with_index<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Index) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || f(&index)).await?
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub async fn missing_blobs(&self, digests: Vec<Digest>) -> Result<Vec<Digest>> {
        self.with_index(move |i| i.missing_blobs(&digests)).await
    }

    pub async fn has_blob(&self, d: Digest) -> Result<bool> {
        Ok(self.missing_blobs(vec![d]).await?.is_empty())
    }

    /// Starts writing a blob that must hash to `expected`; refused when the store has no
    /// room for it ([`space::Space`]).
    pub async fn begin_blob(&self, expected: Digest) -> Result<BlobWriter> {
        let room = self.reserve(expected.size(), &format!("the upload of {expected}"))?;
        let mut w = self.begin_blob_unlimited(expected).await?;
        w.room = room;
        Ok(w)
    }

    async fn begin_blob_unlimited(&self, expected: Digest) -> Result<BlobWriter> {
        let sink = if expected.size() <= SINGLE_PUT_MAX_BYTES {
            Sink::Chunks(Vec::new())
        } else {
            Sink::Upload(self.blobs.start_upload(&expected).await?)
        };
        Ok(BlobWriter {
            store: self.clone(),
            expected,
            verifier: Some(Verifier::new(expected)),
            hashing: None,
            batch: Vec::new(),
            batch_bytes: 0,
            received: 0,
            sink,
            room: space::Reservation::none(),
        })
    }

    /// Stores a small blob given whole (a manifest's canonical bytes: metadata, never
    /// refused for room); verifies it first.
    async fn put_blob(&self, expected: Digest, data: Bytes) -> Result<()> {
        let mut w = self.begin_blob_unlimited(expected).await?;
        w.write(data).await?;
        w.commit().await
    }

    /// Stores many small blobs given whole: each is verified, the new ones are published
    /// concurrently, and all are indexed with one synced write. One outcome per blob.
    pub async fn put_blobs(&self, blobs: Vec<(Digest, Bytes)>) -> Result<Vec<Result<()>>> {
        use futures::stream::{self, StreamExt};
        let missing = self
            .missing_blobs(blobs.iter().map(|(d, _)| *d).collect())
            .await?;
        let missing: std::collections::HashSet<Digest> = missing.into_iter().collect();
        let needed: u64 = missing.iter().map(|d| d.size()).sum();
        let _room = self.reserve(
            needed,
            &format!("this batch of {} new blob(s)", missing.len()),
        )?;
        // Verify every blob first, on a blocking thread: hashing megabytes would stall the
        // runtime's workers (and every other connection they serve).
        let check = blobs.clone();
        let verified: Vec<Option<Digest>> = tokio::task::spawn_blocking(move || {
            check
                .iter()
                .map(|(d, data)| {
                    let actual = Digest::of_bytes(data);
                    (actual != *d).then_some(actual)
                })
                .collect()
        })
        .await
        .map_err(|e| ServerError::Internal(format!("verifying task failed: {e}")))?;
        let refused = verified.iter().filter(|v| v.is_some()).count() as u64;
        // Published blobs wait for a collection deleting the same digest, and are not
        // deleted under it until indexed.
        let _publishing = self.busy.publishing(missing.iter().copied()).await;
        let outcomes: Vec<Result<()>> = stream::iter(blobs.iter().cloned().zip(verified))
            .map(|((d, data), mismatch)| {
                let store = self.clone();
                let needed = missing.contains(&d);
                async move {
                    if let Some(actual) = mismatch {
                        return Err(ServerError::InvalidArgument(format!(
                            "upload of {d}: content is {actual}; nothing was stored"
                        )));
                    }
                    if needed {
                        store.blobs.put_verified(&d, vec![data]).await?;
                    }
                    Ok(())
                }
            })
            .buffered(16)
            .collect()
            .await;
        let published: Vec<Digest> = blobs
            .iter()
            .zip(&outcomes)
            .filter(|((d, _), o)| o.is_ok() && missing.contains(d))
            .map(|((d, _), _)| *d)
            .collect();
        if let Some(m) = crate::metrics::metrics() {
            m.blobs_refused.inc_by(refused);
            m.blobs_uploaded.inc_by(published.len() as u64);
            m.blob_bytes_uploaded
                .inc_by(published.iter().map(|d| d.size()).sum());
        }
        if !published.is_empty() {
            let now = self.now_ms();
            let added = self
                .with_index(move |i| i.add_blobs(&published, now))
                .await?;
            self.indexed(added);
        }
        Ok(outcomes)
    }

    /// Validated manifest in; stored only if every blob is present. Returns its digest.
    pub async fn put_manifest(&self, manifest: Manifest) -> Result<Digest> {
        let canonical = manifest.canonical_bytes();
        let digest = Digest::of_bytes(&canonical);
        let bytes = Bytes::from(canonical);
        // The canonical bytes are a blob too, so a replacement server can rebuild the
        // manifest index from the object store.
        // Protected: a collection running now keeps what this manifest names, or it is
        // reported missing here and the client uploads it again.
        let digests: Vec<Digest> = manifest.entries().iter().map(|e| e.digest).collect();
        let missing = self.protect_blobs(digests).await?;
        // The entries were just protected: the manifest's own blob is all that is left
        // (protect_manifest would read and protect them all again).
        let known = self.with_index(move |i| i.has_manifest(&digest)).await?
            && self.protect_blobs(vec![digest]).await?.is_empty();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(20).map(|d| d.to_string()).collect();
            return Err(ServerError::FailedPrecondition(format!(
                "manifest names {} blob(s) that are not stored; upload them first: {}{}",
                missing.len(),
                shown.join(", "),
                if missing.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            )));
        }
        // Whole again (every blob present): a damage scrub found is healed.
        self.with_index(move |i| i.clear_damaged(&digest)).await?;
        if !known {
            self.check_writable()?;
            self.put_blob(digest, bytes.clone()).await?;
            self.with_index(move |i| i.put_manifest(&digest, &bytes))
                .await?;
            use stagecache_proto::records::{journal_entry::Change, JournalManifest};
            self.journal(Change::Manifest(JournalManifest {
                hash: digest.hash().to_vec(),
                size: digest.size(),
            }))
            .await?;
        }
        Ok(digest)
    }

    pub async fn get_manifest(&self, digest: Digest) -> Result<Option<Manifest>> {
        let bytes = self.with_index(move |i| i.get_manifest(&digest)).await?;
        match bytes {
            None => Ok(None),
            Some(b) if b.len() as u64 != digest.size() => Ok(None),
            Some(b) => Manifest::from_canonical_bytes(&b).map(Some).map_err(|e| {
                ServerError::DataLoss(format!("stored manifest {digest} is corrupt: {e}"))
            }),
        }
    }
}

/// Where the journal stands (`/status`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct JournalState {
    /// The sequence number of the next entry this server writes.
    pub next_entry: u64,
    pub lease_holder: String,
    /// False once another server took the blob store over (this one is fenced).
    pub writable: bool,
}

/// A stage status as a metric label.
fn status_label(s: stagecache_proto::v1::StageStatus) -> &'static str {
    use stagecache_proto::v1::StageStatus;
    match s {
        StageStatus::Unspecified => "unspecified",
        StageStatus::Started => "started",
        StageStatus::Succeeded => "succeeded",
        StageStatus::Failed => "failed",
        StageStatus::Cancelled => "cancelled",
        StageStatus::Invalidated => "invalidated",
    }
}

enum Sink {
    /// Small blobs: the received chunks, kept as they are (no copy) until verified.
    Chunks(Vec<Bytes>),
    /// Larger blobs: an upload that publishes only when finished.
    Upload(Box<dyn backend::Upload>),
}

/// Bytes of a streamed upload hashed together on a blocking thread, while the next ones
/// arrive.
const HASH_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A blob being written: bytes are hashed as they pass and the blob is published only
/// by [`BlobWriter::commit`], after size and hash matched. Dropping it without commit
/// publishes nothing.
///
/// A small blob is hashed as each piece arrives. A streamed one is hashed in batches of
/// [`HASH_BATCH_BYTES`] on a blocking thread, one batch in flight while the task
/// receives the next (and the backend writes them): receiving, hashing and writing
/// overlap instead of taking turns on one core. Its size is still checked as each piece
/// arrives.
pub struct BlobWriter {
    store: Store,
    expected: Digest,
    /// `None` while a batch is being hashed (`hashing` has it).
    verifier: Option<Verifier>,
    hashing: Option<tokio::task::JoinHandle<(Verifier, std::result::Result<(), Mismatch>)>>,
    /// Pieces received and not yet handed to the hasher (streamed uploads only).
    batch: Vec<Bytes>,
    batch_bytes: usize,
    received: u64,
    sink: Sink,
    /// The room this upload holds until its blob is indexed, or it is dropped.
    room: space::Reservation,
}

impl BlobWriter {
    pub fn received(&self) -> u64 {
        self.received
    }

    fn refused(&self, m: Mismatch) -> ServerError {
        ServerError::InvalidArgument(format!("upload of {}: {m}", self.expected))
    }

    /// Waits for the batch being hashed and takes the verifier back.
    async fn settle(&mut self) -> Result<&mut Verifier> {
        if let Some(h) = self.hashing.take() {
            let (v, r) = h
                .await
                .map_err(|e| ServerError::Internal(format!("hashing an upload: {e}")))?;
            self.verifier = Some(v);
            r.map_err(|m| self.refused(m))?;
        }
        self.verifier
            .as_mut()
            .ok_or_else(|| ServerError::Internal("upload verifier lost".into()))
    }

    /// Hands the pieces gathered to a blocking thread to hash, after the batch before.
    async fn hash_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.settle().await?;
        let (Some(mut v), batch) = (self.verifier.take(), std::mem::take(&mut self.batch)) else {
            return Err(ServerError::Internal("upload verifier lost".into()));
        };
        self.batch_bytes = 0;
        self.hashing = Some(tokio::task::spawn_blocking(move || {
            let r = batch.iter().try_for_each(|b| v.update_here(b));
            (v, r)
        }));
        Ok(())
    }

    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let received = self.received + data.len() as u64;
        if received > self.expected.size() {
            return Err(self.refused(Mismatch::TooLong {
                expected: self.expected.size(),
            }));
        }
        self.received = received;
        match &mut self.sink {
            Sink::Chunks(_) => {
                // Nothing is ever in flight for a small blob: hashed here, piece by piece.
                let v = self.settle().await?;
                if let Err(m) = v.update(&data) {
                    return Err(self.refused(m));
                }
                if let Sink::Chunks(chunks) = &mut self.sink {
                    chunks.push(data);
                }
            }
            Sink::Upload(w) => {
                self.batch_bytes += data.len();
                self.batch.push(data.clone());
                w.write(data).await?;
                if self.batch_bytes >= HASH_BATCH_BYTES {
                    self.hash_batch().await?;
                }
            }
        }
        Ok(())
    }

    /// Hashes what is left and checks the whole against the digest.
    async fn finish_hashing(&mut self) -> Result<Digest> {
        self.hash_batch().await?;
        let checked = self.settle().await?.check();
        checked.map_err(|m| self.refused(m))
    }

    /// Checks the digest and publishes the blob, or discards everything written.
    pub async fn commit(mut self) -> Result<()> {
        let expected = self.expected;
        match self.finish_hashing().await {
            Err(e) => {
                let e = match e {
                    // Refused bytes, not a failure of the server's own hashing task.
                    ServerError::InvalidArgument(m) => {
                        if let Some(m) = crate::metrics::metrics() {
                            m.blobs_refused.inc();
                        }
                        ServerError::InvalidArgument(format!("{m}; nothing was stored"))
                    }
                    e => e,
                };
                if let Sink::Upload(w) = self.sink {
                    w.abort().await;
                }
                Err(e)
            }
            Ok(_) => {
                let _publishing = self.store.busy.publishing([expected]).await;
                match self.sink {
                    Sink::Chunks(chunks) => {
                        self.store.blobs.put_verified(&expected, chunks).await?
                    }
                    Sink::Upload(w) => w.finish().await?,
                }
                if let Some(m) = crate::metrics::metrics() {
                    m.blobs_uploaded.inc();
                    m.blob_bytes_uploaded.inc_by(expected.size());
                }
                let now = self.store.now_ms();
                let added = self
                    .store
                    .with_index(move |i| i.add_blobs(&[expected], now))
                    .await?;
                self.store.indexed(added);
                Ok(())
            }
        }
    }

    /// Discards what was written.
    pub async fn abort(self) {
        if let Sink::Upload(w) = self.sink {
            w.abort().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_io_is_for_a_local_blob_store_and_only_a_size_is_refused_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = Store::open(&dir.path().join("cloud"), Some("memory://")).unwrap();
        // The default and 0 mean nothing for a store that is not local.
        cloud.set_direct_io(None).unwrap();
        cloud.set_direct_io(Some(0)).unwrap();
        let e = cloud.set_direct_io(Some(8 << 20)).unwrap_err().to_string();
        assert!(
            e.contains("--direct-io") && e.contains("not on local disk"),
            "{e}"
        );
        let local = Store::open(&dir.path().join("local"), None).unwrap();
        local.set_direct_io(None).unwrap();
        local.set_direct_io(Some(1)).unwrap();
        local.set_direct_io(Some(0)).unwrap();
    }
}
