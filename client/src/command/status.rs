//! `stagecache status --ref NAME [--stages FILE]`: the effective result of each stage.

use super::Context;
use crate::cli::SubjectArgs;
use crate::output::{variable_name, Report};
use crate::stages::StageFile;
use crate::view::{result_json, result_line, stage_table, status_name};
use crate::Result;
use clap::Args;
use serde_json::json;
use stagecache_proto::v1::StatusRequest;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub subject: SubjectArgs,
    #[arg(long, default_value = "")]
    pub stage: String,
    #[arg(long, default_value = "")]
    pub target: String,
    #[arg(long, default_value = "")]
    pub fingerprint: String,
    /// Show every stage of this graph file as a table (state, attempt, build, duration).
    #[arg(long, conflicts_with = "stage")]
    pub stages: Option<PathBuf>,
}

pub async fn run(ctx: &Context, a: StatusArgs) -> Result<u8> {
    let subject = ctx.subject(&a.subject).await?;
    let results = ctx
        .client
        .stage_status(StatusRequest {
            subject: Some(subject.to_proto()),
            stage: a.stage,
            target: a.target,
            fingerprint: a.fingerprint,
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
    if let Some(path) = a.stages {
        report.human = stage_table(&StageFile::load(&path)?, &results);
    }
    report.emit(ctx.format, ctx.github_output.as_deref())?;
    Ok(0)
}
