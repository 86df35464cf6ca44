//! The README's plan rules, for every generated stage graph, ledger and selection: a plan
//! never panics and is deterministic; SKIP exactly for an effective success that is not
//! forced; RUN only when selected and every dependency is RUN or SKIP (and then always);
//! BLOCKED otherwise, naming only dependencies that are themselves BLOCKED.

use stagecache_server::ledger::plan::{plan, Decision, Graph, Known, Selection};

/// A DAG of up to 12 stages: each depends on a subset of the stages before it (given in
/// a shuffled order, so the caller's order is not topological).
#[derive(Debug, Clone)]
struct Case {
    deps: Vec<Vec<usize>>,
    order: Vec<usize>,
    succeeded: Vec<bool>,
    forced: Vec<bool>,
    /// 0: all, 1: only, 2: from, 3: skip.
    selection_kind: u8,
    chosen: Vec<bool>,
}

/// Deterministic pseudo-random numbers (xorshift): every run checks the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn flags(&mut self, n: usize) -> Vec<bool> {
        (0..n).map(|_| self.next() & 1 == 1).collect()
    }
}

fn case(seed: u64) -> Case {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let n = 1 + rng.below(11);
    let deps = (0..n)
        .map(|i| (0..i).filter(|_| rng.below(3) == 0).collect())
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    Case {
        deps,
        order,
        succeeded: rng.flags(n),
        forced: (0..n).map(|_| rng.below(5) == 0).collect(),
        selection_kind: rng.below(4) as u8,
        chosen: rng.flags(n),
    }
}

fn name(i: usize) -> String {
    format!("stage {i}")
}

#[test]
fn plans_keep_the_readme_rules() {
    for seed in 0..5_000 {
        check(&case(seed));
    }
}

fn check(c: &Case) {
    {
        let n = c.deps.len();
        let defs: Vec<(String, Vec<String>, String)> = c
            .order
            .iter()
            .map(|&i| {
                (
                    name(i),
                    c.deps[i].iter().map(|&d| name(d)).collect(),
                    String::new(),
                )
            })
            .collect();
        let graph = Graph::new(defs).expect("a DAG is a valid graph");
        let chosen: Vec<String> = (0..n).filter(|&i| c.chosen[i]).map(name).collect();
        let mut selection = Selection::default();
        match c.selection_kind {
            1 => selection.only = chosen,
            2 => selection.from = chosen.first().cloned().unwrap_or_default(),
            3 => selection.skip = chosen,
            _ => {}
        }
        let force: Vec<String> = (0..n).filter(|&i| c.forced[i]).map(name).collect();
        let known = |_: usize, node: &stagecache_server::ledger::plan::StageNode| {
            let i: usize = node.name["stage ".len()..].parse().unwrap();
            if c.succeeded[i] {
                Known::Succeeded((), "in attempt 1".into())
            } else {
                Known::Never
            }
        };
        let p = plan(&graph, &selection, &force, known).expect("known names plan");
        let again = plan(&graph, &selection, &force, known).unwrap();
        assert_eq!(p.len(), n);
        let by_name: std::collections::HashMap<&str, Decision> =
            p.iter().map(|s| (s.name.as_str(), s.decision)).collect();
        let selected = |i: usize| -> bool {
            match c.selection_kind {
                1 if c.chosen.contains(&true) => c.chosen[i],
                2 if c.chosen.contains(&true) => {
                    let from = (0..n).find(|&j| c.chosen[j]).unwrap();
                    graph.downstream_of(graph.index_of(&name(from)).unwrap())
                        [graph.index_of(&name(i)).unwrap()]
                }
                3 => !c.chosen[i],
                _ => true,
            }
        };
        for (s, s2) in p.iter().zip(&again) {
            assert_eq!(&s.name, &s2.name);
            assert_eq!(s.decision, s2.decision);
            assert_eq!(&s.reason, &s2.reason);
            let i: usize = s.name["stage ".len()..].parse().unwrap();
            let deps_ok = c.deps[i]
                .iter()
                .all(|&d| by_name[name(d).as_str()] != Decision::Blocked);
            let skip = c.succeeded[i] && !c.forced[i];
            match s.decision {
                Decision::Skip => assert!(skip, "{}: skipped without an unforced success", s.name),
                Decision::Run => {
                    assert!(
                        !skip && selected(i) && deps_ok,
                        "{}: ran: {}",
                        s.name,
                        s.reason
                    );
                }
                Decision::Blocked => {
                    assert!(!skip, "{}", s.name);
                    assert!(
                        !selected(i) || !deps_ok,
                        "{}: blocked: {}",
                        s.name,
                        s.reason
                    );
                    for b in &s.blocked_by {
                        assert!(
                            c.deps[i].iter().any(|&d| &name(d) == b),
                            "{b} is not a dependency of {}",
                            s.name
                        );
                        assert_eq!(by_name[b.as_str()], Decision::Blocked);
                    }
                    if selected(i) {
                        assert!(!s.blocked_by.is_empty(), "{}: {}", s.name, s.reason);
                    }
                }
            }
        }
    }
}
