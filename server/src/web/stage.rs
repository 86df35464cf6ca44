//! A stage of a build: its full history on the build's manifest (every attempt, every
//! target), and its invalidations with who made them and why.

use super::build::{badge, run_link};
use super::html::{esc, link, page as frame, time, who};
use super::{namespace, ref_url, resolve_ref, PageError, PageResult, WebState};
use crate::ledger::plan::validate_stage_name;
use crate::ledger::{status_of, to_proto};
use axum::response::Html;
use stagecache_proto::v1::StageStatus;
use stagecache_view::graph::latest_build;
use stagecache_view::table::duration;
use stagecache_view::{stage_state, status_name};
use std::fmt::Write;

/// Most records a stage page shows.
const LIMIT: usize = 1000;

pub async fn page(state: WebState, ns_text: &str, name: &str, stage: &str) -> PageResult {
    let ns = namespace(ns_text)?;
    validate_stage_name("stage", stage, false)?;
    let (name, _, digest) = resolve_ref(&state, &ns, name).await?;
    let (ns2, st2) = (ns.clone(), stage.to_string());
    let (history, heads) = state
        .store
        .with_index(move |i| {
            Ok((
                i.ledger_history(&ns2, &digest, Some(&st2), None, LIMIT)?,
                i.ledger_heads(&ns2, &digest)?,
            ))
        })
        .await?;
    let known = state
        .stage_files
        .iter()
        .any(|f| f.file.stages.iter().any(|s| s.name == stage));
    if history.is_empty() && !known {
        return Err(PageError::not_found(format!(
            "stage {stage:?} has no results on ref {name} in namespace {ns} and is in no stage file"
        )));
    }
    let effective: Vec<_> = heads
        .iter()
        .filter(|h| status_of(h) != StageStatus::Invalidated)
        .map(to_proto)
        .collect::<Result<_, _>>()?;
    let current = stage_state(stage, &effective, &latest_build(&effective));
    let nsu = ns.as_str();
    let mut body = String::new();
    let _ = write!(
        body,
        "<p>Build {} · manifest <span class=\"digest\">{}</span> · now {}</p>",
        link(&ref_url(nsu, name.as_str()), name.as_str()),
        esc(&digest.to_string()),
        badge(current)
    );
    body.push_str("<h2>History</h2><table id=\"stage-history\"><tr><th>seq</th><th>status</th><th>target</th><th>attempt</th><th>BAR build</th><th>CI build</th><th>who</th><th>started</th><th>finished</th><th>duration</th><th>fingerprint</th><th>reason</th></tr>");
    for r in &history {
        let p = to_proto(r)?;
        let _ = write!(
            body,
            "<tr class=\"result\" data-status=\"{}\"><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            status_name(p.status),
            p.seq,
            status_name(p.status),
            esc(&p.target),
            p.attempt,
            esc(&p.bar_build_id),
            run_link(&p.run_url, &p.build_id),
            who(&p.actor, &p.identity),
            time(p.started_at_ms),
            time(p.finished_at_ms),
            duration(&p),
            esc(&p.fingerprint),
            esc(&p.reason),
        );
    }
    body.push_str("</table>");
    let invalidations: Vec<_> = history
        .iter()
        .filter(|r| status_of(r) == StageStatus::Invalidated)
        .collect();
    body.push_str("<h2>Invalidations</h2>");
    if invalidations.is_empty() {
        body.push_str("<p id=\"invalidations\">None.</p>");
    } else {
        body.push_str("<table id=\"invalidations\"><tr><th>at</th><th>by</th><th>reason</th></tr>");
        for r in invalidations {
            let _ = write!(
                body,
                "<tr class=\"invalidation\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                time(r.finished_at_ms.max(r.started_at_ms)),
                who(&r.actor, &r.identity),
                esc(&r.reason)
            );
        }
        body.push_str("</table>");
    }
    Ok(Html(frame(
        &format!("Stage {stage} of {}", name.as_str()),
        Some(nsu),
        &body,
    )))
}
