//! `stagecache show --ref NAME | --manifest DIGEST`: a ref's history and a manifest's files.

use super::Context;
use crate::cli::Source;
use crate::view::digest_of;
use crate::Result;
use clap::Args;
use serde_json::json;
use stagecache_proto::time::format_time;

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub source: Source,
}

pub async fn run(ctx: &Context, a: ShowArgs) -> Result<u8> {
    let source = a.source;
    let digest = ctx.resolve(&source).await?;
    let manifest = ctx.client.get_manifest(digest).await?;
    let history = match &source.ref_name {
        Some(r) => ctx.client.ref_history(r, 20).await?,
        None => Vec::new(),
    };
    if ctx.json() {
        let entries: Vec<_> = manifest
            .entries()
            .iter()
            .map(|e| json!({"path": e.path, "digest": e.digest.to_string(), "size": e.digest.size(), "executable": e.executable}))
            .collect();
        let changes: Vec<_> = history
            .iter()
            .map(|c| json!({"version": c.version, "from": c.old_target.as_ref().map(|_| digest_of(&c.old_target)), "to": digest_of(&c.new_target), "at": format_time(c.changed_at_ms), "actor": c.actor, "reason": c.reason}))
            .collect();
        println!(
            "{}",
            json!({"manifest": digest.to_string(), "files": manifest.entries().len(), "bytes": manifest.total_bytes(), "entries": entries, "ref": source.ref_name, "history": changes})
        );
        return Ok(0);
    }
    if let Some(r) = &source.ref_name {
        println!("ref {r} -> {digest}");
        for c in &history {
            println!(
                "  v{} {} by {}{}{}",
                c.version,
                format_time(c.changed_at_ms),
                c.actor,
                if c.reason.is_empty() { "" } else { ": " },
                c.reason
            );
        }
    }
    println!(
        "manifest {digest}: {} files, {} bytes",
        manifest.entries().len(),
        manifest.total_bytes()
    );
    for e in manifest.entries() {
        println!(
            "{}\t{:>12}\t{}\t{}",
            if e.executable { "x" } else { "-" },
            e.digest.size(),
            e.digest.hash_hex(),
            e.path
        );
    }
    Ok(0)
}
