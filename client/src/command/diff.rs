//! `stagecache diff A B`: what changed between two asset sets. A and B are each a ref
//! name or a manifest digest (`HASH/SIZE`: a value that parses as a digest is a digest,
//! anything else a ref). Exit 0 whether or not they differ; errors as other commands.

use super::Context;
use crate::view::diff_manifests;
use crate::{Digest, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The old asset set: a ref name (e.g. bar/12345) or a manifest digest HASH/SIZE.
    pub old: String,
    /// The new asset set: a ref name or a manifest digest.
    pub new: String,
}

/// A digest if the value parses as one, else the manifest the ref points at.
pub async fn resolve(ctx: &Context, value: &str) -> Result<Digest> {
    match value.parse::<Digest>() {
        Ok(d) => Ok(d),
        Err(_) => ctx.client.resolve_ref(value).await,
    }
}

pub async fn run(ctx: &Context, a: DiffArgs) -> Result<u8> {
    let old = ctx.client.get_manifest(resolve(ctx, &a.old).await?).await?;
    let new = ctx.client.get_manifest(resolve(ctx, &a.new).await?).await?;
    let diff = diff_manifests(&old, &new);
    if ctx.json() {
        let mut v = diff.to_json();
        v["old_name"] = a.old.into();
        v["new_name"] = a.new.into();
        println!("{v}");
    } else {
        print!("{}", diff.table());
    }
    Ok(0)
}
