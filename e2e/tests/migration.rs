//! End-to-end: a workload that disappears from one node and appears on
//! another (a migration, or a canary roll) is reachable again at its new
//! place without any user action. Three simulated nodes: the client stays
//! on node 3, the workload moves 1 -> 2 -> 1. See `weft_e2e::migration` for
//! how a move is made and why the address changes with the node.
//!
//! Needs root, `ip` and `ping`, and the workspace binaries built first.
//! Without root the test prints `SKIPPED` — except under `CI=true`.

use std::time::Duration;

use weft_e2e::cluster::Cluster;
use weft_e2e::migration::{self, Receiver, APP, CLIENT, MOVER, NS, PORT};
use weft_e2e::scenario;
use weft_e2e::traffic::{ping, udp_probe_until_ok};

const T: Duration = Duration::from_secs(60);

/// Waits until node `node` has (or no longer has) a namespace for the app.
fn wait_app_on(c: &Cluster, node: usize, present: bool) {
    let app = format!("{NS}/{APP}");
    weft_e2e::wait_for(
        &format!(
            "{app} {} node {node}",
            if present { "on" } else { "gone from" }
        ),
        T,
        Duration::from_millis(50),
        || Ok((c.app_netns(node, &app)?.is_some() == present).then_some(())),
    )
    .unwrap();
}

/// Waits until the mover's node publishes `addr` as its address: what a
/// client looks up to find it.
fn wait_published(c: &Cluster, addr: std::net::Ipv4Addr) {
    weft_e2e::wait_for(
        &format!("{MOVER}'s address {addr} in its node's status"),
        T,
        Duration::from_millis(50),
        || Ok((c.workload(MOVER).address()? == Some(addr)).then_some(())),
    )
    .unwrap();
}

/// Real packets from the client reach the mover where it runs now.
fn assert_reached(c: &Cluster, addr: std::net::Ipv4Addr, what: &str) {
    let client = c.workload(CLIENT).netns().to_string();
    let rx = Receiver::start(c.workload(MOVER).netns(), PORT + 1).unwrap();
    udp_probe_until_ok(
        &client,
        std::net::SocketAddrV4::new(addr, PORT + 1),
        Duration::from_millis(20),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert!(rx.count() >= 1, "{what}: the workload's own socket saw it");
    let p = ping(&client, addr, 3, Duration::from_secs(5)).unwrap();
    assert!(p.ok && p.received == 3, "{what}: {p:?}");
}

/// `addr` lies in node `node`'s slice of the app range (its MeshNode spec).
fn assert_in_slice(c: &Cluster, node: usize, addr: std::net::Ipv4Addr) {
    let mn = weft_e2e::status::read_meshnode(c.state(), &c.node_name(node))
        .unwrap()
        .expect("a MeshNode");
    let slice = mn["spec"]["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["app"] == format!("{NS}/{APP}"))
        .and_then(|a| a["nodeSlice"].as_str())
        .unwrap_or_else(|| panic!("node {node} has no slice of the app: {mn}"))
        .to_string();
    let (net, len) = slice.split_once('/').unwrap();
    let (net, len): (std::net::Ipv4Addr, u32) = (net.parse().unwrap(), len.parse().unwrap());
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    assert_eq!(
        u32::from(addr) & mask,
        u32::from(net) & mask,
        "{addr} is not in node {node}'s slice {slice}"
    );
}

#[test]
fn a_moved_workload_is_reachable_at_its_new_place_without_user_action() {
    let Some(mut c) =
        scenario::cluster_with_examples("a_moved_workload_is_reachable_at_its_new_place", 3)
    else {
        return;
    };

    // Client on node 3, workload on node 1.
    let first = migration::setup(&mut c, 3, 1).expect("client reaches the workload on node 1");
    wait_published(&c, first.address);
    assert_reached(&c, first.address, "on node 1");
    wait_app_on(&c, 1, true);
    wait_app_on(&c, 2, false);

    // The scheduler moves it to node 2; nobody touches Weft.
    let moved = migration::move_to(&mut c, 2, T).expect("reachable on node 2");
    println!(
        "moved 1 -> 2: attached {:?} after the announcement, first packet {:?} after the attachment",
        moved.announce_to_attach, moved.attach_to_first_packet
    );
    // Its address comes from node 2's slice of the app range. (Here it may
    // even be the old one: node 1 left the app, and the planner can hand its
    // freed slice to node 2.)
    assert_in_slice(&c, 2, moved.address);
    wait_published(&c, moved.address);
    assert_reached(&c, moved.address, "on node 2");
    // Gone from node 1 entirely: nothing of the app runs there any more.
    wait_app_on(&c, 1, false);
    if moved.address != first.address {
        let client = c.workload(CLIENT).netns().to_string();
        let old = ping(&client, first.address, 2, Duration::from_secs(2)).unwrap();
        assert!(!old.ok, "nothing answers at the old address: {old:?}");
    }

    // And back to node 1.
    let back = migration::move_to(&mut c, 1, T).expect("reachable on node 1 again");
    assert_in_slice(&c, 1, back.address);
    wait_published(&c, back.address);
    assert_reached(&c, back.address, "back on node 1");
    wait_app_on(&c, 2, false);
    let st = c
        .wait_ready(NS, APP, T)
        .expect("the app is Ready again on its two nodes");
    assert_eq!((st.nodes_ready, st.nodes_total), (2, 2), "{st:?}");

    let rep = c.teardown();
    assert!(
        rep.clean(),
        "left behind: {} {:?}",
        rep.leftovers,
        rep.warnings
    );
}
