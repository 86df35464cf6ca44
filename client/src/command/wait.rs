//! `stagecache wait --ref NAME [--stage S] --timeout SECONDS`: until a ref is registered or
//! a stage finishes. Exit 0 on success, 8 when the stage failed or was cancelled, 9 on
//! timeout.

use super::{Context, EXIT_STAGE_UNSUCCESSFUL, EXIT_TIMEOUT};
use crate::view::{digest_of, result_line};
use crate::{ClientError, Digest, Result};
use clap::Args;
use serde_json::json;
use stagecache_proto::v1::StageStatus;

#[derive(Args, Debug)]
pub struct WaitArgs {
    #[arg(long = "ref")]
    pub ref_name: Option<String>,
    #[arg(long)]
    pub subject: Option<Digest>,
    #[arg(long)]
    pub stage: Option<String>,
    #[arg(long, default_value = "")]
    pub target: String,
    #[arg(long)]
    pub timeout: u64,
}

/// Waits for the condition; the exit code and a line describing what happened.
async fn wait_for(ctx: &Context, a: &WaitArgs) -> Result<(u8, String)> {
    let client = &ctx.client;
    match (&a.ref_name, a.subject, &a.stage) {
        (Some(r), None, None) => {
            let c = client.wait_for_ref(r).await?;
            Ok((0, format!("ref {} -> {}", c.name, digest_of(&c.new_target))))
        }
        (r, s, Some(stage)) => {
            let subject = match (r, s) {
                (_, Some(d)) => d,
                // The ref may not be registered yet: wait for it first.
                (Some(r), None) => client.wait_for_ref_target(r).await?,
                (None, None) => {
                    return Err(ClientError::Invalid(
                        "wait --stage needs --ref NAME or --subject DIGEST".into(),
                    ))
                }
            };
            let r = client.wait_for_stage(subject, stage, &a.target).await?;
            let code = match StageStatus::try_from(r.status) {
                Ok(StageStatus::Succeeded) => 0,
                _ => EXIT_STAGE_UNSUCCESSFUL,
            };
            Ok((code, result_line(&r)))
        }
        _ => Err(ClientError::Invalid(
            "wait: give --ref NAME, or --stage S with --ref NAME or --subject DIGEST".into(),
        )),
    }
}

pub async fn run(ctx: &Context, a: WaitArgs) -> Result<u8> {
    let deadline = std::time::Duration::from_secs(a.timeout);
    match tokio::time::timeout(deadline, wait_for(ctx, &a)).await {
        Err(_) => {
            eprintln!("stagecache: timed out after {} s", a.timeout);
            Ok(EXIT_TIMEOUT)
        }
        Ok(r) => {
            let (code, line) = r?;
            if ctx.json() {
                println!("{}", json!({"done": code == 0, "event": line}));
            } else {
                println!("{line}");
            }
            Ok(code)
        }
    }
}
