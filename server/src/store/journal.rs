//! The journal: every acknowledged change to refs, manifests and the ledger, written to
//! the blob store before the call that made it answers, so that the object store is the
//! system of record and the index (RocksDB) can be rebuilt from it.
//!
//! Layout: `journal/<seq, 20 digits>`, one object per change (a ref move, a manifest, the
//! ledger records of one call — a whole RecordBatch is one object), each a
//! `stagecache.store.JournalEntry`. Names sort in sequence order, so a prefix listing
//! replays them in order. Entries are written create-only (`PutMode::Create`): a second
//! server writing to the same store finds its sequence numbers taken and stops writing
//! rather than silently forking the history. Replay is idempotent (heads go to the highest
//! version or sequence number), so a rebuild may run over a partly rebuilt index.
//!
//! Claims are leases and are not journaled: a rebuilt server starts without claims, and a
//! holder whose claim vanished finds out on its next renew.

use super::blobs::BlobStore;
use super::index::{record_digest, Index};
use super::lease::Lease;
use crate::error::{Result, ServerError};
use bytes::Bytes;
use prost::Message;
use stagecache_proto::records::{journal_entry::Change, JournalEntry};
use stagecache_proto::{Namespace, RefName};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const PREFIX: &str = "journal";

/// Journal entries a replay reads ahead of the one it applies.
const REPLAY_READS_AT_ONCE: usize = 32;
/// Entries replayed between two raises of the index's journal mark.
const MARK_EVERY: usize = 1_000;

fn name(seq: u64) -> String {
    format!("{PREFIX}/{seq:020}")
}

/// The sequence number of a journal object's name.
fn seq_of(path: &str) -> Option<u64> {
    path.rsplit('/').next()?.parse().ok()
}

/// Appends entries; one per server.
pub struct Journal {
    blobs: Arc<BlobStore>,
    next: AtomicU64,
    /// Writes stop when it is lost.
    lease: Arc<Lease>,
}

/// What a rebuild found and restored.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RebuildReport {
    pub blobs: usize,
    pub journal_entries: usize,
    pub manifests: usize,
    pub ref_changes: usize,
    pub ledger_records: usize,
    /// Manifests the journal names whose blob is gone (a collection removed it later).
    pub manifests_gone: usize,
    /// Collections replayed.
    pub collections: usize,
    pub seconds: f64,
}

fn now_ms() -> i64 {
    crate::clock::Clock::now_ms(&crate::clock::SystemClock)
}

impl Journal {
    /// Continues after the highest entry the store holds (listing only what sorts after
    /// `mark`, the highest this index has seen).
    pub async fn open(blobs: Arc<BlobStore>, lease: Arc<Lease>, mark: u64) -> Result<Self> {
        let after = (mark > 0).then(|| name(mark));
        let last = blobs
            .list_objects_after(PREFIX, after.as_deref())
            .await?
            .iter()
            .filter_map(|(n, _)| seq_of(n))
            .max()
            .unwrap_or(0)
            .max(mark);
        Ok(Journal {
            blobs,
            next: AtomicU64::new(last + 1),
            lease,
        })
    }

    /// `Err` once this server lost the blob store.
    pub fn check(&self) -> Result<()> {
        self.lease.check()
    }

    /// Writes one entry; returns its sequence number once it is durable in the blob store.
    /// The sequence number the next entry will take.
    pub fn next_seq(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Who holds the blob store's lease (this server), and whether it still may write.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub async fn append(&self, change: Change, now_ms: i64) -> Result<u64> {
        self.lease.check()?;
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let entry = JournalEntry {
            seq,
            written_at_ms: now_ms,
            change: Some(change),
        };
        let written = self
            .blobs
            .put_new(&name(seq), Bytes::from(entry.encode_to_vec()))
            .await?;
        if !written {
            // Another server extends this journal: stop, rather than fork the history.
            self.lease.fence();
            return Err(ServerError::Unavailable(format!(
                "this server no longer holds the blob store {}: journal entry {} was written by another server; it acknowledges no writes",
                self.blobs.description(),
                name(seq)
            )));
        }
        if let Some(m) = crate::metrics::metrics() {
            m.journal_entries.inc();
        }
        Ok(seq)
    }
}

/// Whether the blob store holds a journal (a server's state to rebuild from).
pub async fn has_journal(blobs: &BlobStore) -> Result<bool> {
    blobs.has_objects(PREFIX).await
}

/// Rebuilds the index from the blob store: every blob listed, then every journal entry
/// replayed in order. `progress` is told each phase and count as it goes.
pub async fn rebuild(
    index: Arc<Index>,
    blobs: &BlobStore,
    progress: impl Fn(&str) + Sync,
) -> Result<RebuildReport> {
    let started = std::time::Instant::now();
    let mut report = RebuildReport::default();
    let digests = blobs.list_blobs().await?;
    report.blobs = digests.len();
    progress(&format!("blobs: {} listed", digests.len()));
    for chunk in digests.chunks(10_000) {
        let chunk = chunk.to_vec();
        let i = index.clone();
        blocking(move || i.add_blobs(&chunk, now_ms()).map(|_| ())).await?;
    }
    let entries = blobs.list_objects(PREFIX).await?;
    progress(&format!("journal: {} entries", entries.len()));
    replay(&index, blobs, &entries, &mut report, &progress).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Replays what the journal holds after this index's mark: writes another server made to
/// the store since this index last saw it, or this server's own whose mark a crash lost.
pub async fn catch_up(index: Arc<Index>, blobs: &BlobStore) -> Result<RebuildReport> {
    let started = std::time::Instant::now();
    let mut report = RebuildReport::default();
    let i = index.clone();
    let mark = blocking(move || i.journal_mark()).await?;
    let after = (mark > 0).then(|| name(mark));
    let entries = blobs.list_objects_after(PREFIX, after.as_deref()).await?;
    if !entries.is_empty() {
        // Blobs another server stored are in the blob store but not in this index.
        let digests = blobs.list_blobs().await?;
        report.blobs = digests.len();
        for chunk in digests.chunks(10_000) {
            let chunk = chunk.to_vec();
            let i = index.clone();
            blocking(move || i.add_blobs(&chunk, now_ms()).map(|_| ())).await?;
        }
        replay(&index, blobs, &entries, &mut report, &|p: &str| {
            tracing::info!("catch-up: {p}")
        })
        .await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Applies `entries` (journal objects, in order) to the index and raises its mark.
async fn replay(
    index: &Arc<Index>,
    blobs: &BlobStore,
    entries: &[(String, u64)],
    report: &mut RebuildReport,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    use futures::stream::StreamExt;
    // Entries are read several at a time (a cloud store's round trips overlap) and
    // applied strictly in order.
    // (Owned paths and a boxed stream: a closure borrowing them would make the server's
    // future not `Send` for every lifetime, which rustc cannot prove.)
    let backend = blobs.backend().clone();
    let mut reads =
        futures::stream::iter(entries.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>())
            .map(move |path| {
                let backend = backend.clone();
                async move {
                    let got = backend.get(&path).await;
                    (path, got)
                }
            })
            .buffered(REPLAY_READS_AT_ONCE)
            .boxed();
    let (mut n, mut applied): (usize, Option<String>) = (0, None);
    while let Some((path, got)) = reads.next().await {
        let path = path.as_str();
        // The mark is raised every so often (to the last entry applied) and at the end,
        // not per entry: replay is idempotent, so a crash in between only replays a few
        // entries again.
        if let Some(done) = applied.as_deref().filter(|_| n % MARK_EVERY == 0) {
            continue_after(index, done).await?;
        }
        applied = Some(path.to_string());
        n += 1;
        let bytes = match got? {
            Some((bytes, _)) => bytes,
            None => {
                return Err(ServerError::DataLoss(format!(
                    "journal entry {path} was listed but is gone"
                )))
            }
        };
        let entry = JournalEntry::decode(bytes.as_ref())
            .map_err(|e| ServerError::DataLoss(format!("journal entry {path}: {e}")))?;
        let bad = |what: String| ServerError::DataLoss(format!("journal entry {path}: {what}"));
        match entry.change {
            None => return Err(bad("no change".into())),
            Some(Change::Manifest(m)) => {
                let digest = record_digest(&m.hash, m.size)?;
                let canonical = match blobs.get_blob(&digest).await {
                    Ok(c) => c,
                    Err(ServerError::Storage(super::backend::StorageError::NotFound {
                        ..
                    })) => {
                        // Collected since (a later entry says so), or lost: either way
                        // there is no manifest to restore.
                        report.manifests_gone += 1;
                        report.journal_entries += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if stagecache_proto::Digest::of_bytes(&canonical) != digest {
                    return Err(bad(format!(
                        "manifest {digest}: its blob does not hash to it"
                    )));
                }
                let i = index.clone();
                blocking(move || i.put_manifest(&digest, &canonical)).await?;
                report.manifests += 1;
            }
            Some(Change::RefSet(r)) => {
                let ns =
                    Namespace::parse("namespace", &r.namespace).map_err(|e| bad(e.to_string()))?;
                let name = RefName::parse("name", &r.name).map_err(|e| bad(e.to_string()))?;
                let change = r
                    .change
                    .ok_or_else(|| bad("ref change without its history entry".into()))?;
                let record = r.record;
                let expiry = change.kind == stagecache_proto::records::RefChangeKind::Expire as i32;
                if record.is_none() != expiry {
                    return Err(bad(
                        "a ref change has a record unless it is an expiry".into()
                    ));
                }
                let i = index.clone();
                blocking(move || i.apply_ref(&ns, &name, record.as_ref(), &change)).await?;
                report.ref_changes += 1;
            }
            Some(Change::Ledger(l)) => {
                let i = index.clone();
                report.ledger_records += blocking(move || i.apply_ledger(&l.records)).await?;
            }
            Some(Change::Collected(c)) => {
                let i = index.clone();
                blocking(move || super::gc::apply_collected(&i, &c)).await?;
                report.collections += 1;
            }
        }
        report.journal_entries += 1;
        if n % 10_000 == 0 {
            progress(&format!("journal: {n} of {} replayed", entries.len()));
        }
    }
    if let Some((last, _)) = entries.last() {
        continue_after(index, last).await?;
    }
    let i = index.clone();
    blocking(move || i.flush()).await?;
    Ok(())
}

/// Raises the index's journal mark to the entry at `path`.
async fn continue_after(index: &Arc<Index>, path: &str) -> Result<()> {
    if let Some(seq) = seq_of(path) {
        let i = index.clone();
        blocking(move || i.raise_journal_mark(seq)).await?;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Internal(format!("index task: {e}")))?
}
