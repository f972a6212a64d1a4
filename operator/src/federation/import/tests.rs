use super::*;
use weft_api::federation::{HubBlock, HubConflict, RecordNode, RecordWorkload};
use weft_api::meshhub::HubMember;

const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn view(now: u64) -> HubView {
    let members = ["a", "b", "c"]
        .map(|s| HubMember {
            site: s.into(),
            exports: vec!["demo/web".into()],
        })
        .to_vec();
    let mut v = HubView {
        state: Some(HubState {
            hub: "hub".into(),
            members,
            stale_after_seconds: 30,
            prune_after_seconds: 300,
            block_slices: 8,
        }),
        ..Default::default()
    };
    v.allocations.insert(
        "demo/web".into(),
        HubAllocationSpec {
            app: "demo/web".into(),
            address_space: Some("10.100.0.0/16".into()),
            node_prefix_length: 26,
            blocks: vec![
                HubBlock {
                    site: "a".into(),
                    cidr: "10.100.0.0/23".into(),
                },
                HubBlock {
                    site: "b".into(),
                    cidr: "10.100.2.0/23".into(),
                },
                HubBlock {
                    site: "c".into(),
                    cidr: "10.100.4.0/23".into(),
                },
            ],
            conflicts: vec![HubConflict {
                site: "a".into(),
                field: "spec.mtu".into(),
                message: "differs from site b".into(),
            }],
        },
    );
    for s in ["a", "b", "c"] {
        v.heartbeats.insert(s.into(), now);
    }
    v
}

fn record(site: &str, nodes: &[(&str, &str)]) -> SiteRecordSpec {
    SiteRecordSpec {
        site: site.into(),
        app: "demo/web".into(),
        nodes: nodes
            .iter()
            .map(|(n, slice)| RecordNode {
                name: (*n).into(),
                site: site.into(),
                endpoint: Some("192.0.2.7:51820".into()),
                public_key: Some(KEY.into()),
                slice: (*slice).into(),
                lost: false,
            })
            .collect(),
        ..Default::default()
    }
}

fn app() -> ObjectKey {
    ObjectKey::new("demo", "web")
}

#[test]
fn remote_nodes_are_named_by_member_and_checked_against_their_blocks() {
    let mut v = view(1000);
    let mut b = record(
        "b",
        &[("node-1", "10.100.2.0/26"), ("node-2", "10.100.0.64/26")],
    );
    b.workloads = vec![
        RecordWorkload {
            name: "demo/w1".into(),
            node: "node-1".into(),
            address: Some("10.100.2.5".into()),
            ..Default::default()
        },
        RecordWorkload {
            name: "demo/w2".into(),
            node: "node-1".into(),
            address: Some("10.100.0.70".into()),
            ..Default::default()
        },
    ];
    v.records.insert(("b".into(), "demo/web".into()), b);
    let f = federated("a", 8, &app(), &v, 1000);
    let g = f.granted.as_ref().unwrap();
    assert_eq!(g.blocks, vec!["10.100.0.0/23".parse::<Ipv4Net>().unwrap()]);
    assert_eq!(f.remote.len(), 1, "node-2's slice is in a's block: refused");
    let n = &f.remote[0];
    assert_eq!(n.id, "b/node-1");
    assert_eq!(n.workloads[0].address, Some("10.100.2.5".parse().unwrap()));
    assert_eq!(
        n.workloads[1].address, None,
        "an address outside its node's slice counts for nothing"
    );
    assert!(
        f.problems
            .iter()
            .any(|(field, m)| field == "hub" && m.contains("node-2") && m.contains("site b")),
        "{:?}",
        f.problems
    );
    assert!(
        f.problems
            .iter()
            .any(|(field, m)| field == "spec.mtu" && m.contains("site b")),
        "{:?}",
        f.problems
    );
}

#[test]
fn a_record_in_another_members_place_or_of_an_unexported_app_is_refused() {
    let mut v = view(1000);
    v.records.insert(
        ("b".into(), "demo/web".into()),
        record("c", &[("x", "10.100.4.0/26")]),
    );
    let f = federated("a", 8, &app(), &v, 1000);
    assert!(f.remote.is_empty());
    assert!(
        f.problems.iter().any(|(_, m)| m.contains("site b refused")),
        "{:?}",
        f.problems
    );
    v.state.as_mut().unwrap().members[2].exports.clear();
    v.records.clear();
    v.records.insert(
        ("c".into(), "demo/web".into()),
        record("c", &[("x", "10.100.4.0/26")]),
    );
    let f = federated("a", 8, &app(), &v, 1000);
    assert!(f.remote.is_empty());
}

#[test]
fn a_stale_member_stays_and_a_pruned_one_leaves() {
    let mut v = view(1000);
    v.records.insert(
        ("b".into(), "demo/web".into()),
        record("b", &[("n", "10.100.2.0/26")]),
    );
    v.heartbeats.insert("b".into(), 1000 - 60);
    assert_eq!(federated("a", 8, &app(), &v, 1000).remote.len(), 1);
    assert_eq!(stale_members(&v, 1000), ["b"]);
    v.heartbeats.insert("b".into(), 1000 - 300);
    assert!(federated("a", 8, &app(), &v, 1000).remote.is_empty());
}

#[test]
fn keys_and_endpoints_that_do_not_parse_are_left_out() {
    let mut v = view(1000);
    let mut b = record("b", &[("n", "10.100.2.0/26")]);
    b.nodes[0].public_key = Some("short".into());
    b.nodes[0].endpoint = Some("example.com:1".into());
    v.records.insert(("b".into(), "demo/web".into()), b);
    let f = federated("a", 8, &app(), &v, 1000);
    assert_eq!(
        (
            f.remote[0].public_key.as_deref(),
            f.remote[0].endpoint.as_deref()
        ),
        (None, None)
    );
}
