//! `stagecache register DIR --ref NAME`: hash, upload what is missing, store the manifest,
//! move the ref (optionally compare-and-swap).

use super::Context;
use crate::output::{Format, Report};
use crate::{Digest, RegisterOptions, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RegisterArgs {
    pub dir: PathBuf,
    #[arg(long = "ref")]
    pub ref_name: String,
    /// Fail (exit 4) unless the ref does not exist yet.
    #[arg(long, conflicts_with = "expect")]
    pub expect_absent: bool,
    /// Fail (exit 4) unless the ref currently points at this manifest digest.
    #[arg(long)]
    pub expect: Option<Digest>,
    /// Why, kept in the ref's history.
    #[arg(long, default_value = "")]
    pub reason: String,
}

pub async fn run(ctx: &Context, a: RegisterArgs) -> Result<u8> {
    let opts = RegisterOptions {
        progress: ctx.progress(),
        expect: if a.expect_absent {
            Some(None)
        } else {
            a.expect.map(Some)
        },
        reason: a.reason,
    };
    let r = ctx.client.register(&a.dir, &a.ref_name, &opts).await?;
    if ctx.format == Format::Human {
        eprintln!(
            "registered {} files ({} bytes; uploaded {} files, {} bytes) as {} in namespace {}",
            r.files, r.bytes, r.uploaded_files, r.uploaded_bytes, a.ref_name, ctx.namespace
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
    report.emit(ctx.format, ctx.github_output.as_deref())?;
    Ok(0)
}
