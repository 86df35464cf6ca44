//! Ledger figures: a data dir pre-filled with attempt records (through the same rules as
//! `Ledger.Record`), then `Ledger.Status` and `Ledger.Plan` over gRPC with 1, 16 and 64
//! concurrent callers, each on its own connection, for a fixed time window.

use crate::caller::{Caller, Verified};
use crate::process::{Result, Server};
use prost::Message;
use serde::Serialize;
use stagecache_client::stages::StageFile;
use stagecache_client::Client;
use stagecache_proto::v1::{
    Decision, PlanRequest, PlanResponse, RecordRequest, StageGraph, StageResult, StageStatus,
    StatusRequest, StatusResponse,
};
use stagecache_proto::{Digest, Namespace};
use stagecache_server::ledger::{self, RecordInput};
use stagecache_server::store::ledger::StageKey;
use stagecache_server::store::Store;
use std::path::Path;
use std::time::{Duration, Instant};

/// The Validate-Publish graph, as shipped in `deploy/pipelines/`.
const GRAPH: &str = include_str!("../../deploy/pipelines/validate-publish.stages.yaml");
const LINES_PER_SUBJECT: usize = 20;
/// started, failed, started, failed, succeeded: three attempts, the last a success; on
/// [`RUNNING_STAGE`]'s line the last record is `started` instead (attempt 3 still running).
const RECORDS_PER_LINE: usize = 5;
/// The one stage of the graph whose third attempt is still running in the fill, so that a
/// plan has a RUN among its SKIPs; it is a leaf of the graph (nothing downstream blocks).
pub const RUNNING_STAGE: &str = "Handoff Publishing Ring";
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

/// The (stage, target) lines the fill gives every subject: each stage of `graph`, then
/// per-account publishing lines up to [`LINES_PER_SUBJECT`].
fn fill_lines(graph: &StageGraph) -> Vec<(String, String)> {
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
    lines
}

/// Fills `data_dir` with about `attempts` attempts: subjects x 20 lines (every stage of
/// the graph, plus per-account publishing lines) x 3 attempts (5 records). Returns the
/// subject count.
pub fn fill(data_dir: &Path, attempts: usize) -> Result<usize> {
    let lines = fill_lines(&graph());
    let subjects = (attempts / ATTEMPTS_PER_SUBJECT).max(1);
    let store = Store::open(data_dir, None)?;
    let ns = Namespace::parse("namespace", crate::NAMESPACE)?;
    for s in 0..subjects {
        let subj = subject(s);
        store.index().ledger_txn(|txn| {
            for (stage, target) in &lines {
                for r in 0..RECORDS_PER_LINE {
                    let status = if r + 1 == RECORDS_PER_LINE {
                        final_status(stage, target)
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
                        identity: "anonymous".into(),
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

/// The status every line of a filled subject ends on.
fn final_status(stage: &str, target: &str) -> StageStatus {
    if stage == RUNNING_STAGE && target.is_empty() {
        StageStatus::Started
    } else {
        StageStatus::Succeeded
    }
}

/// Checks a Status reply against the fill: exactly the subject's lines (`sorted_lines`,
/// the fill's (stage, target) pairs in order), each of this subject, at its third attempt
/// and in the status the fill left it.
fn check_status(
    subject: Digest,
    sorted_lines: &[(String, String)],
    lines: &[StageResult],
) -> Result<()> {
    let mut got: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l.stage.as_str(), l.target.as_str()))
        .collect();
    got.sort_unstable();
    let expected: Vec<(&str, &str)> = sorted_lines
        .iter()
        .map(|(s, t)| (s.as_str(), t.as_str()))
        .collect();
    if got != expected {
        return Err(
            format!("status of {subject}: lines {got:?}, the fill wrote {expected:?}").into(),
        );
    }
    let proto = subject.to_proto();
    for l in lines {
        if l.subject.as_ref() != Some(&proto) {
            return Err(format!(
                "status of {subject}: {:?} target {:?} is a line of subject {:?}",
                l.stage, l.target, l.subject
            )
            .into());
        }
        let expected = final_status(&l.stage, &l.target);
        if l.status != expected as i32 || l.attempt != ATTEMPTS_PER_LINE as u32 {
            return Err(format!(
                "status of {subject}: {:?} target {:?} is {:?} at attempt {}, the fill left {:?} at attempt {ATTEMPTS_PER_LINE}",
                l.stage,
                l.target,
                StageStatus::try_from(l.status),
                l.attempt,
                expected
            )
            .into());
        }
    }
    Ok(())
}

/// Checks a Plan reply against the fill: every stage SKIP (its third attempt succeeded)
/// except [`RUNNING_STAGE`], which is RUN; in the graph's order.
fn check_plan(subject: Digest, graph: &StageGraph, plan: &PlanResponse) -> Result<()> {
    let got: Vec<(&str, i32)> = plan
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.decision))
        .collect();
    let expected: Vec<(&str, i32)> = graph
        .stages
        .iter()
        .map(|s| {
            let d = if s.name == RUNNING_STAGE {
                Decision::Run
            } else {
                Decision::Skip
            };
            (s.name.as_str(), d as i32)
        })
        .collect();
    if got != expected {
        return Err(format!(
            "plan of {subject}: decisions {got:?}, the fill implies {expected:?} (1 = RUN, 2 = SKIP)"
        )
        .into());
    }
    let proto = subject.to_proto();
    let wrong_attempt = plan.stages.iter().find(|s| {
        s.decision == Decision::Skip as i32
            && s.succeeded
                .as_ref()
                .map(|r| (r.attempt, r.subject.as_ref(), r.stage.as_str()))
                != Some((ATTEMPTS_PER_LINE as u32, Some(&proto), s.name.as_str()))
    });
    if let Some(s) = wrong_attempt {
        return Err(format!(
            "plan of {subject}: {:?} skips on {:?}, the fill's success is its own, of this subject, at attempt {ATTEMPTS_PER_LINE}",
            s.name,
            s.succeeded
        )
        .into());
    }
    Ok(())
}

/// Which call is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Call {
    Status,
    Plan,
    /// `Ledger.Record` of one success (journaled to the blob store before it answers).
    Record,
    /// `Ledger.RecordBatch` of [`BATCH_ITEMS`] successes (one journal object).
    #[serde(rename = "record_batch")]
    RecordBatch,
}

/// Items of the measured RecordBatch: a release's assets, each its own line.
pub const BATCH_ITEMS: usize = 2_000;

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::Status => "status",
            Call::Plan => "plan",
            Call::Record => "record",
            Call::RecordBatch => "record batch of 2,000",
        }
    }

    /// Whether the call writes (it needs a stored subject).
    pub fn writes(self) -> bool {
        matches!(self, Call::Record | Call::RecordBatch)
    }

    /// One write, through the real client (a write costs the server hundreds of
    /// microseconds; the client's share does not matter there).
    async fn write_once(self, client: &Client, subject: Digest) -> Result<()> {
        let success = |stage: String| RecordRequest {
            subject: Some(subject.to_proto()),
            stage,
            status: StageStatus::Succeeded as i32,
            ..Default::default()
        };
        match self {
            Call::Record => {
                let r = client.record(success("Bench Record".into())).await?;
                if r.status != StageStatus::Succeeded as i32 || r.stage != "Bench Record" {
                    return Err(format!("record answered {r:?}").into());
                }
            }
            Call::RecordBatch => {
                let items = (0..BATCH_ITEMS)
                    .map(|i| success(format!("asset {i}")))
                    .collect();
                let r = client.record_batch(items).await?;
                if r.len() != BATCH_ITEMS {
                    return Err(format!("record batch answered {} results", r.len()).into());
                }
            }
            Call::Status | Call::Plan => {
                return Err(format!("{} is not a write", self.name()).into())
            }
        }
        Ok(())
    }

    /// One read of the fill's subject number `s`, through the lean caller; its answer
    /// checked against the fill.
    async fn read_once(
        self,
        caller: &mut Caller,
        reads: &Reads,
        s: usize,
        verified: &Verified,
    ) -> Result<()> {
        let subject = subject(s);
        match self {
            Call::Status => {
                let answer = caller
                    .unary("/stagecache.v1.Ledger/Status", reads.request(self, subject))
                    .await?;
                verified.check(s, answer, |a| {
                    let r = StatusResponse::decode(a.clone())?;
                    check_status(subject, &reads.sorted_lines, &r.results)
                })
            }
            Call::Plan => {
                let answer = caller
                    .unary("/stagecache.v1.Ledger/Plan", reads.request(self, subject))
                    .await?;
                verified.check(s, answer, |a| {
                    check_plan(subject, &reads.graph, &PlanResponse::decode(a.clone())?)
                })
            }
            Call::Record | Call::RecordBatch => {
                Err(format!("{} is not a read", self.name()).into())
            }
        }
    }
}

/// What the reads send and expect, prepared once: the encoded fields of each request but
/// the subject, the graph, and the fill's lines.
pub struct Reads {
    graph: StageGraph,
    /// The fill's (stage, target) lines of every subject, sorted.
    sorted_lines: Vec<(String, String)>,
    /// Field 1 of both StatusRequest and PlanRequest, encoded: the namespace.
    namespace: Vec<u8>,
    /// Field 3 of PlanRequest, encoded: the graph.
    plan_graph: Vec<u8>,
}

impl Reads {
    pub fn new(graph: StageGraph) -> Reads {
        let namespace = StatusRequest {
            namespace: crate::NAMESPACE.into(),
            ..Default::default()
        }
        .encode_to_vec();
        let plan_graph = PlanRequest {
            graph: Some(graph.clone()),
            ..Default::default()
        }
        .encode_to_vec();
        let mut sorted_lines = fill_lines(&graph);
        sorted_lines.sort_unstable();
        Reads {
            graph,
            sorted_lines,
            namespace,
            plan_graph,
        }
    }

    /// The encoded request of a read of `subject`, in its gRPC frame: the bytes the real
    /// client sends. An encoded message is its fields one after the other, in field order
    /// (prost's): the namespace (1), the subject (2; the same field in both requests),
    /// and for a plan the graph (3).
    fn request(&self, call: Call, subject: Digest) -> bytes::Bytes {
        let only_subject = StatusRequest {
            subject: Some(subject.to_proto()),
            ..Default::default()
        }
        .encode_to_vec();
        let graph: &[u8] = match call {
            Call::Plan => &self.plan_graph,
            _ => &[],
        };
        crate::caller::frame(&[&self.namespace, &only_subject, graph])
    }
}

/// How one load caller calls: reads through the lean caller, writes through the client.
enum Conn {
    Client(Box<Client>),
    Lean(Caller),
}

/// Callers of [`prime`].
const PRIME_CALLERS: usize = 16;

/// Reads every subject of the fill once (Status; every answer checked), so that a server
/// just started holds in its heads cache what a long-running one would: the figures then
/// measure its steady state, not its first reads (which the cache-off figures measure on
/// their own). Returns how long it took.
pub async fn prime(server: &Server, subjects: usize) -> Result<Duration> {
    let t = Instant::now();
    let reads = std::sync::Arc::new(Reads::new(graph()));
    let verified = std::sync::Arc::new(Verified::default());
    let mut tasks = Vec::with_capacity(PRIME_CALLERS);
    for c in 0..PRIME_CALLERS {
        let mut caller = Caller::connect(&server.url, server.token(), c).await?;
        let (reads, verified) = (reads.clone(), verified.clone());
        tasks.push(tokio::spawn(async move {
            for s in (c..subjects).step_by(PRIME_CALLERS) {
                Call::Status
                    .read_once(&mut caller, &reads, s, &verified)
                    .await?;
            }
            Ok::<_, crate::process::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t.elapsed())
}

/// Latency and throughput of one call with a number of concurrent callers.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFigure {
    pub call: Call,
    pub callers: usize,
    /// Against a server with an auth configuration, each call carrying a token.
    pub auth: bool,
    /// Against a server with a metrics port (counting every call).
    #[serde(default)]
    pub metrics: bool,
    /// A plain figure measured again after the auth and metrics variants: those are
    /// judged against the mean of the plain figures before and after them, which cancels
    /// a drift of the machine over the phase.
    #[serde(default)]
    pub again: bool,
    /// Against a server with its ledger heads cache off (`--ledger-cache 0`): what the
    /// cache saves, in the same run.
    #[serde(default)]
    pub cache_off: bool,
    pub calls: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub calls_per_s: f64,
    /// Server CPU (user + system) per call in the measuring window, microseconds: what a
    /// call costs the server alone, whatever the load generator beside it costs.
    pub server_cpu_us_per_call: f64,
    /// Cores the server kept busy during the window.
    pub server_cores: f64,
    /// The load generator's own CPU per call in the window, microseconds (the bench
    /// process: its callers and the checks of their answers). It shares the machine's
    /// cores with the server.
    #[serde(default)]
    pub load_cpu_us_per_call: f64,
}

/// The `p` quantile in milliseconds, interpolated between the two nearest ranks (so p50
/// of an even count is the mean of the two middle values, like the transfer medians).
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = (sorted.len() as f64 - 1.0) * p;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let (a, b) = (sorted[lo].as_secs_f64(), sorted[hi].as_secs_f64());
    (a + (b - a) * (rank - lo as f64)) * 1e3
}

/// Runs `callers` concurrent callers, each on its own connection, asking about random
/// subjects: a warm-up of a fifth of `window`, then `window` measured.
pub async fn load(
    server: &Server,
    call: Call,
    callers: usize,
    subjects: usize,
    window: Duration,
    stored: Option<Digest>,
) -> Result<LoadFigure> {
    let reads = std::sync::Arc::new(Reads::new(graph()));
    let verified = std::sync::Arc::new(Verified::default());
    let mut conns = Vec::with_capacity(callers);
    for c in 0..callers {
        conns.push(if call.writes() {
            Conn::Client(Box::new(server.client().await?))
        } else {
            Conn::Lean(Caller::connect(&server.url, server.token(), c).await?)
        });
    }
    let warm_until = Instant::now() + window / 5;
    let end = warm_until + window;
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut conn)| {
            let (reads, verified) = (reads.clone(), verified.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0usize;
                loop {
                    let now = Instant::now();
                    // A caller whose calls outlast the window (a big batch on a loaded
                    // machine) still measures one, within a bound.
                    if now >= end && (!lat.is_empty() || now >= end + window * 20) {
                        break;
                    }
                    // Reads ask about the fill's subjects in a spread order; writes go
                    // to a subject the server stores.
                    let s = (c * 104_729 + i * 7_919) % subjects;
                    i += 1;
                    match &mut conn {
                        Conn::Lean(caller) => call.read_once(caller, &reads, s, &verified).await?,
                        Conn::Client(client) => {
                            let subj = stored.ok_or("a write needs a stored subject")?;
                            call.write_once(client, subj).await?
                        }
                    }
                    if now >= warm_until {
                        lat.push(now.elapsed());
                    }
                }
                Ok::<_, crate::process::Error>(lat)
            })
        })
        .collect();
    tokio::time::sleep_until(warm_until.into()).await;
    let (cpu_start, load_start) = (server.cpu_seconds()?, crate::process::own_cpu_seconds());
    tokio::time::sleep_until(end.into()).await;
    let server_cpu = server.cpu_seconds()? - cpu_start;
    let load_cpu = crate::process::own_cpu_seconds() - load_start;
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
        auth: server.has_token(),
        metrics: server.has_metrics(),
        again: false,
        cache_off: server.has_cache_off(),
        calls: all.len(),
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        calls_per_s: all.len() as f64 / window.as_secs_f64(),
        server_cpu_us_per_call: server_cpu / all.len() as f64 * 1e6,
        server_cores: server_cpu / window.as_secs_f64(),
        load_cpu_us_per_call: load_cpu / all.len() as f64 * 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::unframe;
    use stagecache_proto::v1::StagePlan;

    #[test]
    fn a_read_request_is_the_bytes_the_real_client_sends() {
        let reads = Reads::new(graph());
        let s = subject(7);
        let status = StatusRequest {
            namespace: crate::NAMESPACE.into(),
            subject: Some(s.to_proto()),
            ..Default::default()
        };
        let sent = unframe("/s", reads.request(Call::Status, s)).unwrap();
        assert_eq!(sent, status.encode_to_vec());
        let plan = PlanRequest {
            namespace: crate::NAMESPACE.into(),
            subject: Some(s.to_proto()),
            graph: Some(graph()),
            ..Default::default()
        };
        let sent = unframe("/p", reads.request(Call::Plan, s)).unwrap();
        assert_eq!(sent, plan.encode_to_vec());
    }

    #[test]
    fn a_status_is_checked_line_by_line_against_the_fill() {
        let reads = Reads::new(graph());
        let s = subject(3);
        let lines: Vec<StageResult> = fill_lines(&graph())
            .into_iter()
            .map(|(stage, target)| StageResult {
                subject: Some(s.to_proto()),
                status: final_status(&stage, &target) as i32,
                attempt: ATTEMPTS_PER_LINE as u32,
                stage,
                target,
                ..Default::default()
            })
            .collect();
        check_status(s, &reads.sorted_lines, &lines).unwrap();
        // Another subject's lines, one line twice instead of another, a wrong attempt:
        // each refused.
        assert!(check_status(subject(4), &reads.sorted_lines, &lines).is_err());
        let mut twice = lines.clone();
        twice[1] = twice[0].clone();
        assert!(check_status(s, &reads.sorted_lines, &twice).is_err());
        let mut attempt = lines.clone();
        attempt[5].attempt = 2;
        assert!(check_status(s, &reads.sorted_lines, &attempt).is_err());
        assert!(check_status(s, &reads.sorted_lines, &lines[1..]).is_err());
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let ms =
            |v: &[u64]| -> Vec<Duration> { v.iter().map(|&m| Duration::from_millis(m)).collect() };
        assert_eq!(percentile(&ms(&[1, 2, 3]), 0.5), 2.0);
        assert_eq!(percentile(&ms(&[1, 2, 3, 4]), 0.5), 2.5);
        assert_eq!(percentile(&ms(&[1, 2, 3, 4]), 1.0), 4.0);
        assert_eq!(percentile(&ms(&[7]), 0.99), 7.0);
    }

    fn reply(graph: &StageGraph, of: Digest, decide: impl Fn(&str) -> Decision) -> PlanResponse {
        PlanResponse {
            stages: graph
                .stages
                .iter()
                .map(|s| {
                    let decision = decide(&s.name);
                    StagePlan {
                        name: s.name.clone(),
                        decision: decision as i32,
                        succeeded: (decision == Decision::Skip).then(|| StageResult {
                            subject: Some(of.to_proto()),
                            stage: s.name.clone(),
                            attempt: ATTEMPTS_PER_LINE as u32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_plan_is_checked_stage_by_stage_against_the_fill() {
        let g = graph();
        let s = subject(0);
        let right = |n: &str| {
            if n == RUNNING_STAGE {
                Decision::Run
            } else {
                Decision::Skip
            }
        };
        check_plan(s, &g, &reply(&g, s, right)).unwrap();
        // The right number of stages is not enough.
        assert!(check_plan(s, &g, &reply(&g, s, |_| Decision::Skip)).is_err());
        assert!(check_plan(s, &g, &reply(&g, s, |_| Decision::Run)).is_err());
        let mut wrong_attempt = reply(&g, s, right);
        wrong_attempt.stages[0].succeeded.as_mut().unwrap().attempt = 1;
        assert!(check_plan(s, &g, &wrong_attempt).is_err());
        // Another subject's successes, or another stage's, are not this plan's.
        assert!(check_plan(s, &g, &reply(&g, subject(1), right)).is_err());
        let mut other_stage = reply(&g, s, right);
        other_stage.stages[0].succeeded.as_mut().unwrap().stage = "elsewhere".into();
        assert!(check_plan(s, &g, &other_stage).is_err());
    }
}
