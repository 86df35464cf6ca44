//! `stagecache`: the command pipeline steps and people use to register, fetch and inspect
//! asset sets. Errors are one line on stderr and an exit code documented in the README.

/// mimalloc: many short-lived buffers on several threads; glibc's per-thread arenas
/// return them to the kernel and fault them back in, which costs transfers and calls.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use serde_json::json;
use stagecache_client::cli::{ClaimAction, Cli, Command, Source, StatusArg, SubjectArgs};
use stagecache_client::output::{variable_name, Format, Report};
use stagecache_client::stages::StageFile;
use stagecache_client::{Client, ClientConfig, ClientError, Digest, FetchOptions, RegisterOptions};
use stagecache_proto::v1::{
    ClaimRequest, Decision, HistoryRequest, InvalidateRequest, PlanRequest, RecordRequest,
    ReleaseClaimRequest, RenewClaimRequest, StageResult, StageStatus, StatusRequest, WatchRequest,
};
use std::path::PathBuf;
use std::process::ExitCode;

use stagecache_proto::time::format_time as fmt_time;

fn digest_of(d: &Option<stagecache_proto::v1::Digest>) -> String {
    d.as_ref()
        .map(|d| format!("{}/{}", d.hash, d.size_bytes))
        .unwrap_or_else(|| "-".into())
}

async fn resolve(client: &Client, source: &Source) -> Result<Digest, ClientError> {
    match (&source.ref_name, source.manifest) {
        (Some(r), _) => client.resolve_ref(r).await,
        (None, Some(d)) => Ok(d),
        (None, None) => Err(ClientError::Invalid(
            "give --ref NAME or --manifest DIGEST".into(),
        )),
    }
}

async fn subject_of(client: &Client, s: &SubjectArgs) -> Result<Digest, ClientError> {
    match (&s.ref_name, s.subject) {
        (Some(r), _) => client.resolve_ref(r).await,
        (None, Some(d)) => Ok(d),
        (None, None) => Err(ClientError::Invalid(
            "give --ref NAME or --subject DIGEST".into(),
        )),
    }
}

fn status_name(code: i32) -> &'static str {
    match StageStatus::try_from(code).unwrap_or(StageStatus::Unspecified) {
        StageStatus::Unspecified => "unspecified",
        StageStatus::Started => "started",
        StageStatus::Succeeded => "succeeded",
        StageStatus::Failed => "failed",
        StageStatus::Cancelled => "cancelled",
        StageStatus::Invalidated => "invalidated",
    }
}

fn result_json(r: &StageResult) -> serde_json::Value {
    json!({
        "subject": digest_of(&r.subject),
        "stage": r.stage,
        "target": r.target,
        "fingerprint": r.fingerprint,
        "status": status_name(r.status),
        "attempt": r.attempt,
        "bar_build_id": r.bar_build_id,
        "build_id": r.build_id,
        "run_url": r.run_url,
        "actor": r.actor,
        "outputs": r.outputs.as_ref().map(|_| digest_of(&r.outputs)),
        "started_at": fmt_time(r.started_at_ms),
        "finished_at": (r.finished_at_ms > 0).then(|| fmt_time(r.finished_at_ms)),
        "reason": r.reason,
        "seq": r.seq,
    })
}

fn result_line(r: &StageResult) -> String {
    let mut s = format!(
        "{:<12} {}{} attempt {} at {}",
        status_name(r.status),
        r.stage,
        if r.target.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.target)
        },
        r.attempt,
        fmt_time(if r.finished_at_ms > 0 {
            r.finished_at_ms
        } else {
            r.started_at_ms
        })
    );
    if !r.bar_build_id.is_empty() {
        s.push_str(&format!(" BAR {}", r.bar_build_id));
    }
    if !r.build_id.is_empty() {
        s.push_str(&format!(" build {}", r.build_id));
    }
    if r.outputs.is_some() {
        s.push_str(&format!(" outputs {}", digest_of(&r.outputs)));
    }
    if !r.actor.is_empty() {
        s.push_str(&format!(" by {}", r.actor));
    }
    if !r.reason.is_empty() {
        s.push_str(&format!(": {}", r.reason));
    }
    s
}

fn print_result(r: &StageResult, json_out: bool) {
    if json_out {
        println!("{}", result_json(r));
    } else {
        println!("{}", result_line(r));
    }
}

fn default_holder(actor: &str) -> String {
    for var in ["BUILD_BUILDID", "GITHUB_RUN_ID"] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() {
                return format!("{actor} (run {v})");
            }
        }
    }
    format!("{actor} (pid {})", std::process::id())
}

/// Exit codes of ledger commands that are outcomes rather than errors.
const EXIT_ALREADY_SUCCEEDED: u8 = 7;
const EXIT_CLAIM_HELD: u8 = 4;
const EXIT_STAGE_UNSUCCESSFUL: u8 = 8;
const EXIT_TIMEOUT: u8 = 9;

async fn run_ledger(client: &Client, format: Format, command: Command) -> Result<u8, ClientError> {
    let json_out = format == Format::Json;
    let github_output = std::env::var_os("GITHUB_OUTPUT").map(PathBuf::from);
    match command {
        Command::Record {
            subject,
            stage,
            status,
            target,
            fingerprint,
            bar_build_id,
            build_id,
            attempt,
            run_url,
            outputs,
            claim_token,
        } => {
            let subject = subject_of(client, &subject).await?;
            let status = match status {
                StatusArg::Started => StageStatus::Started,
                StatusArg::Succeeded => StageStatus::Succeeded,
                StatusArg::Failed => StageStatus::Failed,
                StatusArg::Cancelled => StageStatus::Cancelled,
            };
            let r = client
                .record(RecordRequest {
                    subject: Some(subject.to_proto()),
                    stage,
                    target,
                    fingerprint,
                    status: status as i32,
                    bar_build_id,
                    build_id,
                    attempt,
                    run_url,
                    outputs: outputs.map(|d| d.to_proto()),
                    claim_token,
                    ..Default::default()
                })
                .await?;
            print_result(&r, json_out);
        }
        Command::Status {
            subject,
            stage,
            target,
            fingerprint,
            stages,
        } => {
            let subject = subject_of(client, &subject).await?;
            let results = client
                .stage_status(StatusRequest {
                    subject: Some(subject.to_proto()),
                    stage,
                    target,
                    fingerprint,
                    ..Default::default()
                })
                .await?;
            let mut report = Report {
                json: json!({"subject": subject.to_string(), "results": results.iter().map(result_json).collect::<Vec<_>>()}),
                human: if results.is_empty() {
                    format!("no stage results for {subject}")
                } else {
                    results
                        .iter()
                        .map(result_line)
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                vars: Vec::new(),
            };
            for r in &results {
                let stage = if r.target.is_empty() {
                    r.stage.clone()
                } else {
                    format!("{} {}", r.stage, r.target)
                };
                report.var(variable_name("status", &stage), status_name(r.status));
            }
            if let Some(path) = stages {
                report.human = stage_table(&StageFile::load(&path)?, &results);
            }
            report.emit(format, github_output.as_deref())?;
        }
        Command::History {
            subject,
            stage,
            target,
            limit,
        } => {
            let subject = subject_of(client, &subject).await?;
            let results = client
                .stage_history(HistoryRequest {
                    subject: Some(subject.to_proto()),
                    stage,
                    target,
                    limit,
                    ..Default::default()
                })
                .await?;
            if json_out {
                let rows: Vec<_> = results.iter().map(result_json).collect();
                println!(
                    "{}",
                    json!({"subject": subject.to_string(), "results": rows})
                );
            } else {
                for r in &results {
                    println!("{}", result_line(r));
                }
            }
        }
        Command::Plan {
            subject,
            stages,
            only,
            from,
            skip,
            mut force,
            force_resign,
            reason,
        } => {
            let file = StageFile::load(&stages)?;
            let subject = subject_of(client, &subject).await?;
            if force_resign {
                let signing = file.signing_stage.clone().ok_or_else(|| {
                    ClientError::Invalid(format!(
                        "--force-resign: {} names no signing_stage",
                        stages.display()
                    ))
                })?;
                let current = client
                    .stage_status(StatusRequest {
                        subject: Some(subject.to_proto()),
                        stage: signing.clone(),
                        ..Default::default()
                    })
                    .await?;
                if !current.is_empty() {
                    let audit = client
                        .invalidate(InvalidateRequest {
                            subject: Some(subject.to_proto()),
                            stage: signing.clone(),
                            reason: reason.clone(),
                            ..Default::default()
                        })
                        .await?;
                    eprintln!(
                        "stagecache: forced re-sign: invalidated {} attempt {} (by {}: {})",
                        audit.stage, audit.attempt, audit.actor, audit.reason
                    );
                }
                if !force.contains(&signing) {
                    force.push(signing);
                }
            }
            let plan = client
                .plan(PlanRequest {
                    subject: Some(subject.to_proto()),
                    graph: Some(file.to_proto()),
                    only: only
                        .into_iter()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                    from: from.unwrap_or_default(),
                    skip: skip
                        .into_iter()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                    force,
                    ..Default::default()
                })
                .await?;
            let word = |d: i32| match Decision::try_from(d).unwrap_or(Decision::Unspecified) {
                Decision::Run => "run",
                Decision::Skip => "skip",
                Decision::Blocked => "blocked",
                Decision::Unspecified => "unspecified",
            };
            let width = plan.stages.iter().map(|p| p.name.len()).max().unwrap_or(0);
            let mut report = Report {
                json: json!({ "stages": plan
                    .stages
                    .iter()
                    .map(|p| json!({"name": p.name, "decision": word(p.decision), "reason": p.reason}))
                    .collect::<Vec<_>>() }),
                human: plan
                    .stages
                    .iter()
                    .map(|p| {
                        format!(
                            "{:<8} {:<width$}  {}",
                            word(p.decision).to_uppercase(),
                            p.name,
                            p.reason
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                vars: Vec::new(),
            };
            for p in &plan.stages {
                let run = p.decision == Decision::Run as i32;
                report.var(
                    variable_name("run", &p.name),
                    if run { "true" } else { "false" },
                );
            }
            let to_run: Vec<&str> = plan
                .stages
                .iter()
                .filter(|p| p.decision == Decision::Run as i32)
                .map(|p| p.name.as_str())
                .collect();
            report.var("stages_to_run", to_run.join(","));
            report.emit(format, github_output.as_deref())?;
        }
        Command::Claim { action, args } => match action {
            None => {
                let subject_args = args.subject.ok_or_else(|| {
                    ClientError::Invalid("claim: give --ref NAME or --subject DIGEST".into())
                })?;
                let stage = args
                    .stage
                    .ok_or_else(|| ClientError::Invalid("claim: --stage is required".into()))?;
                let ttl = args.ttl.ok_or_else(|| {
                    ClientError::Invalid("claim: --ttl SECONDS is required".into())
                })?;
                let subject = subject_of(client, &subject_args).await?;
                let holder = args
                    .holder
                    .unwrap_or_else(|| default_holder(&client.config().actor));
                let r = client
                    .claim(ClaimRequest {
                        subject: Some(subject.to_proto()),
                        stage: stage.clone(),
                        target: args.target,
                        holder,
                        ttl_seconds: ttl,
                        ..Default::default()
                    })
                    .await?;
                let claim = r.claim.unwrap_or_default();
                let mut report = Report {
                    json: json!({
                        "granted": r.granted,
                        "holder": claim.holder,
                        "token": claim.token,
                        "expires_at": (claim.expires_at_ms > 0).then(|| fmt_time(claim.expires_at_ms)),
                        "already_succeeded": r.already_succeeded.as_ref().map(result_json),
                    }),
                    human: if r.granted {
                        claim.token.clone()
                    } else {
                        String::new()
                    },
                    vars: Vec::new(),
                };
                report.var("claim_granted", r.granted.to_string());
                report.var("claim_token", claim.token.clone());
                report.var("claim_holder", claim.holder.clone());
                report.var(
                    "already_succeeded",
                    r.already_succeeded.is_some().to_string(),
                );
                report.emit(format, github_output.as_deref())?;
                if r.granted {
                    eprintln!("claimed {stage:?} until {}", fmt_time(claim.expires_at_ms));
                    return Ok(0);
                }
                if let Some(done) = r.already_succeeded {
                    eprintln!(
                        "stagecache: {stage:?} already succeeded: {}",
                        result_line(&done)
                    );
                    return Ok(EXIT_ALREADY_SUCCEEDED);
                }
                eprintln!(
                    "stagecache: {stage:?} is claimed by {} until {}",
                    claim.holder,
                    fmt_time(claim.expires_at_ms)
                );
                return Ok(EXIT_CLAIM_HELD);
            }
            Some(ClaimAction::Renew {
                subject,
                stage,
                target,
                token,
                ttl,
            }) => {
                let subject = subject_of(client, &subject).await?;
                let r = client
                    .renew_claim(RenewClaimRequest {
                        subject: Some(subject.to_proto()),
                        stage,
                        target,
                        token,
                        ttl_seconds: ttl,
                        ..Default::default()
                    })
                    .await?;
                let c = r.claim.unwrap_or_default();
                if json_out {
                    println!(
                        "{}",
                        json!({"holder": c.holder, "expires_at": fmt_time(c.expires_at_ms)})
                    );
                } else {
                    println!("renewed until {}", fmt_time(c.expires_at_ms));
                }
            }
            Some(ClaimAction::Release {
                subject,
                stage,
                target,
                token,
            }) => {
                let subject = subject_of(client, &subject).await?;
                client
                    .release_claim(ReleaseClaimRequest {
                        subject: Some(subject.to_proto()),
                        stage,
                        target,
                        token,
                        ..Default::default()
                    })
                    .await?;
                if json_out {
                    println!("{}", json!({"released": true}));
                }
            }
        },
        Command::Invalidate {
            subject,
            stage,
            target,
            reason,
        } => {
            let subject = subject_of(client, &subject).await?;
            let r = client
                .invalidate(InvalidateRequest {
                    subject: Some(subject.to_proto()),
                    stage,
                    target,
                    reason,
                    ..Default::default()
                })
                .await?;
            print_result(&r, json_out);
        }
        Command::Wait {
            ref_name,
            subject,
            stage,
            target,
            timeout,
        } => {
            let deadline = std::time::Duration::from_secs(timeout);
            let outcome =
                tokio::time::timeout(deadline, wait_for(client, ref_name, subject, stage, target))
                    .await;
            return match outcome {
                Err(_) => {
                    eprintln!("stagecache: timed out after {timeout} s");
                    Ok(EXIT_TIMEOUT)
                }
                Ok(r) => {
                    let (code, line) = r?;
                    if json_out {
                        println!("{}", json!({"done": code == 0, "event": line}));
                    } else {
                        println!("{line}");
                    }
                    Ok(code)
                }
            };
        }
        Command::Graph { subject, stages } => {
            let file = StageFile::load(&stages)?;
            let subject = subject_of(client, &subject).await?;
            let results = client
                .stage_status(StatusRequest {
                    subject: Some(subject.to_proto()),
                    ..Default::default()
                })
                .await?;
            println!("{}", mermaid(&file, &results));
        }
        _ => return Err(ClientError::Invalid("not a ledger command".into())),
    }
    Ok(0)
}

/// One row per stage of the graph: state, attempt, build, duration.
fn stage_table(file: &StageFile, results: &[StageResult]) -> String {
    let width = file
        .stages
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "{:<width$}  {:<11} {:>7}  {:<12} {:>9}\n",
        "stage", "state", "attempt", "build", "duration"
    );
    for s in &file.stages {
        let r = results
            .iter()
            .find(|r| r.stage == s.name && r.target.is_empty());
        let (state, attempt, build, duration) = match r {
            None => (
                "not run".to_string(),
                String::new(),
                String::new(),
                String::new(),
            ),
            Some(r) => {
                let secs = if r.finished_at_ms > 0 {
                    (r.finished_at_ms - r.started_at_ms) / 1000
                } else {
                    -1
                };
                let duration = if secs < 0 {
                    "-".to_string()
                } else {
                    format!("{}h{:02}m{:02}s", secs / 3600, secs % 3600 / 60, secs % 60)
                };
                let build = if r.build_id.is_empty() {
                    r.bar_build_id.clone()
                } else {
                    r.build_id.clone()
                };
                (
                    status_name(r.status).to_string(),
                    r.attempt.to_string(),
                    build,
                    duration,
                )
            }
        };
        out.push_str(&format!(
            "{:<width$}  {state:<11} {attempt:>7}  {build:<12} {duration:>9}\n",
            s.name
        ));
    }
    out
}

/// The state a stage is drawn in: succeeded in the latest run, skipped (its success was
/// reused from an earlier run), failed, running, or not run.
fn stage_state(stage: &str, results: &[StageResult], latest_build: &str) -> &'static str {
    let Some(r) = results
        .iter()
        .find(|r| r.stage == stage && r.target.is_empty())
    else {
        return "notrun";
    };
    match StageStatus::try_from(r.status).unwrap_or(StageStatus::Unspecified) {
        StageStatus::Succeeded if !latest_build.is_empty() && r.build_id != latest_build => {
            "skipped"
        }
        StageStatus::Succeeded => "succeeded",
        StageStatus::Failed | StageStatus::Cancelled => "failed",
        StageStatus::Started => "running",
        _ => "notrun",
    }
}

/// A Mermaid flowchart of the graph, stages coloured by state.
fn mermaid(file: &StageFile, results: &[StageResult]) -> String {
    let latest_build = results
        .iter()
        .max_by_key(|r| r.seq)
        .map(|r| r.build_id.clone())
        .unwrap_or_default();
    let id = |name: &str| {
        file.stages
            .iter()
            .position(|s| s.name == name)
            .map(|i| format!("s{i}"))
    };
    let mut out = String::from("flowchart TD\n");
    for (i, s) in file.stages.iter().enumerate() {
        let label = s.name.replace('"', "#quot;");
        out.push_str(&format!(
            "    s{i}[\"{label}\"]:::{}\n",
            stage_state(&s.name, results, &latest_build)
        ));
    }
    for (i, s) in file.stages.iter().enumerate() {
        for d in &s.depends_on {
            if let Some(from) = id(d) {
                out.push_str(&format!("    {from} --> s{i}\n"));
            }
        }
    }
    out.push_str("    classDef succeeded fill:#2da44e,stroke:#1a7f37,color:#fff\n");
    out.push_str("    classDef skipped fill:#ddf4ff,stroke:#54aeff,color:#0969da\n");
    out.push_str("    classDef failed fill:#cf222e,stroke:#a40e26,color:#fff\n");
    out.push_str("    classDef running fill:#bf8700,stroke:#9a6700,color:#fff\n");
    out.push_str("    classDef notrun fill:#f6f8fa,stroke:#8c959f,color:#57606a\n");
    out
}

/// Waits for the watched condition; returns the exit code and a line describing it.
async fn wait_for(
    client: &Client,
    ref_name: Option<String>,
    subject: Option<Digest>,
    stage: Option<String>,
    target: String,
) -> Result<(u8, String), ClientError> {
    use stagecache_proto::v1::watch_event::Event;
    match (ref_name, subject, stage) {
        (Some(r), None, None) => {
            let mut events = client
                .watch(WatchRequest {
                    r#ref: r.clone(),
                    refs_only: true,
                    ..Default::default()
                })
                .await?;
            while let Some(e) = events
                .message()
                .await
                .map_err(|status| ClientError::Status {
                    call: "Ledger.Watch",
                    status,
                })?
            {
                if let Some(Event::RefSet(c)) = e.event {
                    return Ok((0, format!("ref {} -> {}", c.name, digest_of(&c.new_target))));
                }
            }
            Err(ClientError::Status {
                call: "Ledger.Watch",
                status: tonic::Status::unavailable("watch ended"),
            })
        }
        (r, s, Some(stage)) => {
            let subject = match (r, s) {
                (_, Some(d)) => d,
                (Some(r), None) => {
                    // The ref may not be registered yet: wait for it first.
                    let mut events = client
                        .watch(WatchRequest {
                            r#ref: r.clone(),
                            refs_only: true,
                            ..Default::default()
                        })
                        .await?;
                    let mut found = None;
                    while let Some(e) =
                        events
                            .message()
                            .await
                            .map_err(|status| ClientError::Status {
                                call: "Ledger.Watch",
                                status,
                            })?
                    {
                        if let Some(Event::RefSet(c)) = e.event {
                            found = c.new_target;
                            break;
                        }
                    }
                    let d = found
                        .ok_or_else(|| ClientError::Invalid(format!("ref {r} has no target")))?;
                    Digest::from_proto("ref.target", &d)?
                }
                (None, None) => {
                    return Err(ClientError::Invalid(
                        "wait --stage needs --ref NAME or --subject DIGEST".into(),
                    ))
                }
            };
            let mut events = client
                .watch(WatchRequest {
                    subject: Some(subject.to_proto()),
                    stage: stage.clone(),
                    results_only: true,
                    ..Default::default()
                })
                .await?;
            while let Some(e) = events
                .message()
                .await
                .map_err(|status| ClientError::Status {
                    call: "Ledger.Watch",
                    status,
                })?
            {
                if let Some(Event::StageRecorded(r)) = e.event {
                    if r.target != target {
                        continue;
                    }
                    match StageStatus::try_from(r.status).unwrap_or(StageStatus::Unspecified) {
                        StageStatus::Succeeded => return Ok((0, result_line(&r))),
                        StageStatus::Failed | StageStatus::Cancelled => {
                            return Ok((EXIT_STAGE_UNSUCCESSFUL, result_line(&r)))
                        }
                        _ => {}
                    }
                }
            }
            Err(ClientError::Status {
                call: "Ledger.Watch",
                status: tonic::Status::unavailable("watch ended"),
            })
        }
        _ => Err(ClientError::Invalid(
            "wait: give --ref NAME, or --stage S with --ref NAME or --subject DIGEST".into(),
        )),
    }
}

async fn run(cli: Cli) -> Result<u8, ClientError> {
    let mut config = ClientConfig::new(cli.server.clone(), &cli.namespace)?;
    config.concurrency = cli.concurrency.max(1);
    config.request_timeout = std::time::Duration::from_secs(cli.rpc_timeout.max(1));
    let client = Client::connect(config).await?;
    let format = if cli.json { Format::Json } else { cli.format };
    let progress = format == Format::Human;
    let github_output = std::env::var_os("GITHUB_OUTPUT").map(PathBuf::from);
    match cli.command {
        c @ (Command::Record { .. }
        | Command::Status { .. }
        | Command::History { .. }
        | Command::Plan { .. }
        | Command::Claim { .. }
        | Command::Invalidate { .. }
        | Command::Wait { .. }
        | Command::Graph { .. }) => return run_ledger(&client, format, c).await,
        Command::Stats => {
            let st = client.stats().await?;
            if format == Format::Json {
                println!(
                    "{}",
                    json!({"blobs": st.blobs, "blob_bytes": st.blob_bytes, "manifests": st.manifests, "refs": st.refs, "ledger_records": st.ledger_records, "active_claims": st.active_claims, "namespace": cli.namespace})
                );
            } else {
                println!("blobs           {} ({} bytes)", st.blobs, st.blob_bytes);
                println!("manifests       {}", st.manifests);
                println!("refs            {} in namespace {}", st.refs, cli.namespace);
                println!(
                    "ledger records  {} in namespace {}",
                    st.ledger_records, cli.namespace
                );
                println!(
                    "active claims   {} in namespace {}",
                    st.active_claims, cli.namespace
                );
            }
        }
        Command::Builds { prefix, limit } => {
            let mut refs = client.list_refs(&prefix, 100_000).await?;
            refs.sort_by_key(|r| std::cmp::Reverse(r.updated_at_ms));
            refs.truncate(limit);
            let mut rows = Vec::new();
            for r in refs {
                let digest = Digest::from_required("ref.target", r.target.as_ref())?;
                let m = client.get_manifest(digest).await?;
                rows.push((r, digest, m.entries().len(), m.total_bytes()));
            }
            if format == Format::Json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(r, d, files, bytes)| json!({"ref": r.name, "updated_at": fmt_time(r.updated_at_ms), "manifest": d.to_string(), "files": files, "bytes": bytes, "actor": r.actor, "version": r.version}))
                    .collect();
                println!("{}", json!({ "builds": v }));
            } else {
                println!(
                    "{:<24} {:<20} {:>7} {:>14}  manifest",
                    "ref", "updated", "files", "bytes"
                );
                for (r, d, files, bytes) in rows {
                    println!(
                        "{:<24} {:<20} {:>7} {:>14}  {}",
                        r.name,
                        fmt_time(r.updated_at_ms),
                        files,
                        bytes,
                        d
                    );
                }
            }
        }
        Command::Register {
            dir,
            ref_name,
            expect_absent,
            expect,
            reason,
        } => {
            let opts = RegisterOptions {
                progress,
                expect: if expect_absent {
                    Some(None)
                } else {
                    expect.map(Some)
                },
                reason,
            };
            let r = client.register(&dir, &ref_name, &opts).await?;
            if format == Format::Human {
                eprintln!(
                    "registered {} files ({} bytes; uploaded {} files, {} bytes) as {} in namespace {}",
                    r.files, r.bytes, r.uploaded_files, r.uploaded_bytes, ref_name, cli.namespace
                );
            }
            let mut report = Report {
                json: serde_json::to_value(&r).unwrap_or_default(),
                human: r.manifest.to_string(),
                vars: Vec::new(),
            };
            report.var("manifest", r.manifest.to_string());
            report.var("files", r.files.to_string());
            report.var("bytes", r.bytes.to_string());
            report.var("uploaded_bytes", r.uploaded_bytes.to_string());
            report.emit(format, github_output.as_deref())?;
        }
        Command::Fetch { source, out } => {
            let digest = resolve(&client, &source).await?;
            let r = client
                .fetch(digest, &out, &FetchOptions { progress })
                .await?;
            let mut report = Report {
                json: serde_json::to_value(&r).unwrap_or_default(),
                human: format!(
                    "fetched {} files ({} bytes) into {}: {} downloaded ({} bytes), {} already present",
                    r.files,
                    r.bytes,
                    out.display(),
                    r.downloaded_files,
                    r.downloaded_bytes,
                    r.skipped_files
                ),
                vars: Vec::new(),
            };
            report.var("manifest", r.manifest.to_string());
            report.var("files", r.files.to_string());
            report.var("downloaded_files", r.downloaded_files.to_string());
            report.emit(format, github_output.as_deref())?;
        }
        Command::Ls { prefix, limit } => {
            let refs = client
                .list_refs(prefix.as_deref().unwrap_or(""), limit)
                .await?;
            if format == Format::Json {
                let rows: Vec<_> = refs
                    .iter()
                    .map(|r| json!({"name": r.name, "manifest": digest_of(&r.target), "version": r.version, "updated_at": fmt_time(r.updated_at_ms), "actor": r.actor}))
                    .collect();
                println!("{}", json!({ "refs": rows }));
            } else {
                for r in refs {
                    println!(
                        "{}\t{}\t{}\t{}",
                        r.name,
                        digest_of(&r.target),
                        fmt_time(r.updated_at_ms),
                        r.actor
                    );
                }
            }
        }
        Command::Show { source } => {
            let digest = resolve(&client, &source).await?;
            let manifest = client.get_manifest(digest).await?;
            let history = match &source.ref_name {
                Some(r) => client.ref_history(r, 20).await?,
                None => Vec::new(),
            };
            if format == Format::Json {
                let entries: Vec<_> = manifest
                    .entries()
                    .iter()
                    .map(|e| json!({"path": e.path, "digest": e.digest.to_string(), "size": e.digest.size(), "executable": e.executable}))
                    .collect();
                let changes: Vec<_> = history
                    .iter()
                    .map(|c| json!({"version": c.version, "from": c.old_target.as_ref().map(|_| digest_of(&c.old_target)), "to": digest_of(&c.new_target), "at": fmt_time(c.changed_at_ms), "actor": c.actor, "reason": c.reason}))
                    .collect();
                println!(
                    "{}",
                    json!({"manifest": digest.to_string(), "files": manifest.entries().len(), "bytes": manifest.total_bytes(), "entries": entries, "ref": source.ref_name, "history": changes})
                );
            } else {
                if let Some(r) = &source.ref_name {
                    println!("ref {r} -> {digest}");
                    for c in &history {
                        println!(
                            "  v{} {} by {}{}{}",
                            c.version,
                            fmt_time(c.changed_at_ms),
                            c.actor,
                            if c.reason.is_empty() { "" } else { ": " },
                            c.reason
                        );
                    }
                }
                println!(
                    "manifest {digest}: {} files, {} bytes",
                    manifest.entries().len(),
                    manifest.total_bytes()
                );
                for e in manifest.entries() {
                    println!(
                        "{}\t{:>12}\t{}\t{}",
                        if e.executable { "x" } else { "-" },
                        e.digest.size(),
                        e.digest.hash_hex(),
                        e.path
                    );
                }
            }
        }
        Command::Put { file } => {
            let f = file.clone();
            let digest = tokio::task::spawn_blocking(move || {
                let size = std::fs::metadata(&f)
                    .map_err(|e| ClientError::Io {
                        path: f.clone(),
                        source: e,
                    })?
                    .len();
                stagecache_client::tree::hash_file(&f, size)
            })
            .await
            .map_err(|e| ClientError::Invalid(format!("hashing task failed: {e}")))??;
            let bar = stagecache_client::progress::bytes_bar(progress, digest.size(), "upload");
            let already = client.upload_file(&file, digest, &bar).await?;
            bar.finish_and_clear();
            if format == Format::Json {
                println!(
                    "{}",
                    json!({"digest": digest.to_string(), "already_present": already})
                );
            } else {
                println!("{digest}");
            }
        }
        Command::Get { digest, out } => {
            let entry = stagecache_client::ManifestEntry {
                path: out
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        ClientError::Invalid(format!("--out {}: not a file path", out.display()))
                    })?,
                digest,
                executable: false,
            };
            let dir = match out.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let manifest = stagecache_client::Manifest::from_entries(vec![entry])?;
            let r = client
                .fetch_manifest(&manifest, &dir, &FetchOptions { progress })
                .await?;
            if format == Format::Json {
                println!(
                    "{}",
                    json!({"digest": digest.to_string(), "out": out, "downloaded": r.downloaded_files == 1})
                );
            } else {
                println!("{} -> {}", digest, out.display());
            }
        }
    }
    Ok(0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STAGECACHE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            eprintln!("stagecache: error: {line}");
            ExitCode::from(e.exit_code())
        }
    }
}
