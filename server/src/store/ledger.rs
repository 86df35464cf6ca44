//! Ledger records in RocksDB: every attempt and invalidation (`ledger_history`), the latest
//! record per (namespace, subject, stage, target) (`ledger_head`, so status is a point or
//! short prefix read whatever the history's length), and claims (`claims`).
//!
//! Writes go through [`Index::ledger_txn`]: one writer at a time, reads of what the
//! transaction itself wrote, and one synced write batch on success, so an acknowledged
//! result survives a crash and is visible to the very next read. The rules (transitions,
//! claims, plans) live in `crate::ledger`; this file only stores.

use super::heads_cache::{Heads, Lookup};
use super::index::{
    synced, Index, CF_CLAIMS, CF_LEDGER_COLLECTED, CF_LEDGER_HEAD, CF_LEDGER_HISTORY,
};
use crate::error::{Result, ServerError};
use prost::Message;
use rocksdb::{Direction, IteratorMode, WriteBatch};
use stagecache_proto::records::{
    ClaimRecord, CollectedSubjectRecord, JournalLedgerRecord, StageResultRecord,
};
use stagecache_proto::{Digest, Namespace};
use std::collections::{HashMap, HashSet};

const SEQ_KEY: &[u8] = b"ledger_seq";

/// Identifies one ledger line: a stage (and optional target) on a subject in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StageKey {
    pub namespace: Namespace,
    pub subject: Digest,
    pub stage: String,
    pub target: String,
}

/// The first key after every key starting with `prefix` (`None`: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `namespace \0 subject-hash(32)`: the prefix of every key about one subject.
fn subject_prefix(ns: &Namespace, subject: &Digest) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.as_str().len() + 33);
    k.extend_from_slice(ns.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(subject.hash());
    k
}

impl StageKey {
    /// `subject prefix, stage \0 target`. Stage and target names never contain NUL.
    pub fn key(&self) -> Vec<u8> {
        let mut k = subject_prefix(&self.namespace, &self.subject);
        k.extend_from_slice(self.stage.as_bytes());
        k.push(0);
        k.extend_from_slice(self.target.as_bytes());
        k
    }

    fn history_prefix(&self) -> Vec<u8> {
        let mut k = self.key();
        k.push(0);
        k
    }

    fn history_key(&self, seq: u64) -> Vec<u8> {
        let mut k = self.history_prefix();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
}

fn decode_result(v: &[u8]) -> Result<StageResultRecord> {
    StageResultRecord::decode(v)
        .map_err(|e| ServerError::DataLoss(format!("stored stage result is corrupt: {e}")))
}

/// A ledger write in progress; see [`Index::ledger_txn`].
pub struct LedgerTxn<'a> {
    index: &'a Index,
    batch: WriteBatch,
    heads: HashMap<Vec<u8>, StageResultRecord>,
    claims: HashMap<Vec<u8>, Option<ClaimRecord>>,
    next_seq: u64,
    /// What this transaction appended, for the journal.
    appended: Vec<JournalLedgerRecord>,
    /// The subjects whose heads it wrote (their prefixes), for the heads cache: a set,
    /// as a batch may write thousands of subjects, or one subject thousands of times.
    subjects: HashSet<Vec<u8>>,
}

impl LedgerTxn<'_> {
    /// The latest record of this line, including what this transaction wrote.
    pub fn head(&self, key: &StageKey) -> Result<Option<StageResultRecord>> {
        let k = key.key();
        if let Some(r) = self.heads.get(&k) {
            return Ok(Some(r.clone()));
        }
        self.index.ledger_head(key)
    }

    /// Appends a record to the line's history and makes it the head. Assigns its `seq`.
    pub fn append(
        &mut self,
        key: &StageKey,
        mut record: StageResultRecord,
    ) -> Result<StageResultRecord> {
        record.seq = self.next_seq;
        self.next_seq += 1;
        let bytes = record.encode_to_vec();
        self.batch.put_cf(
            self.index.cf(CF_LEDGER_HISTORY)?,
            key.history_key(record.seq),
            &bytes,
        );
        self.batch
            .put_cf(self.index.cf(CF_LEDGER_HEAD)?, key.key(), &bytes);
        self.heads.insert(key.key(), record.clone());
        self.subjects
            .insert(subject_prefix(&key.namespace, &key.subject));
        self.appended.push(JournalLedgerRecord {
            namespace: key.namespace.as_str().to_string(),
            subject_hash: key.subject.hash().to_vec(),
            subject_size: key.subject.size(),
            stage: key.stage.clone(),
            target: key.target.clone(),
            record: Some(record.clone()),
        });
        Ok(record)
    }

    pub fn claim(&self, key: &StageKey) -> Result<Option<ClaimRecord>> {
        match self.claims.get(&key.key()) {
            Some(c) => Ok(c.clone()),
            None => self.index.claim(key),
        }
    }

    pub fn put_claim(&mut self, key: &StageKey, claim: ClaimRecord) -> Result<()> {
        self.batch
            .put_cf(self.index.cf(CF_CLAIMS)?, key.key(), claim.encode_to_vec());
        self.claims.insert(key.key(), Some(claim));
        Ok(())
    }

    pub fn delete_claim(&mut self, key: &StageKey) -> Result<()> {
        self.batch.delete_cf(self.index.cf(CF_CLAIMS)?, key.key());
        self.claims.insert(key.key(), None);
        Ok(())
    }
}

impl Index {
    pub(crate) fn load_ledger_seq(&self) -> Result<u64> {
        Ok(match self.db.get_cf(self.meta_cf()?, SEQ_KEY)? {
            Some(v) => v
                .as_slice()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| ServerError::DataLoss("ledger sequence number is corrupt".into()))?,
            None => 1,
        })
    }

    /// Runs `f` as the only ledger writer; commits what it wrote, durably, if it succeeds
    /// and discards it otherwise.
    pub fn ledger_txn<T>(&self, f: impl FnOnce(&mut LedgerTxn) -> Result<T>) -> Result<T> {
        self.ledger_txn_journaled(f).map(|(out, _)| out)
    }

    /// [`Index::ledger_txn`], also returning the records it appended (for the journal).
    pub fn ledger_txn_journaled<T>(
        &self,
        f: impl FnOnce(&mut LedgerTxn) -> Result<T>,
    ) -> Result<(T, Vec<JournalLedgerRecord>)> {
        let mut seq = self
            .ledger_writes
            .lock()
            .map_err(|_| ServerError::Internal("ledger write lock poisoned".into()))?;
        let mut txn = LedgerTxn {
            index: self,
            batch: WriteBatch::default(),
            heads: HashMap::new(),
            claims: HashMap::new(),
            next_seq: *seq,
            appended: Vec::new(),
            subjects: HashSet::new(),
        };
        let out = f(&mut txn)?;
        if !txn.batch.is_empty() {
            let mut batch = txn.batch;
            batch.put_cf(self.meta_cf()?, SEQ_KEY, txn.next_seq.to_le_bytes());
            self.db.write_opt(batch, &synced())?;
            *seq = txn.next_seq;
            self.heads_cache
                .invalidate(txn.subjects.iter().map(Vec::as_slice));
        }
        Ok((out, txn.appended))
    }

    /// Replays journaled ledger records (a rebuild): each joins its line's history, and
    /// becomes the head unless a later one is there; the sequence continues after the
    /// highest. Idempotent.
    pub fn apply_ledger(&self, records: &[JournalLedgerRecord]) -> Result<usize> {
        let mut seq = self
            .ledger_writes
            .lock()
            .map_err(|_| ServerError::Internal("ledger write lock poisoned".into()))?;
        let mut batch = WriteBatch::default();
        let mut heads: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut next = *seq;
        for (i, r) in records.iter().enumerate() {
            let bad =
                |what: &str| ServerError::DataLoss(format!("journal ledger record {i}: {what}"));
            let record = r.record.as_ref().ok_or_else(|| bad("no record"))?;
            let key = StageKey {
                namespace: Namespace::parse("namespace", &r.namespace)
                    .map_err(|e| bad(&e.to_string()))?,
                subject: super::index::record_digest(&r.subject_hash, r.subject_size)?,
                stage: r.stage.clone(),
                target: r.target.clone(),
            };
            let bytes = record.encode_to_vec();
            batch.put_cf(
                self.cf(CF_LEDGER_HISTORY)?,
                key.history_key(record.seq),
                &bytes,
            );
            let k = key.key();
            let current = match heads.get(&k) {
                Some(s) => Some(*s),
                None => self.ledger_head(&key)?.map(|h| h.seq),
            };
            if current.is_none_or(|c| c <= record.seq) {
                batch.put_cf(self.cf(CF_LEDGER_HEAD)?, &k, &bytes);
                heads.insert(k, record.seq);
            }
            next = next.max(record.seq + 1);
        }
        batch.put_cf(self.meta_cf()?, SEQ_KEY, next.to_le_bytes());
        self.db.write_opt(batch, &synced())?;
        *seq = next;
        self.heads_cache.invalidate_all();
        Ok(records.len())
    }

    pub fn ledger_head(&self, key: &StageKey) -> Result<Option<StageResultRecord>> {
        match self.db.get_cf(self.cf(CF_LEDGER_HEAD)?, key.key())? {
            Some(v) => Ok(Some(decode_result(&v)?)),
            None => Ok(None),
        }
    }

    /// The most the ledger heads cache holds (`--ledger-cache`); 0 turns it off.
    pub fn set_ledger_cache_bytes(&self, max_bytes: u64) {
        self.heads_cache.set_max_bytes(max_bytes);
    }

    /// The head of every line of a subject, in (stage, target) order: from the heads
    /// cache, or read from RocksDB and kept there.
    pub fn ledger_heads(&self, ns: &Namespace, subject: &Digest) -> Result<Vec<StageResultRecord>> {
        let prefix = subject_prefix(ns, subject);
        let ticket = match self.heads_cache.get(&prefix) {
            Lookup::Hit(heads) => return heads.records().map(decode_result).collect(),
            Lookup::Miss(ticket) => ticket,
        };
        // Gathered for the cache only when it is on, and only while it fits.
        let mut kept = self.heads_cache.is_on().then(Heads::default);
        let mut out = Vec::new();
        // Bounded to the prefix: RocksDB stops at the bound instead of reading the next
        // subject's first key (often another data block).
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(end) = prefix_end(&prefix) {
            opts.set_iterate_upper_bound(end);
        }
        // The raw iterator lends keys and values; the plain one copies each into a Box.
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_LEDGER_HEAD)?, opts);
        it.seek(&prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(decode_result(v)?);
            if kept.as_mut().is_some_and(|k| !k.push(v)) {
                kept = None;
            }
            it.next();
        }
        it.status()?;
        drop(it);
        if let Some(kept) = kept {
            self.heads_cache.fill(prefix, kept, ticket);
        }
        Ok(out)
    }

    /// Records of a subject (optionally one stage, optionally one target), newest first.
    pub fn ledger_history(
        &self,
        ns: &Namespace,
        subject: &Digest,
        stage: Option<&str>,
        target: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StageResultRecord>> {
        let cf = self.cf(CF_LEDGER_HISTORY)?;
        if let (Some(stage), Some(target)) = (stage, target) {
            // One line: its keys end in the sequence number, so read backwards.
            let key = StageKey {
                namespace: ns.clone(),
                subject: *subject,
                stage: stage.to_string(),
                target: target.to_string(),
            };
            let prefix = key.history_prefix();
            let end = key.history_key(u64::MAX);
            let mut out = Vec::new();
            for item in self
                .db
                .iterator_cf(cf, IteratorMode::From(&end, Direction::Reverse))
            {
                let (k, v) = item?;
                if !k.starts_with(&prefix) || out.len() >= limit {
                    break;
                }
                out.push(decode_result(&v)?);
            }
            return Ok(out);
        }
        let mut prefix = subject_prefix(ns, subject);
        if let Some(stage) = stage {
            prefix.extend_from_slice(stage.as_bytes());
            prefix.push(0);
        }
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(decode_result(&v)?);
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.seq));
        out.truncate(limit);
        Ok(out)
    }

    /// The head of every ledger line of every namespace: (namespace, record), for a
    /// garbage collection's mark (records name their subject and outputs).
    pub fn all_ledger_heads(&self) -> Result<Vec<(String, StageResultRecord)>> {
        let mut out = Vec::new();
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(CF_LEDGER_HEAD)?, rocksdb::ReadOptions::default());
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let ns = k.iter().position(|b| *b == 0).map_or(k, |p| &k[..p]);
            out.push((String::from_utf8_lossy(ns).into_owned(), decode_result(v)?));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// How many records a subject's ledger lines hold in `ns`, and the newest one's time
    /// (when it finished, or started).
    pub fn subject_records(&self, ns: &Namespace, subject: &Digest) -> Result<(u64, i64)> {
        let prefix = subject_prefix(ns, subject);
        let (mut n, mut last) = (0u64, 0i64);
        for item in self.db.iterator_cf(
            self.cf(CF_LEDGER_HISTORY)?,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let r = decode_result(&v)?;
            n += 1;
            last = last.max(r.finished_at_ms.max(r.started_at_ms));
        }
        Ok((n, last))
    }

    /// Removes every ledger line (history, head, claim) of a subject in `ns` whose bytes a
    /// garbage collection removed, leaving a [`CollectedSubjectRecord`] so status and
    /// plan can say the results expired. Returns the record left. Idempotent.
    pub fn collect_subject(
        &self,
        ns: &Namespace,
        subject: &Digest,
        at_ms: i64,
    ) -> Result<CollectedSubjectRecord> {
        let _one = self
            .ledger_writes
            .lock()
            .map_err(|_| ServerError::Internal("ledger write lock poisoned".into()))?;
        let prefix = subject_prefix(ns, subject);
        let (records, last) = self.subject_records(ns, subject)?;
        let mut batch = WriteBatch::default();
        for cf in [CF_LEDGER_HISTORY, CF_LEDGER_HEAD, CF_CLAIMS] {
            let cf = self.cf(cf)?;
            for item in self
                .db
                .iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward))
            {
                let (k, _) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                batch.delete_cf(cf, k);
            }
        }
        let earlier = self.collected_subject(ns, subject)?;
        let record = match earlier {
            // Collected again with nothing recorded since: the first collection stands.
            Some(e) if records == 0 => e,
            _ => CollectedSubjectRecord {
                collected_at_ms: at_ms,
                records,
                last_record_at_ms: last,
            },
        };
        batch.put_cf(
            self.cf(CF_LEDGER_COLLECTED)?,
            &prefix,
            record.encode_to_vec(),
        );
        self.db.write_opt(batch, &synced())?;
        self.heads_cache.invalidate([prefix.as_slice()]);
        Ok(record)
    }

    /// What a garbage collection left of a subject's ledger in `ns`, if it collected it.
    pub fn collected_subject(
        &self,
        ns: &Namespace,
        subject: &Digest,
    ) -> Result<Option<CollectedSubjectRecord>> {
        match self
            .db
            .get_cf(self.cf(CF_LEDGER_COLLECTED)?, subject_prefix(ns, subject))?
        {
            Some(v) => Ok(Some(CollectedSubjectRecord::decode(v.as_slice()).map_err(
                |e| ServerError::DataLoss(format!("stored collection record is corrupt: {e}")),
            )?)),
            None => Ok(None),
        }
    }

    pub fn claim(&self, key: &StageKey) -> Result<Option<ClaimRecord>> {
        match self.db.get_cf(self.cf(CF_CLAIMS)?, key.key())? {
            Some(v) => Ok(Some(ClaimRecord::decode(v.as_slice()).map_err(|e| {
                ServerError::DataLoss(format!("stored claim is corrupt: {e}"))
            })?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }
}
