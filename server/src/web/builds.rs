//! Builds: the refs of a namespace (optionally by prefix), newest first, with time, files,
//! bytes and actor.

use super::html::{bytes, esc, link, page as frame, time, url_part, who};
use super::{manifest_url, namespace, query_value, ref_url, PageResult, WebState};
use axum::extract::{Path, RawQuery, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::fmt::Write;

/// Most refs a page lists (newest first) unless `?limit=` says otherwise.
const DEFAULT_LIMIT: usize = 50;

/// `/builds?ns=&prefix=` (the start page's form): on to the namespace's builds page.
pub async fn pick_namespace(RawQuery(q): RawQuery) -> Response {
    let ns = query_value(q.as_deref(), "ns").unwrap_or_else(|| "default".into());
    let prefix = query_value(q.as_deref(), "prefix").unwrap_or_default();
    Redirect::to(&format!(
        "/ns/{}/builds?prefix={}",
        url_part(&ns),
        url_part(&prefix)
    ))
    .into_response()
}

pub async fn page(
    State(state): State<WebState>,
    Path(ns_text): Path<String>,
    RawQuery(q): RawQuery,
) -> PageResult {
    let ns = namespace(&ns_text)?;
    let prefix = query_value(q.as_deref(), "prefix").unwrap_or_default();
    let limit = match query_value(q.as_deref(), "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| super::PageError::bad_request(format!("limit: {v:?} is not a number")))?,
    };
    let (ns2, p2) = (ns.clone(), prefix.clone());
    let mut refs = state
        .store
        .with_index(move |i| i.list_refs(&ns2, &p2, None, usize::MAX))
        .await?;
    refs.sort_by_key(|(_, r)| std::cmp::Reverse(r.updated_at_ms));
    let total = refs.len();
    refs.truncate(limit);

    let mut body = String::new();
    let _ = write!(
        body,
        "<form method=\"get\"><label>Ref prefix <input name=\"prefix\" value=\"{}\"></label> <button>Filter</button></form>",
        esc(&prefix)
    );
    let _ = write!(
        body,
        "<p>{} of {total} ref(s){}, newest first.</p>",
        refs.len(),
        if prefix.is_empty() {
            String::new()
        } else {
            format!(" starting with <code>{}</code>", esc(&prefix))
        }
    );
    body.push_str("<table id=\"builds\"><tr><th>ref</th><th>updated</th><th>files</th><th>bytes</th><th>who</th><th>manifest</th></tr>");
    for (name, r) in &refs {
        let digest = crate::store::index::record_digest(&r.target_hash, r.target_size)?;
        let (files, size) = match state.store.get_manifest(digest).await? {
            Some(m) => (m.entries().len().to_string(), bytes(m.total_bytes())),
            None => ("-".into(), "-".into()),
        };
        let _ = write!(
            body,
            "<tr class=\"build\" data-ref=\"{}\"><td>{}</td><td>{}</td><td class=\"num\">{files}</td><td class=\"num\">{size}</td><td>{}</td><td class=\"digest\">{}</td></tr>",
            esc(name),
            link(&ref_url(ns.as_str(), name), name),
            time(r.updated_at_ms),
            who(&r.actor, &r.identity),
            link(&manifest_url(&digest), &digest.to_string()),
        );
    }
    body.push_str("</table>");
    Ok(Html(frame(
        &format!("Builds in {}", ns.as_str()),
        Some(ns.as_str()),
        &body,
    )))
}
