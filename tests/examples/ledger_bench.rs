//! Ledger latency on a large ledger: fills a fresh data dir with 1,000,000 attempt records
//! (through the same rules as the Record call), starts a real server on it and measures
//! Status and Plan over gRPC on loopback: p50/p99 latency with one caller and throughput
//! with 1, 16 and 64 concurrent callers.
//!
//! `cargo run --release -p stagecache-tests --example ledger_bench [-- RECORDS]`

use stagecache_client::stages::StageFile;
use stagecache_client::Client;
use stagecache_proto::v1::{PlanRequest, StageGraph, StageStatus, StatusRequest};
use stagecache_proto::{Digest, Namespace};
use stagecache_server::ledger::{self, RecordInput};
use stagecache_server::store::ledger::StageKey;
use stagecache_server::store::Store;
use stagecache_tests::TestServer;
use std::time::{Duration, Instant};

const STAGES_PER_SUBJECT: usize = 20;
const RECORDS_PER_LINE: usize = 5;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn subject(i: usize) -> Digest {
    Digest::of_bytes(format!("subject {i}").as_bytes())
}

/// One measured call: Plan when given the graph, Status otherwise.
async fn ask(client: &Client, subject: Digest, graph: Option<&StageGraph>) {
    match graph {
        Some(g) => {
            client
                .plan(PlanRequest {
                    subject: Some(subject.to_proto()),
                    graph: Some(g.clone()),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        None => {
            client
                .stage_status(StatusRequest {
                    subject: Some(subject.to_proto()),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
}

#[tokio::main]
async fn main() {
    let records: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let subjects = records / (STAGES_PER_SUBJECT * RECORDS_PER_LINE);
    let dir = tempfile::tempdir().unwrap();
    let graph = StageFile::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/pipelines/validate-publish.stages.yaml"),
    )
    .unwrap();
    // Every stage of the graph, plus per-target publishing lines, 20 lines a subject.
    let mut lines: Vec<(String, String)> = graph
        .stages
        .iter()
        .map(|s| (s.name.clone(), String::new()))
        .collect();
    let mut account = 0;
    while lines.len() < STAGES_PER_SUBJECT {
        account += 1;
        lines.push(("Publish Signed Assets".into(), format!("account-{account}")));
    }

    // Fill: each (subject, stage) line gets attempts started, failed, started, failed,
    // started+succeeded... in one transaction per subject.
    let t = Instant::now();
    {
        let store = Store::open(dir.path(), None).unwrap();
        let ns = Namespace::parse("namespace", "prod").unwrap();
        for s in 0..subjects {
            let subj = subject(s);
            store
                .index()
                .ledger_txn(|txn| {
                    for (stage, target) in &lines {
                        for r in 0..RECORDS_PER_LINE {
                            // started, failed, started, failed, succeeded: five records,
                            // three attempts, the last one a success.
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
                })
                .unwrap();
        }
        store.index().flush().unwrap();
    }
    let fill = t.elapsed();
    println!(
        "filled {} records ({subjects} subjects x {STAGES_PER_SUBJECT} lines x {RECORDS_PER_LINE}) in {:.1} s",
        subjects * STAGES_PER_SUBJECT * RECORDS_PER_LINE,
        fill.as_secs_f64()
    );

    let server = TestServer::start_on(dir.path().to_path_buf()).await;
    let client = server.client("prod").await;
    let graph_proto = graph.to_proto();

    // Latency, one caller.
    let calls = 5_000;
    for (name, is_plan) in [("status", false), ("plan", true)] {
        let mut lat = Vec::with_capacity(calls);
        for i in 0..calls + 200 {
            let subj = subject((i * 7919) % subjects);
            let start = Instant::now();
            ask(&client, subj, is_plan.then_some(&graph_proto)).await;
            if i >= 200 {
                lat.push(start.elapsed());
            }
        }
        lat.sort();
        println!(
            "{name:6} 1 caller: p50 {:.3} ms  p99 {:.3} ms  ({calls} calls after 200 warm-up)",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
    }

    // Throughput with concurrent callers, each on its own connection.
    for callers in [1usize, 16, 64] {
        for (name, is_plan) in [("status", false), ("plan", true)] {
            let per_caller = 2_000 / callers.min(8);
            let mut tasks = Vec::new();
            let start = Instant::now();
            for c in 0..callers {
                let client = server.client("prod").await;
                let g = graph_proto.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..per_caller {
                        let subj = subject((c * 104_729 + i * 7919) % subjects);
                        ask(&client, subj, is_plan.then_some(&g)).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let total = (callers * per_caller) as f64;
            println!(
                "{name:6} {callers:2} callers: {:.0} calls/s",
                total / start.elapsed().as_secs_f64()
            );
        }
    }
    server.stop().await;
}
