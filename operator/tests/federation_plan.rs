//! Federation at the planner level: members configured alike (same node
//! names, same app spec) planned by the real planner, exchanging records
//! through the real hub allocator, in memory. Every member's plan must
//! agree with every other's: one full mesh, disjoint slices, policies that
//! see remote workloads, conflicts reported on both sides.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use weft_api::meshhub::HubMember;
use weft_api::meshpolicy::{PolicyPeer, PolicyRule};
use weft_api::{MeshAppSpec, MeshPolicySpec, MeshSiteSpec, Selector, SiteKind};
use weft_operator::federation::allocate::HubSettings;
use weft_operator::federation::sim::{Federation, Member};
use weft_operator::planner::{NodeInfo, ObjectKey, Plan, Snapshot};

const APP: &str = "demo/web";

fn key(member: &str, node: &str) -> String {
    let seed = format!("K{member}x{node}");
    format!("{seed:A<43}=")
}

fn app_spec(sites: &[&str], range: Option<&str>) -> MeshAppSpec {
    MeshAppSpec {
        sites: sites.iter().map(|s| s.to_string()).collect(),
        address_space: range.map(Into::into),
        node_prefix_length: Some(26),
        ..Default::default()
    }
}

/// A member with `nodes` nodes named n1.. (the same names in every member),
/// one workload of the app on each.
fn member(index: usize, name: &str, nodes: usize, spec: MeshAppSpec) -> Member {
    let mut s = Snapshot::default();
    for site in &spec.sites {
        let kind = if site == name {
            SiteKind::Local
        } else {
            SiteKind::Remote
        };
        let hub = (kind == SiteKind::Remote).then(|| "hub".to_string());
        s.sites.insert(
            site.clone(),
            MeshSiteSpec {
                kind,
                hub,
                ..Default::default()
            },
        );
    }
    s.apps.insert(ObjectKey::parse(APP), spec);
    for i in 1..=nodes {
        let node = format!("n{i}");
        s.nodes.insert(
            node.clone(),
            NodeInfo {
                site: name.into(),
                address: format!("192.0.{index}.{i}"),
                lost: false,
            },
        );
        let labels = BTreeMap::from([
            ("weft.dev/app".to_string(), "web".to_string()),
            (
                "tier".to_string(),
                if i == 1 { "front" } else { "back" }.to_string(),
            ),
        ]);
        s.add_workload(&node, ObjectKey::new("demo", format!("web-{i}")), labels);
        s.add_public_key(&node, ObjectKey::parse(APP), key(name, &node));
    }
    Member {
        snapshot: s,
        plan: Plan::default(),
    }
}

fn federation(names: &[&str], nodes: usize, range: Option<&str>) -> Federation {
    let hub = HubSettings {
        members: names
            .iter()
            .map(|s| HubMember {
                site: s.to_string(),
                exports: vec![APP.into()],
            })
            .collect(),
        pool: "100.64.0.0/10".parse().unwrap(),
        app_prefix_len: 16,
        block_slices: 8,
    };
    let mut f = Federation::new(hub);
    for (i, n) in names.iter().enumerate() {
        f.members.insert(
            n.to_string(),
            member(i + 1, n, nodes, app_spec(names, range)),
        );
    }
    f
}

/// Every attachment of the app, across members: (member, node, slice).
fn slices(f: &Federation) -> Vec<(String, String, Ipv4Net)> {
    let mut out = Vec::new();
    for (m, member) in &f.members {
        for (node, spec) in &member.plan.nodes {
            for att in spec.apps.iter().filter(|a| a.app == APP) {
                out.push((m.clone(), node.clone(), att.node_slice.parse().unwrap()));
            }
        }
    }
    out
}

#[test]
fn members_configured_alike_form_one_full_mesh_with_disjoint_slices() {
    let names = ["a", "b", "c"];
    let mut f = federation(&names, 10, Some("10.100.0.0/16"));
    let rounds = f.converge(10).expect("the federation converges");
    assert!(rounds <= 4, "{rounds} rounds");

    let all = slices(&f);
    assert_eq!(all.len(), 30, "every node of every member is placed");
    let unique: BTreeSet<Ipv4Net> = all.iter().map(|(_, _, s)| *s).collect();
    assert_eq!(unique.len(), 30, "no two nodes share a slice: {all:?}");
    let range: Ipv4Net = "10.100.0.0/16".parse().unwrap();
    assert!(unique.iter().all(|s| range.contains(s)));

    for (m, member) in &f.members {
        let out = &member.plan.apps[&ObjectKey::parse(APP)];
        assert!(out.errors.is_empty(), "{m}: {:?}", out.errors);
        assert_eq!(out.nodes.len(), 10);
        assert_eq!(out.remote_nodes.len(), 20, "{m}: {:?}", out.remote_nodes);
        assert_eq!(out.sites, ["a", "b", "c"]);
        // One hop: every node peers directly with all 29 others, remote
        // ones named member/node with that node's key, endpoint and slice.
        for (node, spec) in &member.plan.nodes {
            let att = spec.apps.iter().find(|a| a.app == APP).unwrap();
            assert_eq!(att.peers.len(), 29, "{m}/{node}");
            for (om, onode, oslice) in all.iter().filter(|(om, on, _)| (om, on) != (m, node)) {
                let id = if om == m {
                    onode.clone()
                } else {
                    format!("{om}/{onode}")
                };
                let p = att
                    .peers
                    .iter()
                    .find(|p| p.node == id)
                    .unwrap_or_else(|| panic!("{m}/{node} lacks peer {id}"));
                assert_eq!(p.public_key, key(om, onode));
                let idx = names.iter().position(|x| x == om).unwrap() + 1;
                assert!(
                    p.endpoint
                        .starts_with(&format!("192.0.{idx}.{}:", &onode[1..])),
                    "{}",
                    p.endpoint
                );
                assert_eq!(p.allowed_ips, vec![oslice.to_string()]);
            }
        }
    }
    // Converged means converged: another round changes nothing anywhere.
    let before: Vec<Plan> = f.members.values().map(|m| m.plan.clone()).collect();
    assert!(!f.round());
    let after: Vec<Plan> = f.members.values().map(|m| m.plan.clone()).collect();
    assert_eq!(before, after);
}

#[test]
fn an_app_without_a_range_gets_one_from_the_hub_and_nodes_wait_for_blocks() {
    let mut f = federation(&["a", "b"], 3, None);
    // Before the hub answers, nothing is placed and the app says why.
    f.round();
    let a = &f.members["a"].plan.apps[&ObjectKey::parse(APP)];
    assert!(a.nodes.is_empty());
    assert!(
        a.errors.iter().any(|e| e.reason == "WaitingForHub"),
        "{:?}",
        a.errors
    );
    f.converge(10).unwrap();
    for m in f.members.values() {
        let out = &m.plan.apps[&ObjectKey::parse(APP)];
        assert_eq!(out.address_space.as_deref(), Some("100.64.0.0/16"));
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.remote_nodes.len(), 3);
    }
}

#[test]
fn a_node_added_in_one_member_gets_a_new_block_and_joins_everywhere() {
    let mut f = federation(&["a", "b"], 8, Some("10.100.0.0/16"));
    f.converge(10).unwrap();
    let before = slices(&f);
    let extra = member(1, "a", 9, app_spec(&["a", "b"], Some("10.100.0.0/16")));
    let m = f.members.get_mut("a").unwrap();
    for (n, info) in extra.snapshot.nodes {
        m.snapshot.nodes.entry(n).or_insert(info);
    }
    m.snapshot.workloads = extra.snapshot.workloads;
    m.snapshot.public_keys = extra.snapshot.public_keys;
    f.converge(10).unwrap();
    let after = slices(&f);
    for s in &before {
        assert!(after.contains(s), "{s:?} moved");
    }
    assert_eq!(after.len(), 17);
    let blocks: Vec<_> = f.allocations[APP]
        .blocks
        .iter()
        .filter(|b| b.site == "a")
        .collect();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    let b = &f.members["b"].plan.apps[&ObjectKey::parse(APP)];
    assert!(b.remote_nodes.contains(&"a/n9".to_string()));
}

#[test]
fn a_conflicting_range_is_a_condition_on_both_sides_and_nothing_is_renumbered() {
    let mut f = federation(&["a", "b"], 2, Some("10.100.0.0/16"));
    f.members.get_mut("b").unwrap().snapshot.apps.insert(
        ObjectKey::parse(APP),
        app_spec(&["a", "b"], Some("10.200.0.0/16")),
    );
    f.converge(10).unwrap();
    let app = ObjectKey::parse(APP);
    let (a, b) = (&f.members["a"].plan, &f.members["b"].plan);
    let named = |p: &Plan, other: &str| {
        p.apps[&app]
            .errors
            .iter()
            .any(|e| e.field == "spec.addressSpace" && e.message.contains(&format!("site {other}")))
    };
    assert!(named(a, "b"), "{:?}", a.apps[&app].errors);
    assert!(named(b, "a"), "{:?}", b.apps[&app].errors);
    // Each side keeps working on its own range; neither sees the other.
    assert_eq!(a.apps[&app].address_space.as_deref(), Some("10.100.0.0/16"));
    assert_eq!(b.apps[&app].address_space.as_deref(), Some("10.200.0.0/16"));
    assert_eq!(a.apps[&app].nodes.len(), 2);
    assert_eq!(b.apps[&app].nodes.len(), 2);
    assert!(b.apps[&app].remote_nodes.is_empty());
}

#[test]
fn editing_the_range_of_a_working_shared_app_changes_nothing_anywhere() {
    let mut f = federation(&["a", "b"], 2, Some("10.100.0.0/16"));
    f.converge(10).unwrap();
    let before = slices(&f);
    f.members.get_mut("b").unwrap().snapshot.apps.insert(
        ObjectKey::parse(APP),
        app_spec(&["a", "b"], Some("10.200.0.0/16")),
    );
    f.converge(10).unwrap();
    assert_eq!(slices(&f), before);
    let b = &f.members["b"].plan.apps[&ObjectKey::parse(APP)];
    assert!(
        b.errors.iter().any(|e| e.field == "spec.addressSpace"),
        "{:?}",
        b.errors
    );
    assert_eq!(
        b.remote_nodes.len(),
        2,
        "b stays federated on the spec in force"
    );
}

#[test]
fn a_policy_selects_remote_workloads_by_label_and_by_site() {
    let mut f = federation(&["a", "b"], 2, Some("10.100.0.0/16"));
    f.converge(10).unwrap();
    // The daemons report addresses: the first host of each slice + 1.
    for m in f.members.values_mut() {
        let placed: Vec<(String, Ipv4Net)> = m
            .plan
            .nodes
            .iter()
            .flat_map(|(n, s)| {
                s.apps
                    .iter()
                    .map(move |a| (n.clone(), a.node_slice.parse().unwrap()))
            })
            .collect();
        for (node, slice) in placed {
            let addr = std::net::Ipv4Addr::from(u32::from(slice.network()) + 2);
            let wl = ObjectKey::new("demo", format!("web-{}", &node[1..]));
            m.snapshot.add_workload_address(&node, wl, addr.to_string());
        }
    }
    f.converge(10).unwrap();
    // Names: every workload of the app with an address, here and there,
    // in every attachment (the same name in two members resolves to both).
    let names = &f.members["a"].plan.nodes["n2"].apps[0].names;
    let web1: Vec<&str> = names
        .iter()
        .filter(|n| n.name == "web-1")
        .map(|n| n.address.as_str())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(web1.len(), 2, "{names:?}");
    let front_of_b = |sel: bool| MeshPolicySpec {
        app: "web".into(),
        selector: Selector::default(),
        ingress: Some(vec![PolicyRule {
            peers: vec![PolicyPeer {
                selector: sel.then(|| Selector {
                    match_labels: BTreeMap::from([("tier".to_string(), "front".to_string())]),
                    ..Default::default()
                }),
                site: (!sel).then(|| "b".to_string()),
                ..Default::default()
            }],
            ..Default::default()
        }]),
        ..Default::default()
    };
    let b_addrs: BTreeSet<String> = f.members["b"]
        .snapshot
        .workload_addresses
        .values()
        .flat_map(|m| m.values().map(|a| format!("{a}/32")))
        .collect();
    let b_front = f.members["b"].snapshot.workload_addresses["n1"]
        .values()
        .next()
        .unwrap()
        .clone();
    for (by_label, want) in [
        (
            true,
            BTreeSet::from([format!("{b_front}/32"), {
                let a = &f.members["a"].snapshot.workload_addresses["n1"];
                format!("{}/32", a.values().next().unwrap())
            }]),
        ),
        (false, b_addrs),
    ] {
        f.members
            .get_mut("a")
            .unwrap()
            .snapshot
            .policies
            .insert(ObjectKey::new("demo", "in"), front_of_b(by_label));
        f.converge(10).unwrap();
        let a = &f.members["a"].plan;
        assert!(
            a.policies[&ObjectKey::new("demo", "in")].accepted,
            "{:?}",
            a.policies
        );
        let policy = a.nodes["n2"].apps[0]
            .policy
            .as_ref()
            .expect("n2 is isolated");
        let peers: BTreeSet<String> = policy
            .rules
            .iter()
            .flat_map(|r| r.peers.iter().cloned())
            .collect();
        assert_eq!(peers, want, "by label: {by_label}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
    /// Members growing and shrinking at random, each step converged: no
    /// two nodes anywhere ever hold overlapping slices, and every slice lies
    /// in a block the hub granted its member.
    #[test]
    fn slices_never_overlap_across_members(steps in proptest::collection::vec((0usize..3, 0usize..12), 1..8)) {
        let names = ["a", "b", "c"];
        let mut f = federation(&names, 0, Some("10.100.0.0/20"));
        for (m, nodes) in steps {
            let fresh = member(m + 1, names[m], nodes, app_spec(&names, Some("10.100.0.0/20")));
            let s = &mut f.members.get_mut(names[m]).unwrap().snapshot;
            s.nodes = fresh.snapshot.nodes;
            s.workloads = fresh.snapshot.workloads;
            s.public_keys = fresh.snapshot.public_keys;
            proptest::prop_assert!(f.converge(12).is_some(), "no convergence");
            let all = slices(&f);
            for (i, (ma, na, sa)) in all.iter().enumerate() {
                let granted = f.allocations[APP].blocks.iter().any(|b| {
                    b.site == *ma && b.cidr.parse::<Ipv4Net>().unwrap().contains(sa)
                });
                proptest::prop_assert!(granted, "{}/{} holds {} outside its blocks", ma, na, sa);
                for (mb, nb, sb) in &all[i + 1..] {
                    proptest::prop_assert!(!sa.contains(sb) && !sb.contains(sa), "{}/{} {} and {}/{} {}", ma, na, sa, mb, nb, sb);
                }
            }
        }
    }
}
