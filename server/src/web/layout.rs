//! A layered layout of a stage DAG, drawn left to right: each stage's layer is the length
//! of the longest dependency path leading to it (so every edge points to a later layer),
//! and stages within a layer are ordered by the barycentre of their neighbours, sweeping
//! forwards and backwards, keeping the order with the fewest edge crossings.

/// Where each node goes: `layer[i]` (column) and `slot[i]` (row within the column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub layer: Vec<usize>,
    pub slot: Vec<usize>,
    /// Node indices of each layer, in slot order.
    pub layers: Vec<Vec<usize>>,
}

/// Lays out `deps[i]` = the nodes node `i` depends on (edges `dep -> i`). A cycle (which a
/// validated graph does not have) cannot loop: layers stop growing after `n` rounds.
pub fn layout(deps: &[Vec<usize>]) -> Layout {
    let n = deps.len();
    let mut layer = vec![0usize; n];
    for _ in 0..n {
        let mut moved = false;
        for i in 0..n {
            for &d in &deps[i] {
                if d < n && d != i && layer[i] < layer[d] + 1 {
                    layer[i] = layer[d] + 1;
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let depth = layer.iter().copied().max().map_or(0, |m| m + 1);
    let mut layers: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (i, &l) in layer.iter().enumerate() {
        layers[l].push(i);
    }
    let mut succs = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            if d < n {
                succs[d].push(i);
            }
        }
    }
    let mut slot = slots(&layers, n);
    let mut best = (crossings(deps, &layer, &slot), layers.clone());
    for _ in 0..4 {
        // Forwards: order by where the dependencies are; backwards: by the dependents.
        for layer in layers.iter_mut().skip(1) {
            reorder(layer, deps, &slot);
            set_slots(layer, &mut slot);
        }
        for layer in layers.iter_mut().rev().skip(1) {
            reorder(layer, &succs, &slot);
            set_slots(layer, &mut slot);
        }
        let c = crossings(deps, &layer, &slot);
        if c < best.0 {
            best = (c, layers.clone());
        }
    }
    let layers = best.1;
    let slot = slots(&layers, n);
    Layout {
        layer,
        slot,
        layers,
    }
}

fn slots(layers: &[Vec<usize>], n: usize) -> Vec<usize> {
    let mut slot = vec![0; n];
    for l in layers {
        set_slots(l, &mut slot);
    }
    slot
}

fn set_slots(layer: &[usize], slot: &mut [usize]) {
    for (s, &i) in layer.iter().enumerate() {
        slot[i] = s;
    }
}

/// Stable sort by the mean slot of each node's neighbours; nodes without any keep their
/// current slot as their key.
fn reorder(layer: &mut [usize], neighbours: &[Vec<usize>], slot: &[usize]) {
    let mut keyed: Vec<(f64, usize)> = layer
        .iter()
        .map(|&i| {
            let ns = &neighbours[i];
            let key = if ns.is_empty() {
                slot[i] as f64
            } else {
                ns.iter().map(|&j| slot[j] as f64).sum::<f64>() / ns.len() as f64
            };
            (key, i)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (k, (_, i)) in keyed.into_iter().enumerate() {
        layer[k] = i;
    }
}

/// Pairs of edges that cross, counting edges as straight segments between (layer, slot)
/// points: two edges between the same pair of layers cross when their ends swap order.
pub fn crossings(deps: &[Vec<usize>], layer: &[usize], slot: &[usize]) -> usize {
    let edges: Vec<(usize, usize)> = deps
        .iter()
        .enumerate()
        .flat_map(|(i, ds)| ds.iter().map(move |&d| (d, i)))
        .filter(|&(d, i)| d < layer.len() && d != i)
        .collect();
    let mut count = 0;
    for (k, &(a0, a1)) in edges.iter().enumerate() {
        for &(b0, b1) in &edges[k + 1..] {
            if layer[a0] != layer[b0] || layer[a1] != layer[b1] {
                continue;
            }
            let s = |x: usize, y: usize| (slot[x] as i64 - slot[y] as i64).signum();
            if s(a0, b0) * s(a1, b1) < 0 {
                count += 1;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_longest_paths() {
        // 0 -> 1 -> 2, and 0 -> 2 directly: 2 goes after 1, not beside it.
        let l = layout(&[vec![], vec![0], vec![0, 1], vec![]]);
        assert_eq!(l.layer, [0, 1, 2, 0]);
        assert_eq!(l.layers.len(), 3);
        assert_eq!(l.layers[0].len(), 2);
        // Every edge goes to a later layer.
        for (i, ds) in [vec![], vec![0], vec![0, 1], vec![]].iter().enumerate() {
            for &d in ds {
                assert!(l.layer[d] < l.layer[i]);
            }
        }
    }

    #[test]
    fn ordering_removes_avoidable_crossings() {
        // Sources a=0, b=1; c=2 depends on b, d=3 on a. In index order the edges cross.
        let deps = vec![vec![], vec![], vec![1], vec![0]];
        let naive = crossings(&deps, &[0, 0, 1, 1], &[0, 1, 0, 1]);
        assert_eq!(naive, 1);
        let l = layout(&deps);
        assert_eq!(crossings(&deps, &l.layer, &l.slot), 0);
        // Slots are a permutation within each layer.
        for layer in &l.layers {
            let mut s: Vec<usize> = layer.iter().map(|&i| l.slot[i]).collect();
            s.sort();
            assert_eq!(s, (0..layer.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_cycle_does_not_hang() {
        let l = layout(&[vec![1], vec![0]]);
        assert_eq!(l.layer.len(), 2);
    }

    #[test]
    fn the_validate_publish_graph_lays_out_without_crossings_it_can_avoid() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/pipelines/validate-publish.stages.yaml"
        ))
        .unwrap();
        let file = stagecache_view::stages::StageFile::parse(&text).unwrap();
        let index = |n: &str| file.stages.iter().position(|s| s.name == n).unwrap();
        let deps: Vec<Vec<usize>> = file
            .stages
            .iter()
            .map(|s| s.depends_on.iter().map(|d| index(d)).collect())
            .collect();
        let l = layout(&deps);
        let naive_slots = slots(
            &{
                let mut layers = vec![Vec::new(); l.layers.len()];
                for (i, &x) in l.layer.iter().enumerate() {
                    layers[x].push(i);
                }
                layers
            },
            deps.len(),
        );
        assert!(crossings(&deps, &l.layer, &l.slot) <= crossings(&deps, &l.layer, &naive_slots));
        assert_eq!(l.layer.len(), file.stages.len());
    }
}
