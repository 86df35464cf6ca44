//! `stagecache record --ref NAME --stage S --status STATUS`: one attempt's status.

use super::Context;
use crate::cli::SubjectArgs;
use crate::view::{result_json, result_line};
use crate::{Digest, Result};
use clap::Args;
use stagecache_proto::v1::{RecordRequest, StageStatus};

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum StatusArg {
    Started,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<StatusArg> for StageStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Started => StageStatus::Started,
            StatusArg::Succeeded => StageStatus::Succeeded,
            StatusArg::Failed => StageStatus::Failed,
            StatusArg::Cancelled => StageStatus::Cancelled,
        }
    }
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub subject: SubjectArgs,
    #[arg(long)]
    pub stage: String,
    #[arg(long, value_enum)]
    pub status: StatusArg,
    #[arg(long, default_value = "")]
    pub target: String,
    #[arg(long, default_value = "")]
    pub fingerprint: String,
    #[arg(long, env = "STAGECACHE_BAR_BUILD_ID", default_value = "")]
    pub bar_build_id: String,
    #[arg(long, env = "STAGECACHE_BUILD_ID", default_value = "")]
    pub build_id: String,
    /// Attempt number (default: a new attempt for started, else the running one).
    #[arg(long, default_value_t = 0)]
    pub attempt: u32,
    #[arg(long, env = "STAGECACHE_RUN_URL", default_value = "")]
    pub run_url: String,
    /// Outputs manifest, e.g. the signed set produced from this (unsigned) subject.
    #[arg(long)]
    pub outputs: Option<Digest>,
    /// Token of the claim held on this stage.
    #[arg(long, env = "STAGECACHE_CLAIM_TOKEN", default_value = "")]
    pub claim_token: String,
}

pub async fn run(ctx: &Context, a: RecordArgs) -> Result<u8> {
    let subject = ctx.subject(&a.subject).await?;
    let r = ctx
        .client
        .record(RecordRequest {
            subject: Some(subject.to_proto()),
            stage: a.stage,
            target: a.target,
            fingerprint: a.fingerprint,
            status: StageStatus::from(a.status) as i32,
            bar_build_id: a.bar_build_id,
            build_id: a.build_id,
            attempt: a.attempt,
            run_url: a.run_url,
            outputs: a.outputs.map(|d| d.to_proto()),
            claim_token: a.claim_token,
            ..Default::default()
        })
        .await?;
    print_result(ctx, &r);
    Ok(0)
}

/// One result as a line, or as JSON with `--json`.
pub fn print_result(ctx: &Context, r: &stagecache_proto::v1::StageResult) {
    if ctx.json() {
        println!("{}", result_json(r));
    } else {
        println!("{}", result_line(r));
    }
}
