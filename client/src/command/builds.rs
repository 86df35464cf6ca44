//! `stagecache builds [PREFIX]`: recent refs with time, files, bytes and manifest.

use super::Context;
use crate::{Digest, Result};
use clap::Args;
use serde_json::json;
use stagecache_proto::time::format_time;

#[derive(Args, Debug)]
pub struct BuildsArgs {
    /// Only refs starting with this prefix, e.g. bar/.
    #[arg(default_value = "")]
    pub prefix: String,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

pub async fn run(ctx: &Context, a: BuildsArgs) -> Result<u8> {
    let mut refs = ctx.client.list_refs(&a.prefix, 100_000).await?;
    refs.sort_by_key(|r| std::cmp::Reverse(r.updated_at_ms));
    refs.truncate(a.limit);
    let mut rows = Vec::new();
    for r in refs {
        let digest = Digest::from_required("ref.target", r.target.as_ref())?;
        let m = ctx.client.get_manifest(digest).await?;
        rows.push((r, digest, m.entries().len(), m.total_bytes()));
    }
    if ctx.json() {
        let v: Vec<_> = rows
            .iter()
            .map(|(r, d, files, bytes)| json!({"ref": r.name, "updated_at": format_time(r.updated_at_ms), "manifest": d.to_string(), "files": files, "bytes": bytes, "actor": r.actor, "version": r.version}))
            .collect();
        println!("{}", json!({ "builds": v }));
        return Ok(0);
    }
    println!(
        "{:<24} {:<20} {:>7} {:>14}  manifest",
        "ref", "updated", "files", "bytes"
    );
    for (r, d, files, bytes) in rows {
        println!(
            "{:<24} {:<20} {:>7} {:>14}  {}",
            r.name,
            format_time(r.updated_at_ms),
            files,
            bytes,
            d
        );
    }
    Ok(0)
}
