//! Retention: refs expire unless pinned, and a collection (mark and sweep) removes what
//! nothing live reaches.
//!
//! **Live** is: the manifests of the refs that remain after expiry; every blob and manifest
//! stamped within the grace period (uploaded, or reported present to a `FindMissing`, a
//! manifest put or a record, since the cutoff); everything a live manifest names; and the
//! outputs of the ledger lines of live subjects (a signing result's signed set), to a
//! fixed point. Everything else is collected: its ledger lines in every namespace go with
//! it, leaving a record of when, so status and plan say the results expired instead of
//! answering SKIP for bytes that are gone.
//!
//! **Sweep, safe against everything running at once.** Candidates are marked *deleting* in
//! the index first, under the blob lock and only if their stamp is still older than the
//! cutoff ([`Index::mark_deleting`]); a deleting blob counts as missing, so a manifest put,
//! ref move or record racing the collection either stamped it first (it stays) or finds
//! it missing (the client uploads it again). What a candidate that stayed reaches is
//! restored. Then the collection is journaled (manifests and ledger subjects), applied to
//! the index, and only then are the bytes deleted and the entries dropped. An upload of a
//! digest being deleted waits for that deletion ([`Busy`]); a deletion skips a digest
//! being published. A crash anywhere leaves deleting entries that the next collection
//! finishes (it is idempotent), and a journaled collection that was not applied is
//! replayed at start.
//!
//! [`Index::mark_deleting`]: super::index::Index::mark_deleting

use super::index::record_digest;
use super::Store;
use crate::error::{Result, ServerError};
use prost::Message;
use stagecache_proto::records::{
    journal_entry::Change, JournalCollected, JournalCollectedSubject, JournalManifest,
    JournalRefSet,
};
use stagecache_proto::{Digest, Manifest, Namespace, RefName};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// What retention keeps.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Anything stamped this recently stays, whatever reaches it (ms).
    pub grace_ms: i64,
    /// Ref expiry per namespace pattern (first match wins; `None`: never), in ms since
    /// the ref's last change.
    pub ref_expiry: Vec<(String, Option<i64>)>,
}

/// The grace period by default: a day.
pub const DEFAULT_GRACE_MS: i64 = 24 * 3600 * 1000;

impl Default for Retention {
    fn default() -> Self {
        Retention {
            grace_ms: DEFAULT_GRACE_MS,
            ref_expiry: Vec::new(),
        }
    }
}

impl Retention {
    /// How long refs of `ns` live after their last change; `None`: forever.
    pub fn expiry_ms(&self, ns: &str) -> Option<i64> {
        self.ref_expiry
            .iter()
            .find(|(pattern, _)| crate::auth::pattern::matches(pattern, ns))
            .and_then(|(_, e)| *e)
    }

    /// When a ref last changed at `updated_at_ms` expires, unless pinned (0: never).
    pub fn expires_at_ms(&self, ns: &str, pinned: bool, updated_at_ms: i64) -> i64 {
        match self.expiry_ms(ns) {
            Some(e) if !pinned => updated_at_ms.saturating_add(e),
            _ => 0,
        }
    }

    /// Parses `PATTERN=DURATION` (`prod=90d`, `test*=7d`, `*=never`).
    pub fn parse_expiry(text: &str) -> std::result::Result<(String, Option<i64>), String> {
        let (pattern, duration) = text.split_once('=').ok_or_else(|| {
            format!("ref expiry {text:?}: expected NAMESPACE-PATTERN=DURATION, e.g. test*=7d")
        })?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(format!(
                "ref expiry {text:?}: the namespace pattern is empty"
            ));
        }
        let duration = duration.trim();
        let ms = if duration == "never" {
            None
        } else {
            let d = crate::config::parse_duration(duration)
                .map_err(|e| format!("ref expiry {text:?}: {e}"))?;
            if d <= 0 {
                return Err(format!(
                    "ref expiry {text:?}: must be longer than 0 (or `never`)"
                ));
            }
            Some(d.saturating_mul(1000))
        };
        Ok((pattern.to_string(), ms))
    }
}

/// Blobs being published, and blobs a collection is deleting.
#[derive(Default)]
pub struct Busy {
    state: Mutex<BusyState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct BusyState {
    publishing: HashMap<Digest, usize>,
    deleting: HashSet<Digest>,
}

/// Held while blobs are published and indexed; see [`Busy::publishing`].
pub struct Publishing<'a> {
    busy: &'a Busy,
    digests: Vec<Digest>,
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        let mut s = self.busy.state.lock().unwrap_or_else(|e| e.into_inner());
        for d in &self.digests {
            if let Some(n) = s.publishing.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    s.publishing.remove(d);
                }
            }
        }
    }
}

impl Busy {
    /// Waits until no collection is deleting any of `digests`, then holds them as being
    /// published (a collection leaves them alone) until the guard drops.
    pub async fn publishing(&self, digests: impl IntoIterator<Item = Digest>) -> Publishing<'_> {
        let digests: Vec<Digest> = digests.into_iter().collect();
        loop {
            let notified = self.changed.notified();
            {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if !digests.iter().any(|d| s.deleting.contains(d)) {
                    for d in &digests {
                        *s.publishing.entry(*d).or_default() += 1;
                    }
                    return Publishing {
                        busy: self,
                        digests,
                    };
                }
            }
            notified.await;
        }
    }

    /// Claims `d` for deletion unless it is being published.
    fn start_deleting(&self, d: &Digest) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.publishing.contains_key(d) {
            return false;
        }
        s.deleting.insert(*d);
        true
    }

    /// Releases every claim (a collection ended).
    fn release_all(&self) {
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.deleting.clear();
        }
        self.changed.notify_waiters();
    }

    fn done_deleting(&self, digests: &[Digest]) {
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for d in digests {
                s.deleting.remove(d);
            }
        }
        self.changed.notify_waiters();
    }
}

/// One collection at a time, and the wake-up of the scheduled one.
#[derive(Default)]
pub struct GcState {
    running: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
    last: Mutex<Option<GcReport>>,
}

impl GcState {
    /// Asks the scheduled collection to run now (an upload was refused for room).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// The last collection's report.
    pub fn last(&self) -> Option<GcReport> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

/// Count, bytes, and oldest and newest time of one kind of thing collected.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
    pub oldest_ms: i64,
    pub newest_ms: i64,
}

impl Tally {
    fn add(&mut self, bytes: u64, at_ms: i64) {
        if self.count == 0 || at_ms < self.oldest_ms {
            self.oldest_ms = at_ms;
        }
        if self.count == 0 || at_ms > self.newest_ms {
            self.newest_ms = at_ms;
        }
        self.count += 1;
        self.bytes += bytes;
    }
}

/// What a namespace loses in a collection.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NamespaceTally {
    pub refs: Tally,
    pub subjects: Tally,
    pub ledger_records: u64,
}

/// What a collection removed (or, dry, would remove).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub started_at_ms: i64,
    pub grace_cutoff_ms: i64,
    pub blobs: Tally,
    pub manifests: Tally,
    pub namespaces: BTreeMap<String, NamespaceTally>,
    pub live_blobs: u64,
    pub live_bytes: u64,
    /// Candidates left alone because they were used while the collection ran.
    pub kept_in_use: u64,
    pub mark_seconds: f64,
    pub sweep_seconds: f64,
}

/// Releases every digest a collection claimed for deletion when it ends, however it ends
/// (an error, or its task dropped): uploads waiting for them go on. What it marked
/// deleting in the index and did not finish, the next collection finishes or restores.
struct ReleaseClaims<'a>(&'a Busy);

impl Drop for ReleaseClaims<'_> {
    fn drop(&mut self) {
        self.0.release_all();
    }
}

/// Runs one collection (or, `dry_run`, reports what it would remove), on its own task:
/// a caller that goes away does not stop it halfway. ABORTED when one is running already
/// (a dry run never waits: it changes nothing).
pub async fn collect(store: &Store, dry_run: bool) -> Result<GcReport> {
    let store = store.clone();
    tokio::spawn(async move { collect_here(&store, dry_run).await })
        .await
        .map_err(|e| ServerError::Internal(format!("garbage collection task: {e}")))?
}

/// [`collect`] on the caller's task: the server's scheduled collection, which stops where
/// it is when the server shuts down (the next collection finishes the job), rather than
/// deleting on after the server gave up its blob store.
pub async fn collect_here(store: &Store, dry_run: bool) -> Result<GcReport> {
    let _one = if dry_run {
        None
    } else {
        Some(store.gc.running.try_lock().map_err(|_| {
            ServerError::Aborted(
                "a garbage collection is running already; try again when it ends".into(),
            )
        })?)
    };
    if !dry_run {
        store.check_writable()?;
    }
    let _release = ReleaseClaims(&store.busy);
    let started = std::time::Instant::now();
    let now = store.now_ms();
    let retention = store.retention().clone();
    let cutoff = now - retention.grace_ms;
    let mut report = GcReport {
        dry_run,
        started_at_ms: now,
        grace_cutoff_ms: cutoff,
        ..Default::default()
    };

    // 1. Refs past their namespace's expiry go first: what they named is then unreachable.
    let refs = store.with_index(|i| i.all_ref_records()).await?;
    let mut roots = Vec::new();
    for (ns, name, r) in refs {
        let expires = retention.expires_at_ms(&ns, r.pinned, r.updated_at_ms);
        let target = record_digest(&r.target_hash, r.target_size)?;
        if expires == 0 || expires > now {
            roots.push(target);
            continue;
        }
        let tally = &mut report.namespaces.entry(ns.clone()).or_default().refs;
        if dry_run {
            tally.add(0, r.updated_at_ms);
            continue;
        }
        let n = Namespace::parse("namespace", &ns)?;
        let rn = RefName::parse("name", &name)?;
        let reason = format!(
            "expired: not changed for {} and not pinned",
            human_duration(retention.expiry_ms(&ns).unwrap_or(0))
        );
        let (n2, rn2, version) = (n.clone(), rn.clone(), r.version);
        let change = store
            .with_index(move |i| i.expiry_change(&n2, &rn2, version, &reason, now))
            .await?;
        if let Some(change) = change {
            // Journaled first: a rebuild never finds a ref whose expiry the index applied
            // and the journal lacks (it would point at what this collection removes).
            store
                .journal(Change::RefSet(JournalRefSet {
                    namespace: ns.clone(),
                    name: name.clone(),
                    record: None,
                    change: Some(change.clone()),
                }))
                .await?;
            tracing::info!(namespace = %ns, r#ref = %name, "ref expiry journaled");
            pause().await;
            let (n2, rn2) = (n.clone(), rn.clone());
            store
                .with_index(move |i| i.apply_ref(&n2, &rn2, None, &change))
                .await?;
        }
        // Moved or pinned since it was read (the expiry did not apply): it stays, and so
        // does what it names now.
        match store.with_index(move |i| i.get_ref(&n, &rn)).await? {
            Some(cur) => roots.push(record_digest(&cur.target_hash, cur.target_size)?),
            None => {
                tally.add(0, r.updated_at_ms);
                tracing::info!(namespace = %ns, r#ref = %name, "ref expired");
            }
        }
    }

    if !dry_run {
        tracing::info!(
            refs_expired = report
                .namespaces
                .values()
                .map(|n| n.refs.count)
                .sum::<u64>(),
            "collection: marking"
        );
        pause().await;
    }

    // 2. Mark.
    let entries = store
        .with_index(move |i| i.all_blob_entries(now, !dry_run))
        .await?;
    let manifests: HashSet<Digest> = store
        .with_index(|i| i.manifest_digests())
        .await?
        .into_iter()
        .collect();
    let heads = store.with_index(|i| i.all_ledger_heads()).await?;
    // Subject -> the outputs its lines name, and the (namespace, subject) lines.
    let mut outputs: HashMap<Digest, Vec<Digest>> = HashMap::new();
    let mut lines: HashMap<Digest, HashSet<String>> = HashMap::new();
    for (ns, h) in &heads {
        let subject = record_digest(&h.subject_hash, h.subject_size)?;
        lines.entry(subject).or_default().insert(ns.clone());
        if !h.outputs_hash.is_empty() {
            outputs
                .entry(subject)
                .or_default()
                .push(record_digest(&h.outputs_hash, h.outputs_size)?);
        }
    }
    let fresh = entries
        .iter()
        .filter(|(_, e)| !e.deleting && e.stamp_ms.is_some_and(|t| t >= cutoff))
        .map(|(d, _)| *d);
    let mut live = HashSet::new();
    let seeds: Vec<Digest> = roots.into_iter().chain(fresh).collect();
    reach(store, seeds, &mut live, &manifests, &outputs).await?;
    // Entries a collection that did not finish left deleting, and that are live now (a
    // ref moved to them since): present again.
    if !dry_run {
        let revive: Vec<Digest> = entries
            .iter()
            .filter(|(d, e)| e.deleting && live.contains(d))
            .map(|(d, _)| *d)
            .collect();
        if !revive.is_empty() {
            tracing::warn!(
                blobs = revive.len(),
                "live blobs left deleting by an unfinished collection: restored"
            );
            store
                .with_index(move |i| i.unmark_deleting(&revive, now))
                .await?;
        }
    }
    let candidates: Vec<(Digest, i64)> = entries
        .iter()
        .filter(|(d, _)| !live.contains(d))
        .map(|(d, e)| (*d, e.stamp_ms.unwrap_or(now)))
        .collect();
    report.mark_seconds = started.elapsed().as_secs_f64();
    let sweep_started = std::time::Instant::now();

    // 3. Sweep: mark deleting, restore what a candidate in use reaches.
    let stamp_of: HashMap<Digest, i64> = candidates.iter().copied().collect();
    let mut marked: HashSet<Digest> = HashSet::new();
    if dry_run {
        marked = candidates.iter().map(|(d, _)| *d).collect();
    } else {
        for chunk in candidates.chunks(10_000) {
            let chunk: Vec<Digest> = chunk.iter().map(|(d, _)| *d).collect();
            let busy = store.busy.clone();
            let got = store
                .with_index(move |i| i.mark_deleting(&chunk, cutoff, &|d| !busy.start_deleting(d)))
                .await?;
            marked.extend(got);
        }
        tracing::info!(marked = marked.len(), "collection: candidates marked");
        pause().await;
        // `start_deleting` claimed some that `mark_deleting` then left (stamped since):
        // release those.
        let unclaimed: Vec<Digest> = candidates
            .iter()
            .map(|(d, _)| *d)
            .filter(|d| !marked.contains(d))
            .collect();
        store.busy.done_deleting(&unclaimed);
        let in_use: Vec<Digest> = unclaimed;
        report.kept_in_use = in_use.len() as u64;
        if !in_use.is_empty() {
            let mut keep = HashSet::new();
            reach(store, in_use, &mut keep, &manifests, &outputs).await?;
            let restore: Vec<Digest> = marked
                .iter()
                .filter(|d| keep.contains(d))
                .copied()
                .collect();
            if !restore.is_empty() {
                let r = restore.clone();
                store
                    .with_index(move |i| i.unmark_deleting(&r, now))
                    .await?;
                for d in &restore {
                    marked.remove(d);
                }
                store.busy.done_deleting(&restore);
                report.kept_in_use += restore.len() as u64;
            }
        }
    }

    if !dry_run {
        tracing::info!(
            marked = marked.len(),
            kept_in_use = report.kept_in_use,
            "collection: blobs marked deleting"
        );
        pause().await;
    }

    // 4. The collection, journaled before the index forgets anything.
    let mut collected_manifests = Vec::new();
    let mut collected_subjects = Vec::new();
    for d in &marked {
        let at = stamp_of.get(d).copied().unwrap_or(now);
        if manifests.contains(d) {
            report.manifests.add(d.size(), at);
            collected_manifests.push(*d);
        } else {
            report.blobs.add(d.size(), at);
        }
        for ns in lines.get(d).into_iter().flatten() {
            let n = Namespace::parse("namespace", ns)?;
            let d2 = *d;
            let (records, last) = store
                .with_index(move |i| i.subject_records(&n, &d2))
                .await?;
            let t = report.namespaces.entry(ns.clone()).or_default();
            t.subjects.add(0, last);
            t.ledger_records += records;
            collected_subjects.push(JournalCollectedSubject {
                namespace: ns.clone(),
                subject_hash: d.hash().to_vec(),
                subject_size: d.size(),
                records,
                last_record_at_ms: last,
            });
        }
    }
    let (live_blobs, live_bytes) = entries
        .iter()
        .filter(|(d, _)| !marked.contains(d))
        .fold((0u64, 0u64), |(n, b), (d, _)| (n + 1, b + d.size()));
    report.live_blobs = live_blobs;
    report.live_bytes = live_bytes;
    if dry_run {
        report.sweep_seconds = sweep_started.elapsed().as_secs_f64();
        return Ok(report);
    }
    let collected = JournalCollected {
        collected_at_ms: now,
        manifests: collected_manifests
            .iter()
            .map(|d| JournalManifest {
                hash: d.hash().to_vec(),
                size: d.size(),
            })
            .collect(),
        subjects: collected_subjects,
    };
    if !collected.manifests.is_empty() || !collected.subjects.is_empty() {
        // Recorded before it is journaled and cleared once applied: a server that dies in
        // between journals (again: replay is idempotent) and applies it when it starts.
        let encoded = collected.encode_to_vec();
        store
            .with_index(move |i| i.set_pending_collection(Some(&encoded)))
            .await?;
        store.journal(Change::Collected(collected.clone())).await?;
        tracing::info!(
            manifests = collected.manifests.len(),
            subjects = collected.subjects.len(),
            "garbage collection journaled"
        );
        pause().await;
        let index = store.index.clone();
        tokio::task::spawn_blocking(move || {
            apply_collected(&index, &collected)?;
            index.set_pending_collection(None)
        })
        .await??;
    }

    // 5. The bytes, then the entries, a chunk at a time (an upload of one of them waits
    // for its chunk only).
    tracing::info!(blobs = marked.len(), "collection: deleting bytes");
    let marked: Vec<Digest> = marked.into_iter().collect();
    {
        use futures::stream::{self, StreamExt, TryStreamExt};
        // Two chunks in flight: one deletes while the other's entries are dropped.
        stream::iter(marked.chunks(1_000).map(<[Digest]>::to_vec))
            .map(|chunk: Vec<Digest>| async move {
                store.blobs.delete_blobs(&chunk).await?;
                tracing::info!(blobs = chunk.len(), "collection: bytes deleted");
                pause().await;
                let c = chunk.clone();
                let dropped = store.with_index(move |i| i.drop_deleted(&c)).await?;
                if let Some(s) = store.space.get() {
                    s.removed(dropped);
                }
                store.busy.done_deleting(&chunk);
                Ok::<(), ServerError>(())
            })
            .buffer_unordered(2)
            .try_collect::<Vec<()>>()
            .await?;
    }
    report.sweep_seconds = sweep_started.elapsed().as_secs_f64();
    if let Some(m) = crate::metrics::metrics() {
        m.gc_runs.inc();
        m.gc_blobs
            .inc_by(report.blobs.count + report.manifests.count);
        m.gc_bytes
            .inc_by(report.blobs.bytes + report.manifests.bytes);
    }
    tracing::info!(
        blobs = report.blobs.count + report.manifests.count,
        bytes = report.blobs.bytes + report.manifests.bytes,
        manifests = report.manifests.count,
        refs_expired = report
            .namespaces
            .values()
            .map(|n| n.refs.count)
            .sum::<u64>(),
        subjects = report
            .namespaces
            .values()
            .map(|n| n.subjects.count)
            .sum::<u64>(),
        ledger_records = report
            .namespaces
            .values()
            .map(|n| n.ledger_records)
            .sum::<u64>(),
        live_blobs = report.live_blobs,
        live_bytes = report.live_bytes,
        kept_in_use = report.kept_in_use,
        mark_s = report.mark_seconds,
        sweep_s = report.sweep_seconds,
        "garbage collection done"
    );
    if let Ok(mut l) = store.gc.last.lock() {
        *l = Some(report.clone());
    }
    Ok(report)
}

/// `90d`, `12h`, `30m`, `45s`: the largest unit that divides `ms` (whole seconds).
fn human_duration(ms: i64) -> String {
    let s = ms / 1000;
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= secs && s % secs == 0 {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

/// Waits `STAGECACHE_TEST_GC_PAUSE_MS` after each step a collection logs, when set: lets
/// tests kill a server at a known point inside a collection.
async fn pause() {
    static PAUSE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let ms = PAUSE.get_or_init(|| {
        std::env::var("STAGECACHE_TEST_GC_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(ms) = ms {
        tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
    }
}

/// Finishes a collection that was journaled (or about to be) when its server died: journals
/// it (again) and applies it. Called at start, once the journal is open.
pub async fn finish_pending(store: &Store) -> Result<()> {
    let Some(bytes) = store.with_index(|i| i.pending_collection()).await? else {
        return Ok(());
    };
    let c = JournalCollected::decode(bytes.as_slice())
        .map_err(|e| ServerError::DataLoss(format!("pending collection record: {e}")))?;
    tracing::info!(
        manifests = c.manifests.len(),
        subjects = c.subjects.len(),
        "finishing the collection a stopped server left journaled but not applied"
    );
    store.journal(Change::Collected(c.clone())).await?;
    let index = store.index.clone();
    tokio::task::spawn_blocking(move || {
        apply_collected(&index, &c)?;
        index.set_pending_collection(None)
    })
    .await?
}

/// Applies a journaled collection to the index (a collection, or a replay). Idempotent.
pub fn apply_collected(index: &super::index::Index, c: &JournalCollected) -> Result<()> {
    let manifests = c
        .manifests
        .iter()
        .map(|m| record_digest(&m.hash, m.size))
        .collect::<Result<Vec<_>>>()?;
    index.remove_manifests(&manifests)?;
    for s in &c.subjects {
        let ns = Namespace::parse("namespace", &s.namespace)?;
        let subject = record_digest(&s.subject_hash, s.subject_size)?;
        index.collect_subject(&ns, &subject, c.collected_at_ms)?;
    }
    Ok(())
}

/// Adds to `live` everything reachable from `seeds`: a manifest's entries, the outputs of
/// a subject's ledger lines, to a fixed point.
async fn reach(
    store: &Store,
    seeds: Vec<Digest>,
    live: &mut HashSet<Digest>,
    manifests: &HashSet<Digest>,
    outputs: &HashMap<Digest, Vec<Digest>>,
) -> Result<()> {
    let mut todo = seeds;
    while let Some(d) = todo.pop() {
        if !live.insert(d) {
            continue;
        }
        if let Some(outs) = outputs.get(&d) {
            todo.extend(outs.iter().copied());
        }
        if manifests.contains(&d) {
            let m: Option<Manifest> = store.get_manifest(d).await?;
            if let Some(m) = m {
                todo.extend(m.entries().iter().map(|e| e.digest));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_expiry_first_matching_pattern_wins() {
        let r = Retention {
            grace_ms: DEFAULT_GRACE_MS,
            ref_expiry: ["test*=7d", "prod=never", "*=90d"]
                .iter()
                .map(|e| Retention::parse_expiry(e).unwrap())
                .collect(),
        };
        assert_eq!(r.expiry_ms("test-pr"), Some(7 * 86_400_000));
        assert_eq!(r.expiry_ms("prod"), None);
        assert_eq!(r.expiry_ms("staging"), Some(90 * 86_400_000));
        assert_eq!(
            r.expires_at_ms("test", false, 1_000),
            1_000 + 7 * 86_400_000
        );
        assert_eq!(r.expires_at_ms("test", true, 1_000), 0, "pinned");
        assert_eq!(r.expires_at_ms("prod", false, 1_000), 0, "never");
        assert_eq!(Retention::default().expiry_ms("anything"), None);
        for bad in ["prod", "=1d", "prod=0", "prod=soon"] {
            let e = Retention::parse_expiry(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn an_upload_waits_for_the_deletion_of_its_digest_and_a_deletion_skips_a_publish() {
        let busy = std::sync::Arc::new(Busy::default());
        let (a, b) = (Digest::of_bytes(b"a"), Digest::of_bytes(b"b"));
        // Publishing `a`: a collection may not claim it.
        let guard = busy.publishing([a]).await;
        assert!(!busy.start_deleting(&a));
        drop(guard);
        assert!(busy.start_deleting(&a));
        // Deleting `a`: a publish of it waits until the deletion is done; `b` does not.
        drop(busy.publishing([b]).await);
        let waiter = {
            let busy = busy.clone();
            tokio::spawn(async move {
                let _g = busy.publishing([a, b]).await;
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "published while its digest was being deleted"
        );
        busy.done_deleting(&[a]);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the publish went on once the deletion was done")
            .unwrap();
    }
}
