//! End-to-end: names across clusters. In the federation scenario (see
//! `weft_e2e::federation`), each workload's resolv.conf names only the
//! fixed resolver address of its app network and its app's zone, as a
//! pod's `dnsConfig` or a container's `--dns` would: workloads find each
//! other by name across clusters and the edge host, connect by short name
//! through their own resolver library, and a workload that moves to the
//! other cluster keeps its name.
//!
//! Needs root, `ip`, `ping` and busybox (`nslookup`), and the workspace
//! binaries built first (`cargo build --workspace`). Without them it
//! prints `SKIPPED`, except under `CI=true`, where a skip is a failure.

use std::time::Duration;

use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::federation::{self, NS};
use weft_e2e::traffic::tcp_transfer;

const READY: Duration = Duration::from_secs(40);

/// Where every workload finds its app's resolver (the daemon's
/// `RESOLVER_ADDRESS`, spelled out so a change of it fails here).
const RESOLVER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 53);

/// Whether `ping -c 1 name` succeeds in `netns`: the name goes through the
/// workload's own resolver library and resolv.conf, as an app's would.
fn pings_by_name(netns: &str, name: &str) -> bool {
    weft_e2e::netns::exec_in(netns, "ping", &["-c", "1", "-W", "2", name])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn names_resolve_across_clusters_and_follow_a_workload_that_moves() {
    let test = "names_resolve_across_clusters_and_follow_a_workload_that_moves";
    let missing = weft_e2e::traffic::which("busybox")
        .is_none()
        .then(|| "busybox (nslookup)".to_string());
    if !weft_e2e::scenario::require(test, missing, " (apt-get install busybox-static)") {
        return;
    }
    let Some(mut c) = federation::start_for_test(test, None) else {
        return;
    };
    federation::wait_ready(&mut c, None, "shop", READY);
    federation::wait_ready(&mut c, Some("cluster-b"), "shop", READY);
    let shop1 = c.wait_address("shop-1", READY).unwrap();
    let shop2 = c.wait_address("shop-2", READY).unwrap();
    let shop3 = c.wait_address("shop-3", READY).unwrap();
    let ns = |c: &Cluster, n: &str| c.workload(n).netns().to_string();
    // Each workload's resolv.conf names only the fixed resolver address and
    // its app's zone, as a pod's dnsConfig or a container's --dns would.
    let zone = ["shop.demo.weft"];
    let mut resolv: Vec<_> = ["shop-1", "shop-2", "shop-3"]
        .iter()
        .map(|n| weft_e2e::netns::NetnsResolvConf::set(&ns(&c, n), RESOLVER, &zone).unwrap())
        .collect();
    let ledger = weft_e2e::netns::NetnsResolvConf::set(
        &ns(&c, "ledger-3"),
        RESOLVER,
        &["ledger-b.demo.weft"],
    )
    .unwrap();
    let lookup = |c: &Cluster, from: &str, name: &str| {
        weft_e2e::netns::nslookup(&ns(c, from), name, RESOLVER).unwrap()
    };

    // Every member's workloads by name, from every site of the app: each
    // node's resolver knows the remote members' workloads too.
    for (from, name, want) in [
        ("shop-1", "shop-3.shop.demo.weft.", shop3),
        ("shop-2", "shop-3.shop.demo.weft.", shop3),
        ("shop-3", "shop-1.shop.demo.weft.", shop1),
        ("shop-3", "shop-2.shop.demo.weft.", shop2),
    ] {
        weft_e2e::wait_for(
            &format!("{from} to resolve {name}"),
            READY,
            Duration::from_millis(300),
            || Ok((lookup(&c, from, name) == [want]).then_some(())),
        )
        .unwrap();
    }
    // ...and connects by short name, through its own resolver library:
    // cluster-a to cluster-b, the edge host to cluster-b, and back.
    for (from, to) in [
        ("shop-1", "shop-3"),
        ("shop-2", "shop-3"),
        ("shop-3", "shop-1"),
        ("shop-3", "shop-2"),
    ] {
        assert!(pings_by_name(&ns(&c, from), to), "{from} -> {to} by name");
    }
    let t = tcp_transfer(&ns(&c, "shop-1"), &ns(&c, "shop-3"), shop3, 1 << 20).expect("TCP");
    assert_eq!(t.bytes, 1 << 20);

    // Another app's workload in cluster-b asks its own app's resolver at
    // the same address, which knows nothing of shop.
    assert!(lookup(&c, "ledger-3", "shop-1.shop.demo.weft.").is_empty());
    assert!(!pings_by_name(&ns(&c, "ledger-3"), "shop-3"));

    // shop-1 leaves cluster-a and starts in cluster-b: its name follows it,
    // for the edge host of cluster-a and for its new neighbour alike.
    drop(resolv.remove(0));
    c.remove_workload("shop-1");
    c.add_workload(3, "shop-1", NS, &[("app", "shop")])
        .expect("start shop-1 in cluster-b");
    let moved = c.wait_address("shop-1", READY).unwrap();
    resolv.push(weft_e2e::netns::NetnsResolvConf::set(&ns(&c, "shop-1"), RESOLVER, &zone).unwrap());
    for from in ["shop-2", "shop-3"] {
        weft_e2e::wait_for(
            &format!("{from} to resolve the moved shop-1"),
            READY,
            Duration::from_millis(200),
            || Ok((lookup(&c, from, "shop-1.shop.demo.weft.") == [moved]).then_some(())),
        )
        .unwrap();
        weft_e2e::wait_for(
            &format!("{from} -> shop-1 by name after the move"),
            READY,
            Duration::from_millis(200),
            || Ok(pings_by_name(&ns(&c, from), "shop-1").then_some(())),
        )
        .unwrap();
    }
    assert!(
        pings_by_name(&ns(&c, "shop-1"), "shop-2"),
        "the moved workload resolves too"
    );

    drop(resolv);
    drop(ledger);
    c.check_alive().unwrap();
    assert_torn_down_cleanly(c);
}
