use super::*;
use k8s_openapi::jiff::Timestamp;
use weft_api::PeerStatus;

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn key() -> ObjectKey {
    ObjectKey::new("demo", "web")
}

fn outcome(nodes: &[&str]) -> AppOutcome {
    AppOutcome {
        app_id: "abc".into(),
        address_space: Some("10.100.0.0/16".into()),
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        planned: true,
        ..Default::default()
    }
}

/// A node status programming `demo/web` with handshakes to `peers` (name, age).
fn node_status(gen: i64, programmed: bool, peers: &[(&str, Option<u64>)]) -> MeshNodeStatus {
    MeshNodeStatus {
        observed_generation: Some(gen),
        apps: vec![AppStatus {
            app: "demo/web".into(),
            programmed,
            peers: peers
                .iter()
                .map(|(n, hs)| PeerStatus {
                    node: n.to_string(),
                    last_handshake_seconds: *hs,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn views<'a>(items: &[(&str, i64, &'a MeshNodeStatus)]) -> BTreeMap<String, NodeView<'a>> {
    items
        .iter()
        .map(|(n, g, s)| {
            (
                n.to_string(),
                NodeView {
                    spec_generation: Some(*g),
                    status: Some(*s),
                    lost: false,
                },
            )
        })
        .collect()
}

fn ready(s: &MeshAppStatus) -> &Condition {
    conditions::get(&s.conditions, types::READY).unwrap()
}

#[test]
fn all_programmed_and_handshaken_is_ready() {
    let a = node_status(2, true, &[("b", Some(5))]);
    let b = node_status(1, true, &[("a", Some(7))]);
    let st = app_status(
        &key(),
        &outcome(&["a", "b"]),
        &views(&[("a", 2, &a), ("b", 1, &b)]),
        3,
        None,
        &t(100),
    );
    assert_eq!(ready(&st).status, "True");
    assert_eq!(
        (st.nodes_ready, st.nodes_total, st.peers_up, st.peers_total),
        (2, 2, 1, 1)
    );
    assert_eq!(st.nodes.as_deref(), Some("2/2"));
    assert_eq!(st.peers.as_deref(), Some("1/1"));
    assert_eq!(st.observed_generation, Some(3));
    assert!(!conditions::is_true(&st.conditions, types::DEGRADED));
}

#[test]
fn stale_generation_means_node_not_ready_and_names_it() {
    let a = node_status(1, true, &[]);
    let b = node_status(1, true, &[]);
    let st = app_status(
        &key(),
        &outcome(&["a", "b"]),
        &views(&[("a", 2, &a), ("b", 1, &b)]),
        1,
        None,
        &t(0),
    );
    assert_eq!(st.nodes_ready, 1);
    let c = ready(&st);
    assert_eq!(c.reason, "NodesNotReady");
    assert!(c.message.contains('a'), "{}", c.message);
    assert!(conditions::is_true(&st.conditions, types::DEGRADED));
}

#[test]
fn one_sided_or_old_handshake_is_not_up() {
    let a = node_status(1, true, &[("b", Some(5)), ("c", Some(500))]);
    let b = node_status(1, true, &[("c", Some(1))]);
    let c = node_status(1, true, &[("a", Some(1)), ("b", Some(2))]);
    let st = app_status(
        &key(),
        &outcome(&["a", "b", "c"]),
        &views(&[("a", 1, &a), ("b", 1, &b), ("c", 1, &c)]),
        1,
        None,
        &t(0),
    );
    assert_eq!((st.peers_up, st.peers_total), (1, 3));
    let r = ready(&st);
    assert_eq!(r.reason, "PeersNotConnected");
    assert!(
        r.message.contains("a<->b") && r.message.contains("a<->c"),
        "{}",
        r.message
    );
}

#[test]
fn many_links_down_are_counted_and_the_first_ones_named() {
    // 8 nodes, every one programmed; only n0 and n1 see each other.
    let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    let statuses: Vec<MeshNodeStatus> = (0..8)
        .map(|i| match i {
            0 => node_status(1, true, &[("n1", Some(1))]),
            1 => node_status(1, true, &[("n0", Some(1))]),
            _ => node_status(1, true, &[]),
        })
        .collect();
    let items: Vec<(&str, i64, &MeshNodeStatus)> = names
        .iter()
        .zip(&statuses)
        .map(|(n, s)| (n.as_str(), 1, s))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let st = app_status(&key(), &outcome(&refs), &views(&items), 1, None, &t(0));
    assert_eq!((st.peers_up, st.peers_total), (1, 28));
    let r = ready(&st);
    assert_eq!(
        r.message,
        "27 of 28 peer links without a recent handshake: \
         n0<->n2, n0<->n3, n0<->n4, n0<->n5, n0<->n6 and 22 more"
    );
}

#[test]
fn errors_make_app_invalid_and_name_the_field() {
    let mut o = outcome(&[]);
    o.planned = false;
    o.errors.push(PlanError::new(
        ErrorKind::Invalid,
        "MeshApp demo/web",
        "spec.addressSpace",
        "InvalidAddressSpace",
        "bad",
    ));
    let st = app_status(&key(), &o, &BTreeMap::new(), 1, None, &t(0));
    assert_eq!(ready(&st).reason, "Invalid");
    let d = conditions::get(&st.conditions, types::DEGRADED).unwrap();
    assert_eq!(d.status, "True");
    assert!(d.message.contains("spec.addressSpace"));
}

#[test]
fn no_nodes_is_no_workloads() {
    let st = app_status(&key(), &outcome(&[]), &BTreeMap::new(), 1, None, &t(0));
    assert_eq!(ready(&st).reason, "NoWorkloads");
    assert_eq!(st.nodes.as_deref(), Some("0/0"));
}

#[test]
fn transition_time_stays_while_status_holds() {
    let o = outcome(&[]);
    let first = app_status(&key(), &o, &BTreeMap::new(), 1, None, &t(10));
    let second = app_status(&key(), &o, &BTreeMap::new(), 1, Some(&first), &t(20));
    assert_eq!(first, second);
    assert!(first.same_ignoring_time(&second));
    let a = node_status(1, true, &[]);
    let third = app_status(
        &key(),
        &outcome(&["a"]),
        &views(&[("a", 1, &a)]),
        1,
        Some(&second),
        &t(30),
    );
    assert_eq!(ready(&third).last_transition_time, t(30));
    assert!(!third.same_ignoring_time(&second));
}

#[test]
fn policy_and_site_status() {
    let ok = policy_status(
        &PolicyOutcome {
            accepted: true,
            errors: vec![],
            notes: vec![],
            ..Default::default()
        },
        2,
        None,
        &t(0),
    );
    assert!(conditions::is_true(&ok.conditions, types::ACCEPTED));
    let bad = policy_status(
        &PolicyOutcome {
            accepted: false,
            errors: vec![PlanError::new(
                ErrorKind::Invalid,
                "MeshPolicy demo/p",
                "spec.app",
                "UnknownApp",
                "no app",
            )],
            notes: vec![],
            ..Default::default()
        },
        2,
        None,
        &t(0),
    );
    let c = conditions::get(&bad.conditions, types::ACCEPTED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "UnknownApp")
    );
    assert!(c.message.contains("spec.app"));

    let site = site_status(
        &SiteOutcome {
            nodes: vec!["a".into(), "b".into()],
            lost_nodes: vec!["b".into()],
            ..Default::default()
        },
        1,
        None,
        &t(0),
    );
    assert_eq!(site.nodes, 2);
    let r = conditions::get(&site.conditions, types::READY).unwrap();
    assert_eq!(r.reason, "NodesLost");
    assert!(r.message.contains('b'));
    let empty = site_status(&SiteOutcome::default(), 1, None, &t(0));
    assert!(!conditions::is_true(&empty.conditions, types::READY));
}

#[test]
fn traffic_is_summed_over_reporting_nodes_only() {
    let with_traffic = |peer: &str, rx: u64, tx: u64, conns: u64, drops: Option<u64>| {
        let mut s = node_status(1, true, &[(peer, Some(5))]);
        let a = &mut s.apps[0];
        a.peers[0].rx_packets = rx;
        a.peers[0].tx_packets = tx;
        a.peers[0].rx_bytes = rx * 100;
        a.peers[0].tx_bytes = tx * 100;
        a.active_connections = Some(conns);
        a.policy_drops = drops;
        s
    };
    let a = with_traffic("b", 10, 7, 2, Some(3));
    let b = with_traffic("a", 7, 10, 1, None);
    let c = with_traffic("a", 1000, 1000, 50, Some(1000));
    let mut v = views(&[("a", 1, &a), ("b", 1, &b), ("c", 1, &c)]);
    v.get_mut("c").unwrap().lost = true;
    let st = app_status(&key(), &outcome(&["a", "b", "c"]), &v, 1, None, &t(0));
    let sum = st.traffic.expect("two nodes report");
    assert_eq!(
        (sum.rx_packets, sum.tx_packets, sum.rx_bytes, sum.tx_bytes),
        (17, 17, 1700, 1700),
        "each packet once at its sender and once at its receiver"
    );
    assert_eq!((sum.active_connections, sum.policy_drops), (3, 3));
    assert_eq!(sum.nodes, 2, "the lost node's figures are stale");
    let json = serde_json::to_value(&sum).unwrap();
    assert_eq!(json["rxPackets"], 17);
    assert_eq!(json["activeConnections"], 3);

    let none = app_status(&key(), &outcome(&["a"]), &BTreeMap::new(), 1, None, &t(0));
    assert_eq!(none.traffic, None, "no report, no figures");
}

#[test]
fn moving_counters_alone_refresh_the_traffic_figures_once_a_minute() {
    let with_rx = |rx: u64| {
        let mut s = node_status(1, true, &[("b", Some(5))]);
        s.apps[0].peers[0].rx_packets = rx;
        s
    };
    let first = with_rx(10);
    let v = views(&[("a", 1, &first)]);
    let st = app_status(&key(), &outcome(&["a"]), &v, 1, None, &t(0));
    assert_eq!(st.traffic.as_ref().unwrap().observed_at, Some(t(0)));

    // 30 s later only the counter moved: the status stays as it was, so
    // the operator writes nothing.
    let later = with_rx(20);
    let v = views(&[("a", 1, &later)]);
    let st2 = app_status(&key(), &outcome(&["a"]), &v, 1, Some(&st), &t(30));
    assert!(st2.same_ignoring_time(&st), "{:?}", st2.traffic);
    assert_eq!(st2.traffic.as_ref().unwrap().rx_packets, 10);

    // Anything else changing (here a node turns not ready) writes the
    // status anyway, with fresh figures.
    let down = {
        let mut s = with_rx(25);
        s.apps[0].programmed = false;
        s
    };
    let v_down = views(&[("a", 1, &down)]);
    let st_down = app_status(&key(), &outcome(&["a"]), &v_down, 1, Some(&st2), &t(40));
    let tr = st_down.traffic.as_ref().unwrap();
    assert_eq!((tr.rx_packets, tr.observed_at.clone()), (25, Some(t(40))));

    // A minute on, the figures are refreshed.
    let st3 = app_status(&key(), &outcome(&["a"]), &v, 1, Some(&st2), &t(61));
    let tr = st3.traffic.as_ref().unwrap();
    assert_eq!((tr.rx_packets, tr.observed_at.clone()), (20, Some(t(61))));
}

#[test]
fn links_to_other_members_count_from_this_side_and_lost_ones_not_at_all() {
    let mut o = outcome(&["a"]);
    o.remote_nodes = vec!["east/x".into(), "east/y".into(), "east/z".into()];
    o.lost_remote_nodes = vec!["east/z".into()];
    let a = node_status(1, true, &[("east/x", Some(3))]);
    let st = app_status(&key(), &o, &views(&[("a", 1, &a)]), 1, None, &t(100));
    assert_eq!(ready(&st).status, "False");
    assert!(
        ready(&st).message.contains("a<->east/y"),
        "{}",
        ready(&st).message
    );
    assert_eq!((st.peers_up, st.peers_total), (1, 2));
    let a = node_status(1, true, &[("east/x", Some(3)), ("east/y", Some(1))]);
    let st = app_status(&key(), &o, &views(&[("a", 1, &a)]), 1, None, &t(100));
    assert_eq!(ready(&st).status, "True", "{}", ready(&st).message);
    assert!(
        ready(&st).message.contains("2 in other members"),
        "{}",
        ready(&st).message
    );
    assert_eq!(st.nodes.as_deref(), Some("1/1 +2 remote"));
}

#[test]
fn another_members_refused_record_degrades_but_leaves_the_app_ready() {
    let mut o = outcome(&["a"]);
    o.remote_nodes = vec!["east/x".into()];
    o.refused_records = vec!["record of site west refused: a slice outside its blocks".into()];
    let a = node_status(1, true, &[("east/x", Some(3))]);
    let st = app_status(&key(), &o, &views(&[("a", 1, &a)]), 1, None, &t(100));
    assert_eq!(ready(&st).status, "True", "{}", ready(&st).message);
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "RecordsRefused")
    );
    assert!(
        degraded.message.contains("site west"),
        "{}",
        degraded.message
    );
}
