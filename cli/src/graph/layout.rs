//! A small layout for the built-in SVG renderer: one column per site, its
//! nodes stacked in it, each peer link a quadratic curve between two node
//! boxes (parallel links of several apps fan out; links inside a column
//! bulge to its right so they never cross the boxes between).

use std::collections::BTreeMap;

use super::model::Graph;

/// Width of a node box.
pub const NODE_W: f64 = 200.0;
/// Height of a node box's title line, and of each further line.
pub const LINE_H: f64 = 16.0;
const PAD: f64 = 10.0;
const MARGIN: f64 = 30.0;
const SITE_TITLE: f64 = 28.0;
const NODE_GAP: f64 = 40.0;
/// Room a link label takes (an app name and an age).
const LABEL_W: f64 = 150.0;
/// Width of the legend row.
pub const LEGEND_W: f64 = 560.0;
/// Horizontal room between site columns (and right of the last one) for curves.
const COLUMN_GAP: f64 = 160.0;

/// An axis-aligned box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl Rect {
    fn right(&self) -> f64 {
        self.x + self.w
    }
    fn mid_y(&self) -> f64 {
        self.y + self.h / 2.0
    }
}

/// A quadratic Bézier curve `from` → `to` with control point `ctrl`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Curve {
    /// Start.
    pub from: (f64, f64),
    /// Control point.
    pub ctrl: (f64, f64),
    /// End.
    pub to: (f64, f64),
    /// Where its label starts (left end of the text, baseline).
    pub label: (f64, f64),
}

/// Where everything goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Total width.
    pub width: f64,
    /// Total height.
    pub height: f64,
    /// One box per site, in `Graph::sites` order.
    pub sites: Vec<Rect>,
    /// One box per node, in `Graph::nodes` order.
    pub nodes: Vec<Rect>,
    /// One curve per link, in `Graph::links` order.
    pub links: Vec<Curve>,
}

/// Text lines of a node box: its name, then one per app.
pub fn node_lines(g: &Graph, i: usize) -> Vec<String> {
    let n = &g.nodes[i];
    let mut lines = vec![n.name.clone()];
    for p in &n.apps {
        let mut s = p.app.clone();
        if p.transit {
            s.push_str(" (transit)");
        }
        for l in &p.links {
            s.push_str(&format!(" \u{21c4} {l}"));
        }
        lines.push(s);
    }
    if n.lost {
        lines.push("LOST (no heartbeat)".into());
    }
    lines
}

/// Lays `g` out.
pub fn layout(g: &Graph) -> Layout {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        index.insert(n.name.as_str(), i);
    }
    let mut nodes = vec![
        Rect {
            x: 0.0,
            y: 0.0,
            w: 0.0,
            h: 0.0
        };
        g.nodes.len()
    ];
    let mut column = vec![0usize; g.nodes.len()];
    let mut sites = Vec::new();
    let mut height: f64 = 0.0;
    for (c, site) in g.sites.iter().enumerate() {
        let x = MARGIN + c as f64 * (NODE_W + 2.0 * PAD + COLUMN_GAP);
        let mut y = MARGIN + SITE_TITLE;
        for name in &site.nodes {
            let Some(&i) = index.get(name.as_str()) else {
                continue;
            };
            let h = LINE_H * node_lines(g, i).len() as f64 + PAD;
            nodes[i] = Rect {
                x: x + PAD,
                y,
                w: NODE_W,
                h,
            };
            column[i] = c;
            y += h + NODE_GAP;
        }
        let bottom = y - NODE_GAP + PAD;
        sites.push(Rect {
            x,
            y: MARGIN,
            w: NODE_W + 2.0 * PAD,
            h: bottom - MARGIN,
        });
        height = height.max(bottom);
    }
    // Parallel links (same pair, several apps) fan out around their line.
    let mut parallel: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (k, l) in g.links.iter().enumerate() {
        parallel
            .entry((l.a.as_str(), l.b.as_str()))
            .or_default()
            .push(k);
    }
    let mut links = vec![
        Curve {
            from: (0.0, 0.0),
            ctrl: (0.0, 0.0),
            to: (0.0, 0.0),
            label: (0.0, 0.0),
        };
        g.links.len()
    ];
    for ((a, b), ks) in parallel {
        let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) else {
            continue;
        };
        let (ra, rb) = (nodes[ia], nodes[ib]);
        for (j, &k) in ks.iter().enumerate() {
            links[k] = if column[ia] == column[ib] {
                // Out of the right sides, bulging right.
                let bulge = 40.0 + 40.0 * j as f64 + 0.1 * (rb.mid_y() - ra.mid_y()).abs();
                let from = (ra.right(), ra.mid_y());
                let to = (rb.right(), rb.mid_y());
                let mid_y = (from.1 + to.1) / 2.0;
                // Labels of parallel curves stack at their apexes.
                let stack = LINE_H * (j as f64 - (ks.len() - 1) as f64 / 2.0);
                Curve {
                    from,
                    ctrl: (ra.right() + 2.0 * bulge, mid_y),
                    to,
                    label: (ra.right() + bulge + 4.0, mid_y + 4.0 + stack),
                }
            } else {
                let (l, r) = if ra.x < rb.x { (ra, rb) } else { (rb, ra) };
                let from = (l.right(), l.mid_y());
                let to = (r.x, r.mid_y());
                let spread = 36.0 * (j as f64 - (ks.len() - 1) as f64 / 2.0);
                let ctrl = ((from.0 + to.0) / 2.0, (from.1 + to.1) / 2.0 + spread);
                let apex = (
                    0.5 * ctrl.0 + 0.25 * (from.0 + to.0),
                    0.5 * ctrl.1 + 0.25 * (from.1 + to.1),
                );
                Curve {
                    from,
                    ctrl,
                    to,
                    label: (apex.0 - 40.0, apex.1 - 4.0),
                }
            };
        }
    }
    let columns = MARGIN + g.sites.len() as f64 * (NODE_W + 2.0 * PAD + COLUMN_GAP);
    // Room for the labels right of the curves, and for the legend.
    let labels = links
        .iter()
        .map(|c| c.label.0 + LABEL_W)
        .fold(0.0_f64, f64::max);
    let width = columns.max(labels).max(LEGEND_W);
    let curves_bottom = links
        .iter()
        .map(|c| c.ctrl.1.max(c.from.1).max(c.to.1))
        .fold(0.0_f64, f64::max);
    Layout {
        width,
        height: height.max(curves_bottom) + MARGIN + 3.0 * LINE_H,
        sites,
        nodes,
        links,
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{build, tests::now, tests::sample};
    use super::*;

    fn overlap(a: &Rect, b: &Rect) -> bool {
        a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
    }

    #[test]
    fn nodes_sit_in_their_site_column_without_overlapping() {
        let g = build(&sample(), None, now());
        let l = layout(&g);
        for (i, n) in g.nodes.iter().enumerate() {
            let s = g.sites.iter().position(|s| s.name == n.site).unwrap();
            let (r, sr) = (l.nodes[i], l.sites[s]);
            assert!(
                r.x >= sr.x && r.right() <= sr.right(),
                "{} in its column",
                n.name
            );
            assert!(
                r.y >= sr.y && r.y + r.h <= sr.y + sr.h,
                "{} in its column",
                n.name
            );
            assert!(r.right() <= l.width && r.y + r.h <= l.height);
            for (j, m) in l.nodes.iter().enumerate() {
                assert!(i == j || !overlap(&r, m), "{i} overlaps {j}");
            }
        }
    }

    #[test]
    fn links_join_their_nodes_and_parallel_ones_differ() {
        let g = build(&sample(), None, now());
        let l = layout(&g);
        for (k, link) in g.links.iter().enumerate() {
            let c = l.links[k];
            let ra = l.nodes[g.nodes.iter().position(|n| n.name == link.a).unwrap()];
            let rb = l.nodes[g.nodes.iter().position(|n| n.name == link.b).unwrap()];
            let on = |p: (f64, f64), r: Rect| {
                (p.0 == r.x || p.0 == r.right()) && (p.1 - r.mid_y()).abs() < 1e-9
            };
            assert!(
                on(c.from, ra) || on(c.from, rb),
                "link {k} starts at a node"
            );
            assert!(on(c.to, ra) || on(c.to, rb), "link {k} ends at a node");
        }
        // n1-n2 carries db and web: two distinct curves, labels apart.
        assert_ne!(l.links[0], l.links[1]);
        let (p, q) = (l.links[0].label, l.links[1].label);
        assert!((p.1 - q.1).abs() >= LINE_H, "labels {p:?} {q:?} overlap");
        for c in &l.links {
            assert!(c.label.0 + LABEL_W <= l.width, "label inside the picture");
        }
        assert!(l.width >= LEGEND_W);
    }
}
