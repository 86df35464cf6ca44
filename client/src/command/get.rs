//! `stagecache get HASH/SIZE --out FILE`: download one blob, verified.

use super::Context;
use crate::{ClientError, Digest, FetchOptions, Manifest, ManifestEntry, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct GetArgs {
    pub digest: Digest,
    #[arg(long)]
    pub out: PathBuf,
}

pub async fn run(ctx: &Context, a: GetArgs) -> Result<u8> {
    let entry = ManifestEntry {
        path: a
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                ClientError::Invalid(format!("--out {}: not a file path", a.out.display()))
            })?,
        digest: a.digest,
        executable: false,
    };
    let dir = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let manifest = Manifest::from_entries(vec![entry])?;
    let r = ctx
        .client
        .fetch_manifest(
            &manifest,
            &dir,
            &FetchOptions {
                progress: ctx.progress(),
                no_direct: false,
            },
        )
        .await?;
    if ctx.json() {
        println!(
            "{}",
            json!({"digest": a.digest.to_string(), "out": a.out, "downloaded": r.downloaded_files == 1})
        );
    } else {
        println!("{} -> {}", a.digest, a.out.display());
    }
    Ok(0)
}
