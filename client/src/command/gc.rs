//! `stagecache gc [--dry-run]`: run retention's garbage collection on the server, or see
//! what it would remove.

use super::Context;
use crate::Result;
use clap::Args;
use serde_json::json;
use stagecache_proto::time::format_time;
use stagecache_proto::v1::Collected;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Only report what would go (needs `read` on `*`); a real run needs `admin` on `*`.
    #[arg(long)]
    pub dry_run: bool,
}

fn tally_json(t: Option<Collected>) -> serde_json::Value {
    let t = t.unwrap_or_default();
    json!({
        "count": t.count,
        "bytes": t.bytes,
        "oldest": (t.count > 0).then(|| format_time(t.oldest_ms)),
        "newest": (t.count > 0).then(|| format_time(t.newest_ms)),
    })
}

fn tally_text(t: Option<Collected>, bytes: bool) -> String {
    let t = t.unwrap_or_default();
    let mut s = t.count.to_string();
    if bytes {
        s.push_str(&format!(" ({} bytes)", t.bytes));
    }
    if t.count > 0 {
        s.push_str(&format!(
            ", {} .. {}",
            format_time(t.oldest_ms),
            format_time(t.newest_ms)
        ));
    }
    s
}

pub async fn run(ctx: &Context, a: GcArgs) -> Result<u8> {
    let r = ctx.client.collect_garbage(a.dry_run).await?;
    if ctx.json() {
        let namespaces: Vec<_> = r
            .namespaces
            .iter()
            .map(|n| json!({"namespace": n.namespace, "refs": tally_json(n.refs), "subjects": tally_json(n.subjects), "ledger_records": n.ledger_records}))
            .collect();
        println!(
            "{}",
            json!({
                "dry_run": r.dry_run,
                "started_at": format_time(r.started_at_ms),
                "grace_cutoff": format_time(r.grace_cutoff_ms),
                "blobs": tally_json(r.blobs),
                "manifests": tally_json(r.manifests),
                "namespaces": namespaces,
                "live_blobs": r.live_blobs,
                "live_bytes": r.live_bytes,
                "mark_seconds": r.mark_seconds,
                "sweep_seconds": r.sweep_seconds,
            })
        );
        return Ok(0);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    println!(
        "garbage collection{} at {} (kept everything used since {})",
        if r.dry_run { " (dry run)" } else { "" },
        format_time(r.started_at_ms),
        format_time(r.grace_cutoff_ms)
    );
    println!("{verb}:");
    println!("  blobs       {}", tally_text(r.blobs, true));
    println!("  manifests   {}", tally_text(r.manifests, true));
    for n in &r.namespaces {
        println!("  namespace {}:", n.namespace);
        println!("    refs      {}", tally_text(n.refs, false));
        println!(
            "    subjects  {} ({} ledger records)",
            tally_text(n.subjects, false),
            n.ledger_records
        );
    }
    println!(
        "kept: {} blobs ({} bytes); mark {:.2} s, sweep {:.2} s",
        r.live_blobs, r.live_bytes, r.mark_seconds, r.sweep_seconds
    );
    Ok(0)
}
