//! The stage graph as inline SVG: one box per stage, coloured by its state as the CLI's
//! Mermaid graph colours it (`StageState::colours`), linked to the stage's page; one path
//! per dependency. Positions come from [`super::layout`].

use super::html::esc;
use super::layout::layout;
use stagecache_view::StageState;
use std::fmt::Write;

const NODE_W: usize = 210;
const NODE_H: usize = 40;
const GAP_X: usize = 60;
const GAP_Y: usize = 18;
const MARGIN: usize = 12;
/// Labels longer than this are cut (the full name is in the box's `<title>`).
const LABEL_CHARS: usize = 30;

/// One stage to draw.
pub struct Node<'a> {
    pub name: &'a str,
    pub depends_on: Vec<usize>,
    pub state: StageState,
    pub href: String,
}

/// The `<svg>` element for the graph.
pub fn stage_graph(nodes: &[Node]) -> String {
    let deps: Vec<Vec<usize>> = nodes.iter().map(|n| n.depends_on.clone()).collect();
    let l = layout(&deps);
    let tallest = l.layers.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let width = MARGIN * 2 + l.layers.len().max(1) * (NODE_W + GAP_X) - GAP_X;
    let height = MARGIN * 2 + tallest * (NODE_H + GAP_Y) - GAP_Y;
    // Each column is centred vertically.
    let pos = |i: usize| {
        let col = l.layer[i];
        let offset = (tallest - l.layers[col].len()) * (NODE_H + GAP_Y) / 2;
        (
            MARGIN + col * (NODE_W + GAP_X),
            MARGIN + offset + l.slot[i] * (NODE_H + GAP_Y),
        )
    };
    let mut out = String::with_capacity(512 * nodes.len() + 512);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"stage-graph\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"stage graph\">"
    );
    out.push_str("<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" fill=\"#8c959f\"/></marker></defs>");
    for (i, n) in nodes.iter().enumerate() {
        for &d in &n.depends_on {
            if d >= nodes.len() || d == i {
                continue;
            }
            let (x0, y0) = pos(d);
            let (x1, y1) = pos(i);
            let (sx, sy) = (x0 + NODE_W, y0 + NODE_H / 2);
            let (ex, ey) = (x1, y1 + NODE_H / 2);
            let mid = (sx + ex) / 2;
            let _ = write!(
                out,
                "<path class=\"edge\" data-from=\"{}\" data-to=\"{}\" d=\"M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}\" fill=\"none\" stroke=\"#8c959f\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"/>",
                esc(nodes[d].name),
                esc(n.name)
            );
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = pos(i);
        let (fill, stroke, text) = n.state.colours();
        let label: String = if n.name.chars().count() > LABEL_CHARS {
            let cut: String = n.name.chars().take(LABEL_CHARS - 1).collect();
            format!("{cut}…")
        } else {
            n.name.to_string()
        };
        let _ = write!(
            out,
            "<a href=\"{href}\"><g class=\"node {class}\" data-stage=\"{name}\" data-state=\"{class}\"><title>{name}: {word}</title><rect x=\"{x}\" y=\"{y}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.5\"/><text x=\"{tx}\" y=\"{ty}\" fill=\"{text}\" font-size=\"12\" text-anchor=\"middle\">{label}</text><text x=\"{tx}\" y=\"{ty2}\" fill=\"{text}\" font-size=\"10\" text-anchor=\"middle\">{word}</text></g></a>",
            href = esc(&n.href),
            class = n.state.class(),
            name = esc(n.name),
            word = state_word(n.state),
            tx = x + NODE_W / 2,
            ty = y + 17,
            ty2 = y + 32,
            label = esc(&label),
        );
    }
    out.push_str("</svg>");
    out
}

/// The words people read for a state.
pub fn state_word(s: StageState) -> &'static str {
    match s {
        StageState::Succeeded => "succeeded",
        StageState::Skipped => "skipped (reused)",
        StageState::Failed => "failed",
        StageState::Running => "running",
        StageState::NotRun => "not run",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_node_per_stage_and_an_edge_per_dependency_escaped() {
        let nodes = [
            Node {
                name: "Sign <&\"'>",
                depends_on: vec![],
                state: StageState::Failed,
                href: "/x?a=1&b=2".into(),
            },
            Node {
                name: "Publish",
                depends_on: vec![0],
                state: StageState::NotRun,
                href: "/p".into(),
            },
        ];
        let svg = stage_graph(&nodes);
        assert_eq!(svg.matches("<g class=\"node").count(), 2);
        assert_eq!(svg.matches("<path class=\"edge\"").count(), 1);
        assert!(svg.contains("data-from=\"Sign &lt;&amp;&quot;&#39;&gt;\" data-to=\"Publish\""));
        assert!(svg.contains("data-state=\"failed\""));
        assert!(svg.contains(&format!("fill=\"{}\"", StageState::Failed.colours().0)));
        assert!(svg.contains("href=\"/x?a=1&amp;b=2\""));
        assert!(!svg.contains("<&"));
    }
}
