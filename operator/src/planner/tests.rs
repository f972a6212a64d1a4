//! Table tests for bad input and property tests for the planner's invariants.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use weft_api::meshpolicy::{PolicyPeer, PolicyPort, PolicyRule};
use weft_api::selector::{SelectorOperator, SelectorRequirement};
use weft_api::{MeshAppSpec, MeshPolicySpec, MeshSiteSpec, Selector};

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn k(s: &str) -> ObjectKey {
    ObjectKey::parse(s)
}

fn node(addr: &str) -> NodeInfo {
    NodeInfo {
        site: String::new(),
        address: addr.into(),
        lost: false,
    }
}

/// Three nodes; `demo/good` (explicit 10.100.0.0/16) on n1+n2, `demo/auto`
/// (allocated) on n2+n3; every key known.
fn base() -> Snapshot {
    let mut s = Snapshot::default();
    for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
        s.nodes
            .insert(n.to_string(), node(&format!("192.0.2.{}", i + 1)));
    }
    s.apps.insert(
        k("demo/good"),
        MeshAppSpec {
            address_space: Some("10.100.0.0/16".into()),
            ..Default::default()
        },
    );
    s.apps.insert(k("demo/auto"), MeshAppSpec::default());
    s.add_workload(
        "n1",
        k("demo/g1"),
        labels(&[("weft.dev/app", "good"), ("tier", "web")]),
    );
    s.add_workload("n2", k("demo/g2"), labels(&[("weft.dev/app", "good")]));
    s.add_workload("n2", k("demo/a1"), labels(&[("weft.dev/app", "auto")]));
    s.add_workload("n3", k("demo/a2"), labels(&[("weft.dev/app", "auto")]));
    s.add_workload("n1", k("demo/b1"), labels(&[("weft.dev/app", "zz-bad")]));
    s.add_workload("n2", k("demo/b2"), labels(&[("weft.dev/app", "zz-bad")]));
    for n in ["n1", "n2", "n3"] {
        for a in ["demo/good", "demo/auto", "demo/zz-bad"] {
            s.add_public_key(n, k(a), format!("key-{n}-{a}"));
        }
    }
    s
}

fn assert_good_apps_plan(p: &Plan) {
    let good = &p.apps[&k("demo/good")];
    assert!(good.errors.is_empty(), "{:?}", good.errors);
    assert_eq!(good.nodes, vec!["n1", "n2"]);
    assert_eq!(good.address_space.as_deref(), Some("10.100.0.0/16"));
    let auto = &p.apps[&k("demo/auto")];
    assert!(auto.errors.is_empty(), "{:?}", auto.errors);
    assert_eq!(auto.nodes, vec!["n2", "n3"]);
    let att = p.nodes["n1"]
        .apps
        .iter()
        .find(|a| a.app == "demo/good")
        .unwrap();
    assert_eq!(att.peers.len(), 1);
    assert_eq!(att.peers[0].node, "n2");
}

fn bad_app(spec: MeshAppSpec) -> impl Fn(&mut Snapshot) {
    move |s: &mut Snapshot| {
        s.apps.insert(k("demo/zz-bad"), spec.clone());
    }
}

#[test]
fn bad_input_names_the_field_and_other_apps_still_plan() {
    type Case = (
        &'static str,
        Box<dyn Fn(&mut Snapshot)>,
        &'static str,
        &'static str,
        &'static str,
    );
    let explicit = |cidr: &str| MeshAppSpec {
        address_space: Some(cidr.into()),
        ..Default::default()
    };
    let cases: Vec<Case> = vec![
        (
            "invalid CIDR",
            Box::new(bad_app(explicit("10.300.0.0/16"))),
            "MeshApp demo/zz-bad",
            "spec.addressSpace",
            "InvalidAddressSpace",
        ),
        (
            "not a CIDR",
            Box::new(bad_app(explicit("banana"))),
            "MeshApp demo/zz-bad",
            "spec.addressSpace",
            "InvalidAddressSpace",
        ),
        (
            "host bits set",
            Box::new(bad_app(explicit("10.101.0.1/16"))),
            "MeshApp demo/zz-bad",
            "spec.addressSpace",
            "InvalidAddressSpace",
        ),
        (
            "overlap explicit/explicit",
            Box::new(bad_app(explicit("10.100.128.0/17"))),
            "MeshApp demo/zz-bad",
            "spec.addressSpace",
            "AddressSpaceConflict",
        ),
        (
            "overlap explicit/allocated",
            Box::new(bad_app(explicit("100.64.0.0/12"))),
            "MeshApp demo/zz-bad",
            "spec.addressSpace",
            "AddressSpaceConflict",
        ),
        (
            "pool exhausted",
            Box::new(|s: &mut Snapshot| {
                s.config.pool = "100.64.0.0/16".parse().unwrap();
                s.apps.insert(k("demo/zz-bad"), MeshAppSpec::default());
            }),
            "MeshApp demo/zz-bad",
            "spec.addressSpace",
            "PoolExhausted",
        ),
        (
            "node slices exhausted",
            Box::new(bad_app(MeshAppSpec {
                address_space: Some("10.200.0.0/30".into()),
                node_prefix_length: Some(30),
                ..Default::default()
            })),
            "MeshApp demo/zz-bad",
            "spec.nodePrefixLength",
            "NodeSlicesExhausted",
        ),
        (
            "unknown site",
            Box::new(bad_app(MeshAppSpec {
                sites: vec!["local".into(), "nowhere".into()],
                ..Default::default()
            })),
            "MeshApp demo/zz-bad",
            "spec.sites[1]",
            "UnknownSite",
        ),
        (
            "node prefix shorter than app prefix",
            Box::new(bad_app(MeshAppSpec {
                address_space: Some("10.101.0.0/16".into()),
                node_prefix_length: Some(12),
                ..Default::default()
            })),
            "MeshApp demo/zz-bad",
            "spec.nodePrefixLength",
            "InvalidNodePrefixLength",
        ),
        (
            "default node prefix shorter than a /25 range",
            Box::new(bad_app(explicit("10.101.0.0/25"))),
            "MeshApp demo/zz-bad",
            "spec.nodePrefixLength",
            "InvalidNodePrefixLength",
        ),
        (
            "bad selector",
            Box::new(bad_app(MeshAppSpec {
                selector: Selector {
                    match_labels: BTreeMap::new(),
                    match_expressions: vec![SelectorRequirement {
                        key: "tier".into(),
                        operator: SelectorOperator::In,
                        values: vec![],
                    }],
                },
                ..Default::default()
            })),
            "MeshApp demo/zz-bad",
            "spec.selector.matchExpressions[0].values",
            "InvalidSelector",
        ),
        (
            "workload in two apps",
            Box::new(bad_app(MeshAppSpec {
                selector: Selector::labels([("tier", "web")]),
                ..Default::default()
            })),
            "MeshApp demo/zz-bad",
            "spec.selector",
            "WorkloadClaimed",
        ),
        (
            "policy naming an unknown app",
            Box::new(|s: &mut Snapshot| {
                s.policies.insert(
                    k("demo/p"),
                    MeshPolicySpec {
                        app: "ghost".into(),
                        ..Default::default()
                    },
                );
            }),
            "MeshPolicy demo/p",
            "spec.app",
            "UnknownApp",
        ),
        (
            "policy with a bad selector",
            Box::new(|s: &mut Snapshot| {
                s.policies.insert(
                    k("demo/p"),
                    MeshPolicySpec {
                        app: "good".into(),
                        selector: Selector {
                            match_labels: BTreeMap::new(),
                            match_expressions: vec![SelectorRequirement {
                                key: "x".into(),
                                operator: SelectorOperator::Exists,
                                values: vec!["y".into()],
                            }],
                        },
                        ..Default::default()
                    },
                );
            }),
            "MeshPolicy demo/p",
            "spec.selector.matchExpressions[0].values",
            "InvalidSelector",
        ),
        (
            "policy port range reversed",
            Box::new(|s: &mut Snapshot| {
                s.policies.insert(
                    k("demo/p"),
                    MeshPolicySpec {
                        app: "good".into(),
                        ingress: Some(vec![PolicyRule {
                            peers: vec![],
                            ports: vec![PolicyPort {
                                protocol: Some("TCP".into()),
                                port: Some(90),
                                end_port: Some(80),
                            }],
                        }]),
                        ..Default::default()
                    },
                );
            }),
            "MeshPolicy demo/p",
            "spec.ingress[0].ports[0].endPort",
            "InvalidPort",
        ),
        (
            "policy with unknown protocol",
            Box::new(|s: &mut Snapshot| {
                s.policies.insert(
                    k("demo/p"),
                    MeshPolicySpec {
                        app: "good".into(),
                        egress: Some(vec![PolicyRule {
                            peers: vec![],
                            ports: vec![PolicyPort {
                                protocol: Some("SCTP".into()),
                                ..Default::default()
                            }],
                        }]),
                        ..Default::default()
                    },
                );
            }),
            "MeshPolicy demo/p",
            "spec.egress[0].ports[0].protocol",
            "InvalidProtocol",
        ),
        (
            "policy with a bad cidr",
            Box::new(|s: &mut Snapshot| {
                s.policies.insert(
                    k("demo/p"),
                    MeshPolicySpec {
                        app: "good".into(),
                        ingress: Some(vec![PolicyRule {
                            peers: vec![PolicyPeer {
                                cidr: Some("10.1.2/33".into()),
                                ..Default::default()
                            }],
                            ports: vec![],
                        }]),
                        ..Default::default()
                    },
                );
            }),
            "MeshPolicy demo/p",
            "spec.ingress[0].peers[0].cidr",
            "InvalidCidr",
        ),
    ];
    for (name, mutate, object, field, reason) in cases {
        // The good apps planned before the bad input arrived.
        let mut s = base();
        let before = plan(&s);
        feed_back(&mut s, &before);
        mutate(&mut s);
        let p = plan(&s);
        let errs = p.errors();
        assert!(
            errs.iter()
                .any(|e| e.object == object && e.field == field && e.reason == reason),
            "{name}: expected {object} {field} {reason}, got {errs:#?}"
        );
        assert_good_apps_plan(&p);
        assert_eq!(p, plan(&s), "{name}: deterministic");
    }
}

#[test]
fn slice_exhaustion_keeps_the_app_on_the_nodes_that_fit() {
    let mut s = base();
    bad_app(MeshAppSpec {
        address_space: Some("10.200.0.0/30".into()),
        node_prefix_length: Some(30),
        ..Default::default()
    })(&mut s);
    let p = plan(&s);
    let bad = &p.apps[&k("demo/zz-bad")];
    assert_eq!(bad.nodes, vec!["n1"]);
    assert!(bad.errors[0].message.contains("n2"));
    let att = p.nodes["n1"]
        .apps
        .iter()
        .find(|a| a.app == "demo/zz-bad")
        .unwrap();
    assert_eq!(att.address, "10.200.0.1/30");
}

#[test]
fn policy_for_an_existing_app_is_accepted() {
    let mut s = base();
    s.policies.insert(
        k("demo/p"),
        MeshPolicySpec {
            app: "good".into(),
            ..Default::default()
        },
    );
    let p = plan(&s);
    assert!(p.policies[&k("demo/p")].accepted);
}

#[test]
fn attachment_has_expected_names_addresses_and_peers() {
    let s = base();
    let p = plan(&s);
    let n1 = &p.nodes["n1"];
    assert_eq!(n1.site, "local");
    let good = n1.apps.iter().find(|a| a.app == "demo/good").unwrap();
    let id = naming::app_id_candidate(&k("demo/good"), 0);
    assert_eq!(good.app_id, id);
    assert_eq!(good.interface, format!("wf{id}"));
    assert_eq!(good.netns, format!("weft-n1-{id}"));
    assert_eq!(good.node_slice, "10.100.0.0/24");
    assert_eq!(good.address, "10.100.0.1/16");
    assert_eq!(good.listen_port, 51820);
    assert_eq!(good.mtu, 1420);
    assert_eq!(good.persistent_keepalive, 0);
    assert_eq!(good.workloads, vec!["demo/g1"]);
    assert_eq!(
        good.peers,
        vec![std::sync::Arc::new(weft_api::PeerSpec {
            node: "n2".into(),
            public_key: "key-n2-demo/good".into(),
            endpoint: format!(
                "192.0.2.2:{}",
                p.nodes["n2"]
                    .apps
                    .iter()
                    .find(|a| a.app == "demo/good")
                    .unwrap()
                    .listen_port
            ),
            allowed_ips: vec!["10.100.1.0/24".into()],
        })]
    );
    // n2 carries two apps: distinct ports, sorted by app.
    let n2: Vec<_> = p.nodes["n2"]
        .apps
        .iter()
        .map(|a| (a.app.as_str(), a.listen_port))
        .collect();
    assert_eq!(n2, vec![("demo/auto", 51820), ("demo/good", 51821)]);
    assert_eq!(
        p.apps[&k("demo/auto")].address_space.as_deref(),
        Some("100.64.0.0/16")
    );
}

#[test]
fn missing_key_or_lost_node_is_left_out_of_peers() {
    let mut s = base();
    s.public_keys.remove(&("n2".to_string(), k("demo/good")));
    s.nodes.get_mut("n3").unwrap().lost = true;
    let p = plan(&s);
    let peers_of = |n: &str, app: &str| -> Vec<String> {
        p.nodes[n]
            .apps
            .iter()
            .find(|a| a.app == app)
            .unwrap()
            .peers
            .iter()
            .map(|x| x.node.clone())
            .collect()
    };
    assert!(
        peers_of("n1", "demo/good").is_empty(),
        "n2's key is unknown"
    );
    assert_eq!(peers_of("n2", "demo/good"), vec!["n1"]);
    assert!(peers_of("n2", "demo/auto").is_empty(), "n3 is lost");
    assert_eq!(
        peers_of("n3", "demo/auto"),
        vec!["n2"],
        "a lost node keeps its spec"
    );
    assert_eq!(p.apps[&k("demo/auto")].lost_nodes, vec!["n3"]);
}

#[test]
fn empty_selector_selects_only_labelled_workloads() {
    let mut s = base();
    s.add_workload("n3", k("demo/unlabelled"), labels(&[("tier", "web")]));
    let p = plan(&s);
    for a in p.apps.values() {
        assert!(!a.workloads.contains(&"demo/unlabelled".to_string()));
    }
}

#[test]
fn sites_limit_the_nodes_of_an_app() {
    let mut s = base();
    s.sites.insert("edge".into(), MeshSiteSpec::default());
    s.nodes.get_mut("n2").unwrap().site = "edge".into();
    s.apps.get_mut(&k("demo/good")).unwrap().sites = vec!["local".into()];
    let p = plan(&s);
    assert_eq!(p.apps[&k("demo/good")].nodes, vec!["n1"]);
    assert_eq!(p.nodes["n2"].site, "edge");
    assert_eq!(p.sites["edge"].nodes, vec!["n2"]);
}

#[test]
fn incumbent_range_beats_a_lower_named_newcomer() {
    let mut s = base();
    let first = plan(&s);
    s.previous_ranges = first
        .apps
        .iter()
        .filter_map(|(k, a)| Some((k.clone(), a.address_space.clone()?)))
        .collect();
    s.previous_specs = first.nodes.clone();
    s.apps.insert(
        k("demo/aaa"),
        MeshAppSpec {
            address_space: Some("10.100.0.0/16".into()),
            ..Default::default()
        },
    );
    let p = plan(&s);
    assert_eq!(
        p.apps[&k("demo/aaa")].errors[0].reason,
        "AddressSpaceConflict"
    );
    assert_good_apps_plan(&p);
}

#[test]
fn workload_stays_with_the_app_that_had_it() {
    let mut s = base();
    let first = plan(&s);
    s.previous_specs = first.nodes.clone();
    // A lower-named app starts selecting demo/g1.
    s.apps.insert(
        k("demo/aaa"),
        MeshAppSpec {
            selector: Selector::labels([("tier", "web")]),
            ..Default::default()
        },
    );
    let p = plan(&s);
    assert_eq!(
        p.apps[&k("demo/good")].workloads,
        vec!["demo/g1", "demo/g2"]
    );
    let e = &p.apps[&k("demo/aaa")].errors[0];
    assert_eq!(e.reason, "WorkloadClaimed");
    assert!(
        e.message.contains("demo/g1") && e.message.contains("demo/good"),
        "{}",
        e.message
    );
}

#[test]
fn every_registered_node_gets_a_spec_and_unregistered_ones_none() {
    let mut s = base();
    s.nodes.insert("idle".into(), node("192.0.2.9"));
    s.add_workload("ghost", k("demo/x"), labels(&[("weft.dev/app", "good")]));
    let p = plan(&s);
    assert!(p.nodes["idle"].apps.is_empty());
    assert!(!p.nodes.contains_key("ghost"));
}

#[test]
fn invalid_node_address_is_reported_and_not_peered() {
    let mut s = base();
    s.nodes.get_mut("n2").unwrap().address = "not-an-ip".into();
    let p = plan(&s);
    assert_eq!(p.node_errors["n2"][0].field, "address");
    let att = p.nodes["n1"]
        .apps
        .iter()
        .find(|a| a.app == "demo/good")
        .unwrap();
    assert!(att.peers.is_empty());
}

// ---------------------------------------------------------------- properties

const APP_NAMES: [&str; 5] = ["a/web", "a/db", "a/cache", "b/web", "b/api"];
const RANGES: [Option<&str>; 7] = [
    None,
    None,
    Some("10.10.0.0/16"),
    Some("10.10.0.0/17"),
    Some("10.11.0.0/16"),
    Some("10.12.0.0/28"),
    Some("100.64.0.0/16"),
];
const NPLS: [Option<u8>; 3] = [None, Some(26), Some(30)];
const TIERS: [&str; 2] = ["x", "y"];

#[derive(Clone, Debug)]
struct Scenario {
    nodes: Vec<(String, bool)>,
    apps: Vec<(ObjectKey, MeshAppSpec)>,
    workloads: Vec<(String, ObjectKey, Labels)>,
    keys: Vec<(String, ObjectKey)>,
}

fn app_spec() -> impl Strategy<Value = MeshAppSpec> {
    (0..RANGES.len(), 0..NPLS.len(), 0..3usize).prop_map(|(r, n, sel)| MeshAppSpec {
        address_space: RANGES[r].map(String::from),
        node_prefix_length: NPLS[n],
        selector: if sel == 0 {
            Selector::default()
        } else {
            Selector::labels([("tier", TIERS[sel - 1])])
        },
        ..Default::default()
    })
}

fn workload() -> impl Strategy<Value = (usize, usize, usize, Option<usize>, Option<usize>)> {
    (
        0..6usize,
        0..2usize,
        0..4usize,
        proptest::option::of(0..4usize),
        proptest::option::of(0..2usize),
    )
}

fn make_workload(
    node: usize,
    ns: usize,
    name: usize,
    app: Option<usize>,
    tier: Option<usize>,
) -> (String, ObjectKey, Labels) {
    let mut l = Labels::new();
    if let Some(a) = app {
        l.insert(
            "weft.dev/app".into(),
            ["web", "db", "cache", "api"][a].into(),
        );
    }
    if let Some(t) = tier {
        l.insert("tier".into(), TIERS[t].into());
    }
    (
        format!("n{node}"),
        ObjectKey::new(["a", "b"][ns], format!("w{name}")),
        l,
    )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec(any::<bool>(), 1..6),
        proptest::sample::subsequence(APP_NAMES.to_vec(), 0..=APP_NAMES.len()),
        proptest::collection::vec(app_spec(), APP_NAMES.len()),
        proptest::collection::vec(workload(), 0..14),
        proptest::collection::vec(any::<bool>(), 36),
    )
        .prop_map(|(lost, names, specs, wls, known)| {
            let nodes: Vec<(String, bool)> = lost
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("n{i}"), *l && i % 2 == 1))
                .collect();
            let apps: Vec<(ObjectKey, MeshAppSpec)> = names
                .iter()
                .zip(specs)
                .map(|(n, s)| (ObjectKey::parse(n), s))
                .collect();
            let mut seen = BTreeSet::new();
            let workloads = wls
                .into_iter()
                .map(|(n, ns, name, app, tier)| make_workload(n, ns, name, app, tier))
                .filter(|(n, k, _)| seen.insert((n.clone(), k.clone())))
                .collect();
            let mut keys = Vec::new();
            for (ni, (n, _)) in nodes.iter().enumerate() {
                for (ai, (a, _)) in apps.iter().enumerate() {
                    if known[(ni * 6 + ai) % known.len()] {
                        keys.push((n.clone(), a.clone()));
                    }
                }
            }
            Scenario {
                nodes,
                apps,
                workloads,
                keys,
            }
        })
}

fn build(sc: &Scenario) -> Snapshot {
    let mut s = Snapshot::default();
    s.config.pool = "100.64.0.0/14".parse().unwrap();
    for (n, lost) in &sc.nodes {
        s.nodes.insert(
            n.clone(),
            NodeInfo {
                site: String::new(),
                address: format!("192.0.2.{}", &n[1..]),
                lost: *lost,
            },
        );
    }
    for (key, spec) in &sc.apps {
        s.apps.insert(key.clone(), spec.clone());
    }
    for (n, key, l) in &sc.workloads {
        s.add_workload(n, key.clone(), l.clone());
    }
    for (n, a) in &sc.keys {
        s.add_public_key(n, a.clone(), format!("pk-{n}-{a}"));
    }
    s
}

/// Feeds a plan's allocations back as the "previous" state.
fn feed_back(s: &mut Snapshot, p: &Plan) {
    s.previous_specs = p.nodes.clone();
    s.previous_ranges = p
        .apps
        .iter()
        .filter_map(|(k, a)| Some((k.clone(), a.address_space.clone()?)))
        .collect();
}

type Alloc = (String, String, String, String, u16, String);

/// Every allocation of a plan: (node, app) → (app id, range, slice, address, port, interface).
fn allocations(p: &Plan) -> BTreeMap<(String, String), Alloc> {
    p.nodes
        .iter()
        .flat_map(|(n, spec)| {
            spec.apps.iter().map(move |a| {
                (
                    (n.clone(), a.app.clone()),
                    (
                        a.app_id.clone(),
                        a.address_space.clone(),
                        a.node_slice.clone(),
                        a.address.clone(),
                        a.listen_port,
                        a.interface.clone(),
                    ),
                )
            })
        })
        .collect()
}

fn assert_kept(before: &Plan, after: &Plan, what: &str) -> Result<(), TestCaseError> {
    let b = allocations(before);
    let a = allocations(after);
    for (slot, alloc) in &b {
        if let Some(now) = a.get(slot) {
            prop_assert_eq!(alloc, now, "{} changed allocation of {:?}", what, slot);
        }
    }
    for (key, out) in &before.apps {
        if let (Some(r1), Some(after_app)) = (&out.address_space, after.apps.get(key)) {
            if let Some(r2) = &after_app.address_space {
                prop_assert_eq!(r1, r2, "{} renumbered app {}", what, key);
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Extra {
    App(MeshAppSpec),
    Node(usize, Option<usize>, Option<usize>),
    Workload(usize, usize, usize, Option<usize>, Option<usize>),
}

fn extra() -> impl Strategy<Value = Extra> {
    prop_oneof![
        app_spec().prop_map(Extra::App),
        (
            0..2usize,
            proptest::option::of(0..4usize),
            proptest::option::of(0..2usize)
        )
            .prop_map(|(ns, a, t)| Extra::Node(ns, a, t)),
        workload().prop_map(|(n, ns, name, a, t)| Extra::Workload(n, ns, name + 10, a, t)),
    ]
}

fn add_extra(sc: &mut Scenario, e: &Extra) {
    match e {
        Extra::App(spec) => {
            let key = ObjectKey::new("a", "new");
            sc.apps.push((key.clone(), spec.clone()));
            for (n, _) in &sc.nodes {
                sc.keys.push((n.clone(), key.clone()));
            }
        }
        Extra::Node(ns, a, t) => {
            sc.nodes.push(("n9".into(), false));
            sc.workloads.push(make_workload(9, *ns, 0, *a, *t));
            for (a, _) in &sc.apps {
                sc.keys.push(("n9".into(), a.clone()));
            }
        }
        Extra::Workload(n, ns, name, a, t) => {
            sc.workloads.push(make_workload(*n, *ns, *name, *a, *t))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn plan_is_deterministic_under_any_insertion_order(sc in scenario(), seed in any::<u64>()) {
        let p = plan(&build(&sc));
        prop_assert_eq!(&p, &plan(&build(&sc)));
        let mut shuffled = sc.clone();
        let rot = |v: usize| if v == 0 { 0 } else { (seed as usize) % v };
        let r = rot(shuffled.apps.len());
        shuffled.apps.rotate_left(r);
        shuffled.apps.reverse();
        shuffled.nodes.reverse();
        let r = rot(shuffled.workloads.len());
        shuffled.workloads.rotate_left(r);
        shuffled.workloads.reverse();
        shuffled.keys.reverse();
        prop_assert_eq!(&p, &plan(&build(&shuffled)));
    }

    #[test]
    fn allocations_never_collide(sc in scenario()) {
        let p = plan(&build(&sc));
        let ranges: Vec<(ObjectKey, ipnet::Ipv4Net)> = p.apps.iter()
            .filter_map(|(k, a)| Some((k.clone(), a.address_space.as_ref()?.parse().ok()?)))
            .collect();
        for (i, (ka, a)) in ranges.iter().enumerate() {
            for (kb, b) in &ranges[i + 1..] {
                prop_assert!(!ipam::overlaps(a, b), "{} {} overlaps {} {}", ka, a, kb, b);
            }
        }
        let mut per_app: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
        for (n, spec) in &p.nodes {
            let mut ifaces = BTreeSet::new();
            let mut ports = BTreeSet::new();
            for a in &spec.apps {
                prop_assert!(ifaces.insert(&a.interface), "duplicate interface on {}", n);
                prop_assert!(ports.insert(a.listen_port), "duplicate port on {}", n);
                prop_assert!(a.interface.len() <= 15);
                let e = per_app.entry(&a.app).or_default();
                prop_assert!(e.0.insert(&a.node_slice), "duplicate slice in {}", a.app);
                prop_assert!(e.1.insert(&a.address), "duplicate address in {}", a.app);
                let slice: ipnet::Ipv4Net = a.node_slice.parse().unwrap();
                let range: ipnet::Ipv4Net = a.address_space.parse().unwrap();
                prop_assert!(range.contains(&slice));
            }
        }
    }

    #[test]
    fn replanning_own_output_changes_nothing(sc in scenario()) {
        let mut s = build(&sc);
        let p1 = plan(&s);
        feed_back(&mut s, &p1);
        prop_assert_eq!(&p1, &plan(&s));
    }

    #[test]
    fn adding_never_moves_existing_allocations(sc in scenario(), e in extra()) {
        let mut s = build(&sc);
        let p1 = plan(&s);
        let mut grown = sc.clone();
        add_extra(&mut grown, &e);
        let mut s2 = build(&grown);
        feed_back(&mut s2, &p1);
        let p2 = plan(&s2);
        assert_kept(&p1, &p2, "adding")?;
        // Nothing that worked is torn down either.
        for slot in allocations(&p1).keys() {
            prop_assert!(allocations(&p2).contains_key(slot), "adding dropped {:?}", slot);
        }
        feed_back(&mut s, &p1);
        prop_assert_eq!(plan(&s), p1);
    }

    #[test]
    fn removing_never_renumbers_the_rest(sc in scenario(), which in 0..3usize, idx in any::<usize>()) {
        let s = build(&sc);
        let p1 = plan(&s);
        let mut shrunk = sc.clone();
        match which {
            0 if !shrunk.apps.is_empty() => { let i = idx % shrunk.apps.len(); shrunk.apps.remove(i); }
            1 if shrunk.nodes.len() > 1 => { let i = idx % shrunk.nodes.len(); shrunk.nodes.remove(i); }
            _ if !shrunk.workloads.is_empty() => { let i = idx % shrunk.workloads.len(); shrunk.workloads.remove(i); }
            _ => {}
        }
        let mut s2 = build(&shrunk);
        feed_back(&mut s2, &p1);
        assert_kept(&p1, &plan(&s2), "removing")?;
    }

    #[test]
    fn peers_form_a_symmetric_full_mesh(sc in scenario()) {
        let s = build(&sc);
        let p = plan(&s);
        for (key, out) in &p.apps {
            let name = key.to_string();
            let att = |n: &str| p.nodes[n].apps.iter().find(|a| a.app == name).unwrap();
            for a in &out.nodes {
                for b in &out.nodes {
                    if a == b { continue; }
                    let b_ok = !s.nodes[b].lost && s.public_keys.contains_key(&(b.clone(), key.clone()));
                    let peer = att(a).peers.iter().find(|x| &x.node == b);
                    prop_assert_eq!(peer.is_some(), b_ok, "{} on {} peering {}", name, a, b);
                    if let Some(peer) = peer {
                        prop_assert_eq!(&peer.allowed_ips, &vec![att(b).node_slice.clone()]);
                        prop_assert_eq!(&peer.endpoint, &format!("{}:{}", s.nodes[b].address, att(b).listen_port));
                        let a_ok = !s.nodes[a].lost && s.public_keys.contains_key(&(a.clone(), key.clone()));
                        prop_assert_eq!(att(b).peers.iter().any(|x| &x.node == a), a_ok, "symmetric");
                    }
                }
                let peers = &att(a).peers;
                prop_assert!(peers.windows(2).all(|w| w[0].node < w[1].node), "peers sorted");
                prop_assert!(peers.iter().all(|x| &x.node != a), "no self peer");
            }
        }
        for spec in p.nodes.values() {
            prop_assert!(spec.apps.windows(2).all(|w| w[0].app < w[1].app));
        }
    }
}

#[test]
fn between_two_new_overlapping_apps_the_lower_name_wins() {
    let mut s = base();
    for name in ["demo/x2", "demo/x1"] {
        s.apps.insert(
            k(name),
            MeshAppSpec {
                address_space: Some("10.50.0.0/16".into()),
                ..Default::default()
            },
        );
    }
    let p = plan(&s);
    assert!(p.apps[&k("demo/x1")].errors.is_empty());
    assert_eq!(
        p.apps[&k("demo/x1")].address_space.as_deref(),
        Some("10.50.0.0/16")
    );
    let e = &p.apps[&k("demo/x2")].errors[0];
    assert_eq!(
        (e.field.as_str(), e.reason.as_str()),
        ("spec.addressSpace", "AddressSpaceConflict")
    );
    assert!(e.message.contains("demo/x1"));
    assert!(!p.apps[&k("demo/x2")].planned);
}

#[test]
fn an_app_without_sites_stays_on_the_local_site_and_listed_sites_opt_in() {
    let mut s = base();
    s.sites.insert("edge1".into(), MeshSiteSpec::default());
    s.nodes.get_mut("n3").unwrap().site = "edge1".into();
    let p = plan(&s);
    assert_eq!(
        p.apps[&k("demo/auto")].nodes,
        vec!["n2"],
        "n3 is at edge1, which demo/auto does not list"
    );
    s.apps.get_mut(&k("demo/auto")).unwrap().sites = vec!["local".into(), "edge1".into()];
    let p = plan(&s);
    assert_eq!(p.apps[&k("demo/auto")].nodes, vec!["n2", "n3"]);
}

#[test]
fn a_meshnode_never_grows_past_the_size_bound() {
    let mut s = base();
    let full = plan(&s);
    let n2_size = serde_json::to_vec(&full.nodes["n2"]).unwrap().len();
    // Room for n2's spec less a little: one app must go, the one the
    // previous spec did not carry.
    s.config.max_meshnode_bytes = n2_size - 10;
    s.previous_specs.insert(
        "n2".into(),
        MeshNodeSpec {
            apps: full.nodes["n2"]
                .apps
                .iter()
                .filter(|a| a.app == "demo/good")
                .cloned()
                .collect(),
            ..full.nodes["n2"].clone()
        },
    );
    let p = plan(&s);
    for (n, spec) in &p.nodes {
        let size = serde_json::to_vec(spec).unwrap().len();
        assert!(size <= s.config.max_meshnode_bytes, "{n}: {size}");
    }
    assert!(p.nodes["n2"].apps.iter().any(|a| a.app == "demo/good"));
    assert!(!p.nodes["n2"].apps.iter().any(|a| a.app == "demo/auto"));
    let auto = &p.apps[&k("demo/auto")];
    assert!(!auto.nodes.contains(&"n2".to_string()));
    let e = auto
        .errors
        .iter()
        .find(|e| e.reason == "MeshNodeTooLarge")
        .expect("a condition says why");
    assert!(e.message.contains("node n2"), "{e:?}");
    // Its peer on n3 no longer points at n2.
    let on_n3 = p.nodes["n3"]
        .apps
        .iter()
        .find(|a| a.app == "demo/auto")
        .unwrap();
    assert!(on_n3.peers.iter().all(|p| p.node != "n2"));
}

#[test]
fn adding_an_app_changes_only_the_meshnodes_of_the_nodes_it_runs_on() {
    let mut s = base();
    let before = plan(&s);
    feed_back(&mut s, &before);
    s.apps.insert(k("ops/new"), MeshAppSpec::default());
    s.add_workload("n3", k("ops/x1"), labels(&[("weft.dev/app", "new")]));
    s.add_public_key("n3", k("ops/new"), "key-n3-new".to_string());
    let after = plan(&s);
    let changed: Vec<&str> = after
        .nodes
        .iter()
        .filter(|(n, spec)| before.nodes.get(*n) != Some(spec))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(changed, ["n3"]);
    // What other nodes need to know of it reaches them apart from their
    // MeshNodes: the selectors of its namespace at its site.
    let ops: Vec<&str> = after.selectors["local"]["ops"]
        .iter()
        .map(|a| a.app.as_str())
        .collect();
    assert_eq!(ops, ["ops/new"]);
    assert_eq!(
        after.selectors["local"]["demo"], before.selectors["local"]["demo"],
        "other namespaces are untouched"
    );
}

#[test]
fn selectors_cover_every_app_of_a_site_with_nodes_invalid_ones_included() {
    let mut s = base();
    // Rejected: its workloads must wait for it, not start unmeshed.
    s.apps.insert(
        k("demo/zz-bad"),
        MeshAppSpec {
            address_space: Some("banana".into()),
            ..Default::default()
        },
    );
    s.apps.insert(
        k("ops/far"),
        MeshAppSpec {
            sites: vec!["edge1".into()],
            ..Default::default()
        },
    );
    let p = plan(&s);
    assert!(!p.apps[&k("demo/zz-bad")].planned);
    let demo: Vec<&str> = p.selectors["local"]["demo"]
        .iter()
        .map(|a| a.app.as_str())
        .collect();
    assert_eq!(demo, ["demo/auto", "demo/good", "demo/zz-bad"]);
    assert!(
        !p.selectors.contains_key("edge1"),
        "no node at edge1, nobody to tell"
    );
    assert!(!p.selectors["local"].contains_key("ops"));
    s.nodes.get_mut("n3").unwrap().site = "edge1".into();
    let p = plan(&s);
    let far: Vec<&str> = p.selectors["edge1"]["ops"]
        .iter()
        .map(|a| a.app.as_str())
        .collect();
    assert_eq!(far, ["ops/far"]);
    assert!(!p.selectors["edge1"].contains_key("demo"));
}
