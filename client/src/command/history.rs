//! `stagecache history --ref NAME [--stage S]`: every attempt and invalidation.

use super::Context;
use crate::cli::SubjectArgs;
use crate::view::{result_json, result_line};
use crate::Result;
use clap::Args;
use serde_json::json;
use stagecache_proto::v1::HistoryRequest;

#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub subject: SubjectArgs,
    #[arg(long, default_value = "")]
    pub stage: String,
    #[arg(long, default_value = "")]
    pub target: String,
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

pub async fn run(ctx: &Context, a: HistoryArgs) -> Result<u8> {
    let subject = ctx.subject(&a.subject).await?;
    let results = ctx
        .client
        .stage_history(HistoryRequest {
            subject: Some(subject.to_proto()),
            stage: a.stage,
            target: a.target,
            limit: a.limit,
            ..Default::default()
        })
        .await?;
    if ctx.json() {
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
    Ok(0)
}
