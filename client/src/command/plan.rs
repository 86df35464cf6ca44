//! `stagecache plan --ref NAME --stages FILE`: RUN, SKIP or BLOCKED for every stage, with
//! `--force-resign` (the audited override of the signing stage's result).

use super::Context;
use crate::cli::SubjectArgs;
use crate::output::{variable_name, Report};
use crate::stages::StageFile;
use crate::{ClientError, Result};
use clap::Args;
use serde_json::json;
use stagecache_proto::v1::{Decision, PlanRequest};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub subject: SubjectArgs,
    /// Stage graph YAML file.
    #[arg(long)]
    pub stages: PathBuf,
    /// Only these stages (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["from", "skip"])]
    pub only: Vec<String>,
    /// This stage and everything downstream of it.
    #[arg(long, conflicts_with = "skip")]
    pub from: Option<String>,
    /// All stages but these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Run this stage even if it succeeded (repeatable). Its dependents are not forced.
    #[arg(long)]
    pub force: Vec<String>,
    /// Invalidate the signing stage named in the stage file (audited) and force it.
    #[arg(long)]
    pub force_resign: bool,
    /// Why, for --force-resign's audit record.
    #[arg(long, default_value = "forced re-sign requested")]
    pub reason: String,
}

/// The word for a decision: `run`, `skip`, `blocked`.
pub fn decision_word(d: i32) -> &'static str {
    match Decision::try_from(d).unwrap_or(Decision::Unspecified) {
        Decision::Run => "run",
        Decision::Skip => "skip",
        Decision::Blocked => "blocked",
        Decision::Unspecified => "unspecified",
    }
}

fn names(list: Vec<String>) -> Vec<String> {
    list.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

pub async fn run(ctx: &Context, a: PlanArgs) -> Result<u8> {
    let file = StageFile::load(&a.stages)?;
    let subject = ctx.subject(&a.subject).await?;
    let mut force = a.force;
    if a.force_resign {
        let signing = file.signing_stage.clone().ok_or_else(|| {
            ClientError::Invalid(format!(
                "--force-resign: {} names no signing_stage",
                a.stages.display()
            ))
        })?;
        if let Some(audit) = ctx
            .client
            .force_resign(subject, &signing, &a.reason)
            .await?
        {
            eprintln!(
                "stagecache: forced re-sign: invalidated {} attempt {} (by {}: {})",
                audit.stage, audit.attempt, audit.actor, audit.reason
            );
        }
        if !force.contains(&signing) {
            force.push(signing);
        }
    }
    let plan = ctx
        .client
        .plan(PlanRequest {
            subject: Some(subject.to_proto()),
            graph: Some(file.to_proto()),
            only: names(a.only),
            from: a.from.unwrap_or_default(),
            skip: names(a.skip),
            force,
            ..Default::default()
        })
        .await?;
    let width = plan.stages.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let mut report = Report {
        json: json!({ "stages": plan
            .stages
            .iter()
            .map(|p| json!({"name": p.name, "decision": decision_word(p.decision), "reason": p.reason}))
            .collect::<Vec<_>>() }),
        human: plan
            .stages
            .iter()
            .map(|p| {
                format!(
                    "{:<8} {:<width$}  {}",
                    decision_word(p.decision).to_uppercase(),
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
    report.emit(ctx.format, ctx.github_output.as_deref())?;
    Ok(0)
}
