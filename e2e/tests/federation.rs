//! End-to-end federation: two standalone control planes (cluster-a with
//! node 1 and edge host 2, cluster-b with node 3), each with its own state
//! directory and operator, and a directory hub between them, all on one
//! simulated WAN with real daemons and real WireGuard (see
//! `weft_e2e::federation`).
//!
//! Needs root, `ip` and `ping`, and the workspace binaries built first
//! (`cargo build --workspace`). Without root it prints `SKIPPED`, except
//! under `CI=true`, where a skip is a failure.

use std::path::Path;

use std::time::Duration;
use weft_e2e::federation;

use base64::Engine;
use weft_e2e::capture::{Capture, CaptureConfig};
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::topology::Sim;
use weft_e2e::traffic::{ping, tcp_transfer};

const READY: Duration = Duration::from_secs(40);

/// The Ready condition (reason, message) of MeshSite `site` in a state dir.
fn site_ready(state: &weft_api::standalone::StateDir, site: &str) -> Option<(String, String)> {
    let st: weft_api::standalone::StoredStatus<weft_api::MeshSiteStatus> =
        weft_e2e::status::read_json(&state.status_file("meshsites", site)).ok()??;
    let c = st.status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.reason.clone(), c.message.clone()))
}

fn wait_site(c: &Cluster, site: &str, reason: &str, timeout: Duration) -> String {
    wait_site_in(c.state(), site, reason, timeout)
}

fn wait_site_in(
    state: &weft_api::standalone::StateDir,
    site: &str,
    reason: &str,
    timeout: Duration,
) -> String {
    let state = state.clone();
    weft_e2e::wait_for(
        &format!("MeshSite {site} Ready reason {reason}"),
        timeout,
        Duration::from_millis(200),
        || {
            Ok(site_ready(&state, site)
                .filter(|(r, _)| r == reason)
                .map(|(_, m)| m))
        },
    )
    .unwrap()
}

/// The public key node 1 has for node 3 in the shared app.
fn peer_key_of_n1(c: &Cluster) -> Option<String> {
    let v = weft_e2e::status::read_meshnode(c.state(), &c.node_name(1)).ok()??;
    let apps = v.pointer("/spec/apps")?.as_array()?.clone();
    let shop = apps.into_iter().find(|a| a["app"] == "demo/shop")?;
    let peer = shop["peers"]
        .as_array()?
        .iter()
        .find(|p| {
            p["node"]
                .as_str()
                .is_some_and(|n| n.starts_with("cluster-b/"))
        })?
        .clone();
    peer["publicKey"].as_str().map(String::from)
}

/// Node 1's peers for the shared app, by name, with their allowed IPs.
fn peers_of_n1(c: &Cluster) -> Vec<(String, Vec<String>)> {
    let v = weft_e2e::status::read_meshnode(c.state(), &c.node_name(1))
        .unwrap()
        .unwrap();
    let apps = v
        .pointer("/spec/apps")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    let shop = apps
        .iter()
        .find(|a| a["app"] == "demo/shop")
        .cloned()
        .unwrap_or_default();
    shop["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let ips = p["allowedIps"].as_array().cloned().unwrap_or_default();
            (
                p["node"].as_str().unwrap_or_default().to_string(),
                ips.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
            )
        })
        .collect()
}

fn setup(test: &str) -> Option<Cluster> {
    // Short grace periods, so losing a member shows within the test.
    federation::start_for_test(test, Some((5, 10)))
}

fn wait_ready(c: &mut Cluster, member: Option<&str>, app: &str) -> weft_api::MeshAppStatus {
    federation::wait_ready(c, member, app, READY)
}

/// Ready, and listing `sites`: the app is Ready in a cluster with its own
/// nodes before the hub has brought the other cluster in.
fn wait_sites(
    c: &mut Cluster,
    member: Option<&str>,
    app: &str,
    sites: &[&str],
) -> weft_api::MeshAppStatus {
    let end = std::time::Instant::now() + READY;
    loop {
        let st = wait_ready(c, member, app);
        if st.sites == sites {
            return st;
        }
        assert!(
            std::time::Instant::now() < end,
            "{app} in {member:?} never listed the sites {sites:?}: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pings(from: &str, to: std::net::Ipv4Addr) -> bool {
    let r = ping(from, to, 3, Duration::from_secs(5)).unwrap();
    r.ok && r.received == r.transmitted
}

#[test]
fn two_clusters_share_one_app_through_a_hub_one_hop_encrypted_and_isolated() {
    let Some(mut c) =
        setup("two_clusters_share_one_app_through_a_hub_one_hop_encrypted_and_isolated")
    else {
        return;
    };
    let all = ["cluster-a", "cluster-b", "edge-a"];
    let a = wait_sites(&mut c, None, "shop", &all);
    let b = wait_sites(&mut c, Some("cluster-b"), "shop", &all);
    for st in [&a, &b] {
        assert_eq!(st.address_space.as_deref(), Some("10.120.0.0/16"));
    }
    let shop1 = c.wait_address("shop-1", READY).unwrap();
    let shop2 = c.wait_address("shop-2", READY).unwrap();
    let shop3 = c.wait_address("shop-3", READY).unwrap();
    let ledger2 = c.wait_address("ledger-2", READY).unwrap();
    let ledger3 = c.wait_address("ledger-3", READY).unwrap();
    let netns: std::collections::BTreeMap<String, String> =
        ["shop-1", "shop-2", "shop-3", "ledger-2", "ledger-3"]
            .iter()
            .map(|n| (n.to_string(), c.workload(n).netns().to_string()))
            .collect();
    let ns = |n: &str| netns[n].clone();

    // Across clusters, both ways, with the WAN ports of all three nodes
    // watched: the encrypted packets go from node 1 straight to node 3.
    let ports = 51000..=52999;
    let captures: Vec<Capture> = (1..=3)
        .map(|i| {
            Capture::start(CaptureConfig {
                netns: c.sim().wan_netns().into(),
                iface: Sim::wan_port(i),
                udp_ports: ports.clone(),
                marker: Some(b"WEFT-FEDERATION-MARKER".to_vec()),
            })
            .unwrap()
        })
        .collect();
    assert!(
        pings(&ns("shop-1"), shop3),
        "shop-1 (cluster-a) -> shop-3 (cluster-b)"
    );
    assert!(
        pings(&ns("shop-3"), shop1),
        "shop-3 (cluster-b) -> shop-1 (cluster-a)"
    );
    // The edge host of cluster-a reaches cluster-b's node directly too.
    assert!(
        pings(&ns("shop-2"), shop3),
        "shop-2 (edge-a) -> shop-3 (cluster-b)"
    );
    assert!(
        pings(&ns("shop-3"), shop2),
        "shop-3 (cluster-b) -> shop-2 (edge-a)"
    );
    let t = tcp_transfer(&ns("shop-1"), &ns("shop-3"), shop3, 4 << 20).expect("TCP a -> b");
    assert_eq!(t.bytes, 4 << 20);
    let stats: Vec<_> = captures.into_iter().map(|x| x.stop().unwrap()).collect();
    let (n1, n3) = (Sim::node_addr(1), Sim::node_addr(3));
    for (i, s) in stats.iter().enumerate() {
        assert!(!s.marker_seen(), "plaintext on node {}'s WAN port", i + 1);
    }
    let direct = stats[0].wg_data_flows.get(&(n1, n3)).copied().unwrap_or(0);
    assert!(
        direct > 100,
        "node 1 -> node 3 direct: {:?}",
        stats[0].wg_data_flows
    );
    assert!(
        stats[2].wg_data_flows.get(&(n3, n1)).copied().unwrap_or(0) > 10,
        "{:?}",
        stats[2].wg_data_flows
    );
    let (n2, mut relayed) = (Sim::node_addr(2), 0);
    for ((src, dst), n) in &stats[1].wg_data_flows {
        assert!(*src == n2 || *dst == n2, "node 2 relays {src} -> {dst}");
        relayed += n;
    }
    assert!(
        relayed < 50,
        "node 2 saw only its own pings: {:?}",
        stats[1].wg_data_flows
    );
    assert!(
        stats[1].wg_data_flows.contains_key(&(n2, n3)),
        "edge -> b direct: {:?}",
        stats[1].wg_data_flows
    );

    // Isolation across clusters: the unrelated apps reach nothing of shop.
    for (from, to, what) in [
        (
            "ledger-3",
            shop1,
            "ledger-3 (cluster-b) -> shop-1 (cluster-a)",
        ),
        (
            "ledger-2",
            shop3,
            "ledger-2 (cluster-a) -> shop-3 (cluster-b)",
        ),
        ("shop-1", ledger3, "shop-1 -> ledger-3"),
        ("shop-3", ledger2, "shop-3 -> ledger-2"),
    ] {
        let r = ping(&ns(from), to, 2, Duration::from_secs(2)).unwrap();
        assert!(!r.ok, "{what} must be isolated: {r:?}");
    }

    // The hub: both members syncing; nothing private on it.
    let table = federation::hub_status(&c).unwrap();
    for m in ["cluster-a", "cluster-b"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(m))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(row.contains("Syncing"), "{table}");
    }
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for i in 1..=3 {
        for raw in weft_e2e::private_key_files(&c.data_dir(i).join("keys")) {
            keys.push(
                base64::engine::general_purpose::STANDARD
                    .encode(&raw)
                    .into_bytes(),
            );
            keys.push(raw);
        }
    }
    assert!(keys.len() >= 6, "every node has a key per app");
    let mut files = 0;
    for e in walk(&c.hub_dir()) {
        let body = std::fs::read(&e).unwrap();
        files += 1;
        for k in &keys {
            assert!(
                !weft_e2e::capture::contains(&body, k),
                "a private key in {}",
                e.display()
            );
        }
    }
    assert!(
        files >= 5,
        "hub.json, an allocation, two records, two heartbeats"
    );

    let msg = wait_site(&c, "cluster-b", "Syncing", READY);
    assert!(msg.contains("1 nodes"), "{msg}");
    let msg = wait_site_in(c.member_state("cluster-b"), "cluster-a", "Syncing", READY);
    assert!(
        msg.contains("2 nodes"),
        "cluster-a brings its edge host: {msg}"
    );

    // The hub goes away, for longer than the grace periods: traffic
    // between the clusters goes on, status says why, nobody is pruned.
    let before = peers_of_n1(&c);
    assert_eq!(before.len(), 2, "{before:?}");
    let away = c.hub_dir().with_extension("away");
    std::fs::rename(c.hub_dir(), &away).unwrap();
    let msg = wait_site(&c, "cluster-b", "HubUnreachable", Duration::from_secs(10));
    assert!(msg.contains("cannot be read"), "{msg}");
    weft_e2e::sleep(Duration::from_secs(11)).unwrap();
    assert!(
        pings(&ns("shop-1"), shop3),
        "hub unreachable: a -> b still works"
    );
    assert!(
        pings(&ns("shop-3"), shop1),
        "hub unreachable: b -> a still works"
    );
    assert_eq!(
        peers_of_n1(&c),
        before,
        "nothing changes while the hub is away"
    );
    std::fs::rename(&away, c.hub_dir()).unwrap();
    wait_site(&c, "cluster-b", "Syncing", Duration::from_secs(10));
    assert!(pings(&ns("shop-1"), shop3));

    // Member b's operator stops: stale, then pruned (its node leaves a's
    // mesh); back again, its node returns with the same slice.
    c.stop_member_operator("cluster-b").unwrap();
    wait_site(&c, "cluster-b", "MemberStale", Duration::from_secs(15));
    wait_site(&c, "cluster-b", "MemberGone", Duration::from_secs(15));
    weft_e2e::wait_for(
        "b's node pruned from n1",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let gone = !peers_of_n1(&c)
                .iter()
                .any(|(n, _)| n.starts_with("cluster-b/"));
            Ok(gone.then_some(()))
        },
    )
    .unwrap();
    c.start_member_operator("cluster-b").unwrap();
    wait_site(&c, "cluster-b", "Syncing", Duration::from_secs(20));
    weft_e2e::wait_for(
        "b's node back on n1",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || Ok((peers_of_n1(&c) == before).then_some(())),
    )
    .unwrap();
    wait_ready(&mut c, None, "shop");
    assert!(pings(&ns("shop-1"), shop3), "b is back: a -> b");

    // Node 3 comes back with new keys (its key store lost): cluster-a
    // learns the new public key through the hub, with no manual step.
    let old_key = peer_key_of_n1(&c);
    c.daemon(3).unwrap().stop(Duration::from_secs(5));
    std::fs::remove_dir_all(c.data_dir(3).join("keys")).unwrap();
    c.daemon(3).unwrap().restart().unwrap();
    weft_e2e::wait_for(
        "n1 learns n3's new key",
        READY,
        Duration::from_millis(200),
        || {
            Ok(peer_key_of_n1(&c)
                .filter(|k| Some(k) != old_key.as_ref())
                .map(|_| ()))
        },
    )
    .unwrap();
    weft_e2e::wait_for(
        "a -> b with the new key",
        READY,
        Duration::from_millis(500),
        || Ok(pings(&ns("shop-1"), shop3).then_some(())),
    )
    .unwrap();

    c.check_alive().unwrap();
    assert_torn_down_cleanly(c);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
