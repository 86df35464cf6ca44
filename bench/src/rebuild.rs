//! Rebuild at scale (issue 11): a server's state written through its real RPCs — builds
//! (blobs, manifests, refs) and ledger attempts (RecordBatch calls of 2,000 lines, one
//! journal object each, plus single Records, one object each) — then the index rebuilt
//! from the blob store alone by `stagecache-server rebuild` on an empty data dir, timed,
//! and its summary checked against what was written. On the bench's blob store (local
//! disk, or `--blob-store azurite|s3|URL`).

use crate::process::{Bins, Result, Server};
use serde::Serialize;
use stagecache_proto::v1::{RecordRequest, StageStatus};
use stagecache_proto::{Digest, Manifest, ManifestEntry};
use std::path::Path;
use std::time::Instant;

/// Files of each build: half shared by every build, half its own.
const FILES_PER_BUILD: usize = 100;
/// Lines (asset targets) one RecordBatch covers: the RPC's item bound.
const BATCH_LINES: usize = 2_000;
/// started, failed, started, failed, succeeded: three attempts per line, as the ledger
/// phase fills it.
const STEPS: [StageStatus; 5] = [
    StageStatus::Started,
    StageStatus::Failed,
    StageStatus::Started,
    StageStatus::Failed,
    StageStatus::Succeeded,
];
const ATTEMPTS_PER_LINE: usize = 3;
/// Concurrent callers of the single Records.
const RECORD_CALLERS: usize = 16;

#[derive(Debug, Clone, Serialize)]
pub struct Rebuild {
    pub blob_store: String,
    pub builds: usize,
    pub attempts: usize,
    /// Records written through RecordBatch, and through single Records.
    pub batch_records: usize,
    pub single_records: usize,
    pub fill_s: f64,
    /// What the rebuild found.
    pub journal_entries: u64,
    pub blobs: u64,
    pub ledger_records: u64,
    pub ref_changes: u64,
    pub manifests: u64,
    /// `stagecache-server rebuild`, start to exit.
    pub rebuild_s: f64,
}

fn build_files(b: usize) -> Vec<(String, Vec<u8>)> {
    (0..FILES_PER_BUILD)
        .map(|i| {
            let (path, data) = if i % 2 == 0 {
                (format!("shared/f{i}.dll"), format!("shared file {i}"))
            } else {
                (format!("own/f{i}.dll"), format!("build {b} file {i}"))
            };
            (path, data.into_bytes())
        })
        .collect()
}

pub async fn run(
    bins: &Bins,
    work: &Path,
    builds: usize,
    attempts: usize,
    single_records: usize,
) -> Result<Rebuild> {
    let data = work.join("data-rebuild");
    let log = work.join("server-rebuild.log");
    let server = Server::start(bins, &data, &log).await?;
    let client = server.client().await?;
    let started = Instant::now();

    // Builds: blobs, a manifest, a ref each.
    let mut subjects = Vec::with_capacity(builds);
    for b in 0..builds {
        let files = build_files(b);
        let blobs: Vec<(Digest, bytes::Bytes)> = files
            .iter()
            .map(|(_, d)| (Digest::of_bytes(d), bytes::Bytes::from(d.clone())))
            .collect();
        client.batch_upload(blobs.clone()).await?;
        let entries = files
            .iter()
            .zip(&blobs)
            .map(|((path, _), (d, _))| ManifestEntry {
                path: path.clone(),
                digest: *d,
                executable: false,
            })
            .collect();
        let manifest = Manifest::from_entries(entries)?;
        let m = client.put_manifest(&manifest).await?;
        client
            .set_ref(&format!("bar/{b}"), m, None, "bench")
            .await?;
        subjects.push(m);
    }

    // Attempts through RecordBatch: lines are (build, asset) pairs; each group of 2,000
    // lines gets the five steps as five batches.
    let lines = attempts.div_ceil(ATTEMPTS_PER_LINE);
    let mut batch_records = 0;
    let mut line = 0;
    while line < lines {
        let group: Vec<(Digest, String)> = (line..(line + BATCH_LINES).min(lines))
            .map(|l| (subjects[l % builds], format!("asset-{}", l / builds)))
            .collect();
        for status in STEPS {
            let items: Vec<RecordRequest> = group
                .iter()
                .map(|(subject, target)| RecordRequest {
                    subject: Some(subject.to_proto()),
                    stage: "Publish Signed Assets".into(),
                    target: target.clone(),
                    status: status as i32,
                    ..Default::default()
                })
                .collect();
            let n = items.len();
            let r = client.record_batch(items).await?;
            if r.len() != n {
                return Err(format!("RecordBatch of {n} answered {} results", r.len()).into());
            }
            batch_records += n;
        }
        line += group.len();
    }

    // Single Records (one journal object each), from concurrent callers.
    let mut tasks = Vec::new();
    for c in 0..RECORD_CALLERS {
        let client = server.client().await?;
        let subjects = subjects.clone();
        let mine = (c..single_records).step_by(RECORD_CALLERS).count();
        tasks.push(tokio::spawn(async move {
            for i in 0..mine {
                let r = client
                    .record(RecordRequest {
                        subject: Some(subjects[i % subjects.len()].to_proto()),
                        stage: format!("Validation {c}"),
                        target: format!("check-{i}"),
                        status: StageStatus::Succeeded as i32,
                        ..Default::default()
                    })
                    .await?;
                if r.status != StageStatus::Succeeded as i32 {
                    return Err::<(), crate::process::Error>(
                        format!("record answered {r:?}").into(),
                    );
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let fill_s = started.elapsed().as_secs_f64();
    server.stop()?;

    // The server is lost: a new data dir, the same blob store.
    let rebuilt = work.join("data-rebuilt");
    if let Some(store) = &bins.store {
        store.share(&data, &rebuilt);
    }
    let mut cmd = std::process::Command::new(&bins.server);
    cmd.arg("--data-dir").arg(&rebuilt);
    if let Some(store) = &bins.store {
        store.command_on(&mut cmd, &rebuilt);
    } else {
        // The local blob store lives in the lost data dir: point at it.
        let url = format!("file://{}", data.join("blobs").display());
        cmd.args(["--blob-store", &url]);
    }
    cmd.arg("rebuild");
    let t = Instant::now();
    let out = cmd.output()?;
    let rebuild_s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "stagecache-server rebuild failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("rebuild printed no JSON summary ({e})"))?;
    let r = &summary["rebuild"];
    let count = |k: &str| r[k].as_u64().unwrap_or(0);
    let report = Rebuild {
        blob_store: bins
            .store
            .as_ref()
            .map(|s| s.describe())
            .unwrap_or_else(|| "local disk".into()),
        builds,
        attempts: lines * ATTEMPTS_PER_LINE,
        batch_records,
        single_records,
        fill_s,
        journal_entries: count("journal_entries"),
        blobs: count("blobs"),
        ledger_records: count("ledger_records"),
        ref_changes: count("ref_changes"),
        manifests: count("manifests"),
        rebuild_s,
    };
    let expected_records = (batch_records + single_records) as u64;
    if report.ledger_records != expected_records
        || report.ref_changes != builds as u64
        || report.manifests != builds as u64
    {
        return Err(format!(
            "the rebuild found {} ledger records, {} ref changes and {} manifests; {expected_records}, {builds} and {builds} were written",
            report.ledger_records, report.ref_changes, report.manifests
        )
        .into());
    }
    for dir in [&data, &rebuilt] {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(report)
}
