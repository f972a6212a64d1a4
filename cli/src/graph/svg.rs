//! The graph as SVG, drawn with the built-in layout (no Graphviz needed).
//! Every site is a `<g class="site">`, every node a `<g class="node">`
//! (`node lost` when lost) and every peer link a `<g class="edge CLASS">`
//! with CLASS `fresh`, `stale` or `never`; each carries an `id` and a
//! `<title>` naming what it shows, so the picture can be checked by a
//! program as well as by eye.

use std::fmt::Write;

use super::dot::link_label;
use super::layout::{layout, node_lines, LINE_H};
use super::model::{Graph, Handshake};

/// Escapes text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "text{font-family:sans-serif;font-size:12px;fill:#263238}\
.site rect{fill:#f5f7f8;stroke:#90a4ae;stroke-width:1}\
.site text{font-weight:bold;fill:#546e7a}\
.node rect{fill:#ffffff;stroke:#37474f;stroke-width:1.5}\
.node text.name{font-weight:bold}\
.node.lost rect{fill:#eeeeee;stroke:#9e9e9e;stroke-dasharray:6 4}\
.node.lost text{fill:#9e9e9e}\
.node.external rect{stroke-dasharray:2 3}\
.edge path{fill:none;stroke-width:2}\
.edge text{font-size:10px}";

/// Renders `g` as a standalone SVG document.
pub fn render(g: &Graph) -> String {
    let l = layout(g);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}">"#,
        w = l.width,
        h = l.height
    );
    let _ = writeln!(s, "<title>Weft mesh</title>\n<style>{STYLE}</style>");
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    for (site, r) in g.sites.iter().zip(&l.sites) {
        let _ = writeln!(
            s,
            r#"<g class="site" id="site-{id}"><title>site {id}</title><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" rx="8"/><text x="{tx:.1}" y="{ty:.1}">site {id}</text></g>"#,
            id = escape(&site.name),
            x = r.x,
            y = r.y,
            w = r.w,
            h = r.h,
            tx = r.x + 10.0,
            ty = r.y + 18.0,
        );
    }
    for (k, (link, c)) in g.links.iter().zip(&l.links).enumerate() {
        let colour = link.handshake.colour();
        let (mx, my) = c.label;
        let dash = if link.handshake == Handshake::Never {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<g class="edge {class}" id="edge-{k}" data-app="{app}" data-a="{a}" data-b="{b}"><title>{a} -- {b} ({app}): {label}</title><path d="M{fx:.1},{fy:.1} Q{cx:.1},{cy:.1} {tx:.1},{ty:.1}" stroke="{colour}"{dash}/><text x="{mx:.1}" y="{my:.1}" fill="{colour}">{label}</text></g>"#,
            class = link.handshake.class(),
            app = escape(&link.app),
            a = escape(&link.a),
            b = escape(&link.b),
            label = escape(&link_label(&link.app, link.age)),
            fx = c.from.0,
            fy = c.from.1,
            cx = c.ctrl.0,
            cy = c.ctrl.1,
            tx = c.to.0,
            ty = c.to.1,
        );
    }
    for (i, (n, r)) in g.nodes.iter().zip(&l.nodes).enumerate() {
        let class = if n.lost {
            "node lost"
        } else if n.external {
            "node external"
        } else {
            "node"
        };
        let _ = write!(
            s,
            r#"<g class="{class}" id="node-{id}" data-site="{site}"><title>{id}</title><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" rx="6"/>"#,
            id = escape(&n.name),
            site = escape(&n.site),
            x = r.x,
            y = r.y,
            w = r.w,
            h = r.h,
        );
        for (j, line) in node_lines(g, i).iter().enumerate() {
            let cls = if j == 0 { r#" class="name""# } else { "" };
            let _ = write!(
                s,
                r#"<text x="{x:.1}" y="{y:.1}"{cls}>{t}</text>"#,
                x = r.x + 8.0,
                y = r.y + LINE_H * (j as f64 + 1.0),
                t = escape(line),
            );
        }
        s.push_str("</g>\n");
    }
    // Legend.
    let mut x = 30.0;
    let y = l.height - 18.0;
    for (h, what) in [
        (Handshake::Fresh, "handshake < 180 s"),
        (Handshake::Stale, "handshake older"),
        (Handshake::Never, "no handshake"),
    ] {
        let _ = writeln!(
            s,
            r#"<g class="legend"><line x1="{x:.1}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}" stroke="{c}" stroke-width="3"/><text x="{tx:.1}" y="{ty:.1}">{what}</text></g>"#,
            x2 = x + 24.0,
            c = h.colour(),
            tx = x + 30.0,
            ty = y + 4.0,
            what = escape(what),
        );
        x += 160.0;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::super::model::{build, tests::now, tests::sample};
    use super::*;

    #[test]
    fn svg_has_a_group_per_site_node_and_link_with_ids_and_classes() {
        let g = build(&sample(), None, now());
        let svg = render(&g);
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<g class=\"site\"").count(), 2);
        assert_eq!(svg.matches("<g class=\"node").count(), 3);
        assert_eq!(svg.matches("<g class=\"edge ").count(), 4);
        for n in ["n1", "n2", "n3"] {
            assert!(svg.contains(&format!("id=\"node-{n}\"")), "{n}");
        }
        assert!(
            svg.contains("<g class=\"node lost\" id=\"node-n3\""),
            "{svg}"
        );
        assert!(svg.contains(
            "<g class=\"edge fresh\" id=\"edge-1\" data-app=\"demo/web\" data-a=\"n1\" data-b=\"n2\">"
        ));
        assert!(svg.contains("<g class=\"edge stale\" id=\"edge-0\" data-app=\"demo/db\""));
        assert_eq!(svg.matches("<g class=\"edge never\"").count(), 2);
        // Balanced groups, no stray markup from names.
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
    }

    /// A small XML well-formedness check: every `<` opens a tag, start and
    /// end tags nest, every `&` starts an entity.
    pub(crate) fn assert_well_formed(xml: &str) {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = xml;
        while let Some(i) = rest.find('<') {
            let text = &rest[..i];
            assert!(!text.contains('>'), "stray '>' in {text:?}");
            for (j, _) in text.match_indices('&') {
                let ent = &text[j..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                        .iter()
                        .any(|e| ent.starts_with(e)),
                    "bare '&' in {text:?}"
                );
            }
            let end = rest[i..].find('>').expect("unclosed tag") + i;
            let tag = &rest[i + 1..end];
            assert!(!tag.contains('<'), "'<' inside tag {tag:?}");
            if let Some(closing) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(closing.trim()), "end tag {tag:?}");
            } else if !tag.ends_with('/') {
                let n = tag.split_whitespace().next().expect("tag name");
                assert!(
                    n.chars().next().is_some_and(|c| c.is_ascii_alphabetic()),
                    "invalid element name in <{tag}>"
                );
                stack.push(n);
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed elements {stack:?}");
    }

    #[test]
    fn svg_is_well_formed_xml_even_with_odd_names() {
        let mut nodes = sample();
        nodes[0].spec.site = "a<b&c".into();
        let svg = render(&build(&nodes, None, now()));
        assert_well_formed(&svg);
        assert!(svg.contains("handshake &lt; 180 s"));
        assert!(svg.contains("site a&lt;b&amp;c"));
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
