//! End-to-end: the node daemons' `/metrics`, `/healthz` and `/readyz`, and
//! the MeshNode status summary, against traffic actually sent. Two simulated
//! nodes with `examples/` (so `demo/web` has the `web-ingress` policy:
//! TCP and ICMP from web workloads, UDP 7000-7999 from the app range).
//!
//! Needs root, `ip`, `ping` and `bash`, and the workspace binaries built
//! first. Without root the test prints `SKIPPED` — except under `CI=true`.

use std::time::Duration;

use weft_e2e::cluster::Cluster;
use weft_e2e::scenario::{self, NS};
use weft_e2e::traffic::{ping, ping_until_ok};

const READY: Duration = Duration::from_secs(25);
/// UDP datagrams sent to a port no rule allows.
const DENIED: u64 = 7;
/// IP length of each: 20 (IP) + 8 (UDP) + 2 (`x\n`).
const DENIED_BYTES: u64 = 30;
/// Longer than the daemon's traffic read interval (5 s) plus a pass.
const SETTLE: Duration = Duration::from_secs(6);

/// The value of the sample `series` (name with labels, exactly) in `body`.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn scrape(c: &Cluster, i: usize) -> String {
    let (status, body) = c.daemon_http_get(i, "/metrics").expect("scrape /metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    body
}

/// Standard base64, to look for key material in the exposition.
fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for ch in bytes.chunks(3) {
        let n = ch
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for k in 0..=ch.len() {
            out.push(A[((n >> (18 - 6 * k)) & 63) as usize] as char);
        }
    }
    while !out.len().is_multiple_of(4) {
        out.push('=');
    }
    out
}

#[test]
fn daemon_metrics_and_status_match_the_traffic_sent() {
    let Some(mut c) =
        scenario::cluster_with_examples("daemon_metrics_and_status_match_the_traffic_sent", 2)
    else {
        return;
    };
    scenario::add_workloads(&mut c).expect("announce workloads");
    c.wait_ready(NS, "web", READY).expect("demo/web Ready");
    let a = scenario::wait_addresses(&mut c, READY).expect("workload addresses");
    let web1 = c.workload("web-1").netns().to_string();
    ping_until_ok(&web1, a.web2, READY).expect("web-1 reaches web-2");

    for path in ["/healthz", "/readyz"] {
        let (status, _) = c.daemon_http_get(2, path).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
    }

    let app = format!("{NS}/web");
    let peer = c.node_name(1);
    let drops_p =
        format!("weft_node_policy_drops_packets_total{{app=\"{app}\",direction=\"ingress\"}}");
    let drops_b =
        format!("weft_node_policy_drops_bytes_total{{app=\"{app}\",direction=\"ingress\"}}");
    let icmp_rule = format!(
        "weft_node_policy_rule_packets_total{{app=\"{app}\",rule=\"{NS}/web-ingress:ingress[0].ports[1]\"}}"
    );
    let rx = format!("weft_node_peer_receive_bytes_total{{app=\"{app}\",peer=\"{peer}\"}}");
    // Per-peer packets are read at most every 5 s: let the figures of the
    // pings above settle before taking the baseline.
    std::thread::sleep(SETTLE);
    let packets = |node: usize, dir: &str| {
        let other = c.node_name(3 - node);
        format!("weft_node_peer_{dir}_packets_total{{app=\"{app}\",peer=\"{other}\"}}")
    };
    let base1 = scrape(&c, 1);
    let before = scrape(&c, 2);
    let get = |body: &str, s: &str| value(body, s).unwrap_or_else(|| panic!("no {s} in\n{body}"));
    let (drops0, bytes0, icmp0, rx0) = (
        get(&before, &drops_p),
        get(&before, &drops_b),
        get(&before, &icmp_rule),
        get(&before, &rx),
    );

    // Denied: UDP to a port no rule allows, each datagram from a new socket
    // (a new flow), so each one meets the ingress chain and its drop.
    let script = format!(
        "for i in $(seq {DENIED}); do printf 'x\\n' > /dev/udp/{}/6000; done",
        a.web2
    );
    let out = weft_e2e::netns::exec_in(&web1, "bash", &["-c", &script]).unwrap();
    assert!(out.status.success(), "{out:?}");
    // Allowed: 5 pings (one ICMP flow).
    let p = ping(&web1, a.web2, 5, Duration::from_secs(10)).unwrap();
    assert!(p.ok && p.received == 5, "{p:?}");

    // The daemon reads each kind of counter at most every 5 s (policy,
    // WireGuard and traffic reads are not in step): wait for all of them.
    let tunnel_bytes = (DENIED * DENIED_BYTES + 5 * 84) as f64;
    let after = weft_e2e::wait_for(
        "the drops and the tunnel bytes in the daemon's metrics",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let body = scrape(&c, 2);
            let icmp = get(&body, &icmp_rule);
            Ok((get(&body, &drops_p) >= drops0 + DENIED as f64
                && icmp > icmp0
                && get(&body, &rx) - rx0 >= tunnel_bytes)
                .then_some(body))
        },
    )
    .unwrap();
    assert_eq!(
        get(&after, &drops_p),
        drops0 + DENIED as f64,
        "exactly the datagrams sent"
    );
    assert_eq!(
        get(&after, &drops_b),
        bytes0 + (DENIED * DENIED_BYTES) as f64,
        "bytes are IP lengths"
    );
    let icmp = get(&after, &icmp_rule) - icmp0;
    assert!(
        (1.0..=5.0).contains(&icmp),
        "new ICMP flows meet the rule, later packets take the established rule: {icmp}"
    );
    // Through the tunnel: at least the denied datagrams and the pings
    // (84-byte IP packets), plus WireGuard's own overhead.
    assert!(
        get(&after, &rx) - rx0 >= tunnel_bytes,
        "{}",
        get(&after, &rx) - rx0
    );
    assert_eq!(
        value(&after, &format!("weft_node_peers_up{{app=\"{app}\"}}")),
        Some(1.0)
    );
    assert!(value(&after, "weft_node_reconcile_passes_total").unwrap() >= 1.0);
    assert!(value(&after, "weft_node_reconcile_duration_seconds_count").unwrap() >= 1.0);
    assert!(after.contains("weft_node_dataplane_writes_total{op=\"set_policy\"}"));

    // Packets per peer, both ways, exactly: node 1 sent the denied datagrams
    // and 5 echo requests (policy drops at node 2 come after its count of
    // what arrived), node 2 sent the 5 replies. Nothing else crossed.
    let sent = (DENIED + 5) as f64;
    let counted = weft_e2e::wait_for(
        "per-peer packets in both daemons' metrics",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let (b1, b2) = (scrape(&c, 1), scrape(&c, 2));
            let done = get(&b2, &packets(2, "receive"))
                >= get(&before, &packets(2, "receive")) + sent
                && get(&b1, &packets(1, "receive")) >= get(&base1, &packets(1, "receive")) + 5.0;
            Ok(done.then_some((b1, b2)))
        },
    )
    .unwrap();
    std::thread::sleep(SETTLE); // anything late would show now
    let (b1, b2) = (scrape(&c, 1), scrape(&c, 2));
    let delta = |now: &str, then: &str, node: usize, dir: &str| {
        get(now, &packets(node, dir)) - get(then, &packets(node, dir))
    };
    assert_eq!(delta(&b1, &base1, 1, "transmit"), sent, "node 1 sent");
    assert_eq!(delta(&b2, &before, 2, "receive"), sent, "node 2 received");
    assert_eq!(delta(&b2, &before, 2, "transmit"), 5.0, "node 2 replied");
    assert_eq!(delta(&b1, &base1, 1, "receive"), 5.0, "node 1 got replies");
    drop(counted);
    // The counting rules are written when an app's peer set changes, and
    // not once while traffic flowed (passes ran every 100 ms).
    let rewrites = "weft_node_dataplane_writes_total{op=\"set_traffic_counters\"}";
    assert_eq!(get(&b1, rewrites), get(&base1, rewrites), "node 1");
    assert_eq!(get(&b2, rewrites), get(&before, rewrites), "node 2");

    // Active connections: none but the one TCP connection held open, on
    // both nodes, app-wide and for the peer; none again once it is closed.
    let conns = |i: usize| {
        let body = scrape(&c, i);
        let app_wide = format!("weft_node_active_connections{{app=\"{app}\"}}");
        let other = c.node_name(3 - i);
        let peer = format!("weft_node_peer_active_connections{{app=\"{app}\",peer=\"{other}\"}}");
        (get(&body, &app_wide), get(&body, &peer))
    };
    assert_eq!(
        (conns(1), conns(2)),
        ((0.0, 0.0), (0.0, 0.0)),
        "pings are no connections"
    );
    let web2 = c.workload("web-2").netns().to_string();
    let web2_addr = a.web2;
    let listener = weft_e2e::netns::in_netns(&web2, || {
        Ok(std::net::TcpListener::bind((
            std::net::Ipv4Addr::UNSPECIFIED,
            8080,
        ))?)
    })
    .unwrap();
    let client = weft_e2e::netns::in_netns(&web1, move || {
        Ok(std::net::TcpStream::connect_timeout(
            &(web2_addr, 8080).into(),
            Duration::from_secs(5),
        )?)
    })
    .unwrap();
    let (server, _) = listener.accept().unwrap();
    weft_e2e::wait_for(
        "one open connection on both nodes",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || Ok((conns(1) == (1.0, 1.0) && conns(2) == (1.0, 1.0)).then_some(())),
    )
    .unwrap();
    let open_status = weft_e2e::wait_for(
        "activeConnections in node 2's MeshNode status",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let st = c.node_status(2)?;
            Ok(st
                .and_then(|s| s.apps.into_iter().find(|x| x.app == app))
                .filter(|x| x.active_connections == Some(1)))
        },
    )
    .unwrap();
    let p = open_status.peers.iter().find(|p| p.node == peer).unwrap();
    assert_eq!(p.active_connections, 1);
    assert!(p.rx_packets >= DENIED + 5 && p.tx_packets >= 5, "{p:?}");
    drop(client);
    drop(server);
    weft_e2e::wait_for(
        "no open connection once closed",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || Ok((conns(1) == (0.0, 0.0) && conns(2) == (0.0, 0.0)).then_some(())),
    )
    .unwrap();

    // The MeshApp sums its nodes' reports (once traffic is quiet and both
    // heartbeats are in, the sums match the node statuses exactly).
    let traffic = weft_e2e::wait_for(
        "demo/web's MeshApp traffic summing its MeshNode statuses",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let mut want = (0, 0, 0);
            for i in 1..=2 {
                let st = c.node_status(i)?.unwrap_or_default();
                for x in st.apps.iter().filter(|x| x.app == app) {
                    want.2 += x.active_connections.unwrap_or(0);
                    for p in &x.peers {
                        want.0 += p.rx_packets;
                        want.1 += p.tx_packets;
                    }
                }
            }
            let st = c.app_status(NS, "web")?;
            Ok(st.and_then(|s| s.traffic).filter(|t| {
                t.nodes == 2
                    && (t.rx_packets, t.tx_packets, t.active_connections) == want
                    && t.rx_packets >= 2 * 5 + DENIED
            }))
        },
    )
    .unwrap();
    assert!(traffic.policy_drops >= DENIED, "{traffic:?}");
    assert!(traffic.rx_bytes > 0 && traffic.tx_bytes > 0, "{traffic:?}");

    // No key material in the exposition, of either node.
    for i in 1..=2 {
        let body = scrape(&c, i);
        let keys = c.data_dir(i).join("keys");
        for raw in weft_e2e::private_key_files(&keys) {
            assert!(!body.contains(&b64(&raw)), "a private key in /metrics");
        }
        let status = c.node_status(i).unwrap().unwrap();
        for app in &status.apps {
            assert!(!body.contains(&app.public_key), "no key in labels");
        }
    }

    // The MeshNode status summarises drops, with the heartbeat.
    let summary = weft_e2e::wait_for(
        "policyDrops in node 2's MeshNode status",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let st = c.node_status(2)?;
            Ok(st.and_then(|s| {
                s.apps
                    .into_iter()
                    .find(|x| x.app == app)
                    .filter(|x| x.policy_drops.unwrap_or(0) >= drops0 as u64 + DENIED)
            }))
        },
    )
    .unwrap();
    assert_eq!(summary.peers_up, 1);
    let db = c.node_status(2).unwrap().unwrap();
    let db = db
        .apps
        .iter()
        .find(|x| x.app == format!("{NS}/db"))
        .unwrap();
    assert_eq!(db.policy_drops, None, "no policy, no drop figure");

    let rep = c.teardown();
    assert!(
        rep.clean(),
        "left behind: {} {:?}",
        rep.leftovers,
        rep.warnings
    );
}

#[test]
fn base64_matches_the_standard_alphabet() {
    assert_eq!(b64(b"foob"), "Zm9vYg==");
    assert_eq!(b64(b"fooba"), "Zm9vYmE=");
    assert_eq!(b64(b"foobar"), "Zm9vYmFy");
}
