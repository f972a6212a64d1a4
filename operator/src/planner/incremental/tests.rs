//! The full plan is the reference: random sequences of changes, each planned
//! incrementally and in full from the same input, must give the same plan.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use weft_api::meshpolicy::{PolicyPeer, PolicyPort, PolicyRule};
use weft_api::{EnforcedApp, EnforcedPolicy, MeshAppSpec, MeshPolicySpec, Selector};

use super::*;
use crate::planner::{ErrorKind, NodeInfo, PlanError};

const NAMESPACES: [&str; 2] = ["a", "b"];
const APPS: [&str; 4] = ["web", "db", "cache", "api"];
const TIERS: [&str; 2] = ["x", "y"];
const RANGES: [Option<&str>; 4] = [None, None, Some("10.11.0.0/16"), Some("10.11.0.0/24")];

/// One change a user, a node or the cluster can make.
#[derive(Clone, Debug)]
enum Change {
    /// Create or edit an app (namespace, name, range, selector by tier).
    PutApp(usize, usize, usize, Option<usize>, Option<u8>),
    RemoveApp(usize, usize),
    /// An app's manifest stops parsing (or parses again).
    AppUnreadable(usize, usize, bool),
    /// A workload starts or is relabelled (node, namespace, name, app, tier).
    PutWorkload(usize, usize, usize, Option<usize>, Option<usize>),
    RemoveWorkload(usize, usize, usize),
    /// A workload moves from one node to another.
    MoveWorkload(usize, usize, usize, usize),
    /// A node reports a workload's address (an index into its app's range).
    Address(usize, usize, usize, u8),
    /// A node reports its public key for an app.
    Key(usize, usize, usize),
    Lost(usize, bool),
    /// A node registers (with an address, valid or not) or leaves.
    PutNode(usize, bool),
    RemoveNode(usize),
    /// A policy of an app: same-app by tier, a CIDR, or naming another app.
    PutPolicy(usize, usize, usize, u8),
    RemovePolicy(usize, usize),
    /// The operator's write of the plan fails: the next pass sees older specs.
    WriteFails,
    /// An app becomes shared through a hub (or its imports change): the
    /// hub's grant (which range, which block), remote nodes, a problem.
    Federate(usize, usize, Option<(usize, usize)>, usize, bool),
    /// An app stops being shared.
    Unfederate(usize, usize),
    /// The Remote site's hub becomes unreadable (or readable again).
    HubLink(bool),
}

fn change() -> impl Strategy<Value = Change> {
    let node = 0..5usize;
    let ns = 0..NAMESPACES.len();
    let app = 0..APPS.len();
    prop_oneof![
        4 => (ns.clone(), app.clone(), 0..RANGES.len(), proptest::option::of(0..2usize), proptest::option::of(26u8..31))
            .prop_map(|(n, a, r, t, p)| Change::PutApp(n, a, r, t, p)),
        1 => (ns.clone(), app.clone()).prop_map(|(n, a)| Change::RemoveApp(n, a)),
        1 => (ns.clone(), app.clone(), any::<bool>()).prop_map(|(n, a, b)| Change::AppUnreadable(n, a, b)),
        6 => (node.clone(), ns.clone(), 0..6usize, proptest::option::of(app.clone()), proptest::option::of(0..2usize))
            .prop_map(|(a, b, c, d, e)| Change::PutWorkload(a, b, c, d, e)),
        2 => (node.clone(), ns.clone(), 0..6usize).prop_map(|(a, b, c)| Change::RemoveWorkload(a, b, c)),
        3 => (node.clone(), node.clone(), ns.clone(), 0..6usize).prop_map(|(a, b, c, d)| Change::MoveWorkload(a, b, c, d)),
        2 => (node.clone(), ns.clone(), 0..6usize, any::<u8>()).prop_map(|(a, b, c, d)| Change::Address(a, b, c, d)),
        3 => (node.clone(), ns.clone(), app.clone()).prop_map(|(a, b, c)| Change::Key(a, b, c)),
        1 => (node.clone(), any::<bool>()).prop_map(|(a, b)| Change::Lost(a, b)),
        1 => (node.clone(), any::<bool>()).prop_map(|(a, b)| Change::PutNode(a, b)),
        1 => node.clone().prop_map(Change::RemoveNode),
        2 => (ns.clone(), app.clone(), 0..2usize, 0u8..4).prop_map(|(a, b, c, d)| Change::PutPolicy(a, b, c, d)),
        1 => (ns.clone(), 0..2usize).prop_map(|(a, b)| Change::RemovePolicy(a, b)),
        1 => Just(Change::WriteFails),
        2 => (ns.clone(), app.clone(), proptest::option::of((0..2usize, 0..2usize)), 0..3usize, any::<bool>())
            .prop_map(|(a, b, g, r, p)| Change::Federate(a, b, g, r, p)),
        1 => (ns.clone(), app.clone()).prop_map(|(a, b)| Change::Unfederate(a, b)),
        1 => any::<bool>().prop_map(Change::HubLink),
    ]
}

fn node_name(n: usize) -> String {
    format!("n{n}")
}

fn workload_key(ns: usize, name: usize) -> ObjectKey {
    ObjectKey::new(NAMESPACES[ns], format!("w{name}"))
}

fn app_key(ns: usize, app: usize) -> ObjectKey {
    ObjectKey::new(NAMESPACES[ns], APPS[app])
}

fn node_info(n: usize, good: bool) -> NodeInfo {
    NodeInfo {
        site: String::new(),
        address: if good {
            format!("192.0.2.{}", n + 1)
        } else {
            "not-an-address".into()
        },
        lost: false,
    }
}

/// Applies a change through an [`Edit`], as a caller that tracks changes
/// at their source does (the plain snapshot is edited with a scratch journal).
fn apply(s: &mut Edit<'_>, c: &Change) {
    match c {
        Change::PutApp(ns, a, r, tier, npl) => {
            s.put_app(
                app_key(*ns, *a),
                Some(MeshAppSpec {
                    address_space: RANGES[*r].map(String::from),
                    node_prefix_length: *npl,
                    selector: match tier {
                        None => Selector::default(),
                        Some(t) => Selector::labels([("tier", TIERS[*t])]),
                    },
                    // Every app may be shared: it spans the Remote site.
                    sites: vec!["local".into(), "far".into()],
                    ..Default::default()
                }),
            );
        }
        Change::RemoveApp(ns, a) => {
            s.put_app(app_key(*ns, *a), None);
        }
        Change::AppUnreadable(ns, a, bad) => {
            let key = app_key(*ns, *a);
            let object = validate::object_name("MeshApp", &key);
            if *bad && s.view().apps.contains_key(&key) {
                s.put_input_errors(
                    object.clone(),
                    Some(vec![PlanError::new(
                        ErrorKind::Invalid,
                        &object,
                        "spec",
                        "Unreadable",
                        "the manifest does not parse",
                    )]),
                );
            } else {
                s.put_input_errors(object, None);
            }
        }
        Change::PutWorkload(n, ns, name, app, tier) => {
            let mut labels = Labels::new();
            if let Some(a) = app {
                labels.insert("weft.dev/app".into(), APPS[*a].into());
            }
            if let Some(t) = tier {
                labels.insert("tier".into(), TIERS[*t].into());
            }
            s.add_workload(&node_name(*n), workload_key(*ns, *name), labels);
        }
        Change::RemoveWorkload(n, ns, name) => {
            s.remove_workload(&node_name(*n), &workload_key(*ns, *name));
        }
        Change::MoveWorkload(from, to, ns, name) => {
            let key = workload_key(*ns, *name);
            let labels = s.remove_workload(&node_name(*from), &key);
            if let Some(l) = labels {
                s.add_workload(&node_name(*to), key, l);
            }
        }
        Change::Address(n, ns, name, i) => {
            s.add_workload_address(
                &node_name(*n),
                workload_key(*ns, *name),
                format!("100.64.0.{i}"),
            );
        }
        Change::Key(n, ns, a) => {
            s.put_public_key(
                node_name(*n),
                app_key(*ns, *a),
                Some(format!("k{n}{ns}{a}")),
            );
        }
        Change::Lost(n, lost) => {
            if let Some(info) = s.view().nodes.get(&node_name(*n)) {
                let info = NodeInfo {
                    lost: *lost,
                    ..info.clone()
                };
                s.put_node(node_name(*n), Some(info));
            }
        }
        Change::PutNode(n, good) => {
            s.put_node(node_name(*n), Some(node_info(*n, *good)));
        }
        Change::RemoveNode(n) => {
            if s.view().nodes.len() > 1 {
                s.put_node(node_name(*n), None);
            }
        }
        Change::PutPolicy(ns, a, which, kind) => {
            let peer = match kind {
                0 => PolicyPeer {
                    selector: Some(Selector::labels([("tier", "x")])),
                    ..Default::default()
                },
                1 => PolicyPeer {
                    cidr: Some("100.64.0.0/24".into()),
                    ..Default::default()
                },
                2 => PolicyPeer {
                    app: Some(APPS[(*a + 1) % APPS.len()].into()),
                    ..Default::default()
                },
                _ => PolicyPeer::default(),
            };
            s.put_policy(
                ObjectKey::new(NAMESPACES[*ns], format!("p{which}")),
                Some(MeshPolicySpec {
                    app: APPS[*a].into(),
                    ingress: Some(vec![PolicyRule {
                        peers: vec![peer],
                        ports: vec![PolicyPort {
                            protocol: Some("TCP".into()),
                            port: Some(80),
                            end_port: None,
                        }],
                    }]),
                    ..Default::default()
                }),
            );
        }
        Change::RemovePolicy(ns, which) => {
            s.put_policy(ObjectKey::new(NAMESPACES[*ns], format!("p{which}")), None);
        }
        Change::WriteFails => {}
        Change::Federate(ns, a, grant, remote, problem) => {
            // Two shared ranges: one an app may also name, one it never does.
            let ranges = ["10.11.0.0/16", "10.12.0.0/16"];
            let granted = grant.map(|(r, b)| {
                let range: ipnet::Ipv4Net = ranges[r].parse().unwrap();
                let block = format!("{}.{}.{}.0/23", 10, 11 + r, 2 * b);
                crate::planner::Granted {
                    range,
                    node_prefix_len: 26,
                    blocks: vec![block.parse().unwrap()],
                }
            });
            let remote_range = grant.map_or(0, |(r, _)| r);
            let remote = (0..*remote)
                .map(|i| crate::planner::RemoteNode {
                    id: format!("far/r{i}"),
                    site: "far".into(),
                    endpoint: Some(format!("198.51.100.{}:51820", i + 1)),
                    public_key: Some(format!("remote-key-{i}")),
                    slice: format!("10.{}.8.{}/26", 11 + remote_range, i * 64)
                        .parse()
                        .unwrap(),
                    lost: i == 2,
                    workloads: vec![crate::planner::RemoteWorkload {
                        name: format!("far:{}/rw{i}", NAMESPACES[*ns]),
                        labels: [("tier".to_string(), TIERS[i % 2].to_string())].into(),
                        address: Some(std::net::Ipv4Addr::new(
                            10,
                            11 + remote_range as u8,
                            8,
                            (i * 64 + 2) as u8,
                        )),
                    }],
                })
                .collect();
            let mut federation = s.view().federation.clone();
            federation.insert(
                app_key(*ns, *a),
                crate::planner::Federated {
                    member: "local".into(),
                    block_slices: 8,
                    granted,
                    remote,
                    problems: if *problem {
                        vec![("spec.addressSpace".into(), "site far disagrees".into())]
                    } else {
                        Vec::new()
                    },
                    hub_error: None,
                },
            );
            s.set_federation(&federation);
        }
        Change::Unfederate(ns, a) => {
            let mut federation = s.view().federation.clone();
            federation.remove(&app_key(*ns, *a));
            s.set_federation(&federation);
        }
        Change::HubLink(down) => {
            let mut links = s.view().hub_links.clone();
            links.insert(
                "far".into(),
                crate::planner::snapshot::HubLink {
                    error: down.then(|| "gone".to_string()),
                    ..Default::default()
                },
            );
            s.set_hub_links(&links);
        }
    }
}

/// What the operator records after a pass (MeshNode specs, statuses): the
/// "previous" state of the next pass.
fn feed_back(s: &mut Snapshot, p: &Plan) {
    s.previous_specs = p.nodes.clone();
    on(s, |e| feed_back_edit(e, p));
}

/// [`feed_back`] through an [`Edit`]: the stored specs are the caller's
/// (`previous_specs` is not edited).
fn feed_back_edit(s: &mut Edit<'_>, p: &Plan) {
    let keys: Vec<ObjectKey> = s
        .view()
        .previous_ranges
        .keys()
        .chain(p.apps.keys())
        .cloned()
        .collect();
    for k in keys {
        let range = p.apps.get(&k).and_then(|a| a.address_space.clone());
        s.put_previous_range(k, range);
    }
    for (k, out) in &p.apps {
        if let Some(spec) = &out.accepted_spec {
            s.put_previous_app(
                k.clone(),
                Some(EnforcedApp {
                    generation: 1,
                    spec: spec.clone(),
                }),
            );
        }
    }
    let gone: Vec<ObjectKey> = s
        .view()
        .previous_apps
        .keys()
        .filter(|k| !p.apps.contains_key(*k))
        .cloned()
        .collect();
    for k in gone {
        s.put_previous_app(k, None);
    }
    for (k, out) in &p.policies {
        if let Some(spec) = &out.accepted_spec {
            s.put_previous_policy(
                k.clone(),
                Some(EnforcedPolicy {
                    generation: 1,
                    spec: spec.clone(),
                }),
            );
        }
    }
    let gone: Vec<ObjectKey> = s
        .view()
        .previous_policies
        .keys()
        .filter(|k| !p.policies.contains_key(*k))
        .cloned()
        .collect();
    for k in gone {
        s.put_previous_policy(k, None);
    }
}

/// `apply` or `feed_back` on a plain snapshot.
fn on(s: &mut Snapshot, f: impl FnOnce(&mut Edit<'_>)) {
    let mut scratch = Journal::default();
    f(&mut Edit::new(s, &mut scratch));
}

fn initial() -> Snapshot {
    let mut s = Snapshot::default();
    s.config.pool = "100.64.0.0/14".parse().unwrap();
    s.sites.insert(
        "far".into(),
        weft_api::MeshSiteSpec {
            kind: weft_api::SiteKind::Remote,
            hub: Some("hub".into()),
            ..Default::default()
        },
    );
    for n in 0..3 {
        s.nodes.insert(node_name(n), node_info(n, true));
    }
    s
}

fn refs(specs: &BTreeMap<String, MeshNodeSpec>) -> BTreeMap<String, &MeshNodeSpec> {
    specs.iter().map(|(n, v)| (n.clone(), v)).collect()
}

/// Runs one sequence; returns how many passes were partial.
fn run(changes: &[Change]) -> Result<u64, TestCaseError> {
    let mut inc = Incremental::default();
    // The same sequence with the stored specs held by the caller.
    let mut held = Incremental::default();
    let mut plan_held = |s: &Snapshot| {
        let mut s = s.clone();
        let specs = std::mem::take(&mut s.previous_specs);
        let refs: BTreeMap<String, &MeshNodeSpec> =
            specs.iter().map(|(n, v)| (n.clone(), v)).collect();
        held.plan_stored(s, &refs, None).plan
    };
    // The same sequence edited in place: the planner learns what changed
    // from the edits alone (no snapshot handed over, nothing diffed).
    let mut edited = Incremental::default();
    let mut specs: BTreeMap<String, MeshNodeSpec> = BTreeMap::new();
    let mut s = initial();
    let mut last_plan = plan(&s);
    prop_assert_eq!(&*inc.plan(s.clone()).plan, &last_plan);
    prop_assert_eq!(&*plan_held(&s), &last_plan);
    prop_assert_eq!(
        &*edited.plan_stored(s.clone(), &refs(&specs), None).plan,
        &last_plan
    );
    feed_back(&mut s, &last_plan);
    if let Some(mut e) = edited.edit() {
        feed_back_edit(&mut e, &last_plan);
    }
    specs = last_plan.nodes.clone();
    for (i, c) in changes.iter().enumerate() {
        on(&mut s, |e| apply(e, c));
        let want = plan(&s);
        if let Some(mut e) = edited.edit() {
            apply(&mut e, c);
        }
        let by_edits = edited.plan_edited(&refs(&specs), None);
        let Some(by_edits) = by_edits else {
            return Err(TestCaseError::fail("no last input to edit"));
        };
        prop_assert_eq!(
            &*by_edits.plan,
            &want,
            "step {} ({:?}), edited in place, planned {:?}",
            i,
            c,
            by_edits.kind
        );
        let mut without_specs = s.clone();
        without_specs.previous_specs.clear();
        prop_assert_eq!(edited.input(), Some(&without_specs), "step {}: edits", i);
        let pass = inc.plan(s.clone());
        prop_assert_eq!(
            &*pass.plan,
            &want,
            "step {} ({:?}) planned {:?}",
            i,
            c,
            pass.kind
        );
        prop_assert_eq!(
            &*plan_held(&s),
            &want,
            "step {} ({:?}), specs held by the caller",
            i,
            c
        );
        for nodes in [&pass.changed_nodes, &by_edits.changed_nodes]
            .into_iter()
            .flatten()
        {
            for (n, spec) in &want.nodes {
                if !nodes.contains(n) {
                    prop_assert_eq!(
                        Some(spec),
                        last_plan.nodes.get(n),
                        "node {} changed but was not reported",
                        n
                    );
                }
            }
        }
        if let Some(apps) = &pass.changed_apps {
            for (k, out) in &want.apps {
                if !apps.contains(k) {
                    prop_assert_eq!(
                        Some(out),
                        last_plan.apps.get(k),
                        "app {} changed but was not reported",
                        k
                    );
                }
            }
        }
        if !matches!(c, Change::WriteFails) {
            feed_back(&mut s, &want);
            if let Some(mut e) = edited.edit() {
                feed_back_edit(&mut e, &want);
            }
            specs = want.nodes.clone();
        }
        last_plan = want;
    }
    Ok(inc.stats().partial)
}

#[test]
fn incremental_plans_equal_full_plans_over_random_change_sequences() {
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    let partial = std::cell::Cell::new(0u64);
    let passes = std::cell::Cell::new(0u64);
    runner
        .run(&proptest::collection::vec(change(), 1..40), |changes| {
            let n = run(&changes)?;
            partial.set(partial.get() + n);
            passes.set(passes.get() + changes.len() as u64);
            Ok(())
        })
        .unwrap();
    // The comparison means something only if the incremental path ran.
    assert!(
        partial.get() * 4 > passes.get(),
        "only {} of {} passes were incremental",
        partial.get(),
        passes.get()
    );
}

/// A settled cluster of many apps: one app added plans that app alone and
/// changes only the nodes it runs on; a workload move, only its two nodes.
#[test]
fn a_change_plans_only_what_it_touches() {
    let mut s = initial();
    s.config =
        crate::planner::PlannerConfig::with_pool("100.64.0.0/10".parse().unwrap(), 20).unwrap();
    for n in 3..10 {
        s.nodes.insert(node_name(n), node_info(n, true));
    }
    for i in 0..60 {
        let key = ObjectKey::new("a", format!("app{i:02}"));
        s.apps.insert(
            key.clone(),
            MeshAppSpec {
                selector: Selector::labels([("app", key.name.as_str())]),
                ..Default::default()
            },
        );
        for j in 0..2 {
            let n = node_name((i + j * 3) % 10);
            let labels: Labels = [("app".to_string(), key.name.clone())].into();
            s.add_workload(&n, ObjectKey::new("a", format!("{}-{j}", key.name)), labels);
            s.add_public_key(&n, key.clone(), format!("k-{n}-{i}"));
        }
    }
    let mut inc = Incremental::default();
    let p = inc.plan(s.clone()).plan;
    feed_back(&mut s, &p);
    assert_eq!(inc.plan(s.clone()).kind, PassKind::Unchanged);

    let key = ObjectKey::new("a", "zz-new");
    s.apps.insert(
        key.clone(),
        MeshAppSpec {
            selector: Selector::labels([("app", "zz-new")]),
            ..Default::default()
        },
    );
    for n in ["n1", "n4"] {
        let labels: Labels = [("app".to_string(), "zz-new".to_string())].into();
        s.add_workload(n, ObjectKey::new("a", format!("zz-{n}")), labels);
    }
    let pass = inc.plan(s.clone());
    assert_eq!(pass.kind, PassKind::Partial { apps: 1, nodes: 2 });
    assert_eq!(*pass.plan, plan(&s));
    let changed: Vec<&str> = pass
        .changed_nodes
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(changed, ["n1", "n4"]);
    assert_eq!(pass.plan.apps[&key].nodes, ["n1", "n4"]);
    feed_back(&mut s, &pass.plan);

    let moved = ObjectKey::new("a", "app05-0");
    let labels = s.workloads.get_mut("n5").unwrap().remove(&moved).unwrap();
    s.add_workload("n9", moved, labels);
    let pass = inc.plan(s.clone());
    assert_eq!(pass.kind, PassKind::Partial { apps: 1, nodes: 3 });
    assert_eq!(*pass.plan, plan(&s));
    let mut expected: BTreeMap<&str, ()> = BTreeMap::new();
    for n in ["n5", "n8", "n9"] {
        expected.insert(n, ());
    }
    let changed: Vec<&str> = pass
        .changed_nodes
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(changed, expected.keys().copied().collect::<Vec<_>>());
    feed_back(&mut s, &pass.plan);

    // A member's heartbeat (its hub link) rebuilds the site outcomes only:
    // no app is planned again, no node rewritten.
    s.hub_links.insert(
        "far".into(),
        crate::planner::snapshot::HubLink {
            last_sync: Some(1_700_000_000),
            ..Default::default()
        },
    );
    let pass = inc.plan(s.clone());
    assert_eq!(pass.kind, PassKind::Partial { apps: 0, nodes: 0 });
    assert_eq!(*pass.plan, plan(&s));
}
