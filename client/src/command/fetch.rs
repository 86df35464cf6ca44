//! `stagecache fetch --ref NAME --out DIR`: download an asset set, every file verified.

use super::Context;
use crate::cli::Source;
use crate::output::Report;
use crate::{FetchOptions, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct FetchArgs {
    #[command(flatten)]
    pub source: Source,
    #[arg(long)]
    pub out: PathBuf,
    /// Stream every blob through the server even when it offers direct downloads from the
    /// blob store (for an agent that cannot reach the store).
    #[arg(long, env = "STAGECACHE_NO_DIRECT_DOWNLOADS")]
    pub no_direct_downloads: bool,
}

pub async fn run(ctx: &Context, a: FetchArgs) -> Result<u8> {
    let digest = ctx.resolve(&a.source).await?;
    let r = ctx
        .client
        .fetch(
            digest,
            &a.out,
            &FetchOptions {
                progress: ctx.progress(),
                no_direct: a.no_direct_downloads,
            },
        )
        .await?;
    let mut report = Report {
        json: serde_json::to_value(&r).unwrap_or_default(),
        human: format!(
            "fetched {} files ({} bytes) into {}: {} downloaded ({} bytes{}), {} already present",
            r.files,
            r.bytes,
            a.out.display(),
            r.downloaded_files,
            r.downloaded_bytes,
            if r.direct_bytes > 0 {
                format!(", {} straight from the blob store", r.direct_bytes)
            } else {
                String::new()
            },
            r.skipped_files
        ),
        vars: Vec::new(),
    };
    report.var("manifest", r.manifest.to_string());
    report.var("files", r.files.to_string());
    report.var("downloaded_files", r.downloaded_files.to_string());
    report.emit(ctx.format, ctx.github_output.as_deref())?;
    Ok(0)
}
