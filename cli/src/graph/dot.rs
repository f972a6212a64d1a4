//! The graph as Graphviz DOT: one cluster per site, one box per node (its
//! apps, transit placements and app links as lines), one edge per peer
//! link coloured by handshake age; lost nodes dashed and grey.

use std::fmt::Write;

use super::layout::node_lines;
use super::model::Graph;

/// A DOT double-quoted string.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A peer link's label: the app and the handshake age.
pub fn link_label(app: &str, age: Option<u64>) -> String {
    match age {
        Some(s) => format!("{app} {s}s"),
        None => format!("{app} no handshake"),
    }
}

/// Renders `g` as DOT.
pub fn render(g: &Graph) -> String {
    let mut s = String::new();
    s.push_str("graph weft {\n");
    s.push_str("  graph [rankdir=LR, fontname=\"sans-serif\", nodesep=0.6];\n");
    s.push_str("  node [shape=box, style=rounded, fontname=\"sans-serif\", fontsize=11];\n");
    s.push_str("  edge [fontname=\"sans-serif\", fontsize=9, penwidth=2];\n");
    for site in &g.sites {
        let _ = writeln!(
            s,
            "  subgraph {} {{",
            quote(&format!("cluster_{}", site.name))
        );
        let _ = writeln!(
            s,
            "    label={}; style=rounded; color=\"#90a4ae\";",
            quote(&format!("site {}", site.name))
        );
        for name in &site.nodes {
            let Some(i) = g.nodes.iter().position(|n| &n.name == name) else {
                continue;
            };
            let n = &g.nodes[i];
            let mut attrs = vec![
                format!("label={}", quote(&node_lines(g, i).join("\n"))),
                format!("id={}", quote(&format!("node-{}", n.name))),
            ];
            if n.lost {
                attrs.push("class=\"node lost\"".into());
                attrs.push("style=\"rounded,dashed\"".into());
                attrs.push("color=grey".into());
                attrs.push("fontcolor=grey".into());
            } else if n.external {
                attrs.push("class=\"node external\"".into());
                attrs.push("style=\"rounded,dotted\"".into());
            } else {
                attrs.push("class=node".into());
            }
            let _ = writeln!(s, "    {} [{}];", quote(&n.name), attrs.join(", "));
        }
        s.push_str("  }\n");
    }
    for l in &g.links {
        let _ = writeln!(
            s,
            "  {} -- {} [label={}, color={}, fontcolor={}, class={}, id={}, tooltip={}];",
            quote(&l.a),
            quote(&l.b),
            quote(&link_label(&l.app, l.age)),
            quote(l.handshake.colour()),
            quote(l.handshake.colour()),
            quote(&format!("edge {}", l.handshake.class())),
            quote(&format!("edge-{}-{}-{}", l.app, l.a, l.b)),
            quote(&format!("{} -- {} ({})", l.a, l.b, l.app)),
        );
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::super::model::{build, tests::now, tests::sample};
    use super::*;

    #[test]
    fn dot_has_a_cluster_per_site_a_node_per_node_and_an_edge_per_link() {
        let g = build(&sample(), None, now());
        let d = render(&g);
        assert!(
            d.starts_with("graph weft {") && d.trim_end().ends_with('}'),
            "{d}"
        );
        assert_eq!(d.matches("subgraph \"cluster_").count(), 2, "{d}");
        assert_eq!(
            d.matches(" -- ").count() - g.links.len(),
            g.links.len(),
            "edge statements and tooltips: {d}"
        );
        assert!(
            d.contains("\"n1\" -- \"n2\" [label=\"demo/web 5s\", color=\"#2e7d32\""),
            "{d}"
        );
        assert!(
            d.contains("\"n1\" -- \"n2\" [label=\"demo/db 400s\", color=\"#f9a825\""),
            "{d}"
        );
        assert!(
            d.contains("\"n1\" -- \"n3\" [label=\"demo/web no handshake\", color=\"#c62828\""),
            "{d}"
        );
        let n3 = d
            .lines()
            .find(|l| l.trim_start().starts_with("\"n3\" ["))
            .unwrap();
        assert!(n3.contains("dashed") && n3.contains("LOST"), "{n3}");
        assert!(d.contains("demo/web (transit) \u{21c4} demo/db"), "{d}");
    }

    #[test]
    fn quoting_keeps_names_inside_their_string() {
        assert_eq!(quote("a\"b\\c\nd\u{1b}"), "\"a\\\"b\\\\c\\nd\"");
    }
}
