//! Ledger figures: a data dir pre-filled with attempt records (through the same rules as
//! `Ledger.Record`), then `Ledger.Status` and `Ledger.Plan` over gRPC with 1, 16 and 64
//! concurrent callers, each on its own connection, for a fixed time window.

use crate::process::{Result, Server};
use serde::Serialize;
use stagecache_client::stages::StageFile;
use stagecache_client::Client;
use stagecache_proto::v1::{PlanRequest, StageGraph, StageStatus, StatusRequest};
use stagecache_proto::{Digest, Namespace};
use stagecache_server::ledger::{self, RecordInput};
use stagecache_server::store::ledger::StageKey;
use stagecache_server::store::Store;
use std::path::Path;
use std::time::{Duration, Instant};

/// The Validate-Publish graph, as shipped in `deploy/pipelines/`.
const GRAPH: &str = include_str!("../../deploy/pipelines/validate-publish.stages.yaml");
const LINES_PER_SUBJECT: usize = 20;
/// started, failed, started, failed, succeeded: three attempts, the last a success.
const RECORDS_PER_LINE: usize = 5;
pub const ATTEMPTS_PER_LINE: usize = 3;
/// Lines and records a subject holds once filled.
pub const RECORDS_PER_SUBJECT: usize = LINES_PER_SUBJECT * RECORDS_PER_LINE;
pub const ATTEMPTS_PER_SUBJECT: usize = LINES_PER_SUBJECT * ATTEMPTS_PER_LINE;

pub fn graph() -> StageGraph {
    StageFile::parse(GRAPH)
        .expect("the shipped graph parses")
        .to_proto()
}

fn subject(i: usize) -> Digest {
    Digest::of_bytes(format!("subject {i}").as_bytes())
}

/// Fills `data_dir` with about `attempts` attempts: subjects x 20 lines (every stage of
/// the graph, plus per-account publishing lines) x 3 attempts (5 records). Returns the
/// subject count.
pub fn fill(data_dir: &Path, attempts: usize) -> Result<usize> {
    let graph = graph();
    let mut lines: Vec<(String, String)> = graph
        .stages
        .iter()
        .map(|s| (s.name.clone(), String::new()))
        .collect();
    let mut account = 0;
    while lines.len() < LINES_PER_SUBJECT {
        account += 1;
        lines.push(("Publish Signed Assets".into(), format!("account-{account}")));
    }
    let subjects = (attempts / ATTEMPTS_PER_SUBJECT).max(1);
    let store = Store::open(data_dir, None)?;
    let ns = Namespace::parse("namespace", crate::NAMESPACE)?;
    for s in 0..subjects {
        let subj = subject(s);
        store.index().ledger_txn(|txn| {
            for (stage, target) in &lines {
                for r in 0..RECORDS_PER_LINE {
                    let status = if r + 1 == RECORDS_PER_LINE {
                        StageStatus::Succeeded
                    } else if r % 2 == 0 {
                        StageStatus::Started
                    } else {
                        StageStatus::Failed
                    };
                    let input = RecordInput {
                        key: StageKey {
                            namespace: ns.clone(),
                            subject: subj,
                            stage: stage.clone(),
                            target: target.clone(),
                        },
                        fingerprint: String::new(),
                        status,
                        bar_build_id: "12345".into(),
                        build_id: format!("{r}"),
                        attempt: 0,
                        run_url: String::new(),
                        actor: "bench".into(),
                        outputs: None,
                        claim_token: String::new(),
                    };
                    ledger::record(txn, &input, 1_700_000_000_000 + r as i64)?;
                }
            }
            Ok(())
        })?;
    }
    store.index().flush()?;
    Ok(subjects)
}

/// Which call is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Call {
    Status,
    Plan,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Status => "status",
            Call::Plan => "plan",
        }
    }

    async fn once(self, client: &Client, subject: Digest, graph: &StageGraph) -> Result<()> {
        match self {
            Call::Status => {
                let r = client
                    .stage_status(StatusRequest {
                        subject: Some(subject.to_proto()),
                        ..Default::default()
                    })
                    .await?;
                if r.len() != LINES_PER_SUBJECT {
                    return Err(format!(
                        "status returned {} lines, expected {LINES_PER_SUBJECT}",
                        r.len()
                    )
                    .into());
                }
            }
            Call::Plan => {
                let r = client
                    .plan(PlanRequest {
                        subject: Some(subject.to_proto()),
                        graph: Some(graph.clone()),
                        ..Default::default()
                    })
                    .await?;
                if r.stages.len() != graph.stages.len() {
                    return Err("plan returned the wrong number of stages".into());
                }
            }
        }
        Ok(())
    }
}

/// Latency and throughput of one call with a number of concurrent callers.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFigure {
    pub call: Call,
    pub callers: usize,
    pub calls: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub calls_per_s: f64,
    /// Server CPU (user + system) per call in the measuring window, microseconds: what a
    /// call costs the server alone, whatever the load generator beside it costs.
    pub server_cpu_us_per_call: f64,
    /// Cores the server kept busy during the window.
    pub server_cores: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

/// Runs `callers` concurrent callers, each on its own connection, asking about random
/// subjects: a warm-up of a fifth of `window`, then `window` measured.
pub async fn load(
    server: &Server,
    call: Call,
    callers: usize,
    subjects: usize,
    window: Duration,
) -> Result<LoadFigure> {
    let graph = graph();
    let mut clients = Vec::with_capacity(callers);
    for _ in 0..callers {
        clients.push(server.client().await?);
    }
    let warm_until = Instant::now() + window / 5;
    let end = warm_until + window;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            let graph = graph.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0usize;
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    let subj = subject((c * 104_729 + i * 7_919) % subjects);
                    i += 1;
                    call.once(&client, subj, &graph).await?;
                    if now >= warm_until {
                        lat.push(now.elapsed());
                    }
                }
                Ok::<_, crate::process::Error>(lat)
            })
        })
        .collect();
    tokio::time::sleep_until(warm_until.into()).await;
    let cpu_start = server.cpu_seconds()?;
    tokio::time::sleep_until(end.into()).await;
    let server_cpu = server.cpu_seconds()? - cpu_start;
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    if all.is_empty() {
        return Err("no call completed inside the measuring window".into());
    }
    all.sort();
    Ok(LoadFigure {
        call,
        callers,
        calls: all.len(),
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        calls_per_s: all.len() as f64 / window.as_secs_f64(),
        server_cpu_us_per_call: server_cpu / all.len() as f64 * 1e6,
        server_cores: server_cpu / window.as_secs_f64(),
    })
}
