//! `stagecache invalidate --ref NAME --stage S --reason WHY`: the audited override.

use super::record::print_result;
use super::Context;
use crate::cli::SubjectArgs;
use crate::Result;
use clap::Args;
use stagecache_proto::v1::InvalidateRequest;

#[derive(Args, Debug)]
pub struct InvalidateArgs {
    #[command(flatten)]
    pub subject: SubjectArgs,
    #[arg(long)]
    pub stage: String,
    #[arg(long, default_value = "")]
    pub target: String,
    #[arg(long)]
    pub reason: String,
}

pub async fn run(ctx: &Context, a: InvalidateArgs) -> Result<u8> {
    let subject = ctx.subject(&a.subject).await?;
    let r = ctx
        .client
        .invalidate(InvalidateRequest {
            subject: Some(subject.to_proto()),
            stage: a.stage,
            target: a.target,
            reason: a.reason,
            ..Default::default()
        })
        .await?;
    print_result(ctx, &r);
    Ok(0)
}
