//! The Grafana dashboard `config/grafana/weft-dashboard.json` queries only
//! metrics the binaries really export.
//!
//! The exported names are not copied from the source or the README: the
//! test builds the node daemon's and the operator's real `Metrics` objects
//! in-process (plain structs around a `prometheus_client` registry: no
//! root, no network, no API server), records one pass in each with every
//! kind of figure (a family with no series is left out of the exposition:
//! per-app and per-peer series, policy counters, error reasons), renders
//! their text exposition and collects the family names of the `# TYPE`
//! lines and the names of the sample lines. So a renamed metric, or a unit
//! or `_total` suffix added by the encoder, is seen as the scraper sees it.
//!
//! The dashboard side is read loosely: every identifier starting with
//! `weft_` in an `expr` of a panel target or in a template variable's
//! query, outside string literals and not called as a function. A name is
//! exported when it is a sample name or a family name, or `_bucket`,
//! `_sum` or `_count` of a histogram or summary family.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use weft_api::{AppStatus, MeshNodeStatus, PeerStatus};
use weft_node_daemon::core::state::{Counter, PolicyCounters};
use weft_node_daemon::run::metrics::Metrics as DaemonMetrics;
use weft_node_daemon::run::reconcile::PassReport;
use weft_operator::k8s::error::Error as OperatorError;
use weft_operator::k8s::metrics::Metrics as OperatorMetrics;
use weft_operator::k8s::reconcile::ReconcileReport;

const DASHBOARD: &str = include_str!("../../config/grafana/weft-dashboard.json");
const DASHBOARD_PATH: &str = "config/grafana/weft-dashboard.json";

/// What the exposition declares: family name to type (`# TYPE`), and every
/// sample name.
#[derive(Debug, Default)]
struct Exported {
    families: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Exported {
    fn read(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(decl) = line.strip_prefix("# TYPE ") {
                let mut words = decl.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    self.families.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                self.samples.insert(name.to_string());
            }
        }
    }

    /// Whether a query naming `name` finds series.
    fn has(&self, name: &str) -> bool {
        if self.samples.contains(name) || self.families.contains_key(name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .and_then(|family| self.families.get(family))
                .is_some_and(|kind| kind == "histogram" || kind == "summary")
        })
    }

    /// The family a queried name belongs to (itself for a plain series).
    fn family_of<'a>(&self, name: &'a str) -> &'a str {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| self.families.contains_key(*f))
            })
            .unwrap_or(name)
    }
}

/// A node daemon pass with one app, two peers (one never handshaken),
/// a policy table with a rule and drops, writes and errors.
fn daemon_pass() -> PassReport {
    let mut policy = PolicyCounters::default();
    policy.rules.insert(
        "demo/web-ingress:ingress[0].ports[0]".into(),
        Counter {
            packets: 3,
            bytes: 180,
        },
    );
    policy.dropped_ingress = Counter {
        packets: 2,
        bytes: 120,
    };
    policy.established = Counter {
        packets: 40,
        bytes: 4000,
    };
    PassReport {
        writes: 2,
        writes_by_op: [("set_peer", 1), ("set_policy", 1)].into_iter().collect(),
        error_reasons: vec!["dataplane"],
        policy_counters: [("demo/web".to_string(), policy)].into_iter().collect(),
        status: MeshNodeStatus {
            apps: vec![AppStatus {
                app: "demo/web".into(),
                peers: vec![
                    PeerStatus {
                        node: "n2".into(),
                        last_handshake_seconds: Some(4),
                        rx_bytes: 1000,
                        tx_bytes: 2000,
                        rx_packets: 11,
                        tx_packets: 12,
                        active_connections: 2,
                        ..Default::default()
                    },
                    PeerStatus {
                        node: "n3".into(),
                        ..Default::default()
                    },
                ],
                active_connections: Some(3),
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The node daemon's exposition after one full pass and a status write.
fn daemon_exposition() -> String {
    let m = DaemonMetrics::default();
    m.observe_pass(Duration::from_millis(12), &daemon_pass());
    m.status_written();
    m.error("status_write");
    m.render()
}

/// The operator's exposition after a good pass and a failed one.
fn operator_exposition() -> String {
    let m = OperatorMetrics::default();
    let report = ReconcileReport {
        meshnode_writes: vec!["n1".into()],
        status_writes: vec!["MeshApp demo/web".into()],
        peers_up: 1,
        peers_total: 2,
        ..Default::default()
    };
    m.observe_pass(Duration::from_millis(30), Ok(&report));
    let failed = OperatorError::Serialize {
        what: "MeshNode n1".into(),
        source: serde_json::from_str::<u8>("x").unwrap_err(),
    };
    m.observe_pass(Duration::from_millis(5), Err(&failed));
    m.set_leader(true);
    m.render()
}

fn exported() -> Exported {
    let mut e = Exported::default();
    e.read(&daemon_exposition());
    e.read(&operator_exposition());
    e
}

/// Metric names (`weft_...`) in a PromQL expression or variable query: each
/// identifier outside string literals that starts with `weft_`, is not
/// preceded by an identifier character or `$` (variables, durations) and
/// is not followed by `(` (a function).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if matches!(c, '"' | '\'' | '`') {
            quote = Some(c);
            i += 1;
            continue;
        }
        let starts = (c.is_ascii_alphabetic() || c == '_' || c == ':')
            && (i == 0 || !(ident(chars[i - 1]) || chars[i - 1] == '$'));
        if !starts {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let called = chars[i..]
            .iter()
            .find(|c| !c.is_whitespace())
            .is_some_and(|c| *c == '(');
        if word.starts_with("weft_") && !called {
            names.insert(word);
        }
    }
    names
}

/// Every query string of the dashboard, with where it is: target `expr`s
/// and template variable queries (`query`, `definition`).
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(o) => {
                let here = o
                    .get("title")
                    .or_else(|| o.get("name"))
                    .and_then(Value::as_str)
                    .map(|t| format!("{at} > {t}"))
                    .unwrap_or_else(|| at.to_string());
                for (k, child) in o {
                    match (k.as_str(), child) {
                        ("expr" | "query" | "definition", Value::String(s)) => {
                            out.push((format!("{here} ({k})"), s.clone()));
                        }
                        _ => walk(child, &here, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    out
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a [Value], out: &mut Vec<&'a Value>) {
        for p in list {
            out.push(p);
            if let Some(nested) = p.get("panels").and_then(Value::as_array) {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(list) = dashboard.get("panels").and_then(Value::as_array) {
        walk(list, &mut out);
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).unwrap_or_else(|e| panic!("{DASHBOARD_PATH}: not JSON: {e}"))
}

/// Queried names that nothing exports, with where they are queried.
fn missing(dashboard: &Value, exported: &Exported) -> Vec<String> {
    queries(dashboard)
        .into_iter()
        .flat_map(|(at, q)| {
            metric_names(&q)
                .into_iter()
                .filter(|n| !exported.has(n))
                .map(move |n| format!("{n} (in {at})"))
        })
        .collect()
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let exported = exported();
    // The rendering really produced both binaries' families.
    for family in [
        "weft_node_reconcile_duration_seconds",
        "weft_node_peer_handshake_age_seconds",
        "weft_node_policy_drops_packets_total",
        "weft_operator_reconcile_duration_seconds",
        "weft_operator_reconcile_errors_total",
    ] {
        assert!(
            exported.families.contains_key(family),
            "{family} not rendered: {:?}",
            exported.families
        );
    }

    let d = dashboard();
    let missing = missing(&d, &exported);
    assert!(
        missing.is_empty(),
        "{DASHBOARD_PATH} queries metrics nobody exports:\n  {}\nexported families: {:?}",
        missing.join("\n  "),
        exported.families.keys().collect::<Vec<_>>()
    );

    // Every target queries Weft's own metrics (not `up` or a misspelling
    // without the prefix, which the check above would not see).
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                !metric_names(expr).is_empty(),
                "panel {:?}: {expr:?} queries no weft_ metric",
                p["title"]
            );
        }
    }

    let used: BTreeSet<String> = queries(&d)
        .iter()
        .flat_map(|(_, q)| metric_names(q))
        .map(|n| exported.family_of(&n).to_string())
        .collect();
    println!("families queried: {used:?}");
    let unused: Vec<&String> = exported
        .families
        .keys()
        .filter(|f| !used.contains(*f))
        .collect();
    println!("families exported but not on the dashboard: {unused:?}");
}

#[test]
fn the_extraction_finds_names_and_flags_unknown_ones() {
    let quantile = r#"histogram_quantile(0.99, sum by (instance, le) (rate(weft_node_reconcile_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))"#;
    assert_eq!(
        metric_names(quantile),
        BTreeSet::from(["weft_node_reconcile_duration_seconds_bucket".to_string()])
    );
    let leader = "max(weft_operator_peers_up and on (instance) (weft_operator_leader == 1))";
    assert_eq!(
        metric_names(leader),
        BTreeSet::from([
            "weft_operator_leader".to_string(),
            "weft_operator_peers_up".to_string()
        ])
    );
    // A variable query, with a label value that merely looks like a name.
    assert_eq!(
        metric_names(r#"label_values(weft_node_peers{app!~"weft_x"}, app)"#),
        BTreeSet::from(["weft_node_peers".to_string()])
    );

    // The dashboard's own handshake panel is read.
    let d = dashboard();
    let handshake = queries(&d)
        .into_iter()
        .filter(|(at, _)| at.contains("Handshake age per peer"))
        .flat_map(|(_, q)| metric_names(&q))
        .collect::<BTreeSet<_>>();
    assert_eq!(
        handshake,
        BTreeSet::from(["weft_node_peer_handshake_age_seconds".to_string()])
    );

    // And the check would fail on a name nobody exports, or on a histogram
    // suffix of a family that is not a histogram.
    let exported = exported();
    assert!(exported.has("weft_node_reconcile_duration_seconds_count"));
    assert!(exported.has("weft_operator_reconciles_total"));
    assert!(!exported.has("weft_node_apps_ready"));
    assert!(!exported.has("weft_node_peers_bucket"));
    assert!(
        !exported.has("weft_operator_reconciles"),
        "counters end in _total"
    );
    let bad: Value = serde_json::json!({
        "panels": [{"title": "x", "targets": [{"expr": "rate(weft_node_nope_total[5m])"}]}]
    });
    assert_eq!(
        missing(&bad, &exported),
        vec!["weft_node_nope_total (in dashboard > x (expr))".to_string()]
    );
}

#[test]
fn the_dashboard_is_importable_json_with_a_query_on_every_panel() {
    let d = dashboard();
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let all = panels(&d);
    assert!(
        all.iter().any(|p| p["type"] != "row"),
        "no panel in {DASHBOARD_PATH}"
    );
    let mut ids = BTreeSet::new();
    for p in all {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        assert!(p["gridPos"].is_object(), "{title}: no gridPos");
        if p["type"] == "row" {
            // Rows only group panels; they query nothing.
            assert!(p.get("targets").is_none(), "row {title} has targets");
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: the data source is the variable"
        );
        assert!(
            p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_some_and(|u| !u.is_empty()),
            "{title}: no unit"
        );
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no target");
        for t in targets {
            assert!(
                t["datasource"].is_object(),
                "{title}: target without data source"
            );
            assert!(
                t["refId"].as_str().is_some(),
                "{title}: target without refId"
            );
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: empty expr"
            );
        }
    }
}
