//! A build (a ref): its stage graph for a chosen stage file, drawn as SVG; each stage's
//! state, attempt, CI build link, duration and the reason a plan would give now; claims
//! held; results per target; the ref's history.

use super::html::{bytes, esc, link, page as frame, time, url_part, who};
use super::svg::{stage_graph, state_word, Node};
use super::{
    manifest_url, namespace, query_value, ref_url, resolve_ref, PageError, PageResult, WebState,
};
use crate::ledger::plan::{plan_from_heads, Decision, Graph, Selection};
use crate::ledger::{status_of, to_proto};
use crate::store::ledger::StageKey;
use axum::extract::{Path, RawQuery, State};
use axum::response::Html;
use stagecache_proto::v1::{StageResult, StageStatus};
use stagecache_view::graph::latest_build;
use stagecache_view::table::duration;
use stagecache_view::{stage_state, status_name};
use std::collections::HashMap;
use std::fmt::Write;

/// Separates a ref name from a stage in a URL; `~` is never part of a ref name.
pub const STAGE_SEPARATOR: &str = "/~stage/";

/// `/ns/{ns}/ref/{name}` or `/ns/{ns}/ref/{name}/~stage/{stage}`.
pub async fn ref_or_stage(
    State(state): State<WebState>,
    Path((ns, rest)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> PageResult {
    match rest.split_once(STAGE_SEPARATOR) {
        Some((name, stage)) => super::stage::page(state, &ns, name, stage).await,
        None => page_of_build(state, &ns, &rest, q.as_deref()).await,
    }
}

/// `/ns/{ns}/ref/{name}/~stage/{stage}`.
pub fn stage_url(ns: &str, name: &str, stage: &str) -> String {
    format!("{}{STAGE_SEPARATOR}{}", ref_url(ns, name), url_part(stage))
}

/// A link to a CI run, only for http(s) URLs (a recorded `javascript:` URL is shown as
/// text, never as a link).
pub fn run_link(url: &str, text: &str) -> String {
    let text = if text.is_empty() { "run" } else { text };
    if url.starts_with("https://") || url.starts_with("http://") {
        link(url, text)
    } else if url.is_empty() {
        esc(text)
    } else {
        format!("{} <code>{}</code>", esc(text), esc(url))
    }
}

/// A coloured state badge.
pub fn badge(state: stagecache_view::StageState) -> String {
    let (fill, stroke, text) = state.colours();
    format!(
        "<span class=\"state {}\" style=\"background:{fill};border-color:{stroke};color:{text}\">{}</span>",
        state.class(),
        state_word(state)
    )
}

async fn page_of_build(state: WebState, ns_text: &str, name: &str, q: Option<&str>) -> PageResult {
    let ns = namespace(ns_text)?;
    let (name, rec, digest) = resolve_ref(&state, &ns, name).await?;
    let chosen = query_value(q, "stages");
    let files = state.stage_files.clone();
    let file = match &chosen {
        Some(c) => Some(files.iter().find(|f| &f.name == c).ok_or_else(|| {
            PageError::not_found(format!(
                "stage file {c:?} not found (offered: {})",
                files
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
        None => files
            .iter()
            .find(|f| f.name == "validate-publish")
            .or(files.first()),
    };
    let (ns2, n2) = (ns.clone(), name.clone());
    let (heads, history, manifest) = {
        let heads_ns = ns.clone();
        let heads = state
            .store
            .with_index(move |i| i.ledger_heads(&heads_ns, &digest))
            .await?;
        let history = state
            .store
            .with_index(move |i| i.ref_history(&ns2, &n2, 100))
            .await?;
        (heads, history, state.store.get_manifest(digest).await?)
    };
    let effective: Vec<StageResult> = heads
        .iter()
        .filter(|h| status_of(h) != StageStatus::Invalidated)
        .map(to_proto)
        .collect::<Result<_, _>>()?;
    let latest = latest_build(&effective);
    let nsu = ns.as_str();
    let mut body = String::new();
    let _ = write!(
        body,
        "<p>Manifest {} · {} · updated {} by {} · version {}</p>",
        link(&manifest_url(&digest), &digest.to_string()),
        match &manifest {
            Some(m) => format!("{} files, {}", m.entries().len(), bytes(m.total_bytes())),
            None => "manifest not stored".into(),
        },
        time(rec.updated_at_ms),
        who(&rec.actor, &rec.identity),
        rec.version
    );
    body.push_str("<p>Stage graph: ");
    for (k, f) in files.iter().enumerate() {
        if k > 0 {
            body.push_str(" · ");
        }
        let href = format!(
            "{}?stages={}",
            ref_url(nsu, name.as_str()),
            url_part(&f.name)
        );
        if file.is_some_and(|c| c.name == f.name) {
            let _ = write!(body, "<strong>{}</strong>", esc(&f.name));
        } else {
            body.push_str(&link(&href, &f.name));
        }
    }
    if files.is_empty() {
        body.push_str("none configured (--web-stage-files)");
    }
    body.push_str("</p>");

    if let Some(f) = file {
        let defs: Vec<(String, Vec<String>, String)> = f
            .file
            .stages
            .iter()
            .map(|s| (s.name.clone(), s.depends_on.clone(), s.fingerprint.clone()))
            .collect();
        match Graph::new(defs) {
            Err(e) => {
                let _ = write!(
                    body,
                    "<p class=\"error\">stage file {}: {}</p>",
                    esc(&f.name),
                    esc(&e.to_string())
                );
            }
            Ok(graph) => {
                let plan = plan_from_heads(&graph, &Selection::default(), &[], heads.clone())?;
                let reasons: HashMap<&str, (Decision, &str)> = plan
                    .iter()
                    .map(|p| (p.name.as_str(), (p.decision, p.reason.as_str())))
                    .collect();
                let nodes: Vec<Node> = graph
                    .stages
                    .iter()
                    .map(|s| Node {
                        name: &s.name,
                        depends_on: s.depends_on.clone(),
                        state: stage_state(&s.name, &effective, &latest),
                        href: stage_url(nsu, name.as_str(), &s.name),
                    })
                    .collect();
                body.push_str("<h2>Stage graph</h2>");
                body.push_str("<div class=\"graph\">");
                body.push_str(&stage_graph(&nodes));
                body.push_str("</div>");
                body.push_str("<h2>Stages</h2><table id=\"stages\"><tr><th>stage</th><th>state</th><th>attempt</th><th>CI build</th><th>duration</th><th>plan now</th><th>reason</th></tr>");
                for s in &graph.stages {
                    let st = stage_state(&s.name, &effective, &latest);
                    let r = effective
                        .iter()
                        .find(|r| r.stage == s.name && r.target.is_empty());
                    let (decision, reason) = reasons
                        .get(s.name.as_str())
                        .copied()
                        .unwrap_or((Decision::Run, ""));
                    let _ = write!(
                        body,
                        "<tr class=\"stage\" data-stage=\"{}\" data-state=\"{}\"><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&s.name),
                        st.class(),
                        link(&stage_url(nsu, name.as_str(), &s.name), &s.name),
                        badge(st),
                        r.map(|r| r.attempt.to_string()).unwrap_or_default(),
                        r.map(|r| run_link(&r.run_url, &r.build_id)).unwrap_or_default(),
                        r.map(duration).unwrap_or_default(),
                        match decision {
                            Decision::Run => "RUN",
                            Decision::Skip => "SKIP",
                            Decision::Blocked => "BLOCKED",
                        },
                        esc(reason)
                    );
                }
                body.push_str("</table>");

                // Claims on the graph's stages (stage level), live now.
                let now = state.clock.now_ms();
                let keys: Vec<StageKey> = graph
                    .stages
                    .iter()
                    .map(|s| StageKey {
                        namespace: ns.clone(),
                        subject: digest,
                        stage: s.name.clone(),
                        target: String::new(),
                    })
                    .collect();
                let claims = state
                    .store
                    .with_index(move |i| {
                        let mut out = Vec::new();
                        for k in keys {
                            if let Some(c) = i.claim(&k)? {
                                if c.expires_at_ms > now {
                                    out.push((k.stage, c));
                                }
                            }
                        }
                        Ok(out)
                    })
                    .await?;
                body.push_str("<h2>Claims held</h2>");
                if claims.is_empty() {
                    body.push_str("<p id=\"claims\">None.</p>");
                } else {
                    body.push_str("<table id=\"claims\"><tr><th>stage</th><th>holder</th><th>acquired</th><th>expires</th></tr>");
                    for (stage, c) in &claims {
                        let _ = write!(
                            body,
                            "<tr class=\"claim\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                            esc(stage),
                            esc(&c.holder),
                            time(c.acquired_at_ms),
                            time(c.expires_at_ms)
                        );
                    }
                    body.push_str("</table>");
                }
            }
        }
    }

    let targeted: Vec<&StageResult> = effective.iter().filter(|r| !r.target.is_empty()).collect();
    if !targeted.is_empty() {
        body.push_str("<h2>Results per target</h2><table id=\"targets\"><tr><th>stage</th><th>target</th><th>status</th><th>attempt</th><th>CI build</th></tr>");
        for r in targeted {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                link(&stage_url(nsu, name.as_str(), &r.stage), &r.stage),
                esc(&r.target),
                status_name(r.status),
                r.attempt,
                run_link(&r.run_url, &r.build_id)
            );
        }
        body.push_str("</table>");
    }

    body.push_str("<h2>Ref history</h2><table id=\"ref-history\"><tr><th>version</th><th>at</th><th>who</th><th>reason</th><th>manifest</th><th>change</th></tr>");
    for c in &history {
        let new = crate::store::index::record_digest(&c.new_hash, c.new_size)?;
        let change = if c.had_old {
            let old = crate::store::index::record_digest(&c.old_hash, c.old_size)?;
            link(
                &format!(
                    "/diff?ns={}&a={}&b={}",
                    url_part(nsu),
                    url_part(&old.to_string()),
                    url_part(&new.to_string())
                ),
                "diff with previous",
            )
        } else {
            "created".into()
        };
        let _ = write!(
            body,
            "<tr class=\"ref-change\"><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"digest\">{}</td><td>{change}</td></tr>",
            c.version,
            time(c.changed_at_ms),
            who(&c.actor, &c.identity),
            esc(&c.reason),
            link(&manifest_url(&new), &new.to_string()),
        );
    }
    body.push_str("</table>");
    Ok(Html(frame(
        &format!("Build {}", name.as_str()),
        Some(nsu),
        &body,
    )))
}
