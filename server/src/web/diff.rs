//! The diff of two asset sets (each a ref or a manifest digest): files added, removed and
//! changed with sizes, as `stagecache diff` computes it (`stagecache_view::diff_manifests`).

use super::html::{bytes, esc, link, page as frame};
use super::{
    load_manifest, manifest_url, namespace, query_value, resolve_side, PageResult, WebState,
};
use axum::extract::{RawQuery, State};
use axum::response::Html;
use stagecache_view::diff_manifests;
use std::fmt::Write;

pub async fn page(State(state): State<WebState>, RawQuery(q): RawQuery) -> PageResult {
    let ns_text = query_value(q.as_deref(), "ns").unwrap_or_else(|| "default".into());
    let ns = namespace(&ns_text)?;
    let a = query_value(q.as_deref(), "a").unwrap_or_default();
    let b = query_value(q.as_deref(), "b").unwrap_or_default();
    let mut body = format!(
        "<form method=\"get\"><input type=\"hidden\" name=\"ns\" value=\"{}\"><label>Old <input name=\"a\" value=\"{}\"></label> <label>New <input name=\"b\" value=\"{}\"></label> <button>Diff</button></form>",
        esc(ns.as_str()),
        esc(&a),
        esc(&b)
    );
    if a.is_empty() || b.is_empty() {
        body.push_str(
            "<p>Give two asset sets: each a ref name or a manifest digest HASH/SIZE.</p>",
        );
        return Ok(Html(frame("Diff", Some(ns.as_str()), &body)));
    }
    let (da, db) = (
        resolve_side(&state, &ns, &a).await?,
        resolve_side(&state, &ns, &b).await?,
    );
    let (old, new) = (
        load_manifest(&state, da).await?,
        load_manifest(&state, db).await?,
    );
    let d = diff_manifests(&old, &new);
    let _ = write!(
        body,
        "<p>Old {} ({}) → new {} ({})</p><p id=\"summary\">{} added, {} removed, {} changed, {} unchanged; {} → {} files, {} → {}</p>",
        esc(&a),
        link(&manifest_url(&da), &da.to_string()),
        esc(&b),
        link(&manifest_url(&db), &db.to_string()),
        d.added,
        d.removed,
        d.changed,
        d.unchanged,
        d.old_files,
        d.new_files,
        bytes(d.old_bytes),
        bytes(d.new_bytes)
    );
    if d.is_empty() {
        body.push_str("<p id=\"identical\">The two sets hold the same files.</p>");
    }
    body.push_str("<table id=\"diff\"><tr><th>change</th><th>path</th><th>old size</th><th>new size</th><th>old digest</th><th>new digest</th><th>executable</th></tr>");
    let size = |s: Option<u64>| s.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
    for f in &d.files {
        let _ = write!(
            body,
            "<tr class=\"{c}\" data-change=\"{c}\" data-path=\"{p}\"><td>{c}</td><td>{p}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"digest\">{}</td><td class=\"digest\">{}</td><td>{}</td></tr>",
            size(f.old_size()),
            size(f.new_size()),
            f.old.map(|(d, _)| d.hash_hex()).unwrap_or_default(),
            f.new.map(|(d, _)| d.hash_hex()).unwrap_or_default(),
            match f.executable_change() {
                Some((false, true)) => "no → yes",
                Some((true, false)) => "yes → no",
                _ => "",
            },
            c = f.change.word(),
            p = esc(&f.path),
        );
    }
    body.push_str("</table>");
    Ok(Html(frame("Diff", Some(ns.as_str()), &body)))
}
