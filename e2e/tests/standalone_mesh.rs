//! End-to-end: the standalone operator and two node daemons on simulated
//! nodes (network namespaces on a WAN bridge), real WireGuard traffic.
//!
//! Needs root, `ip` and `ping`, and the workspace binaries built first
//! (`cargo build --workspace`). Without root the tests print `SKIPPED` —
//! except under `CI=true`, where a skip is a failure.

use std::sync::Mutex;
use std::time::Duration;

use weft_e2e::capture::{Capture, CaptureConfig};
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::scenario::{self, Addrs, NS};
use weft_e2e::topology::Sim;
use weft_e2e::traffic::{ping, ping_until_ok, tcp_transfer, tcp_transfer_opts, TransferOpts};
use weft_e2e::workload::WORKLOAD_IFACE;

/// The scenarios share the CPUs and must not disturb each other's timing.
static SERIAL: Mutex<()> = Mutex::new(());

const READY: Duration = Duration::from_secs(25);

fn setup(test: &str) -> Option<(Cluster, Addrs)> {
    let mut c = scenario::cluster_with_examples(test, 2)?;
    scenario::add_workloads(&mut c).expect("announce workloads");
    for app in ["web", "db"] {
        c.wait_ready(NS, app, READY)
            .unwrap_or_else(|e| panic!("{NS}/{app} not Ready: {e:#}"));
    }
    let a = scenario::wait_addresses(&mut c, READY).expect("workload addresses");
    Some((c, a))
}

fn assert_ping(from: &str, to: std::net::Ipv4Addr, what: &str) {
    let r = ping(from, to, 3, Duration::from_secs(5)).unwrap();
    assert!(r.ok && r.received == r.transmitted, "{what}: {r:?}");
}

fn assert_no_ping(from: &str, to: std::net::Ipv4Addr, what: &str) {
    let r = ping(from, to, 2, Duration::from_secs(2)).unwrap();
    assert!(!r.ok, "{what} must be isolated, but got replies: {r:?}");
}

#[test]
fn mesh_connectivity_isolation_and_encryption() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((mut c, a)) = setup("mesh_connectivity_isolation_and_encryption") else {
        return;
    };

    // Status as the operator reports it.
    for app in ["web", "db"] {
        let st = c.app_status(NS, app).unwrap().expect("status file");
        assert_eq!(weft_e2e::status::condition(&st, "Ready"), Some("True"));
        assert_eq!((st.nodes_ready, st.nodes_total), (2, 2), "{app}: {st:?}");
        assert_eq!((st.peers_up, st.peers_total), (1, 1), "{app}: {st:?}");
    }
    let table = c.get_meshapps(false).expect("weft-operator get meshapps");
    for app in ["web", "db"] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == app))
            .unwrap_or_else(|| panic!("no row for {app} in:\n{table}"));
        for want in ["True", "2/2", "1/1"] {
            assert!(row.contains(want), "row for {app} lacks {want}:\n{table}");
        }
    }

    // Cross-node traffic inside each app.
    let ns = |n: &str| c.workload(n).netns().to_string();
    let (web1, web2, db1, db2) = (ns("web-1"), ns("web-2"), ns("db-1"), ns("db-2"));
    assert_ping(&web1, a.web2, "web-1 -> web-2");
    assert_ping(&web2, a.web1, "web-2 -> web-1");
    assert_ping(&db1, a.db2, "db-1 -> db-2");
    assert_ping(&db2, a.db1, "db-2 -> db-1");
    let t = tcp_transfer(&web1, &web2, a.web2, 8 << 20).expect("TCP web-1 -> web-2");
    assert_eq!(t.bytes, 8 << 20);
    let t = tcp_transfer(&db2, &db1, a.db1, 8 << 20).expect("TCP db-2 -> db-1");
    assert_eq!(t.bytes, 8 << 20);

    // Isolation, both ways and across nodes and on the same node.
    assert_no_ping(&db1, a.web2, "db-1 -> web-2");
    assert_no_ping(&web1, a.db2, "web-1 -> db-2");
    assert_no_ping(&db2, a.web1, "db-2 -> web-1");
    assert_no_ping(&web2, a.db1, "web-2 -> db-1");
    assert_no_ping(&web1, a.db1, "web-1 -> db-1 (same node)");

    // Handshakes and counters, as the daemons report them.
    weft_e2e::wait_for(
        "handshakes and moving counters on both nodes",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            for i in 1..=2 {
                let Some(st) = c.node_status(i)? else {
                    return Ok(None);
                };
                for app in ["web", "db"] {
                    let Some(s) = st.apps.iter().find(|s| s.app == format!("{NS}/{app}")) else {
                        return Ok(None);
                    };
                    let Some(p) = s.peers.first() else {
                        return Ok(None);
                    };
                    if p.last_handshake_seconds.is_none() || p.rx_bytes == 0 || p.tx_bytes == 0 {
                        return Ok(None);
                    }
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();

    // App payloads cross the WAN only encrypted.
    let marker = b"WEFT-E2E-MARKER-c0ffee".to_vec();
    let ports = c.listen_ports();
    let range = match (ports.first(), ports.last()) {
        (Some(a), Some(b)) => *a..=*b,
        _ => 1..=65535,
    };
    let wan = Capture::start(CaptureConfig {
        netns: c.sim().wan_netns().into(),
        iface: Sim::wan_port(1),
        udp_ports: range.clone(),
        marker: Some(marker.clone()),
    })
    .unwrap();
    let inside = Capture::start(CaptureConfig {
        netns: web2.clone(),
        iface: WORKLOAD_IFACE.into(),
        udp_ports: range,
        marker: Some(marker.clone()),
    })
    .unwrap();
    tcp_transfer_opts(
        &web1,
        &web2,
        a.web2,
        &TransferOpts {
            bytes: 2 << 20,
            port: 18081,
            fill: Some(marker),
            timeout: Duration::from_secs(30),
        },
    )
    .expect("marker transfer");
    let wan = wan.stop().unwrap();
    let inside = inside.stop().unwrap();
    assert!(
        inside.marker_seen(),
        "capture inside the app must see the plaintext: {inside:?}"
    );
    assert!(
        wan.wg_data > 100,
        "WireGuard data packets expected on the WAN: {wan:?}"
    );
    assert!(
        !wan.marker_seen(),
        "plaintext marker seen on the WAN: {wan:?}"
    );

    c.check_alive().unwrap();
    assert_torn_down_cleanly(c);
}

#[test]
fn daemon_restart_and_app_deletion() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((mut c, a)) = setup("daemon_restart_and_app_deletion") else {
        return;
    };
    let web1 = c.workload("web-1").netns().to_string();
    assert_ping(&web1, a.web2, "web-1 -> web-2 before the restart");

    // A crashed daemon comes back and traffic recovers.
    c.crash_daemon(2).unwrap();
    c.restart_daemon(2).unwrap();
    let web2_addr = c.wait_address("web-2", READY).unwrap();
    ping_until_ok(&web1, web2_addr, Duration::from_secs(20))
        .expect("traffic recovers after a daemon restart");
    let web2 = c.workload("web-2").netns().to_string();
    tcp_transfer(&web1, &web2, web2_addr, 4 << 20).expect("TCP after restart");
    c.wait_ready(NS, "web", READY).unwrap();

    // Drift: the running daemon repairs what is deleted behind its back.
    let web_ns1 = c.app_netns(1, &format!("{NS}/web")).unwrap().unwrap();
    let web_if1 = format!("wf{}", web_ns1.rsplit('-').next().unwrap());
    weft_e2e::netns::ip(&["-n", &web_ns1, "link", "del", &web_if1]).expect("delete the interface");
    ping_until_ok(&web1, web2_addr, Duration::from_secs(20))
        .expect("a deleted WireGuard interface is recreated and traffic recovers");
    // `ip netns del` unlinks the name at once, so its return means recreation
    // (namespace inode numbers are recycled, so they cannot tell old from new).
    weft_e2e::netns::ip(&["netns", "del", &web_ns1]).expect("delete the app netns");
    assert!(!weft_e2e::netns::netns_exists(&web_ns1));
    weft_e2e::wait_for(
        "the app netns to be recreated",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || Ok(weft_e2e::netns::netns_exists(&web_ns1).then_some(())),
    )
    .unwrap();
    ping_until_ok(&web1, web2_addr, Duration::from_secs(20))
        .expect("a deleted app netns is recreated, the workload re-attached, and traffic recovers");

    // Deleting the db app removes its namespaces on both nodes; web keeps working.
    let db_netns: Vec<String> = (1..=2)
        .map(|i| {
            c.app_netns(i, &format!("{NS}/db"))
                .unwrap()
                .unwrap_or_else(|| panic!("no db netns on node {i}"))
        })
        .collect();
    let web_netns: Vec<String> = (1..=2)
        .map(|i| c.app_netns(i, &format!("{NS}/web")).unwrap().unwrap())
        .collect();
    for n in db_netns.iter().chain(&web_netns) {
        assert!(weft_e2e::netns::netns_exists(n), "{n} should exist");
    }
    c.delete_manifest(scenario::DB_FILE).unwrap();
    weft_e2e::wait_for(
        "db namespaces to disappear",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            Ok(db_netns
                .iter()
                .all(|n| !weft_e2e::netns::netns_exists(n))
                .then_some(()))
        },
    )
    .unwrap();
    for n in &web_netns {
        assert!(
            weft_e2e::netns::netns_exists(n),
            "{n} (web) must survive deleting db"
        );
    }
    assert_ping(&web1, web2_addr, "web-1 -> web-2 after deleting db");

    c.check_alive().unwrap();
    assert_torn_down_cleanly(c);
}
