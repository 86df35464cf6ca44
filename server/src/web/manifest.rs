//! A manifest: its files (path, size, digest, executable), filterable with `?q=`; and the
//! download of one file, streamed from the blob store.

use super::html::{bytes, esc, link, page as frame, url_path};
use super::{load_manifest, manifest_url, query_value, PageError, PageResult, WebState};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use futures::StreamExt;
use stagecache_proto::Digest;
use std::fmt::Write;

/// Most rows a manifest page lists; a filter narrows the rest down.
const MAX_ROWS: usize = 5000;

fn digest(hash: &str, size: &str) -> Result<Digest, PageError> {
    let text = format!("{hash}/{size}");
    text.parse::<Digest>().map_err(|e| {
        PageError::bad_request(format!("manifest digest {text:?} is not HASH/SIZE: {e}"))
    })
}

pub async fn page(
    State(state): State<WebState>,
    Path((hash, size)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> PageResult {
    let d = digest(&hash, &size)?;
    let m = load_manifest(&state, d).await?;
    let filter = query_value(q.as_deref(), "q").unwrap_or_default();
    let needle = filter.to_lowercase();
    let base = manifest_url(&d);
    let mut body = String::with_capacity(256 * m.entries().len().min(MAX_ROWS) + 1024);
    let _ = write!(
        body,
        "<p>{} files, {}</p><form method=\"get\"><label>Path contains <input name=\"q\" value=\"{}\"></label> <button>Filter</button></form>",
        m.entries().len(),
        bytes(m.total_bytes()),
        esc(&filter)
    );
    let matching = m
        .entries()
        .iter()
        .filter(|e| needle.is_empty() || e.path.to_lowercase().contains(&needle));
    body.push_str(
        "<table id=\"files\"><tr><th>path</th><th>size</th><th>digest</th><th>executable</th></tr>",
    );
    let mut shown = 0;
    let mut total = 0;
    for e in matching {
        total += 1;
        if shown >= MAX_ROWS {
            continue;
        }
        shown += 1;
        let _ = write!(
            body,
            "<tr class=\"file\"><td>{}</td><td class=\"num\">{}</td><td class=\"digest\">{}</td><td>{}</td></tr>",
            link(&format!("{base}/file/{}", url_path(&e.path)), &e.path),
            e.digest.size(),
            e.digest.hash_hex(),
            if e.executable { "yes" } else { "no" }
        );
    }
    body.push_str("</table>");
    let _ = write!(
        body,
        "<p id=\"shown\">{shown} of {total} matching file(s) shown.</p>"
    );
    Ok(Html(frame(&format!("Manifest {d}"), None, &body)))
}

pub async fn download(
    State(state): State<WebState>,
    Path((hash, size, path)): Path<(String, String, String)>,
) -> Result<Response, PageError> {
    let d = digest(&hash, &size)?;
    let m = load_manifest(&state, d).await?;
    let entry = m
        .entries()
        .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
        .ok()
        .and_then(|i| m.entries().get(i))
        .ok_or_else(|| PageError::not_found(format!("file {path:?} not found in manifest {d}")))?;
    let blob = entry.digest;
    // Verified, as every read the server serves: a damaged blob ends the body early.
    let stream = state
        .store
        .read_blob(blob, 0, blob.size(), stagecache_proto::CHUNK_BYTES)
        .await?;
    let name = path.rsplit('/').next().unwrap_or("download");
    // A plain ASCII fallback name plus the exact name (RFC 6266 / 5987).
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        super::html::url_part(name)
    );
    let body = Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other)));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, blob.size().to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}
