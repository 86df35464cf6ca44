//! `stagecache stats`: counts of what the server holds.

use super::Context;
use crate::Result;
use serde_json::json;

pub async fn run(ctx: &Context) -> Result<u8> {
    let st = ctx.client.stats().await?;
    let ns = &ctx.namespace;
    if ctx.json() {
        println!(
            "{}",
            json!({"blobs": st.blobs, "blob_bytes": st.blob_bytes, "manifests": st.manifests, "refs": st.refs, "ledger_records": st.ledger_records, "active_claims": st.active_claims, "namespace": ns})
        );
    } else {
        println!("blobs           {} ({} bytes)", st.blobs, st.blob_bytes);
        println!("manifests       {}", st.manifests);
        println!("refs            {} in namespace {ns}", st.refs);
        println!("ledger records  {} in namespace {ns}", st.ledger_records);
        println!("active claims   {} in namespace {ns}", st.active_claims);
    }
    Ok(0)
}
