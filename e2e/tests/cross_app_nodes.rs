//! End-to-end: traffic between two apps whose workloads are on DIFFERENT
//! nodes, with real packets through the standalone operator and real node
//! daemons. App `api` (workloads on node 1) and app `store` (workloads on
//! node 2): `demo/api` sorts first, so an allowed api–store pair crosses on
//! the api workload's node (1), where `store` is placed without workloads
//! (a transit placement) and linked to `api`; store's tunnel carries the
//! api workload's address to node 2. A third app, `other`, shares nothing
//! with either.
//!
//! Needs root, `ip`, `ping`, `nft` and the workspace binaries built first
//! (`cargo build --workspace`). Without root the test prints `SKIPPED` —
//! except under `CI=true`, where a skip is a failure.

use std::time::Duration;

use serde_json::Value;
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::probe;
use weft_e2e::scenario::{self, app_manifest, NS};

const READY: Duration = Duration::from_secs(30);
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const REVERSE_PORT: u16 = 7100;

/// The addresses (beyond its own slice) that `att`'s peer `node` carries.
fn carried(att: &Value, node: &str) -> Vec<String> {
    att["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["node"] == node)
        .flat_map(|p| p["allowedIps"].as_array().cloned().unwrap_or_default())
        .skip(1)
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn apps_on_different_nodes_talk_only_where_both_policies_allow() {
    let Some(mut c) = scenario::started_cluster(
        "apps_on_different_nodes_talk_only_where_both_policies_allow",
        2,
    ) else {
        return;
    };
    for (app, range) in [
        ("api", "10.140.0.0/16"),
        ("store", "10.141.0.0/16"),
        ("other", "10.142.0.0/16"),
    ] {
        c.apply_manifest(
            &format!("{app}.yaml"),
            &app_manifest(app, NS, &[("tier", app)], Some(range)),
        )
        .unwrap();
    }
    for (node, name, tier, role) in [
        (1, "w", "api", "client"),
        (1, "w-other", "api", "batch"),
        (2, "v", "store", "server"),
        (1, "o1", "other", "x"),
        (2, "o2", "other", "x"),
    ] {
        c.add_workload(node, name, NS, &[("tier", tier), ("role", role)])
            .unwrap();
    }
    for app in ["api", "store", "other"] {
        c.wait_ready(NS, app, READY)
            .unwrap_or_else(|e| panic!("{NS}/{app} not Ready: {e:#}"));
    }
    let addr = |c: &mut Cluster, n: &str| c.wait_address(n, READY).unwrap();
    let (w, w_other, v) = (
        addr(&mut c, "w"),
        addr(&mut c, "w-other"),
        addr(&mut c, "v"),
    );
    let (o1, o2) = (addr(&mut c, "o1"), addr(&mut c, "o2"));
    let (n1, n2) = (c.node_name(1), c.node_name(2));
    assert!(
        probe::attachment(&c, 1, "store").is_none(),
        "no transit yet"
    );

    // w (api, node 1) may reach v (store, node 2) on TCP 7000, UDP 7001 and
    // ICMP; both sides say so.
    let fwd_ports = "        - {protocol: TCP, port: 7000}\n        - {protocol: UDP, port: 7001}\n        - {protocol: ICMP}\n";
    c.apply_manifest(
        "api-out.yaml",
        &probe::cross_app_policy(
            "api-out",
            "api",
            "client",
            "egress",
            ("store", "server"),
            fwd_ports,
        ),
    )
    .unwrap();
    c.apply_manifest(
        "store-in.yaml",
        &probe::cross_app_policy(
            "store-in",
            "store",
            "server",
            "ingress",
            ("api", "client"),
            fwd_ports,
        ),
    )
    .unwrap();
    probe::wait("w -> v:7000 across nodes", READY, || {
        probe::tcp(&c, "w", "v", v, TCP_PORT, 128 << 10, 3)
    });
    assert!(
        probe::udp(&c, "w", "v", v, UDP_PORT, Duration::from_secs(5)),
        "UDP w -> v:7001"
    );
    assert!(probe::pings(&c, "w", v), "ICMP w -> v");
    // store on node 1: a transit placement (no workloads) linked to api;
    // store on node 2 carries exactly w's address from node 1.
    let transit = probe::attachment(&c, 1, "store").expect("store placed on node 1");
    assert!(transit.get("workloads").is_none(), "{transit}");
    assert_eq!(
        transit["appLinks"][0]["app"],
        format!("{NS}/api"),
        "{transit}"
    );
    let store2 = probe::attachment(&c, 2, "store").unwrap();
    assert_eq!(carried(&store2, &n1), vec![format!("{w}/32")], "{store2}");
    assert!(carried(&transit, &n2).is_empty(), "{transit}");
    assert!(
        probe::attachment(&c, 2, "api").is_none(),
        "api is not placed on node 2"
    );
    // The transit node is a node of store: Ready counts its handshakes.
    c.wait_ready(NS, "store", READY).unwrap();
    let st = c.app_status(NS, "store").unwrap().unwrap();
    assert_eq!(st.nodes.as_deref(), Some("2/2"), "{st:?}");

    // Everything else between the apps stays dropped.
    assert!(
        !probe::tcp(&c, "w", "v", v, 7002, 128 << 10, 3),
        "a port neither side allows"
    );
    assert!(
        !probe::udp(&c, "w", "v", v, 7003, Duration::from_secs(2)),
        "a UDP port not allowed"
    );
    assert!(
        !probe::tcp(&c, "w-other", "v", v, TCP_PORT, 128 << 10, 3),
        "an api workload api does not allow"
    );
    assert!(!probe::pings(&c, "w-other", v), "ICMP from it neither");
    assert!(
        !probe::tcp(&c, "v", "w", w, TCP_PORT, 128 << 10, 3),
        "the reverse direction is not allowed"
    );
    // Unrelated apps stay isolated from both, on either node.
    assert!(
        !probe::tcp(&c, "w", "o2", o2, TCP_PORT, 128 << 10, 3),
        "api -> other"
    );
    assert!(!probe::pings(&c, "o1", v), "other -> store");
    assert!(
        !probe::tcp(&c, "o1", "v", v, TCP_PORT, 128 << 10, 3),
        "other -> store (TCP)"
    );
    assert!(!probe::pings(&c, "v", o1), "store -> other");
    assert!(!probe::pings(&c, "o1", w), "other -> api on the same node");
    // Within their own apps things are unchanged.
    assert!(probe::pings(&c, "w", w_other), "w -> w-other (within api)");
    assert!(probe::pings(&c, "o1", o2), "o1 -> o2 (within other)");

    // The reverse direction, once both sides allow it (v opens TCP 7100 on
    // w): the same carrier and crossing node, so both flows work at once.
    let rev_ports = "        - {protocol: TCP, port: 7100}\n";
    c.apply_manifest(
        "store-out.yaml",
        &probe::cross_app_policy(
            "store-out",
            "store",
            "server",
            "egress",
            ("api", "client"),
            rev_ports,
        ),
    )
    .unwrap();
    c.apply_manifest(
        "api-in.yaml",
        &probe::cross_app_policy(
            "api-in",
            "api",
            "client",
            "ingress",
            ("store", "server"),
            rev_ports,
        ),
    )
    .unwrap();
    probe::wait("v -> w:7100 across nodes", READY, || {
        probe::tcp(&c, "v", "w", w, REVERSE_PORT, 128 << 10, 3)
    });
    assert!(
        probe::tcp(&c, "w", "v", v, TCP_PORT, 128 << 10, 5),
        "w -> v still passes"
    );
    assert!(
        !probe::tcp(&c, "v", "w", w, TCP_PORT, 128 << 10, 3),
        "v -> w:7000 is not allowed"
    );
    assert!(
        !probe::tcp(&c, "w", "v", v, REVERSE_PORT, 128 << 10, 3),
        "w -> v:7100 neither"
    );
    assert!(
        carried(&probe::attachment(&c, 1, "api").unwrap(), &n2).is_empty(),
        "api's tunnel carries nothing: one carrier per pair"
    );

    // Withdrawing one side of the reverse allow stops it; the forward flow
    // keeps its path.
    c.delete_manifest("api-in.yaml").unwrap();
    probe::wait("v -> w:7100 to stop", READY, || {
        !probe::tcp(&c, "v", "w", w, REVERSE_PORT, 128 << 10, 2)
    });
    assert!(
        probe::tcp(&c, "w", "v", v, TCP_PORT, 128 << 10, 5),
        "w -> v still passes"
    );

    // Withdrawing one side of the forward allow stops new flows and removes
    // the transit placement, the link and the carried address.
    let transit_ns = c.app_netns(1, &format!("{NS}/store")).unwrap().unwrap();
    c.delete_manifest("store-in.yaml").unwrap();
    probe::wait("w -> v:7000 to stop", READY, || {
        !probe::tcp(&c, "w", "v", v, TCP_PORT, 128 << 10, 2)
    });
    probe::wait("the transit placement to go", READY, || {
        probe::attachment(&c, 1, "store").is_none() && !c.weft_netns(1).contains(&transit_ns)
    });
    assert!(!probe::pings(&c, "w", v), "ICMP stopped too");
    let store2 = probe::attachment(&c, 2, "store").unwrap();
    assert!(carried(&store2, &n1).is_empty(), "{store2}");
    assert!(store2["peers"].as_array().is_none_or(|p| p.is_empty()));
    let api1 = probe::attachment(&c, 1, "api").unwrap();
    assert!(api1.get("appLinks").is_none(), "{api1}");
    probe::wait("store Ready on its one node", READY, || {
        c.app_status(NS, "store")
            .unwrap()
            .is_some_and(|s| s.nodes.as_deref() == Some("1/1"))
    });
    assert!(probe::pings(&c, "w", w_other), "api still works inside");
    assert_torn_down_cleanly(c);
}
