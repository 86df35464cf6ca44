//! `stagecache put FILE`: upload one file as a blob; prints its digest.

use super::Context;
use crate::{ClientError, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PutArgs {
    pub file: PathBuf,
}

pub async fn run(ctx: &Context, a: PutArgs) -> Result<u8> {
    let f = a.file.clone();
    let digest = tokio::task::spawn_blocking(move || {
        let size = std::fs::metadata(&f)
            .map_err(|e| ClientError::Io {
                path: f.clone(),
                source: e,
            })?
            .len();
        crate::tree::hash_file(&f, size)
    })
    .await
    .map_err(|e| ClientError::Invalid(format!("hashing task failed: {e}")))??;
    let bar = crate::progress::bytes_bar(ctx.progress(), digest.size(), "upload");
    let already = ctx.client.upload_file(&a.file, digest, &bar).await?;
    bar.finish_and_clear();
    if ctx.json() {
        println!(
            "{}",
            json!({"digest": digest.to_string(), "already_present": already})
        );
    } else {
        println!("{digest}");
    }
    Ok(0)
}
