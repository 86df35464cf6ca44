//! Stage graphs and plans, as plain functions: validate a graph, then decide for each
//! stage RUN, SKIP or BLOCKED from what already succeeded for the subject.
//!
//! Rules: a stage is SKIP when it has an effective success and is not forced; it is RUN
//! when selected and every dependency is SKIP or RUN; otherwise it is BLOCKED. Forcing a
//! stage never forces its dependents: a dependent that succeeded stays SKIP, and its
//! reason says that an upstream stage will run again.

use crate::error::ServerError;
use stagecache_proto::{quote, thousands};
use std::collections::HashMap;

/// Longest stage or target name, in bytes.
pub const MAX_STAGE_NAME_BYTES: usize = 200;
/// Most stages of one graph.
pub const MAX_GRAPH_STAGES: usize = 10_000;
/// Most dependencies of one stage.
pub const MAX_STAGE_DEPENDENCIES: usize = 1_000;
/// Stages of a dependency cycle that its message names (then its length).
const CYCLE_NAMED_STAGES: usize = 4;

/// Checks a stage or target name: printable text without control characters.
pub fn validate_stage_name(field: &str, name: &str, allow_empty: bool) -> Result<(), ServerError> {
    if name.is_empty() {
        if allow_empty {
            return Ok(());
        }
        return Err(ServerError::InvalidArgument(format!(
            "{field}: is empty; a stage name is required"
        )));
    }
    if name.len() > MAX_STAGE_NAME_BYTES {
        return Err(ServerError::InvalidArgument(format!(
            "{field}: {} exceeds {MAX_STAGE_NAME_BYTES} bytes",
            quote(name)
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ServerError::InvalidArgument(format!(
            "{field}: {} contains control characters",
            quote(name)
        )));
    }
    if name.trim() != name {
        return Err(ServerError::InvalidArgument(format!(
            "{field}: {} has leading or trailing white space",
            quote(name)
        )));
    }
    Ok(())
}

/// One stage of a validated graph.
#[derive(Debug, Clone)]
pub struct StageNode {
    pub name: String,
    pub depends_on: Vec<usize>,
    pub fingerprint: String,
}

/// A validated stage graph: unique names, known dependencies, no cycles.
#[derive(Debug, Clone)]
pub struct Graph {
    pub stages: Vec<StageNode>,
    by_name: HashMap<String, usize>,
    /// Stage indices, dependencies before dependents.
    topo: Vec<usize>,
}

impl Graph {
    /// Validates `(name, depends_on, fingerprint)` triples, in the caller's order.
    pub fn new(defs: Vec<(String, Vec<String>, String)>) -> Result<Self, ServerError> {
        if defs.is_empty() {
            return Err(ServerError::InvalidArgument("graph: has no stages".into()));
        }
        stagecache_proto::names::check_items("graph.stages", defs.len(), MAX_GRAPH_STAGES)?;
        let mut by_name = HashMap::with_capacity(defs.len());
        for (i, (name, _, _)) in defs.iter().enumerate() {
            // The field's name is built only for the error (a plan validates every stage).
            if validate_stage_name("", name, false).is_err() {
                validate_stage_name(&format!("graph.stages[{i}].name"), name, false)?;
            }
            if let Some(j) = by_name.insert(name.clone(), i) {
                return Err(ServerError::InvalidArgument(format!(
                    "graph.stages[{i}]: stage {} is defined twice (also graph.stages[{j}])",
                    quote(name)
                )));
            }
        }
        let mut stages = Vec::with_capacity(defs.len());
        // The names and fingerprints move into the graph: a plan validates one per call.
        for (i, (name, deps, fingerprint)) in defs.into_iter().enumerate() {
            if crate::ledger::validate_text("", &fingerprint).is_err() {
                crate::ledger::validate_text(
                    &format!("graph.stages[{i}].fingerprint"),
                    &fingerprint,
                )?;
            }
            if deps.len() > MAX_STAGE_DEPENDENCIES {
                stagecache_proto::names::check_items(
                    &format!("graph.stages[{i}].depends_on"),
                    deps.len(),
                    MAX_STAGE_DEPENDENCIES,
                )?;
            }
            let mut depends_on = Vec::with_capacity(deps.len());
            for d in &deps {
                let j = *by_name.get(d).ok_or_else(|| {
                    ServerError::InvalidArgument(format!(
                        "stage {}: depends_on {}, which is not a stage of the graph",
                        quote(&name),
                        quote(d)
                    ))
                })?;
                if !depends_on.contains(&j) {
                    depends_on.push(j);
                }
            }
            stages.push(StageNode {
                name,
                depends_on,
                fingerprint,
            });
        }
        let topo = topological_order(&stages)?;
        Ok(Graph {
            stages,
            by_name,
            topo,
        })
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    fn require(&self, field: &str, name: &str) -> Result<usize, ServerError> {
        self.index_of(name).ok_or_else(|| {
            ServerError::InvalidArgument(format!(
                "{field}: {} is not a stage of the graph",
                quote(name)
            ))
        })
    }

    /// By stage index: `start` and every stage that depends on it, directly or not.
    pub fn downstream_of(&self, start: usize) -> Vec<bool> {
        let mut out = vec![false; self.stages.len()];
        out[start] = true;
        // Topological order guarantees dependencies are seen before dependents.
        for &i in &self.topo {
            if self.stages[i].depends_on.iter().any(|&d| out[d]) {
                out[i] = true;
            }
        }
        out
    }
}

/// Kahn's algorithm; on a cycle, names one.
fn topological_order(stages: &[StageNode]) -> Result<Vec<usize>, ServerError> {
    let n = stages.len();
    let mut indegree = vec![0usize; n];
    let mut dependents = vec![Vec::new(); n];
    for (i, s) in stages.iter().enumerate() {
        indegree[i] = s.depends_on.len();
        for &d in &s.depends_on {
            dependents[d].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &j in dependents[i].iter().rev() {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(j);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk dependencies from a stage left over until one repeats: that is a cycle.
    let start = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
    let mut path = vec![start];
    let mut at = start;
    loop {
        let next = stages[at]
            .depends_on
            .iter()
            .copied()
            .find(|&d| indegree[d] > 0)
            .unwrap_or(start);
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<&str> = path[pos..]
                .iter()
                .map(|&i| stages[i].name.as_str())
                .collect();
            cycle.reverse();
            // A cycle of 100,000 stages must not become a 1.5 MB message: name a few.
            let len = cycle.len();
            let mut shown: Vec<String> = cycle
                .iter()
                .take(CYCLE_NAMED_STAGES)
                .map(|s| quote(s).to_string())
                .collect();
            if len > CYCLE_NAMED_STAGES {
                shown.push("…".into());
            }
            shown.push(quote(cycle[0]).to_string());
            return Err(ServerError::InvalidArgument(format!(
                "stage {}: dependency cycle of {} stage(s): {}",
                quote(&stages[next].name),
                thousands(len as u64),
                shown.join(" -> ")
            )));
        }
        path.push(next);
        at = next;
    }
}

/// Which stages the caller wants run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub only: Vec<String>,
    pub from: String,
    pub skip: Vec<String>,
}

/// What is known about a stage's last result on the subject (target "", matching
/// fingerprint), for reasons.
#[derive(Debug, Clone)]
pub enum Known<R> {
    /// An effective success.
    Succeeded(R, String),
    /// A result that is not a success (failed, running, cancelled, invalidated, or a
    /// success under another fingerprint), described in a few words.
    Other(String),
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Run,
    Skip,
    Blocked,
}

#[derive(Debug, Clone)]
pub struct StagePlan<R> {
    pub name: String,
    pub decision: Decision,
    pub reason: String,
    pub succeeded: Option<R>,
    pub blocked_by: Vec<String>,
}

/// Decides every stage of `graph` for a subject from the heads of its ledger lines (as
/// `Index::ledger_heads` returns them): what the `Plan` call answers and the web page shows.
pub fn plan_from_heads(
    graph: &Graph,
    selection: &Selection,
    force: &[String],
    heads: Vec<stagecache_proto::records::StageResultRecord>,
) -> Result<Vec<StagePlan<stagecache_proto::records::StageResultRecord>>, ServerError> {
    // The stage-level lines (target ""), placed at their stage's index in the graph: one
    // per stage, as a subject has one head per (stage, target) line. Lines of stages the
    // graph does not name are not asked about.
    let mut by_stage: Vec<Option<stagecache_proto::records::StageResultRecord>> =
        vec![None; graph.stages.len()];
    for h in heads.into_iter().filter(|h| h.target.is_empty()) {
        if let Some(i) = graph.index_of(&h.stage) {
            by_stage[i] = Some(h);
        }
    }
    // Each stage is asked about once, so its head moves into the plan.
    plan(graph, selection, force, |i, node| {
        let head = by_stage[i].take();
        match head {
            None => Known::Never,
            Some(h) if super::effective_success(&h, &node.fingerprint) => {
                let how = super::describe(&h);
                Known::Succeeded(h, how)
            }
            Some(h) => Known::Other(super::describe_other(&h, &node.fingerprint)),
        }
    })
}

/// Decides every stage of `graph`. `known(index, stage)` says what the ledger holds for
/// the stage at that index of `graph.stages`. Returns the plan in the graph's order.
pub fn plan<R: Clone>(
    graph: &Graph,
    selection: &Selection,
    force: &[String],
    mut known: impl FnMut(usize, &StageNode) -> Known<R>,
) -> Result<Vec<StagePlan<R>>, ServerError> {
    let given = [
        !selection.only.is_empty(),
        !selection.from.is_empty(),
        !selection.skip.is_empty(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ServerError::InvalidArgument(
            "selection: give at most one of only, from and skip".into(),
        ));
    }
    // By stage index: a plan is made on every call, for graphs of a few dozen stages.
    let n = graph.stages.len();
    let mut selected = vec![true; n];
    let selection_note;
    if !selection.only.is_empty() {
        selected = vec![false; n];
        for (i, s) in selection.only.iter().enumerate() {
            selected[graph.require(&format!("only[{i}]"), s)?] = true;
        }
        selection_note = "not selected (only)";
    } else if !selection.from.is_empty() {
        selected = graph.downstream_of(graph.require("from", &selection.from)?);
        selection_note = "not selected (before the from stage)";
    } else {
        for (i, s) in selection.skip.iter().enumerate() {
            selected[graph.require(&format!("skip[{i}]"), s)?] = false;
        }
        selection_note = "not selected (skip)";
    }
    let mut forced = vec![false; n];
    for (i, s) in force.iter().enumerate() {
        forced[graph.require(&format!("force[{i}]"), s)?] = true;
    }

    let mut decided: Vec<Option<StagePlan<R>>> = vec![None; n];
    // Stages that will run again although they succeeded before (forced), and everything
    // that runs downstream of them: their successful dependents are stale but not forced.
    let mut rerun_upstream: Vec<Vec<String>> = vec![Vec::new(); n];
    for &i in &graph.topo {
        let node = &graph.stages[i];
        let mut upstream_rerun: Vec<String> = Vec::new();
        for &d in &node.depends_on {
            for n in &rerun_upstream[d] {
                if !upstream_rerun.contains(n) {
                    upstream_rerun.push(n.clone());
                }
            }
        }
        let state = known(i, node);
        let succeeded_before = matches!(state, Known::Succeeded(..));
        let is_forced = forced[i];
        let p = match (state, is_forced) {
            (Known::Succeeded(r, how), false) => {
                let mut reason = format!("succeeded {how}");
                if !upstream_rerun.is_empty() {
                    reason.push_str(&format!(
                        "; upstream {} will run again, but this stage is not forced (force it to re-run)",
                        upstream_rerun.join(", ")
                    ));
                }
                StagePlan {
                    name: node.name.clone(),
                    decision: Decision::Skip,
                    reason,
                    succeeded: Some(r),
                    blocked_by: vec![],
                }
            }
            (state, _) => {
                let blocked_by: Vec<String> = node
                    .depends_on
                    .iter()
                    .filter(|&&d| {
                        decided[d]
                            .as_ref()
                            .is_some_and(|p| p.decision == Decision::Blocked)
                    })
                    .map(|&d| graph.stages[d].name.clone())
                    .collect();
                let history = match &state {
                    Known::Succeeded(_, how) => format!("succeeded {how}"),
                    Known::Other(what) => what.clone(),
                    Known::Never => "never ran".to_string(),
                };
                if !selected[i] {
                    StagePlan {
                        name: node.name.clone(),
                        decision: Decision::Blocked,
                        reason: format!("{selection_note}; {history}"),
                        succeeded: None,
                        blocked_by,
                    }
                } else if !blocked_by.is_empty() {
                    StagePlan {
                        name: node.name.clone(),
                        decision: Decision::Blocked,
                        reason: format!(
                            "upstream {} has not succeeded and will not run; {history}",
                            blocked_by.join(", ")
                        ),
                        succeeded: None,
                        blocked_by,
                    }
                } else {
                    let reason = if is_forced {
                        format!("forced; {history}; its dependents are not forced")
                    } else {
                        history
                    };
                    StagePlan {
                        name: node.name.clone(),
                        decision: Decision::Run,
                        reason,
                        succeeded: None,
                        blocked_by: vec![],
                    }
                }
            }
        };
        if p.decision == Decision::Run && succeeded_before {
            upstream_rerun.push(node.name.clone());
        }
        rerun_upstream[i] = upstream_rerun;
        decided[i] = Some(p);
    }
    Ok(decided.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(defs: &[(&str, &[&str])]) -> Result<Graph, ServerError> {
        Graph::new(
            defs.iter()
                .map(|(n, d)| {
                    (
                        n.to_string(),
                        d.iter().map(|s| s.to_string()).collect(),
                        String::new(),
                    )
                })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn graph_errors_name_the_stage() {
        let e = graph(&[("a", &[]), ("a", &[])]).unwrap_err().to_string();
        assert!(e.contains("stage \"a\" is defined twice"), "{e}");
        let e = graph(&[("a", &["zz"])]).unwrap_err().to_string();
        assert!(e.contains("stage \"a\": depends_on \"zz\""), "{e}");
        let e = graph(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("dependency cycle"), "{e}");
        let e = graph(&[("self", &["self"])]).unwrap_err().to_string();
        assert!(e.contains("\"self\" -> \"self\""), "{e}");
    }

    #[test]
    fn a_long_cycle_is_named_by_a_few_stages_and_its_length() {
        let n = MAX_GRAPH_STAGES;
        let defs: Vec<(String, Vec<String>, String)> = (0..n)
            .map(|i| {
                let name = format!("stage {i} {}", "x".repeat(150));
                let dep = format!("stage {} {}", (i + 1) % n, "x".repeat(150));
                (name, vec![dep], String::new())
            })
            .collect();
        let e = Graph::new(defs.clone()).unwrap_err().to_string();
        assert!(e.contains("dependency cycle of 10,000 stage(s)"), "{e}");
        assert!(e.len() < 1024, "{} bytes: {e}", e.len());
        let mut over = defs;
        over.push(("one more".into(), vec![], String::new()));
        let e = Graph::new(over).unwrap_err().to_string();
        assert_eq!(e, "graph.stages: 10,001 items, at most 10,000 per call");
    }

    #[test]
    fn forcing_does_not_force_dependents() {
        let g = graph(&[("sign", &[]), ("sbom", &["sign"]), ("publish", &["sbom"])]).unwrap();
        let p = plan(&g, &Selection::default(), &["sign".into()], |_, _| {
            Known::Succeeded((), "in attempt 1".into())
        })
        .unwrap();
        assert_eq!(p[0].decision, Decision::Run);
        assert!(p[0].reason.contains("dependents are not forced"));
        assert_eq!(p[1].decision, Decision::Skip);
        assert!(
            p[1].reason.contains("upstream sign will run again"),
            "{}",
            p[1].reason
        );
        assert!(
            p[2].reason.contains("upstream sign will run again"),
            "{}",
            p[2].reason
        );
    }

    #[test]
    fn selection_and_blocking() {
        let g = graph(&[("a", &[]), ("b", &["a"]), ("c", &["b"])]).unwrap();
        let p = plan::<()>(
            &g,
            &Selection {
                only: vec!["b".into()],
                ..Default::default()
            },
            &[],
            |_, _| Known::Never,
        )
        .unwrap();
        assert_eq!(
            p.iter().map(|s| s.decision).collect::<Vec<_>>(),
            [Decision::Blocked, Decision::Blocked, Decision::Blocked]
        );
        assert_eq!(p[1].blocked_by, ["a"]);
        let p = plan::<()>(
            &g,
            &Selection {
                from: "b".into(),
                ..Default::default()
            },
            &[],
            |_, n| {
                if n.name == "a" {
                    Known::Succeeded((), "x".into())
                } else {
                    Known::Never
                }
            },
        )
        .unwrap();
        assert_eq!(
            p.iter().map(|s| s.decision).collect::<Vec<_>>(),
            [Decision::Skip, Decision::Run, Decision::Run]
        );
        let e = plan::<()>(
            &g,
            &Selection {
                skip: vec!["nope".into()],
                ..Default::default()
            },
            &[],
            |_, _| Known::Never,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("skip[0]: \"nope\" is not a stage"),
            "{e}"
        );
    }
}
