//! `stagecache ls [PREFIX]`: refs with manifest, time and actor.

use super::Context;
use crate::view::digest_of;
use crate::Result;
use clap::Args;
use serde_json::json;
use stagecache_proto::time::format_time;

#[derive(Args, Debug)]
pub struct LsArgs {
    pub prefix: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

pub async fn run(ctx: &Context, a: LsArgs) -> Result<u8> {
    let refs = ctx
        .client
        .list_refs(a.prefix.as_deref().unwrap_or(""), a.limit)
        .await?;
    if ctx.json() {
        let rows: Vec<_> = refs
            .iter()
            .map(|r| json!({"name": r.name, "manifest": digest_of(&r.target), "version": r.version, "updated_at": format_time(r.updated_at_ms), "actor": r.actor, "pinned": r.pinned, "expires_at": (r.expires_at_ms != 0).then(|| format_time(r.expires_at_ms))}))
            .collect();
        println!("{}", json!({ "refs": rows }));
    } else {
        for r in refs {
            let keep = if r.pinned {
                "\tpinned".to_string()
            } else if r.expires_at_ms != 0 {
                format!("\texpires {}", format_time(r.expires_at_ms))
            } else {
                String::new()
            };
            println!(
                "{}\t{}\t{}\t{}{keep}",
                r.name,
                digest_of(&r.target),
                format_time(r.updated_at_ms),
                r.actor
            );
        }
    }
    Ok(0)
}
