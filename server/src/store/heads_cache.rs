//! A bounded cache of each subject's ledger heads, kept as stored (the encoded records), so
//! status and plan on a subject read lately skip RocksDB's iterator: its set-up and seek
//! across the memtable and every level were a third of a status call's server CPU.
//!
//! Correctness rests on one rule: every write of the ledger's heads invalidates the
//! subjects it wrote *after* its RocksDB write, and a read fills the cache only if no
//! invalidation happened since before it read RocksDB. An epoch counter does the second
//! part without a lock: a fill that read stale heads read them before the write landed,
//! so it also read the epoch before the invalidation raised it; if the fill's insert came
//! before the invalidation's removal, the removal takes it out, and if it came after, the
//! fill sees the raised epoch and takes its own entry out again. Either way no stale heads
//! outlive the write that replaced them. (A fill that loses such a race only costs a miss.)

use quick_cache::sync::Cache;
use quick_cache::Weighter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes a cached subject costs besides its records: the key, the offsets, the entry.
const ENTRY_OVERHEAD: u64 = 96;

/// Shards of the cache (each its own lock): enough for a server's worker threads.
const SHARDS: usize = 8;

/// One subject's heads: the encoded records back to back, in (stage, target) order.
#[derive(Debug, Default)]
pub struct Heads {
    buf: Vec<u8>,
    ends: Vec<u32>,
}

impl Heads {
    /// Appends one encoded record; false (and nothing kept) past 4 GiB of records,
    /// which no cache would hold anyway.
    pub fn push(&mut self, record: &[u8]) -> bool {
        let Ok(end) = u32::try_from(self.buf.len() + record.len()) else {
            return false;
        };
        self.buf.extend_from_slice(record);
        self.ends.push(end);
        true
    }

    /// The encoded records, in order.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let r = &self.buf[start..end as usize];
            start = end as usize;
            r
        })
    }

    /// What it holds in memory (after [`HeadsCache::fill`] trims it to its length).
    fn weight(&self, key: &[u8]) -> u64 {
        (key.len() + self.buf.capacity() + 4 * self.ends.capacity()) as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Clone)]
struct Weigh;

impl Weighter<Vec<u8>, Arc<Heads>> for Weigh {
    fn weight(&self, key: &Vec<u8>, val: &Arc<Heads>) -> u64 {
        val.weight(key)
    }
}

/// What a lookup found; see [`HeadsCache::get`].
pub enum Lookup {
    Hit(Arc<Heads>),
    /// Not cached: read RocksDB, then [`HeadsCache::fill`] with this ticket.
    Miss(Ticket),
}

/// The epoch a miss saw, to hand back to [`HeadsCache::fill`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

pub struct HeadsCache {
    cache: Cache<Vec<u8>, Arc<Heads>, Weigh>,
    /// Raised by every invalidation, before it removes entries.
    epoch: AtomicU64,
    /// Off when sized 0: nothing is kept or looked up.
    max_bytes: AtomicU64,
}

impl HeadsCache {
    /// A cache holding at most about `max_bytes` of heads; 0 keeps none.
    pub fn new(max_bytes: u64) -> Self {
        // Sized for subjects of a few KiB each; the cache grows its tables as needed. A
        // fixed, small number of shards: each holds a share of the bound, and an entry
        // must fit in one, so a small `--ledger-cache` still keeps subjects.
        let items = (max_bytes / 4096).clamp(16, 1 << 20) as usize;
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(max_bytes.max(1))
            .shards(SHARDS)
            .build()
            .expect("heads cache options are valid");
        HeadsCache {
            cache: Cache::with_options(options, Weigh, Default::default(), Default::default()),
            epoch: AtomicU64::new(0),
            max_bytes: AtomicU64::new(max_bytes),
        }
    }

    /// Changes the bound; entries past it leave at once. 0 empties the cache and turns it
    /// off.
    pub fn set_max_bytes(&self, max_bytes: u64) {
        self.max_bytes.store(max_bytes, Ordering::SeqCst);
        self.cache.set_capacity(max_bytes.max(1));
        if max_bytes == 0 {
            self.invalidate_all();
        }
    }

    /// The subject's cached heads, or a ticket to fill them with once read.
    pub fn get(&self, key: &[u8]) -> Lookup {
        // The epoch is read before the lookup, so a fill never predates what it missed.
        let ticket = Ticket(self.epoch.load(Ordering::SeqCst));
        if !self.is_on() {
            return Lookup::Miss(ticket);
        }
        match self.cache.get(key) {
            Some(h) => {
                count("hit");
                Lookup::Hit(h)
            }
            None => {
                count("miss");
                Lookup::Miss(ticket)
            }
        }
    }

    /// Whether reads should gather heads to fill it with (it is on).
    pub fn is_on(&self) -> bool {
        self.max_bytes.load(Ordering::Relaxed) > 0
    }

    /// Keeps heads read from RocksDB after a miss, unless an invalidation came since.
    pub fn fill(&self, key: Vec<u8>, mut heads: Heads, ticket: Ticket) {
        if !self.is_on() || self.epoch.load(Ordering::SeqCst) != ticket.0 {
            return;
        }
        heads.buf.shrink_to_fit();
        heads.ends.shrink_to_fit();
        self.cache.insert(key.clone(), Arc::new(heads));
        if self.epoch.load(Ordering::SeqCst) != ticket.0 {
            // An invalidation ran between the check and the insert, perhaps before its
            // removal could see this entry: take it out (at worst a fresh one, a miss).
            self.cache.remove(&key);
        }
    }

    /// Forgets these subjects' heads. Call after the write that changed them is in
    /// RocksDB.
    pub fn invalidate<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for k in keys {
            self.cache.remove(k);
        }
    }

    /// Forgets every subject's heads (a replay, which may touch any).
    pub fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
    }

    /// Subjects cached, and their weight in bytes.
    #[cfg(test)]
    fn usage(&self) -> (usize, u64) {
        (self.cache.len(), self.cache.weight())
    }
}

fn count(event: &str) {
    if let Some(m) = crate::metrics::metrics() {
        match event {
            "hit" => m.ledger_cache_hits.inc(),
            _ => m.ledger_cache_misses.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(records: &[&[u8]]) -> Heads {
        let mut h = Heads::default();
        for r in records {
            assert!(h.push(r));
        }
        h
    }

    fn cached(c: &HeadsCache, key: &[u8]) -> Option<Vec<Vec<u8>>> {
        match c.get(key) {
            Lookup::Hit(h) => Some(h.records().map(<[u8]>::to_vec).collect()),
            Lookup::Miss(_) => None,
        }
    }

    fn ticket(c: &HeadsCache, key: &[u8]) -> Ticket {
        match c.get(key) {
            Lookup::Miss(t) => t,
            Lookup::Hit(_) => panic!("expected a miss"),
        }
    }

    #[test]
    fn heads_come_back_record_by_record_in_order() {
        let h = heads(&[b"one", b"", b"three"]);
        let got: Vec<&[u8]> = h.records().collect();
        assert_eq!(got, vec![&b"one"[..], b"", b"three"]);
        assert_eq!(h.records().count(), 3);
        assert_eq!(heads(&[]).records().count(), 0);
    }

    #[test]
    fn a_fill_is_served_until_its_subject_is_invalidated() {
        let c = HeadsCache::new(1 << 20);
        let t = ticket(&c, b"s1");
        c.fill(b"s1".to_vec(), heads(&[b"a", b"b"]), t);
        let t2 = ticket(&c, b"s2");
        c.fill(b"s2".to_vec(), heads(&[b"c"]), t2);
        assert_eq!(cached(&c, b"s1"), Some(vec![b"a".to_vec(), b"b".to_vec()]));
        c.invalidate([&b"s1"[..]]);
        assert_eq!(cached(&c, b"s1"), None);
        assert_eq!(cached(&c, b"s2"), Some(vec![b"c".to_vec()]));
        c.invalidate_all();
        assert_eq!(cached(&c, b"s2"), None);
    }

    #[test]
    fn a_fill_that_read_before_an_invalidation_is_not_kept() {
        let c = HeadsCache::new(1 << 20);
        // A reader misses and reads the old heads; a writer then writes and invalidates
        // (the subject was not cached, so the removal finds nothing); the reader fills.
        let t = ticket(&c, b"s");
        c.invalidate([&b"s"[..]]);
        c.fill(b"s".to_vec(), heads(&[b"old"]), t);
        assert_eq!(cached(&c, b"s"), None, "stale heads were kept");
        // Any invalidation counts, whichever subject: the check is global and cheap.
        let t = ticket(&c, b"s");
        c.invalidate([&b"other"[..]]);
        c.fill(b"s".to_vec(), heads(&[b"x"]), t);
        assert_eq!(cached(&c, b"s"), None);
        // With none in between, the fill is kept.
        let t = ticket(&c, b"s");
        c.fill(b"s".to_vec(), heads(&[b"new"]), t);
        assert_eq!(cached(&c, b"s"), Some(vec![b"new".to_vec()]));
    }

    #[test]
    fn the_bound_holds_and_zero_turns_the_cache_off() {
        let c = HeadsCache::new(64 * 1024);
        let record = vec![7u8; 1000];
        for i in 0..500u32 {
            let key = i.to_be_bytes().to_vec();
            let t = ticket(&c, &key);
            c.fill(key, heads(&[&record]), t);
        }
        let (n, bytes) = c.usage();
        assert!(
            bytes <= 64 * 1024,
            "{bytes} bytes cached past a 64 KiB bound"
        );
        assert!(n > 10, "only {n} subjects kept");
        // A bound set later, and small, still keeps subjects (entries fit a shard).
        c.set_max_bytes(16 * 1024);
        assert!(c.usage().1 <= 16 * 1024);
        let t = ticket(&c, b"late");
        c.fill(b"late".to_vec(), heads(&[&record]), t);
        assert!(
            cached(&c, b"late").is_some(),
            "a 16 KiB cache kept no 1 KiB subject"
        );
        c.set_max_bytes(0);
        assert_eq!(c.usage().0, 0);
        let t = ticket(&c, b"s");
        c.fill(b"s".to_vec(), heads(&[b"a"]), t);
        assert_eq!(cached(&c, b"s"), None, "a cache sized 0 kept heads");
    }
}
