//! Garbage collection at scale (issue 12): a store of `--gc-blobs` blobs (real files in the
//! local blob store) in `--gc-builds` builds, half of whose refs are past their
//! namespace's expiry, collected once by the real server; its mark and sweep time, and
//! the latency of fetches and Status calls while it runs against the same calls idle, in
//! the same run.

use crate::process::{Bins, Result, Server};
use serde::Serialize;
use stagecache_proto::v1::{StageStatus, StatusRequest};
use stagecache_proto::{Digest, Manifest, ManifestEntry, Namespace, RefName};
use stagecache_server::ledger::{self, RecordInput};
use stagecache_server::store::index::{RefExpectation, RefWrite};
use stagecache_server::store::ledger::StageKey;
use stagecache_server::store::Store;
use std::path::Path;
use std::time::{Duration, Instant};

const DAY_MS: i64 = 86_400_000;
/// Stages recorded on every build (one record each).
const STAGES: usize = 18;

/// p50 and p99 of one kind of call, ms, and how many were made.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub calls: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Latency {
            calls: ms.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Gc {
    pub blobs: usize,
    pub builds: usize,
    pub fill_s: f64,
    /// What the collection removed.
    pub collected_blobs: u64,
    pub collected_bytes: u64,
    pub collected_manifests: u64,
    pub expired_refs: u64,
    pub ledger_records: u64,
    pub mark_s: f64,
    pub sweep_s: f64,
    /// The whole call, as the client saw it.
    pub total_s: f64,
    pub fetch_idle: Latency,
    pub fetch_during: Latency,
    pub status_idle: Latency,
    pub status_during: Latency,
}

/// Writes `blobs` blobs in `builds` builds straight into a data dir (index entries, and
/// the bytes as files in the local blob store), each build a manifest with a ref and
/// [`STAGES`] ledger records; the refs of the first half changed 30 days ago, the rest
/// now. Every blob was stored 30 days ago: only refs keep them.
pub fn fill(data_dir: &Path, blobs: usize, builds: usize) -> Result<()> {
    let store = Store::open(data_dir, None)?;
    let index = store.index();
    let root = store
        .blobs()
        .backend()
        .local_root()
        .ok_or("the bench's blob store is local")?
        .to_path_buf();
    let now = stagecache_server::clock::Clock::now_ms(&stagecache_server::clock::SystemClock);
    let old = now - 30 * DAY_MS;
    let ns = Namespace::parse("namespace", crate::NAMESPACE)?;
    let per_build = (blobs / builds.max(1)).max(1);
    for b in 0..builds {
        let mut entries = Vec::with_capacity(per_build);
        let mut digests = Vec::with_capacity(per_build);
        for i in 0..per_build {
            let data = format!("gc bench build {b} file {i}");
            let d = Digest::of_bytes(data.as_bytes());
            let hex = d.hash_hex();
            let dir = root.join("cas").join(&hex[..2]);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(&hex), data.as_bytes())?;
            digests.push(d);
            entries.push(ManifestEntry {
                path: format!("d{}/f{i}.bin", i % 64),
                digest: d,
                executable: false,
            });
        }
        let manifest = Manifest::from_entries(entries)?;
        let canonical = manifest.canonical_bytes();
        let md = Digest::of_bytes(&canonical);
        let hex = md.hash_hex();
        let dir = root.join("cas").join(&hex[..2]);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&hex), &canonical)?;
        digests.push(md);
        for chunk in digests.chunks(10_000) {
            index.add_blobs(chunk, old)?;
        }
        index.put_manifest(&md, &canonical)?;
        let name = RefName::parse("name", &format!("build/{b}"))?;
        index.set_ref(
            &ns,
            &name,
            &RefWrite {
                target: md,
                expect: RefExpectation::Any,
                actor: "bench",
                identity: "anonymous",
                reason: "",
                now_ms: if b < builds / 2 { old } else { now },
            },
        )?;
        index.ledger_txn(|txn| {
            for s in 0..STAGES {
                let input = RecordInput {
                    key: StageKey {
                        namespace: ns.clone(),
                        subject: md,
                        stage: format!("Stage {s}"),
                        target: String::new(),
                    },
                    fingerprint: String::new(),
                    status: StageStatus::Succeeded,
                    bar_build_id: format!("{b}"),
                    build_id: format!("{b}"),
                    attempt: 0,
                    run_url: String::new(),
                    actor: "bench".into(),
                    identity: "anonymous".into(),
                    outputs: None,
                    claim_token: String::new(),
                };
                ledger::record(txn, &input, old)?;
            }
            Ok(())
        })?;
    }
    index.flush()?;
    Ok(())
}

/// Calls `call` back to back (once at least) until `until` says stop; the latency of
/// each, ms.
async fn loop_calls<F, Fut>(mut call: F, until: impl Fn() -> bool) -> Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut out = Vec::new();
    loop {
        let t = Instant::now();
        call().await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        if until() {
            return Ok(out);
        }
    }
}

/// Fills a data dir, starts the server on it, registers a small live tree and measures.
pub async fn run(
    bins: &Bins,
    work: &Path,
    blobs: usize,
    builds: usize,
    idle: Duration,
) -> Result<Gc> {
    let data = work.join("data-gc");
    let started = Instant::now();
    fill(&data, blobs, builds)?;
    // The fill's gigabytes of small files written back before anything is measured: a
    // collection deleting them while the kernel still flushes them measures the flush.
    crate::process::sync_disks();
    let fill_s = started.elapsed().as_secs_f64();
    let expiry = format!("{}=7d", crate::NAMESPACE);
    let server = Server::start_with(
        bins,
        &data,
        &work.join("server-gc.log"),
        &["--ref-expiry", &expiry],
        None,
    )
    .await?;
    let client = server.client().await?;
    // A live build of 200 files of 4 KiB, fetched whole (into an empty dir) by the loop.
    let tree = work.join("gc-live");
    for i in 0..200u64 {
        let dir = tree.join(format!("d{}", i % 8));
        std::fs::create_dir_all(&dir)?;
        let data: Vec<u8> = (0..4096u64)
            .map(|j| ((i * 31 + j * 7) % 251) as u8)
            .collect();
        std::fs::write(dir.join(format!("f{i}.bin")), data)?;
    }
    let live = client
        .register(&tree, "live/1", &Default::default())
        .await?
        .manifest;
    client
        .record(stagecache_proto::v1::RecordRequest {
            subject: Some(live.to_proto()),
            stage: "Validate".into(),
            status: StageStatus::Succeeded as i32,
            ..Default::default()
        })
        .await?;
    let fetch_dir = work.join("gc-fetch");
    let fetch = || {
        let client = client.clone();
        let fetch_dir = fetch_dir.clone();
        async move {
            let _ = std::fs::remove_dir_all(&fetch_dir);
            client.fetch(live, &fetch_dir, &Default::default()).await?;
            Ok(())
        }
    };
    let status = || {
        let client = client.clone();
        async move {
            let r = client
                .stage_status(StatusRequest {
                    subject: Some(live.to_proto()),
                    ..Default::default()
                })
                .await?;
            if r.len() != 1 {
                return Err(
                    format!("status of the live build: {} lines, expected 1", r.len()).into(),
                );
            }
            Ok(())
        }
    };

    eprintln!("gc: idle latencies ...");
    let end = Instant::now() + idle;
    let (fetch_idle, status_idle) = tokio::join!(
        loop_calls(fetch, || Instant::now() >= end),
        loop_calls(status, || Instant::now() >= end)
    );
    eprintln!("gc: collecting {blobs} blobs in {builds} builds, calls running alongside ...");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc_client = client.clone();
    let flag = done.clone();
    let t = Instant::now();
    let collection = tokio::spawn(async move {
        let r = gc_client.collect_garbage(false).await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    });
    let finished = || done.load(std::sync::atomic::Ordering::SeqCst);
    let (fetch_during, status_during) =
        tokio::join!(loop_calls(fetch, finished), loop_calls(status, finished));
    let report = collection
        .await
        .map_err(|e| format!("collection task: {e}"))??;
    let total_s = t.elapsed().as_secs_f64();
    // The live build is intact.
    client.fetch(live, &fetch_dir, &Default::default()).await?;
    server.stop()?;
    let _ = std::fs::remove_dir_all(&fetch_dir);
    let tally = |t: &Option<stagecache_proto::v1::Collected>| t.unwrap_or_default();
    let g = Gc {
        blobs,
        builds,
        fill_s,
        collected_blobs: tally(&report.blobs).count,
        collected_bytes: tally(&report.blobs).bytes,
        collected_manifests: tally(&report.manifests).count,
        expired_refs: report.namespaces.iter().map(|n| tally(&n.refs).count).sum(),
        ledger_records: report.namespaces.iter().map(|n| n.ledger_records).sum(),
        mark_s: report.mark_seconds,
        sweep_s: report.sweep_seconds,
        total_s,
        fetch_idle: Latency::of(fetch_idle?),
        fetch_during: Latency::of(fetch_during?),
        status_idle: Latency::of(status_idle?),
        status_during: Latency::of(status_during?),
    };
    let expected = (builds / 2 * (blobs / builds.max(1)).max(1)) as u64;
    if g.collected_blobs != expected || g.collected_manifests != (builds / 2) as u64 {
        return Err(format!(
            "the collection removed {} blobs and {} manifests; the fill left {expected} and {} to collect",
            g.collected_blobs,
            g.collected_manifests,
            builds / 2
        )
        .into());
    }
    Ok(g)
}
