//! `stagecache graph --ref NAME --stages FILE`: the graph as a Mermaid flowchart.

use super::Context;
use crate::cli::SubjectArgs;
use crate::stages::StageFile;
use crate::view::mermaid;
use crate::Result;
use clap::Args;
use stagecache_proto::v1::StatusRequest;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct GraphArgs {
    #[command(flatten)]
    pub subject: SubjectArgs,
    #[arg(long)]
    pub stages: PathBuf,
}

pub async fn run(ctx: &Context, a: GraphArgs) -> Result<u8> {
    let file = StageFile::load(&a.stages)?;
    let subject = ctx.subject(&a.subject).await?;
    let results = ctx
        .client
        .stage_status(StatusRequest {
            subject: Some(subject.to_proto()),
            ..Default::default()
        })
        .await?;
    println!("{}", mermaid(&file, &results));
    Ok(0)
}
