//! `stagecache pin REF [--reason]` and `stagecache unpin REF`: keep a ref (a released
//! build) from retention's expiry, or let it expire again.

use super::Context;
use crate::view::digest_of;
use crate::Result;
use clap::Args;
use serde_json::json;
use stagecache_proto::time::format_time;

#[derive(Args, Debug)]
pub struct PinArgs {
    /// The ref, e.g. `bar/12345`.
    pub name: String,
    /// Why (kept in the ref's history with your identity), e.g. "released as 9.0.1".
    #[arg(long, default_value = "")]
    pub reason: String,
}

pub async fn run(ctx: &Context, a: PinArgs, pin: bool) -> Result<u8> {
    let resp = ctx.client.pin_ref(&a.name, pin, &a.reason).await?;
    let r = resp.r#ref.unwrap_or_default();
    let expires = (r.expires_at_ms != 0).then(|| format_time(r.expires_at_ms));
    if ctx.json() {
        println!(
            "{}",
            json!({"name": r.name, "manifest": digest_of(&r.target), "pinned": r.pinned, "changed": resp.changed, "version": r.version, "pinned_by": r.pinned_by, "pin_reason": r.pin_reason, "expires_at": expires})
        );
    } else {
        let state = match (r.pinned, resp.changed) {
            (true, true) => "pinned",
            (true, false) => "already pinned",
            (false, true) => "unpinned",
            (false, false) => "was not pinned",
        };
        match expires {
            Some(t) => println!("{} {state} (expires {t} unless it changes)", r.name),
            None => println!("{} {state} (never expires)", r.name),
        }
    }
    Ok(0)
}
