//! The index in RocksDB: which blobs are present and their sizes, manifests (canonical
//! bytes), refs and every change of every ref. One column family per record kind and a
//! schema version key. Writes that acknowledge something to a client sync the WAL.

use crate::error::{Result, ServerError};
use prost::Message;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use stagecache_proto::records::{RefChangeKind, RefChangeRecord, RefRecord};
use stagecache_proto::{Digest, Namespace, RefName};
use std::path::Path;
use std::sync::Mutex;

const CF_BLOBS: &str = "blobs";
const CF_MANIFESTS: &str = "manifests";
const CF_REFS: &str = "refs";
const CF_REF_HISTORY: &str = "ref_history";
const CF_META: &str = "meta";
pub(crate) const CF_LEDGER_HEAD: &str = "ledger_head";
pub(crate) const CF_LEDGER_HISTORY: &str = "ledger_history";
pub(crate) const CF_CLAIMS: &str = "claims";
pub(crate) const CF_LEDGER_COLLECTED: &str = "ledger_collected";
/// Manifests that name a blob scrub found damaged: manifest hash -> (blob hash, size, when).
const CF_DAMAGED: &str = "damaged_manifests";
const ALL_CFS: [&str; 10] = [
    CF_BLOBS,
    CF_MANIFESTS,
    CF_REFS,
    CF_REF_HISTORY,
    CF_META,
    CF_LEDGER_HEAD,
    CF_LEDGER_HISTORY,
    CF_CLAIMS,
    CF_LEDGER_COLLECTED,
    CF_DAMAGED,
];
const SCHEMA_KEY: &[u8] = b"schema_version";
const JOURNAL_MARK: &[u8] = b"journal_mark";
const PENDING_COLLECTION: &[u8] = b"pending_collection";
/// The hash of the last blob an interrupted periodic scrub saved as done.
const SCRUB_CURSOR: &[u8] = b"scrub_cursor";
/// When the last whole scrub finished (ms since the epoch).
const SCRUB_FINISHED: &[u8] = b"scrub_finished_at";
const SCHEMA_VERSION: u32 = 1;

/// A blob's index entry: its size, when it was last stored or asked for (retention keeps
/// anything this recent, and a register that asked for it relies on that), and whether a
/// garbage collection is deleting it (then it counts as missing: a manifest cannot name it
/// and the next upload stores it again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobEntry {
    pub size: u64,
    /// Ms since the Unix epoch; `None` in entries written before retention existed.
    pub stamp_ms: Option<i64>,
    pub deleting: bool,
}

impl BlobEntry {
    fn encode(&self) -> [u8; 17] {
        let mut v = [0u8; 17];
        v[..8].copy_from_slice(&self.size.to_le_bytes());
        v[8..16].copy_from_slice(&self.stamp_ms.unwrap_or(0).to_le_bytes());
        v[16] = self.deleting as u8;
        v
    }

    fn decode(v: &[u8]) -> Option<BlobEntry> {
        let size = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
        match v.len() {
            8 => Some(BlobEntry {
                size,
                stamp_ms: None,
                deleting: false,
            }),
            17 => Some(BlobEntry {
                size,
                stamp_ms: Some(i64::from_le_bytes(v[8..16].try_into().ok()?)),
                deleting: v[16] != 0,
            }),
            _ => None,
        }
    }

    /// Present for readers: stored, of this size, not being deleted.
    fn serves(&self, d: &Digest) -> bool {
        !self.deleting && self.size == d.size()
    }
}

/// What a ref must point at before a [`Index::set_ref`] may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefExpectation {
    /// No condition.
    Any,
    /// The ref must not exist.
    Absent,
    /// The ref must point at this manifest.
    Target(Digest),
}

/// A requested ref change.
#[derive(Debug, Clone)]
pub struct RefWrite<'a> {
    pub target: Digest,
    pub expect: RefExpectation,
    /// Who the client says acted ("on behalf of").
    pub actor: &'a str,
    /// The authenticated identity making the change.
    pub identity: &'a str,
    pub reason: &'a str,
    pub now_ms: i64,
}

/// Outcome of a ref change.
#[derive(Debug, Clone)]
pub struct RefUpdate {
    pub record: RefRecord,
    /// The history entry written; `None` when the ref already pointed at the target.
    pub change: Option<RefChangeRecord>,
}

pub struct Index {
    pub(crate) db: DB,
    /// Serialises ref read-modify-write so compare-and-swap is exact.
    ref_writes: Mutex<()>,
    /// Serialises raises of the journal mark.
    mark_writes: Mutex<()>,
    /// Serialises blob additions and removals, so the bytes each adds or removes are
    /// counted once.
    blob_writes: Mutex<()>,
    /// Serialises ledger read-modify-write (transitions, claims) and owns the next
    /// ledger sequence number.
    pub(crate) ledger_writes: Mutex<u64>,
    /// Each subject's ledger heads lately read; every head write invalidates its subject.
    pub(crate) heads_cache: super::heads_cache::HeadsCache,
}

/// What the ledger heads cache holds by default (`--ledger-cache`).
pub const DEFAULT_LEDGER_CACHE_BYTES: u64 = 64 * 1024 * 1024;

fn lock<'a>(m: &'a Mutex<()>, what: &str) -> Result<std::sync::MutexGuard<'a, ()>> {
    m.lock()
        .map_err(|_| ServerError::Internal(format!("{what} write lock poisoned")))
}

pub(crate) fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

fn ref_key(ns: &Namespace, name: &RefName) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.as_str().len() + 1 + name.as_str().len());
    k.extend_from_slice(ns.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_str().as_bytes());
    k
}

fn history_key(ns: &Namespace, name: &RefName, version: u64) -> Vec<u8> {
    let mut k = ref_key(ns, name);
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

impl Index {
    /// Opens (or creates) the index under `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(5);

        // Point lookups dominate (FindMissing, manifest checks): bloom filters and a
        // bounded shared block cache keep them off the disk and memory flat.
        let cache = Cache::new_lru_cache(64 * 1024 * 1024);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        // Index and filter blocks live in the cache; pinning the hot ones spares every
        // ledger iterator and MultiGet an LRU lookup for them.
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_pin_top_level_index_and_filter(true);
        let mut point = Options::default();
        point.set_block_based_table_factory(&table);
        point.set_compression_type(rocksdb::DBCompressionType::Lz4);

        let cfs = ALL_CFS
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, point.clone()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let mut index = Index {
            db,
            ref_writes: Mutex::new(()),
            mark_writes: Mutex::new(()),
            blob_writes: Mutex::new(()),
            ledger_writes: Mutex::new(0),
            heads_cache: super::heads_cache::HeadsCache::new(DEFAULT_LEDGER_CACHE_BYTES),
        };
        index.check_schema()?;
        let next_seq = index.load_ledger_seq()?;
        index.ledger_writes = Mutex::new(next_seq);
        Ok(index)
    }

    pub(crate) fn meta_cf(&self) -> Result<&rocksdb::ColumnFamily> {
        self.cf(CF_META)
    }

    fn check_schema(&self) -> Result<()> {
        let meta = self.cf(CF_META)?;
        match self.db.get_cf(meta, SCHEMA_KEY)? {
            None => {
                self.db
                    .put_cf_opt(meta, SCHEMA_KEY, SCHEMA_VERSION.to_le_bytes(), &synced())?;
                Ok(())
            }
            Some(v) if v.as_slice() == SCHEMA_VERSION.to_le_bytes() => Ok(()),
            Some(v) => Err(ServerError::Internal(format!(
                "index schema version {:?} is not the supported version {SCHEMA_VERSION}",
                v
            ))),
        }
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| ServerError::Internal(format!("column family {name} is missing")))
    }

    /// RocksDB's estimates over every column family: (live data bytes, bytes compaction
    /// still has to rewrite), for the metrics.
    pub fn size_estimates(&self) -> Result<(u64, u64)> {
        let (mut live, mut pending) = (0u64, 0u64);
        for name in ALL_CFS {
            let cf = self.cf(name)?;
            live += self
                .db
                .property_int_value_cf(cf, "rocksdb.estimate-live-data-size")?
                .unwrap_or(0);
            pending += self
                .db
                .property_int_value_cf(cf, "rocksdb.estimate-pending-compaction-bytes")?
                .unwrap_or(0);
        }
        Ok((live, pending))
    }

    /// The index entry of each digest's blob (any size, deleting or not), or `None`.
    pub fn blob_entries(&self, digests: &[Digest]) -> Result<Vec<Option<BlobEntry>>> {
        let cf = self.cf(CF_BLOBS)?;
        // RocksDB's batched MultiGet: one pass over the memtables and files for the whole
        // list, values pinned rather than copied.
        let keys = digests.iter().map(|d| d.hash().as_slice());
        let mut out = Vec::with_capacity(digests.len());
        for r in self.db.batched_multi_get_cf(cf, keys, false) {
            out.push(r?.and_then(|v| BlobEntry::decode(&v)));
        }
        Ok(out)
    }

    /// Indexed size of each digest's blob, or `None` where it is absent (or being
    /// deleted).
    pub fn blob_sizes(&self, digests: &[Digest]) -> Result<Vec<Option<u64>>> {
        Ok(self
            .blob_entries(digests)?
            .into_iter()
            .map(|e| e.filter(|e| !e.deleting).map(|e| e.size))
            .collect())
    }

    /// The digests whose blobs are absent (or indexed with another size, or being
    /// deleted).
    pub fn missing_blobs(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let entries = self.blob_entries(digests)?;
        Ok(digests
            .iter()
            .zip(entries)
            .filter(|(d, e)| !e.is_some_and(|e| e.serves(d)))
            .map(|(d, _)| *d)
            .collect())
    }

    /// [`Index::missing_blobs`], and what is present is protected from garbage collection:
    /// an entry stamped before `refresh_before` is stamped `now_ms`. A collection deletes
    /// only blobs stamped before its grace cutoff and checks the stamp under the same lock,
    /// so a blob reported present here stays for at least the grace period minus
    /// `now_ms - refresh_before`. Most entries are fresh and cost no write.
    pub fn protect_blobs(
        &self,
        digests: &[Digest],
        now_ms: i64,
        refresh_before: i64,
    ) -> Result<Vec<Digest>> {
        let entries = self.blob_entries(digests)?;
        let mut missing = Vec::new();
        let mut stale = Vec::new();
        for (d, e) in digests.iter().zip(entries) {
            match e {
                Some(e) if e.serves(d) => {
                    if e.stamp_ms.is_none_or(|t| t < refresh_before) {
                        stale.push(*d);
                    }
                }
                _ => missing.push(*d),
            }
        }
        if stale.is_empty() {
            return Ok(missing);
        }
        let _one = self.lock_blobs()?;
        let cf = self.cf(CF_BLOBS)?;
        let mut batch = WriteBatch::default();
        for (d, e) in stale.iter().zip(self.blob_entries(&stale)?) {
            match e {
                Some(e) if e.serves(d) => batch.put_cf(
                    cf,
                    d.hash(),
                    BlobEntry {
                        stamp_ms: Some(now_ms),
                        ..e
                    }
                    .encode(),
                ),
                _ => missing.push(*d),
            }
        }
        // Not synced: a stamp lost in a crash only leaves a blob as old as it was.
        self.db.write(batch)?;
        Ok(missing)
    }

    fn lock_blobs(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        lock(&self.blob_writes, "blob")
    }

    /// Marks blobs deleting, durably, for a garbage collection: only those still stamped
    /// before `cutoff_ms` (or already deleting) and not `busy` (being published again).
    /// Returns the digests marked. Under the blob lock, so that a concurrent
    /// [`Index::protect_blobs`] either stamped first (the blob stays) or finds it missing.
    pub fn mark_deleting(
        &self,
        digests: &[Digest],
        cutoff_ms: i64,
        busy: &dyn Fn(&Digest) -> bool,
    ) -> Result<Vec<Digest>> {
        let _one = self.lock_blobs()?;
        let cf = self.cf(CF_BLOBS)?;
        let mut batch = WriteBatch::default();
        let mut marked = Vec::new();
        for (d, e) in digests.iter().zip(self.blob_entries(digests)?) {
            let Some(e) = e else { continue };
            let stale = e.deleting || e.stamp_ms.is_some_and(|t| t < cutoff_ms);
            // Only a stale entry is claimed (`busy` claims it unless it is being published).
            if !stale || busy(d) {
                continue;
            }
            if e.deleting {
                marked.push(*d);
            } else {
                batch.put_cf(
                    cf,
                    d.hash(),
                    BlobEntry {
                        deleting: true,
                        ..e
                    }
                    .encode(),
                );
                marked.push(*d);
            }
        }
        self.db.write_opt(batch, &synced())?;
        Ok(marked)
    }

    /// Makes deleting blobs present again, stamped `now_ms` (a collection found them in
    /// use after marking them).
    pub fn unmark_deleting(&self, digests: &[Digest], now_ms: i64) -> Result<()> {
        let _one = self.lock_blobs()?;
        let cf = self.cf(CF_BLOBS)?;
        let mut batch = WriteBatch::default();
        for (d, e) in digests.iter().zip(self.blob_entries(digests)?) {
            if let Some(e) = e.filter(|e| e.deleting) {
                let e = BlobEntry {
                    deleting: false,
                    stamp_ms: Some(now_ms),
                    ..e
                };
                batch.put_cf(cf, d.hash(), e.encode());
            }
        }
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Drops the entries of blobs whose bytes a garbage collection deleted (those still
    /// marked deleting). Returns the bytes dropped.
    pub fn drop_deleted(&self, digests: &[Digest]) -> Result<u64> {
        let _one = self.lock_blobs()?;
        let cf = self.cf(CF_BLOBS)?;
        let mut batch = WriteBatch::default();
        let mut bytes = 0u64;
        for (d, e) in digests.iter().zip(self.blob_entries(digests)?) {
            if e.is_some_and(|e| e.deleting) {
                batch.delete_cf(cf, d.hash());
                bytes += e.map_or(0, |e| e.size);
            }
        }
        // Not synced: an entry a crash brings back is still deleting, and the next
        // collection drops it again (its bytes are gone; deleting them again is no error).
        self.db.write(batch)?;
        Ok(bytes)
    }

    /// Every blob entry, in hash order (a garbage collection's sweep). Entries without a
    /// stamp (written before retention existed) count as uploaded `now_ms`, so retention
    /// starts their grace period rather than deleting them at once; with `write` the stamp
    /// is stored.
    pub fn all_blob_entries(&self, now_ms: i64, write: bool) -> Result<Vec<(Digest, BlobEntry)>> {
        let mut out = Vec::new();
        let mut unstamped = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_BLOBS)?, IteratorMode::Start) {
            let (k, v) = item?;
            let e = BlobEntry::decode(&v).ok_or_else(|| {
                ServerError::DataLoss(format!("blob index value of {} bytes", v.len()))
            })?;
            let d = record_digest(&k, e.size)?;
            if e.stamp_ms.is_none() {
                unstamped.push(d);
            }
            out.push((d, e));
        }
        if !unstamped.is_empty() && write {
            let _one = self.lock_blobs()?;
            let cf = self.cf(CF_BLOBS)?;
            let mut batch = WriteBatch::default();
            for (d, e) in unstamped.iter().zip(self.blob_entries(&unstamped)?) {
                if let Some(e) = e.filter(|e| e.stamp_ms.is_none()) {
                    let e = BlobEntry {
                        stamp_ms: Some(now_ms),
                        ..e
                    };
                    batch.put_cf(cf, d.hash(), e.encode());
                }
            }
            self.db.write_opt(batch, &synced())?;
        }
        for (_, e) in out.iter_mut().filter(|(_, e)| e.stamp_ms.is_none()) {
            e.stamp_ms = Some(now_ms);
        }
        Ok(out)
    }

    /// Marks blobs present (stamped `now_ms`), durably. Call only after their bytes are
    /// stored and verified. Returns the bytes of those that were not indexed yet.
    pub fn add_blobs(&self, digests: &[Digest], now_ms: i64) -> Result<u64> {
        self.change_blobs(digests, Some(now_ms))
    }

    /// The bytes of every indexed blob.
    pub fn blob_bytes(&self) -> Result<u64> {
        let mut total = 0u64;
        for item in self.db.iterator_cf(self.cf(CF_BLOBS)?, IteratorMode::Start) {
            let (_, v) = item?;
            if let Some(e) = BlobEntry::decode(&v) {
                total = total.saturating_add(e.size);
            }
        }
        Ok(total)
    }

    /// Every indexed blob, in hash order (for scrub); not those being deleted.
    pub fn blob_digests(&self) -> Result<Vec<Digest>> {
        Ok(self
            .all_blob_entries(0, false)?
            .into_iter()
            .filter(|(_, e)| !e.deleting)
            .map(|(d, _)| d)
            .collect())
    }

    /// Every ref of every namespace: (namespace, name, target manifest).
    pub fn all_refs(&self) -> Result<Vec<(String, String, Digest)>> {
        self.all_ref_records()?
            .into_iter()
            .map(|(ns, name, r)| Ok((ns, name, record_digest(&r.target_hash, r.target_size)?)))
            .collect()
    }

    /// Every ref of every namespace with its record: (namespace, name, record).
    pub fn all_ref_records(&self) -> Result<Vec<(String, String, RefRecord)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_REFS)?, IteratorMode::Start) {
            let (k, v) = item?;
            let Some(split) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            let r = RefRecord::decode(&*v)
                .map_err(|e| ServerError::DataLoss(format!("stored ref record: {e}")))?;
            out.push((
                String::from_utf8_lossy(&k[..split]).into_owned(),
                String::from_utf8_lossy(&k[split + 1..]).into_owned(),
                r,
            ));
        }
        Ok(out)
    }

    /// Marks blobs absent, durably: their bytes are damaged or gone, so the next upload
    /// (FindMissing reports them missing) publishes them again. Returns the bytes of those
    /// that were indexed.
    pub fn remove_blobs(&self, digests: &[Digest]) -> Result<u64> {
        self.change_blobs(digests, None)
    }

    /// Adds (stamped `Some(now)`) or drops blobs in one synced batch, under one lock so
    /// that the bytes each call changes are counted once; returns those bytes. An entry
    /// being deleted counts as indexed: its bytes are still counted until it is dropped.
    fn change_blobs(&self, digests: &[Digest], added_at: Option<i64>) -> Result<u64> {
        let _one = self.lock_blobs()?;
        let present = added_at.is_some();
        let cf = self.cf(CF_BLOBS)?;
        let mut batch = WriteBatch::default();
        let mut changed = 0u64;
        let mut seen = std::collections::HashSet::new();
        for (d, indexed) in digests.iter().zip(self.blob_entries(digests)?) {
            if indexed.is_some() != present && seen.insert(*d) {
                changed += d.size();
            }
            match added_at {
                Some(now) => batch.put_cf(
                    cf,
                    d.hash(),
                    BlobEntry {
                        size: d.size(),
                        stamp_ms: Some(now),
                        deleting: false,
                    }
                    .encode(),
                ),
                None => batch.delete_cf(cf, d.hash()),
            }
        }
        self.db.write_opt(batch, &synced())?;
        Ok(changed)
    }

    pub fn blob_count(&self) -> Result<u64> {
        Ok(self
            .db
            .property_int_value_cf(self.cf(CF_BLOBS)?, "rocksdb.estimate-num-keys")?
            .unwrap_or(0))
    }

    /// Stores a manifest's canonical bytes under its digest.
    pub fn put_manifest(&self, digest: &Digest, canonical: &[u8]) -> Result<()> {
        self.db
            .put_cf_opt(self.cf(CF_MANIFESTS)?, digest.hash(), canonical, &synced())?;
        Ok(())
    }

    /// Every stored manifest's digest, in hash order (a garbage collection's mark).
    pub fn manifest_digests(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_MANIFESTS)?, rocksdb::ReadOptions::default());
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            out.push(record_digest(k, v.len() as u64)?);
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Removes manifests from the index (a garbage collection; their blobs go
    /// separately).
    pub fn remove_manifests(&self, digests: &[Digest]) -> Result<()> {
        let cf = self.cf(CF_MANIFESTS)?;
        let mut batch = WriteBatch::default();
        for d in digests {
            batch.delete_cf(cf, d.hash());
        }
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    pub fn get_manifest(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_MANIFESTS)?, digest.hash())?)
    }

    pub fn has_manifest(&self, digest: &Digest) -> Result<bool> {
        // Pinned read: presence and length without copying a possibly large manifest.
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_MANIFESTS)?, digest.hash())?
            .is_some_and(|b| b.len() as u64 == digest.size()))
    }

    /// The digests that are not stored manifests.
    pub fn missing_manifests(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut missing = Vec::new();
        for d in digests {
            if !self.has_manifest(d)? {
                missing.push(*d);
            }
        }
        Ok(missing)
    }

    pub fn get_ref(&self, ns: &Namespace, name: &RefName) -> Result<Option<RefRecord>> {
        match self.db.get_cf(self.cf(CF_REFS)?, ref_key(ns, name))? {
            None => Ok(None),
            Some(v) => Ok(Some(RefRecord::decode(v.as_slice()).map_err(|e| {
                ServerError::DataLoss(format!("ref {name} in {ns}: stored record is corrupt: {e}"))
            })?)),
        }
    }

    /// Points a ref at `w.target` if `w.expect` holds, recording the change in its
    /// history. Setting a ref to the target it already has records nothing.
    pub fn set_ref(&self, ns: &Namespace, name: &RefName, w: &RefWrite) -> Result<RefUpdate> {
        let (target, expect, actor, reason, now_ms) =
            (&w.target, w.expect, w.actor, w.reason, w.now_ms);
        let _guard = self.lock_refs()?;
        let current = self.get_ref(ns, name)?;
        let current_target = current
            .as_ref()
            .map(|r| record_digest(&r.target_hash, r.target_size))
            .transpose()?;
        match (expect, current_target) {
            (RefExpectation::Any, _) => {}
            (RefExpectation::Absent, None) => {}
            (RefExpectation::Absent, Some(cur)) => {
                return Err(ServerError::Aborted(format!(
                    "ref {name} in namespace {ns} already exists (points at {cur}); expected it to be absent"
                )))
            }
            (RefExpectation::Target(want), None) => {
                return Err(ServerError::Aborted(format!(
                    "ref {name} in namespace {ns} does not exist; expected it to point at {want}"
                )))
            }
            (RefExpectation::Target(want), Some(cur)) if want != cur => {
                return Err(ServerError::Aborted(format!(
                    "ref {name} in namespace {ns} points at {cur}; expected {want}"
                )))
            }
            (RefExpectation::Target(_), Some(_)) => {}
        }
        if let (Some(rec), Some(cur)) = (&current, current_target) {
            if cur == *target {
                return Ok(RefUpdate {
                    record: rec.clone(),
                    change: None,
                });
            }
        }
        let version = self.next_ref_version(ns, name, current.as_ref())?;
        let record = RefRecord {
            target_hash: target.hash().to_vec(),
            target_size: target.size(),
            version,
            updated_at_ms: now_ms,
            actor: actor.to_string(),
            identity: w.identity.to_string(),
            // A pin stays through moves.
            ..current.clone().unwrap_or_default()
        };
        let change = RefChangeRecord {
            version,
            old_hash: current_target
                .map(|d| d.hash().to_vec())
                .unwrap_or_default(),
            old_size: current_target.map_or(0, |d| d.size()),
            had_old: current_target.is_some(),
            new_hash: target.hash().to_vec(),
            new_size: target.size(),
            changed_at_ms: now_ms,
            actor: actor.to_string(),
            reason: reason.to_string(),
            identity: w.identity.to_string(),
            kind: RefChangeKind::Move as i32,
        };
        self.write_ref_change(ns, name, &record, &change)?;
        Ok(RefUpdate {
            record,
            change: Some(change),
        })
    }

    /// The version the next change of a ref takes: after its current one, or after the
    /// last in its history when it expired (its history is kept, so versions never repeat).
    fn next_ref_version(
        &self,
        ns: &Namespace,
        name: &RefName,
        current: Option<&RefRecord>,
    ) -> Result<u64> {
        let last = match current {
            Some(r) => r.version,
            None => self
                .ref_history(ns, name, 1)?
                .first()
                .map_or(0, |c| c.version),
        };
        Ok(last + 1)
    }

    fn lock_refs(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        lock(&self.ref_writes, "ref")
    }

    /// Pins (`pin`) or unpins a ref, recorded in its history as a change of its own kind.
    /// `Ok(None)`: the ref does not exist. No change when it already is as asked.
    pub fn pin_ref(
        &self,
        ns: &Namespace,
        name: &RefName,
        pin: bool,
        w: &RefWrite,
    ) -> Result<Option<RefUpdate>> {
        let _guard = self.lock_refs()?;
        let Some(current) = self.get_ref(ns, name)? else {
            return Ok(None);
        };
        if current.pinned == pin {
            return Ok(Some(RefUpdate {
                record: current,
                change: None,
            }));
        }
        let version = current.version + 1;
        let record = RefRecord {
            version,
            updated_at_ms: w.now_ms,
            actor: w.actor.to_string(),
            identity: w.identity.to_string(),
            pinned: pin,
            pinned_at_ms: if pin { w.now_ms } else { 0 },
            pinned_by: if pin {
                w.identity.to_string()
            } else {
                String::new()
            },
            pin_reason: if pin {
                w.reason.to_string()
            } else {
                String::new()
            },
            ..current.clone()
        };
        let change = RefChangeRecord {
            version,
            old_hash: current.target_hash.clone(),
            old_size: current.target_size,
            had_old: true,
            new_hash: current.target_hash.clone(),
            new_size: current.target_size,
            changed_at_ms: w.now_ms,
            actor: w.actor.to_string(),
            reason: w.reason.to_string(),
            identity: w.identity.to_string(),
            kind: if pin {
                RefChangeKind::Pin
            } else {
                RefChangeKind::Unpin
            } as i32,
        };
        self.write_ref_change(ns, name, &record, &change)?;
        Ok(Some(RefUpdate {
            record,
            change: Some(change),
        }))
    }

    /// The history entry that would expire a ref still at `version` and not pinned;
    /// `None` when it moved, was pinned or is gone. Retention journals it, then applies it
    /// with [`Index::apply_ref`] (which removes the ref only if no later change came).
    pub fn expiry_change(
        &self,
        ns: &Namespace,
        name: &RefName,
        version: u64,
        reason: &str,
        now_ms: i64,
    ) -> Result<Option<RefChangeRecord>> {
        let Some(current) = self.get_ref(ns, name)? else {
            return Ok(None);
        };
        if current.version != version || current.pinned {
            return Ok(None);
        }
        Ok(Some(RefChangeRecord {
            version: version + 1,
            old_hash: current.target_hash.clone(),
            old_size: current.target_size,
            had_old: true,
            new_hash: current.target_hash.clone(),
            new_size: current.target_size,
            changed_at_ms: now_ms,
            actor: "retention".into(),
            reason: reason.to_string(),
            identity: "retention".into(),
            kind: RefChangeKind::Expire as i32,
        }))
    }

    /// One synced write: the ref's new record and the change in its history.
    fn write_ref_change(
        &self,
        ns: &Namespace,
        name: &RefName,
        record: &RefRecord,
        change: &RefChangeRecord,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_REFS)?, ref_key(ns, name), record.encode_to_vec());
        batch.put_cf(
            self.cf(CF_REF_HISTORY)?,
            history_key(ns, name, change.version),
            change.encode_to_vec(),
        );
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// Applies a journaled ref change (a rebuild, or retention applying an expiry it
    /// journaled): the change joins the ref's history, and the record (`None`: an expiry,
    /// the ref is removed) becomes the ref unless a later version is there. Idempotent.
    pub fn apply_ref(
        &self,
        ns: &Namespace,
        name: &RefName,
        record: Option<&RefRecord>,
        change: &RefChangeRecord,
    ) -> Result<()> {
        let _guard = self.lock_refs()?;
        let mut batch = WriteBatch::default();
        let current = self.get_ref(ns, name)?;
        match record {
            Some(record) => {
                if current.is_none_or(|cur| cur.version <= record.version) {
                    batch.put_cf(self.cf(CF_REFS)?, ref_key(ns, name), record.encode_to_vec());
                }
            }
            None => {
                if current.is_some_and(|cur| cur.version < change.version) {
                    batch.delete_cf(self.cf(CF_REFS)?, ref_key(ns, name));
                }
            }
        }
        // An expiry is journaled before it is applied: a move that won the race took its
        // version, and its history entry stays.
        if record.is_none()
            && self
                .db
                .get_cf(
                    self.cf(CF_REF_HISTORY)?,
                    history_key(ns, name, change.version),
                )?
                .is_some()
        {
            return Ok(());
        }
        batch.put_cf(
            self.cf(CF_REF_HISTORY)?,
            history_key(ns, name, change.version),
            change.encode_to_vec(),
        );
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }

    /// The highest journal sequence number this index holds (0: none): a restarted server
    /// replays what the journal has after it (another server's writes, or its own whose
    /// mark was not yet written).
    pub fn journal_mark(&self) -> Result<u64> {
        Ok(match self.db.get_cf(self.meta_cf()?, JOURNAL_MARK)? {
            Some(v) => v.as_slice().try_into().map(u64::from_le_bytes).unwrap_or(0),
            None => 0,
        })
    }

    /// Raises the mark to `seq` (never lowers it). Not synced: a mark lost in a crash only
    /// makes the next start replay a little more (replay is idempotent).
    pub fn raise_journal_mark(&self, seq: u64) -> Result<()> {
        let _guard = lock(&self.mark_writes, "journal mark")?;
        if self.journal_mark()? < seq {
            self.db
                .put_cf(self.meta_cf()?, JOURNAL_MARK, seq.to_le_bytes())?;
        }
        Ok(())
    }

    /// Where an interrupted scrub stopped: the hash of the last blob it saved as done.
    pub fn scrub_cursor(&self) -> Result<Option<[u8; 32]>> {
        Ok(self
            .db
            .get_cf(self.meta_cf()?, SCRUB_CURSOR)?
            .and_then(|v| v.as_slice().try_into().ok()))
    }

    /// Saves (or, with `None`, clears) where a scrub is.
    pub fn set_scrub_cursor(&self, at: Option<[u8; 32]>) -> Result<()> {
        match at {
            Some(h) => self.db.put_cf(self.meta_cf()?, SCRUB_CURSOR, h)?,
            None => self.db.delete_cf(self.meta_cf()?, SCRUB_CURSOR)?,
        }
        Ok(())
    }

    /// When the last whole scrub finished, if one did.
    pub fn scrub_finished_at(&self) -> Result<Option<i64>> {
        Ok(self
            .db
            .get_cf(self.meta_cf()?, SCRUB_FINISHED)?
            .and_then(|v| v.as_slice().try_into().ok().map(i64::from_le_bytes)))
    }

    pub fn set_scrub_finished_at(&self, ms: i64) -> Result<()> {
        self.db
            .put_cf(self.meta_cf()?, SCRUB_FINISHED, ms.to_le_bytes())?;
        Ok(())
    }

    /// A collection journaled but maybe not yet applied (its encoded
    /// `JournalCollected`), or `None`.
    pub fn pending_collection(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.meta_cf()?, PENDING_COLLECTION)?)
    }

    /// Records (durably) or clears the collection being journaled and applied: a server
    /// that dies in between applies it at its next start.
    pub fn set_pending_collection(&self, c: Option<&[u8]>) -> Result<()> {
        match c {
            Some(v) => self
                .db
                .put_cf_opt(self.meta_cf()?, PENDING_COLLECTION, v, &synced())?,
            None => self
                .db
                .delete_cf_opt(self.meta_cf()?, PENDING_COLLECTION, &synced())?,
        }
        Ok(())
    }

    /// Records that manifest `m` names `blob`, found damaged (and quarantined) at `at_ms`:
    /// a plan that would skip a stage for `m` says so until the manifest is whole again.
    pub fn mark_damaged(&self, m: &Digest, blob: &Digest, at_ms: i64) -> Result<()> {
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(blob.hash());
        v.extend_from_slice(&blob.size().to_le_bytes());
        v.extend_from_slice(&at_ms.to_le_bytes());
        self.db
            .put_cf_opt(self.cf(CF_DAMAGED)?, m.hash(), v, &synced())?;
        Ok(())
    }

    /// The damaged blob a manifest names, and when it was found, if scrub found one.
    pub fn damaged(&self, m: &Digest) -> Result<Option<(Digest, i64)>> {
        let Some(v) = self.db.get_pinned_cf(self.cf(CF_DAMAGED)?, m.hash())? else {
            return Ok(None);
        };
        if v.len() != 48 {
            return Ok(None);
        }
        let blob = record_digest(
            &v[..32],
            u64::from_le_bytes(v[32..40].try_into().unwrap_or_default()),
        )?;
        let at = i64::from_le_bytes(v[40..48].try_into().unwrap_or_default());
        Ok(Some((blob, at)))
    }

    /// Forgets that a manifest was damaged (it was put again with every blob present).
    pub fn clear_damaged(&self, m: &Digest) -> Result<()> {
        if self.damaged(m)?.is_some() {
            self.db
                .delete_cf_opt(self.cf(CF_DAMAGED)?, m.hash(), &synced())?;
        }
        Ok(())
    }

    /// A random id made once per index (data dir), naming it in the blob store's lease.
    pub fn data_dir_id(&self) -> Result<String> {
        const KEY: &[u8] = b"data_dir_id";
        if let Some(v) = self.db.get_cf(self.meta_cf()?, KEY)? {
            return Ok(String::from_utf8_lossy(&v).into_owned());
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        self.db
            .put_cf_opt(self.meta_cf()?, KEY, id.as_bytes(), &synced())?;
        Ok(id)
    }

    /// Whether the index holds nothing at all (a fresh data dir).
    pub fn is_empty(&self) -> Result<bool> {
        for cf in [CF_BLOBS, CF_MANIFESTS, CF_REFS, CF_LEDGER_HEAD] {
            let mut it = self
                .db
                .iterator_cf(self.cf(cf)?, rocksdb::IteratorMode::Start);
            if it.next().transpose()?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Refs of a namespace whose names start with `prefix`, in name order, after `after`.
    pub fn list_refs(
        &self,
        ns: &Namespace,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, RefRecord)>> {
        let mut start = Vec::from(ns.as_str().as_bytes());
        start.push(0);
        let base_len = start.len();
        start.extend_from_slice(prefix.as_bytes());
        let scope = start.clone();
        if let Some(after) = after.filter(|a| a.as_bytes() >= prefix.as_bytes()) {
            start.truncate(base_len);
            start.extend_from_slice(after.as_bytes());
            // The smallest key strictly after `after`.
            start.push(0);
        }
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(CF_REFS)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&scope) || out.len() >= limit {
                break;
            }
            let name = String::from_utf8_lossy(&k[base_len..]).into_owned();
            let rec = RefRecord::decode(&*v).map_err(|e| {
                ServerError::DataLoss(format!("ref {name} in {ns}: stored record is corrupt: {e}"))
            })?;
            out.push((name, rec));
        }
        Ok(out)
    }

    /// Changes of one ref, newest first.
    pub fn ref_history(
        &self,
        ns: &Namespace,
        name: &RefName,
        limit: usize,
    ) -> Result<Vec<RefChangeRecord>> {
        let mut scope = ref_key(ns, name);
        scope.push(0);
        let end = history_key(ns, name, u64::MAX);
        let iter = self.db.iterator_cf(
            self.cf(CF_REF_HISTORY)?,
            IteratorMode::From(&end, Direction::Reverse),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&scope) || out.len() >= limit {
                break;
            }
            out.push(RefChangeRecord::decode(&*v).map_err(|e| {
                ServerError::DataLoss(format!("history of ref {name} in {ns} is corrupt: {e}"))
            })?);
        }
        Ok(out)
    }

    /// Exact counts for `Info.Stats`, by scanning: (blobs, blob bytes, manifests, refs in
    /// `ns`, ledger records in `ns`, claims in `ns` live at `now_ms`).
    pub fn stats(&self, ns: &Namespace, now_ms: i64) -> Result<[u64; 6]> {
        let mut out = [0u64; 6];
        for item in self.db.iterator_cf(self.cf(CF_BLOBS)?, IteratorMode::Start) {
            let (_, v) = item?;
            out[0] += 1;
            out[1] += BlobEntry::decode(&v).map_or(0, |e| e.size);
        }
        for item in self
            .db
            .iterator_cf(self.cf(CF_MANIFESTS)?, IteratorMode::Start)
        {
            item?;
            out[2] += 1;
        }
        let mut prefix = Vec::from(ns.as_str().as_bytes());
        prefix.push(0);
        let mode = IteratorMode::From(&prefix, Direction::Forward);
        for (slot, cf) in [(3, CF_REFS), (4, CF_LEDGER_HISTORY), (5, CF_CLAIMS)] {
            for item in self.db.iterator_cf(self.cf(cf)?, mode) {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                if slot == 5 {
                    let live = stagecache_proto::records::ClaimRecord::decode(&*v)
                        .is_ok_and(|c| c.expires_at_ms > now_ms);
                    if !live {
                        continue;
                    }
                }
                out[slot] += 1;
            }
        }
        Ok(out)
    }

    /// Flushes memtables so a restart replays nothing; called on graceful shutdown.
    pub fn flush(&self) -> Result<()> {
        for cf in ALL_CFS {
            self.db.flush_cf(self.cf(cf)?)?;
        }
        self.db.flush_wal(true)?;
        Ok(())
    }
}

/// Rebuilds a digest from a stored record's hash bytes and size.
pub fn record_digest(hash: &[u8], size: u64) -> Result<Digest> {
    let hash: [u8; 32] = hash.try_into().map_err(|_| {
        ServerError::DataLoss(format!(
            "stored digest has {} hash bytes, not 32",
            hash.len()
        ))
    })?;
    Ok(Digest::new(hash, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> Namespace {
        Namespace::parse("namespace", s).unwrap()
    }
    fn name(s: &str) -> RefName {
        RefName::parse("name", s).unwrap()
    }

    #[test]
    fn refs_cas_history_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let (a, b) = (Digest::of_bytes(b"a"), Digest::of_bytes(b"b"));
        let prod = ns("prod");
        let n = name("bar/1");
        let u = index
            .set_ref(
                &prod,
                &n,
                &RefWrite {
                    target: a,
                    expect: RefExpectation::Absent,
                    actor: "alice",
                    identity: "token:alice",
                    reason: "first",
                    now_ms: 10,
                },
            )
            .unwrap();
        assert!(u.change.is_some());
        assert_eq!(u.record.version, 1);
        let e = index
            .set_ref(
                &prod,
                &n,
                &RefWrite {
                    target: b,
                    expect: RefExpectation::Target(b),
                    actor: "bob",
                    identity: "anonymous",
                    reason: "",
                    now_ms: 11,
                },
            )
            .unwrap_err();
        assert!(matches!(e, ServerError::Aborted(_)), "{e}");
        index
            .set_ref(
                &prod,
                &n,
                &RefWrite {
                    target: b,
                    expect: RefExpectation::Target(a),
                    actor: "bob",
                    identity: "anonymous",
                    reason: "swap",
                    now_ms: 12,
                },
            )
            .unwrap();
        // Same target again: no new history entry.
        assert!(index
            .set_ref(
                &prod,
                &n,
                &RefWrite {
                    target: b,
                    expect: RefExpectation::Any,
                    actor: "c",
                    identity: "anonymous",
                    reason: "",
                    now_ms: 13
                }
            )
            .unwrap()
            .change
            .is_none());
        let h = index.ref_history(&prod, &n, 10).unwrap();
        assert_eq!(h.iter().map(|c| c.version).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(h[0].actor, "bob");
        assert!(h[0].had_old && !h[1].had_old);
        // Another namespace does not see it; a ref whose name extends this one is separate.
        assert!(index.get_ref(&ns("test"), &n).unwrap().is_none());
        index
            .set_ref(
                &prod,
                &name("bar/10"),
                &RefWrite {
                    target: a,
                    expect: RefExpectation::Any,
                    actor: "x",
                    identity: "anonymous",
                    reason: "",
                    now_ms: 14,
                },
            )
            .unwrap();
        assert_eq!(index.ref_history(&prod, &n, 10).unwrap().len(), 2);
        let all = index.list_refs(&prod, "bar/", None, 10).unwrap();
        assert_eq!(
            all.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            ["bar/1", "bar/10"]
        );
        let page = index.list_refs(&prod, "bar/", Some("bar/1"), 10).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].0, "bar/10");
    }

    #[test]
    fn a_collection_and_a_protect_never_both_win() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let (a, b) = (Digest::of_bytes(b"a"), Digest::of_bytes(b"bb"));
        index.add_blobs(&[a, b], 100).unwrap();
        // Protected first (stamped at 1000): a collection with its cutoff at 500 leaves it.
        assert!(index.protect_blobs(&[a], 1000, 900).unwrap().is_empty());
        assert!(index.mark_deleting(&[a, b], 500, &|_| false).unwrap() == vec![b]);
        // Marked first: a protect finds it missing, and so do readers.
        assert_eq!(index.protect_blobs(&[b], 1000, 900).unwrap(), vec![b]);
        assert_eq!(index.missing_blobs(&[a, b]).unwrap(), vec![b]);
        // Being published: left alone.
        index.add_blobs(&[a], 100).unwrap();
        assert!(index
            .mark_deleting(&[a], 500, &|_| true)
            .unwrap()
            .is_empty());
        // Dropped entries free their bytes; an entry that was published again stays.
        index.add_blobs(&[b], 2000).unwrap();
        assert_eq!(index.drop_deleted(&[b]).unwrap(), 0);
        index.mark_deleting(&[a], 500, &|_| false).unwrap();
        assert_eq!(index.drop_deleted(&[a]).unwrap(), a.size());
        assert_eq!(index.missing_blobs(&[a, b]).unwrap(), vec![a]);
    }

    #[test]
    fn entries_written_before_retention_read_as_present_and_unstamped() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let a = Digest::of_bytes(b"a");
        // The 8-byte value (size only) of earlier versions.
        index
            .db
            .put_cf(
                index.cf(CF_BLOBS).unwrap(),
                a.hash(),
                a.size().to_le_bytes(),
            )
            .unwrap();
        assert!(index.missing_blobs(&[a]).unwrap().is_empty());
        assert_eq!(index.blob_bytes().unwrap(), a.size());
        // A dry look stamps nothing; a collection's look stamps it now (its grace starts).
        let e = index.all_blob_entries(7, false).unwrap();
        assert_eq!(e[0].1.stamp_ms, Some(7));
        assert_eq!(index.blob_entries(&[a]).unwrap()[0].unwrap().stamp_ms, None);
        index.all_blob_entries(9, true).unwrap();
        assert_eq!(
            index.blob_entries(&[a]).unwrap()[0].unwrap().stamp_ms,
            Some(9)
        );
        assert!(index.mark_deleting(&[a], 9, &|_| false).unwrap().is_empty());
    }

    #[test]
    fn blob_presence_by_multi_get() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let (a, b) = (Digest::of_bytes(b"a"), Digest::of_bytes(b"bb"));
        index.add_blobs(&[a], 1).unwrap();
        assert_eq!(index.missing_blobs(&[a, b]).unwrap(), vec![b]);
        // A digest with the right hash but a wrong size counts as missing.
        let wrong = Digest::new(*a.hash(), 99);
        assert_eq!(index.missing_blobs(&[wrong]).unwrap(), vec![wrong]);
    }
}
