//! End-to-end: `kubectl-weft` against the demo mesh in standalone mode.
//! Brings up two simulated nodes with `examples/` and the demo workloads,
//! waits for every peer handshake, then checks `kubectl-weft get meshapps
//! --state` and that `kubectl-weft graph --state -o svg` draws every node
//! and every peer link of the MeshNode statuses, coloured by handshake age.
//!
//! Needs root, `ip` and `ping`, and the workspace binaries built first
//! (`cargo build --workspace --bins`). Without root the test prints
//! `SKIPPED` — except under `CI=true`, where a skip is a failure. With
//! `WEFT_GRAPH_OUT=PATH` it also leaves the SVG at PATH and the DOT at
//! PATH.dot.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use weft_api::meshnode::HANDSHAKE_FRESH_SECONDS;
use weft_api::standalone::StateDir;
use weft_api::{MeshNode, MeshNodeStatus};
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::scenario::{self, NS};
use weft_e2e::status::read_json;

const READY: Duration = Duration::from_secs(25);

fn weft(c: &Cluster, args: &[&str]) -> String {
    let bin = weft_e2e::bin("kubectl-weft").expect("kubectl-weft");
    let out = Command::new(&bin)
        .args(args)
        .arg("--state")
        .arg(c.state().root())
        .output()
        .expect("run kubectl-weft");
    assert!(
        out.status.success(),
        "kubectl-weft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// (app, a, b) with a < b -> youngest handshake either end reports.
type Links = BTreeMap<(String, String, String), Option<u64>>;

/// Every node's MeshNode spec and status as the state directory holds them,
/// and the peer links they name (spec peers and status peers).
fn links_from_state(state: &StateDir, nodes: &[String]) -> Links {
    let mut links = Links::new();
    let mut add = |x: &str, y: &str, app: &str, age: Option<u64>| {
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        let e = links
            .entry((app.to_string(), a.to_string(), b.to_string()))
            .or_insert(None);
        *e = match (*e, age) {
            (Some(p), Some(q)) => Some(p.min(q)),
            (p, q) => p.or(q),
        };
    };
    for n in nodes {
        let mn: MeshNode = read_json(&state.meshnode(n))
            .expect("read meshnode.json")
            .expect("meshnode.json exists");
        for att in &mn.spec.apps {
            for p in &att.peers {
                add(n, &p.node, &att.app, None);
            }
        }
        let st: MeshNodeStatus = read_json(&state.node_status(n))
            .expect("read status.json")
            .expect("status.json exists");
        for s in &st.apps {
            for p in &s.peers {
                add(n, &p.node, &s.app, p.last_handshake_seconds);
            }
        }
    }
    links
}

fn class_of(age: Option<u64>) -> &'static str {
    match age {
        Some(s) if s < HANDSHAKE_FRESH_SECONDS => "fresh",
        Some(_) => "stale",
        None => "never",
    }
}

/// The value of attribute `name` in the start tag beginning `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let end = tag.find('>')?;
    let head = &tag[..end];
    let key = format!(" {name}=\"");
    let at = head.find(&key)? + key.len();
    let len = head[at..].find('"')?;
    Some(&head[at..at + len])
}

/// `<g class="...">` start tags of the SVG whose class begins with `prefix`.
fn groups<'a>(svg: &'a str, prefix: &str) -> Vec<&'a str> {
    let open = format!("<g class=\"{prefix}");
    svg.match_indices(&open).map(|(i, _)| &svg[i..]).collect()
}

#[test]
fn graph_draws_the_demo_mesh_as_its_meshnodes_report_it() {
    let test = "graph_draws_the_demo_mesh_as_its_meshnodes_report_it";
    if !scenario::privileged_or_skip(test) {
        return;
    }
    if let Err(e) = weft_e2e::bin("kubectl-weft") {
        panic!("{e:#}: run `cargo build --workspace --bins` first");
    }
    let Some(mut c) = scenario::cluster_with_examples(test, 2) else {
        return;
    };
    scenario::add_workloads(&mut c).expect("announce workloads");
    for app in ["web", "db"] {
        c.wait_ready(NS, app, READY)
            .unwrap_or_else(|e| panic!("{NS}/{app} not Ready: {e:#}"));
    }
    let nodes: Vec<String> = (1..=c.n_nodes()).map(|i| c.node_name(i)).collect();
    // Every peer both ways has handshaken.
    weft_e2e::wait_for(
        "a handshake on every peer of every node",
        READY,
        Duration::from_millis(100),
        || {
            for i in 1..=c.n_nodes() {
                let Some(st) = c.node_status(i)? else {
                    return Ok(None);
                };
                if st.apps.len() < 2
                    || st.apps.iter().any(|a| {
                        a.peers.is_empty()
                            || a.peers.iter().any(|p| p.last_handshake_seconds.is_none())
                    })
                {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();

    // get: the kubectl-style table, and JSON/YAML of one app.
    let table = weft(&c, &["get", "meshapps"]);
    println!("kubectl-weft get meshapps:\n{table}");
    assert!(table.starts_with("NAMESPACE"), "{table}");
    for app in ["web", "db"] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(app))
            .unwrap_or_else(|| panic!("no row for {app}:\n{table}"));
        for want in [NS, "True", "2/2", "1/1"] {
            assert!(row.contains(want), "row for {app} lacks {want}:\n{table}");
        }
    }
    let nodes_table = weft(&c, &["get", "meshnodes", "-o", "wide"]);
    println!("kubectl-weft get meshnodes -o wide:\n{nodes_table}");
    for n in &nodes {
        assert!(
            nodes_table.lines().any(|l| l.starts_with(n.as_str())),
            "{n}:\n{nodes_table}"
        );
    }
    let one: serde_json::Value = serde_json::from_str(&weft(
        &c,
        &["get", "meshapp", "web", "-n", NS, "-o", "json"],
    ))
    .expect("JSON");
    assert_eq!(one["kind"], "MeshApp");
    assert_eq!(one["metadata"]["namespace"], NS);
    assert_eq!(one["status"]["peers"], "1/1");
    let yaml = weft(&c, &["get", "meshapps", "-n", NS, "-o", "yaml"]);
    assert!(
        yaml.contains("kind: List") && yaml.contains("name: db"),
        "{yaml}"
    );

    // graph: what the state says before and after drawing; a link's class
    // is checked where both readings agree (an age can cross 180 s between).
    let before = links_from_state(c.state(), &nodes);
    let svg = weft(&c, &["graph", "-o", "svg"]);
    let dot = weft(&c, &["graph", "-o", "dot"]);
    let after = links_from_state(c.state(), &nodes);
    println!("kubectl-weft graph -o dot:\n{dot}");
    if let Ok(path) = std::env::var("WEFT_GRAPH_OUT") {
        std::fs::write(&path, &svg).expect("write SVG");
        std::fs::write(format!("{path}.dot"), &dot).expect("write DOT");
    }
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    // Every node, once, in its site; none lost.
    let node_groups = groups(&svg, "node");
    let drawn: BTreeSet<&str> = node_groups
        .iter()
        .map(|g| attr(g, "id").expect("node id").trim_start_matches("node-"))
        .collect();
    let want: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
    assert_eq!(drawn, want, "nodes drawn");
    assert_eq!(node_groups.len(), nodes.len());
    for g in &node_groups {
        assert_eq!(attr(g, "class"), Some("node"), "not lost: {g:.120}");
        assert_eq!(attr(g, "data-site"), Some("local"));
    }
    assert_eq!(groups(&svg, "site").len(), 1);

    // Every peer link, once, with the class of its handshake age.
    let edges: BTreeMap<(String, String, String), String> = groups(&svg, "edge ")
        .iter()
        .map(|g| {
            let key = (
                attr(g, "data-app").expect("app").to_string(),
                attr(g, "data-a").expect("a").to_string(),
                attr(g, "data-b").expect("b").to_string(),
            );
            let class = attr(g, "class").expect("class");
            (key, class.trim_start_matches("edge ").to_string())
        })
        .collect();
    let keys = |l: &Links| l.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(keys(&before), keys(&after), "links changed while drawing");
    assert_eq!(
        edges.keys().cloned().collect::<BTreeSet<_>>(),
        keys(&after),
        "edges drawn vs peer links of the MeshNodes"
    );
    // The demo: web and db, each one link between the two nodes.
    assert_eq!(edges.len(), 2, "{edges:?}");
    let mut checked = 0;
    for (key, class) in &edges {
        let (b, a) = (class_of(before[key]), class_of(after[key]));
        assert!(after[key].is_some(), "{key:?} has a handshake");
        if a == b {
            assert_eq!(
                class, a,
                "{key:?}: ages {:?} / {:?}",
                before[key], after[key]
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no link had a stable class to check");
    assert_eq!(dot.matches(" -- ").count(), 2 * edges.len(), "{dot}");

    // One app only.
    let web = weft(&c, &["graph", "web", "-n", NS, "-o", "svg"]);
    assert_eq!(groups(&web, "edge ").len(), 1);
    assert!(web.contains(&format!("data-app=\"{NS}/web\"")));

    assert_torn_down_cleanly(c);
}
