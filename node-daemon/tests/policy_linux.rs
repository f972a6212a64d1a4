//! Privileged policy tests: a real app netns with real workloads (veths),
//! the policy table programmed by `LinuxDataplane` through nftables, and real
//! TCP, UDP and ICMP between the workloads. Needs root and `nft`; without them
//! a test prints "SKIPPED: ..." unless CI=true, where it fails instead.
//!
//! Every packet between two workloads of one app crosses the FORWARD hook of
//! the app netns, so one node with three workloads exercises the whole
//! enforcement path (the WireGuard side only adds encryption).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nix::sched::{setns, CloneFlags};
use weft_node_daemon::core::ops::Op;
use weft_node_daemon::dataplane::linux::LinuxOptions;
use weft_node_daemon::keys::PrivateKey;
mod support;

use support::{net, privileged, sh, Cleanup, Keys, Node};
use weft_node_daemon::core::state::{
    AppLinkEnd, AppNet, Device, NodeState, PolicyCounters, PolicyDirection, PolicyProtocol,
    PolicyTable, Ruleset, RulesetRule, WorkloadLink,
};

/// One ping (one echo request) from `netns` to `dst`, waiting up to 1 s.
fn ping(netns: &str, dst: Ipv4Addr) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", netns, "ping", "-n", "-q", "-c", "1", "-W", "1",
        ])
        .arg(dst.to_string())
        .output()
        .is_ok_and(|o| o.status.success())
}

// ---------------------------------------------------------------- threads in namespaces

/// Runs `f` on a fresh thread inside `/run/netns/<netns>` (sockets it opens
/// stay in that netns).
fn in_ns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_ns(netns, f)
        .join()
        .expect("thread in netns panicked")
}

fn spawn_in_ns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = File::open(&path).expect("open netns");
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// TCP echo servers on `ports` and a UDP counter on `udp_port`, in `netns`.
fn start_servers(netns: &str, addr: Ipv4Addr, ports: &[u16], udp_port: u16) -> Arc<AtomicUsize> {
    for &port in ports {
        let l = in_ns(netns, move || {
            TcpListener::bind((addr, port)).expect("bind")
        });
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    let got = Arc::new(AtomicUsize::new(0));
    let sock = in_ns(netns, move || {
        UdpSocket::bind((addr, udp_port)).expect("bind udp")
    });
    let g = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while sock.recv_from(&mut buf).is_ok() {
            g.fetch_add(1, Ordering::SeqCst);
        }
    });
    got
}

/// Opens a TCP connection from `netns` (1 s timeout) and checks one echo.
fn tcp_connect(netns: &str, dst: Ipv4Addr, port: u16) -> Option<TcpStream> {
    in_ns(netns, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((dst, port)), Duration::from_secs(1))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        echo(&mut s).then_some(s)
    })
}

fn echo(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 5];
    s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hello"
}

/// Sends `n` UDP datagrams of `size` bytes from `netns`.
fn udp_send(netns: &str, dst: Ipv4Addr, port: u16, n: usize, size: usize) {
    in_ns(netns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for _ in 0..n {
            s.send_to(&vec![7u8; size], (dst, port)).unwrap();
        }
    });
}

// ---------------------------------------------------------------- the node

// ---------------------------------------------------------------- the world

const S: Ipv4Addr = Ipv4Addr::new(10, 125, 1, 10); // server
const C: Ipv4Addr = Ipv4Addr::new(10, 125, 1, 11); // client (allowed)
const O: Ipv4Addr = Ipv4Addr::new(10, 125, 1, 12); // other (not allowed)
const RANGE: &str = "10.125.0.0/16";
const UDP_PORT: u16 = 5353;

/// One node, one app, three workloads (server, client, other).
struct World {
    // Field order is drop order: the worker stops before the namespaces go.
    node: Node,
    desired: NodeState,
    keys: Keys,
    prefix: String,
    app_ns: String,
    /// Workload netns: server, client, other.
    wl: Vec<String>,
    _cleanup: Cleanup,
}

impl World {
    /// Every pass reads the whole table: most tests check counters and
    /// hand-made rule drift right after the traffic.
    fn new(t: &str) -> World {
        World::with_full_read(t, std::time::Duration::ZERO)
    }

    fn with_full_read(t: &str, full_read: std::time::Duration) -> World {
        let tag = format!("{t}{}", std::process::id());
        let mut cleanup = Cleanup::default();
        let node_ns = format!("wpn-{tag}");
        let prefix = format!("wpa-{tag}-");
        let app_ns = format!("{prefix}a");
        let wl: Vec<String> = ["s", "c", "o"]
            .iter()
            .map(|w| format!("wpw-{tag}-{w}"))
            .collect();
        cleanup.netns.push(node_ns.clone());
        cleanup.netns.push(app_ns.clone());
        cleanup.netns.extend(wl.iter().cloned());
        for n in std::iter::once(&node_ns).chain(&wl) {
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let key = PrivateKey::generate();
        let workloads = [S, C, O]
            .iter()
            .zip(&wl)
            .zip(["s", "c", "o"])
            .map(|((addr, ns), w)| {
                (
                    format!("wv{tag}{w}"),
                    WorkloadLink {
                        workload: format!("default/{w}"),
                        workload_netns: format!("/run/netns/{ns}"),
                        address: *addr,
                        mtu: 1420,
                    },
                )
            })
            .collect();
        let app = AppNet {
            app: "default/demo".into(),
            netns: app_ns.clone(),
            device: Some(Device {
                interface: format!("wg{tag}"),
                mtu: 1420,
                up: true,
                addresses: vec![net("10.125.1.1/32")],
                routes: vec![net(RANGE)],
                listen_port: 51820,
                public_key: key.public_key(),
                peers: BTreeMap::new(),
            }),
            workloads,
            policy: None,
            links: Default::default(),
        };
        let mut desired = NodeState::default();
        desired.apps.insert(app_ns.clone(), app);
        let keys = Keys([(app_ns.clone(), key)].into());
        let node = Node::start(
            &node_ns,
            "policy-node",
            LinuxOptions {
                policy_full_read_interval: full_read,
                ..LinuxOptions::default()
            },
        );
        let w = World {
            node,
            desired,
            keys,
            prefix,
            app_ns,
            wl,
            _cleanup: cleanup,
        };
        assert!(!w.sync().is_empty());
        assert!(w.sync().is_empty(), "converged without policy");
        w
    }

    fn sync(&self) -> Vec<Op> {
        self.node.sync(&self.desired, &self.keys, &self.prefix)
    }

    fn set_policy(&mut self, p: Option<PolicyTable>) {
        self.desired.apps.get_mut(&self.app_ns).unwrap().policy = p;
    }

    fn counters(&self) -> PolicyCounters {
        self.node
            .observe(&self.prefix)
            .policy_counters
            .remove(&self.app_ns)
            .unwrap_or_default()
    }

    /// Syncs, expecting exactly one SetPolicy, then a converged resync.
    fn sync_policy(&self) {
        let ops = self.sync();
        assert_eq!(
            ops.iter().map(Op::name).collect::<Vec<_>>(),
            vec!["set_policy"],
            "a policy change is one transaction"
        );
        assert!(self.sync().is_empty(), "a converged resync writes nothing");
    }

    fn server(&self) -> &str {
        &self.wl[0]
    }
    fn client(&self) -> &str {
        &self.wl[1]
    }
    fn other(&self) -> &str {
        &self.wl[2]
    }
}

fn allow(id: &str, proto: Option<PolicyProtocol>, ports: Option<(u16, u16)>) -> RulesetRule {
    RulesetRule {
        id: id.into(),
        direction: PolicyDirection::Ingress,
        local: vec![S],
        peers: vec![Ipv4Net::new(C, 32).unwrap()],
        protocol: proto,
        ports,
    }
}

/// Server isolated for ingress; the client may reach it on the given rules.
fn server_policy(rules: Vec<RulesetRule>) -> PolicyTable {
    Ruleset {
        app_range: Some(net(RANGE)),
        ingress_isolated: vec![S],
        egress_isolated: vec![],
        rules,
        ..Default::default()
    }
    .into_table()
}

const TCP_A: &str = "default/p:ingress[0].ports[0]";
const TCP_B: &str = "default/p:ingress[0].ports[1]";
const UDP: &str = "default/p:ingress[1].ports[0]";
const ICMP: &str = "default/p:ingress[2]";

fn v1() -> PolicyTable {
    server_policy(vec![
        allow(TCP_A, Some(PolicyProtocol::Tcp), Some((8080, 8080))),
        allow(TCP_B, Some(PolicyProtocol::Tcp), Some((9090, 9095))),
        allow(UDP, Some(PolicyProtocol::Udp), Some((UDP_PORT, UDP_PORT))),
        allow(ICMP, Some(PolicyProtocol::Icmp), None),
    ])
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(3);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn policy_allows_denies_counts_updates_and_reopens_with_real_traffic() {
    if !privileged(
        "policy_allows_denies_counts_updates_and_reopens_with_real_traffic",
        &[("nft", "--version")],
    ) {
        return;
    }
    let mut w = World::new("p");
    let udp_got = start_servers(w.server(), S, &[8080, 8081, 9090], UDP_PORT);

    // Open app: everyone reaches the server on every port.
    assert!(
        tcp_connect(w.other(), S, 8081).is_some(),
        "open before policy"
    );
    assert!(ping(w.other(), S));
    assert!(
        w.counters() == PolicyCounters::default(),
        "no table, no counters"
    );

    // Policy v1: only the client, only TCP 8080 and 9090-9095, UDP 5353, ICMP.
    w.set_policy(Some(v1()));
    w.sync_policy();
    let c0 = w.counters();
    assert_eq!(c0.rules.len(), 4, "{c0:?}");

    // TCP: allowed passes, denied (other peer, other port) fails.
    let mut long_lived = tcp_connect(w.client(), S, 8080).expect("client -> 8080 allowed");
    let mut to_b = tcp_connect(w.client(), S, 9090).expect("client -> 9090 allowed");
    assert!(
        tcp_connect(w.client(), S, 8081).is_none(),
        "port 8081 denied"
    );
    assert!(
        tcp_connect(w.other(), S, 8080).is_none(),
        "other peer denied"
    );
    // Replies and later packets pass through conntrack.
    for _ in 0..3 {
        assert!(echo(&mut long_lived));
    }
    // UDP: 3 from the client arrive, 5 from the other do not.
    let before = udp_got.load(Ordering::SeqCst);
    udp_send(w.client(), S, UDP_PORT, 3, 100);
    wait_for("3 datagrams", || {
        udp_got.load(Ordering::SeqCst) == before + 3
    });
    let c1 = w.counters();
    udp_send(w.other(), S, UDP_PORT, 5, 100);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        udp_got.load(Ordering::SeqCst),
        before + 3,
        "denied UDP arrived"
    );
    let c2 = w.counters();
    // ICMP: the client pings, the other cannot.
    assert!(ping(w.client(), S), "client ping allowed");
    assert!(!ping(w.other(), S), "other ping denied");
    let c3 = w.counters();

    // Counters move by the right amount: one new flow (its SYN) per TCP
    // connection; each of the 3 datagrams of the unanswered UDP flow (still
    // NEW for conntrack: 128 bytes each, 100 + UDP + IP); one per ping.
    assert_eq!(c1.rules[TCP_A].packets, 1, "{c1:?}");
    assert_eq!(c1.rules[TCP_B].packets, 1, "{c1:?}");
    assert_eq!(c1.rules[UDP].packets, 3, "{c1:?}");
    assert_eq!(c1.rules[UDP].bytes, 3 * 128, "{c1:?}");
    // The 5 denied datagrams: exactly 5 drops of 128 bytes (100 + UDP + IP).
    assert_eq!(c2.dropped_ingress.packets - c1.dropped_ingress.packets, 5);
    assert_eq!(c2.dropped_ingress.bytes - c1.dropped_ingress.bytes, 5 * 128);
    assert_eq!(c3.rules[ICMP].packets, 1, "{c3:?}");
    assert!(
        c3.dropped_ingress.packets > c2.dropped_ingress.packets,
        "ping drop counted"
    );
    assert!(c3.established.packets > 0);

    // Update: TCP 9090-9095 no longer allowed. The long-lived 8080
    // connection survives the swap; the connection open on 9090 is closed
    // (reset on its next packet); new connections to 9090 fail.
    w.set_policy(Some(server_policy(vec![
        allow(TCP_A, Some(PolicyProtocol::Tcp), Some((8080, 8080))),
        allow(UDP, Some(PolicyProtocol::Udp), Some((UDP_PORT, UDP_PORT))),
        allow(ICMP, Some(PolicyProtocol::Icmp), None),
    ])));
    w.sync_policy();
    assert!(
        echo(&mut long_lived),
        "long-lived allowed connection survived the update"
    );
    assert!(
        tcp_connect(w.client(), S, 9090).is_none(),
        "9090 newly denied"
    );
    assert!(
        tcp_connect(w.client(), S, 8080).is_some(),
        "8080 still allowed"
    );
    // Its next packet is judged again under the new rules, refused, and
    // the client gets a reset: the connection is closed, not just stalled.
    let before = w.counters();
    let mut buf = [0u8; 5];
    let outcome = to_b
        .write_all(b"hello")
        .and_then(|()| to_b.read_exact(&mut buf));
    let err = outcome.expect_err("a connection on a newly denied port must close");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset,
        "closed by a reset, not a timeout: {err}"
    );
    let after = w.counters();
    assert!(
        after.dropped_ingress.packets > before.dropped_ingress.packets,
        "the refused packet counts as a drop: {before:?} -> {after:?}"
    );

    // Removing all policies reopens the app (and removes the table).
    w.set_policy(None);
    w.sync_policy();
    assert!(w.node.observe(&w.prefix).state.apps[&w.app_ns]
        .policy
        .is_none());
    assert!(tcp_connect(w.other(), S, 8081).is_some(), "open again");
    assert!(ping(w.other(), S));
    assert!(
        echo(&mut long_lived),
        "and the long-lived connection is still fine"
    );
}

/// A server that only streams (its client sent one datagram before the
/// update, then stays silent) is cut off too: replies are judged as their
/// flow, not waved through.
#[test]
fn a_stream_the_update_denies_stops_in_the_reply_direction_too() {
    if !privileged(
        "a_stream_the_update_denies_stops_in_the_reply_direction_too",
        &[("nft", "--version")],
    ) {
        return;
    }
    const PUSH_PORT: u16 = 6100;
    let mut w = World::new("s");
    w.set_policy(Some(server_policy(vec![allow(
        UDP,
        Some(PolicyProtocol::Udp),
        Some((PUSH_PORT, PUSH_PORT)),
    )])));
    w.sync_policy();
    // The server learns the client's address from one datagram, then
    // pushes whenever the test asks.
    let server = in_ns(w.server(), || {
        UdpSocket::bind((S, PUSH_PORT)).expect("bind push server")
    });
    let client = in_ns(w.client(), || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    });
    client.send_to(b"subscribe", (S, PUSH_PORT)).unwrap();
    let mut buf = [0u8; 64];
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (_, subscriber) = server.recv_from(&mut buf).expect("subscription allowed");
    let mut pushed = |n: usize| -> usize {
        for _ in 0..n {
            server.send_to(b"update", subscriber).unwrap();
        }
        let mut got = 0;
        while client.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    };
    assert_eq!(pushed(3), 3, "the stream flows while allowed");
    // An update that still allows it: the stream goes on (its next reply
    // is judged once and re-admitted).
    w.set_policy(Some(server_policy(vec![
        allow(UDP, Some(PolicyProtocol::Udp), Some((PUSH_PORT, PUSH_PORT))),
        allow(ICMP, Some(PolicyProtocol::Icmp), None),
    ])));
    w.sync_policy();
    assert_eq!(pushed(3), 3, "still allowed: the stream goes on");
    // The update allows nothing on that port any more; the client never
    // sends again, only the server pushes.
    w.set_policy(Some(server_policy(vec![allow(
        TCP_A,
        Some(PolicyProtocol::Tcp),
        Some((8080, 8080)),
    )])));
    w.sync_policy();
    let before = w.counters();
    assert_eq!(
        pushed(3),
        0,
        "the denied stream stops, though only replies flow"
    );
    assert!(
        w.counters().dropped_ingress.packets > before.dropped_ingress.packets,
        "the judged reply counts as a drop"
    );
}

#[test]
fn a_rejected_ruleset_leaves_the_previous_one_in_force() {
    if !privileged(
        "a_rejected_ruleset_leaves_the_previous_one_in_force",
        &[("nft", "--version")],
    ) {
        return;
    }
    let mut w = World::new("q");
    let _ = start_servers(w.server(), S, &[8080, 8081], UDP_PORT);
    w.set_policy(Some(v1()));
    w.sync_policy();
    let good = v1().digest;

    // A ruleset nft refuses (an empty port range) as one transaction: nothing
    // of it may be in force, and the previous table must be intact.
    let bad = server_policy(vec![
        allow(TCP_A, Some(PolicyProtocol::Tcp), Some((8081, 8081))),
        allow(TCP_B, Some(PolicyProtocol::Tcp), Some((9000, 10))),
    ]);
    let err = w
        .node
        .apply(Op::SetPolicy {
            netns: w.app_ns.clone(),
            policy: Some(bad),
        })
        .expect_err("nft must refuse an empty range");
    assert!(err.contains("nft"), "{err}");
    let obs = w.node.observe(&w.prefix);
    assert_eq!(
        obs.state.apps[&w.app_ns].policy.as_ref().unwrap().digest,
        good
    );
    assert!(
        tcp_connect(w.client(), S, 8080).is_some(),
        "old allow still in force"
    );
    assert!(
        tcp_connect(w.client(), S, 8081).is_none(),
        "new allow not half-applied"
    );
    assert!(w.sync().is_empty(), "still converged on the good table");

    // Drift: a rule deleted behind the daemon's back is detected and restored.
    let handle = {
        let ns = w.app_ns.clone();
        let out = sh(&[
            "ip", "netns", "exec", &ns, "nft", "-a", "list", "chain", "ip", "weft", "ingress",
        ]);
        out.lines()
            .find(|l| l.contains(TCP_A))
            .and_then(|l| l.rsplit("handle ").next())
            .map(|h| h.trim().to_string())
            .expect("rule handle")
    };
    sh(&[
        "ip", "netns", "exec", &w.app_ns, "nft", "delete", "rule", "ip", "weft", "ingress",
        "handle", &handle,
    ]);
    assert!(
        tcp_connect(w.client(), S, 8080).is_none(),
        "rule really gone"
    );
    w.sync_policy();
    assert!(tcp_connect(w.client(), S, 8080).is_some(), "rule restored");
}

#[test]
fn between_full_reads_a_deleted_table_is_still_caught_on_the_next_pass() {
    if !privileged(
        "between_full_reads_a_deleted_table_is_still_caught_on_the_next_pass",
        &[("nft", "--version")],
    ) {
        return;
    }
    // The production default: full reads every 5 s, a marker check per pass.
    let mut w = World::with_full_read("m", std::time::Duration::from_secs(5));
    w.set_policy(Some(v1()));
    w.sync_policy();
    assert!(
        w.sync().is_empty(),
        "cached reads keep a converged pass write-free"
    );
    sh(&[
        "ip", "netns", "exec", &w.app_ns, "nft", "delete", "table", "ip", "weft",
    ]);
    assert_eq!(
        w.sync().iter().map(Op::name).collect::<Vec<_>>(),
        vec!["set_policy"],
        "the marker check notices the missing table without waiting for a full read"
    );
    assert!(w.sync().is_empty());
}

// ---------------------------------------------------------------- two apps, one link

const A_RANGE: &str = "10.126.0.0/16";
const B_RANGE: &str = "10.127.0.0/16";
const A_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 126, 1, 10); // allowed by both sides
const A_OTHER: Ipv4Addr = Ipv4Addr::new(10, 126, 1, 11); // not allowed by app A
const B_SERVER: Ipv4Addr = Ipv4Addr::new(10, 127, 1, 10);
const B_OTHER: Ipv4Addr = Ipv4Addr::new(10, 127, 1, 11); // not a peer of A's rule

fn rule(
    id: &str,
    direction: PolicyDirection,
    local: Ipv4Addr,
    peer: Ipv4Addr,
    protocol: Option<PolicyProtocol>,
    ports: Option<(u16, u16)>,
) -> RulesetRule {
    RulesetRule {
        id: id.into(),
        direction,
        local: vec![local],
        peers: vec![Ipv4Net::new(peer, 32).unwrap()],
        protocol,
        ports,
    }
}

/// App A's side: egress from its client to B's server, any protocol.
fn a_side() -> PolicyTable {
    Ruleset {
        app_range: Some(net(A_RANGE)),
        linked: vec![net(B_RANGE)],
        cross_app: vec![rule(
            "demo/a-out:egress[0]",
            PolicyDirection::Egress,
            A_CLIENT,
            B_SERVER,
            None,
            None,
        )],
        ..Default::default()
    }
    .into_table()
}

const B_TCP: &str = "demo/b-in:ingress[0].ports[0]";
const B_UDP: &str = "demo/b-in:ingress[0].ports[1]";
const B_ICMP: &str = "demo/b-in:ingress[0].ports[2]";

/// App B's side: ingress to its server from A's client on TCP 8080, UDP,
/// ICMP; `allow: false` keeps the link but allows nothing.
fn b_side(allow: bool) -> PolicyTable {
    let cross_app = if allow {
        vec![
            rule(
                B_TCP,
                PolicyDirection::Ingress,
                B_SERVER,
                A_CLIENT,
                Some(PolicyProtocol::Tcp),
                Some((8080, 8080)),
            ),
            rule(
                B_UDP,
                PolicyDirection::Ingress,
                B_SERVER,
                A_CLIENT,
                Some(PolicyProtocol::Udp),
                Some((UDP_PORT, UDP_PORT)),
            ),
            rule(
                B_ICMP,
                PolicyDirection::Ingress,
                B_SERVER,
                A_CLIENT,
                Some(PolicyProtocol::Icmp),
                None,
            ),
        ]
    } else {
        Vec::new()
    };
    Ruleset {
        app_range: Some(net(B_RANGE)),
        linked: vec![net(A_RANGE)],
        cross_app,
        ..Default::default()
    }
    .into_table()
}

fn app_net(
    tag: &str,
    netns: &str,
    name: &str,
    range: &str,
    port: u16,
    key: &PrivateKey,
    workloads: &[(&str, Ipv4Addr)],
) -> AppNet {
    let tunnel = Ipv4Net::new(net(range).hosts().next().unwrap(), 32).unwrap();
    AppNet {
        app: format!("demo/{name}"),
        netns: netns.into(),
        device: Some(Device {
            interface: format!("wg{tag}{name}"),
            mtu: 1420,
            up: true,
            addresses: vec![tunnel],
            routes: vec![net(range)],
            listen_port: port,
            public_key: key.public_key(),
            peers: BTreeMap::new(),
        }),
        workloads: workloads
            .iter()
            .map(|(wl, addr)| {
                (
                    format!("wv{tag}{}", &wl[wl.len() - 2..]),
                    WorkloadLink {
                        workload: format!("demo/{wl}"),
                        workload_netns: format!("/run/netns/{wl}"),
                        address: *addr,
                        mtu: 1420,
                    },
                )
            })
            .collect(),
        policy: None,
        links: BTreeMap::new(),
    }
}

fn link_names(netns: &str) -> Vec<String> {
    sh(&["ip", "-n", netns, "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("wx"))
        .collect()
}

#[test]
fn apps_reach_each_other_only_where_both_sides_allow_with_real_traffic() {
    if !privileged(
        "apps_reach_each_other_only_where_both_sides_allow_with_real_traffic",
        &[("nft", "--version")],
    ) {
        return;
    }
    let tag = format!("x{}", std::process::id());
    let mut cleanup = Cleanup::default();
    let node_ns = format!("wpn-{tag}");
    let prefix = format!("wpa-{tag}-");
    let (a_ns, b_ns) = (format!("{prefix}a"), format!("{prefix}b"));
    let wl = |w: &str| format!("wpw-{tag}-{w}");
    let (ac, ao, bs, bo) = (wl("ac"), wl("ao"), wl("bs"), wl("bo"));
    cleanup
        .netns
        .extend([node_ns.clone(), a_ns.clone(), b_ns.clone()]);
    cleanup
        .netns
        .extend([ac.clone(), ao.clone(), bs.clone(), bo.clone()]);
    for n in [&node_ns, &ac, &ao, &bs, &bo] {
        sh(&["ip", "netns", "add", n]);
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let mut desired = NodeState::default();
    let a = app_net(
        &tag,
        &a_ns,
        "a",
        A_RANGE,
        51830,
        &ka,
        &[(&ac, A_CLIENT), (&ao, A_OTHER)],
    );
    let b = app_net(
        &tag,
        &b_ns,
        "b",
        B_RANGE,
        51831,
        &kb,
        &[(&bs, B_SERVER), (&bo, B_OTHER)],
    );
    desired.apps.insert(a_ns.clone(), a);
    desired.apps.insert(b_ns.clone(), b);
    let keys = Keys([(a_ns.clone(), ka), (b_ns.clone(), kb)].into());
    let node = Node::start(
        &node_ns,
        "policy-node",
        LinuxOptions {
            policy_full_read_interval: Duration::ZERO,
            ..LinuxOptions::default()
        },
    );
    assert!(!node.sync(&desired, &keys, &prefix).is_empty());
    assert!(node.sync(&desired, &keys, &prefix).is_empty(), "converged");
    let udp_got = start_servers(&bs, B_SERVER, &[8080, 8081], UDP_PORT);
    start_servers(&bo, B_OTHER, &[8080], UDP_PORT);

    // Unlinked: two apps share no route at all.
    assert!(
        tcp_connect(&ac, B_SERVER, 8080).is_none(),
        "no link, no path"
    );
    assert!(!ping(&ac, B_SERVER));

    // Both sides allow: a link with routes on both ends, each side's table.
    let (a_if, b_if) = (format!("wx{tag}b"), format!("wx{tag}a"));
    let link = |peer_netns: &str, peer_if: &str, range: &str| AppLinkEnd {
        peer_netns: peer_netns.into(),
        peer_interface: peer_if.into(),
        routes: vec![net(range)],
    };
    {
        let a = desired.apps.get_mut(&a_ns).unwrap();
        a.links.insert(a_if.clone(), link(&b_ns, &b_if, B_RANGE));
        a.policy = Some(a_side());
        let b = desired.apps.get_mut(&b_ns).unwrap();
        b.links.insert(b_if.clone(), link(&a_ns, &a_if, A_RANGE));
        b.policy = Some(b_side(true));
    }
    let ops = node.sync(&desired, &keys, &prefix);
    let names: Vec<&str> = ops.iter().map(Op::name).collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert_eq!(
        names.iter().filter(|n| **n == "create_app_link").count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "add_app_link_route").count(),
        2,
        "{names:?}"
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "set_workload_routes")
            .count(),
        4,
        "every workload gets the other range, in place: {names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| *n == "attach_workload" || *n == "detach_workload"),
        "no workload is re-attached: {names:?}"
    );
    let routes = sh(&["ip", "-n", &ac, "route", "show"]);
    assert!(
        routes.contains(B_RANGE) && routes.contains(A_RANGE),
        "{routes}"
    );
    assert!(
        pos("set_policy") < pos("create_app_link"),
        "tables before the link: {names:?}"
    );
    assert!(
        node.sync(&desired, &keys, &prefix).is_empty(),
        "a converged resync writes nothing"
    );
    assert_eq!(link_names(&a_ns), vec![a_if.clone()]);
    assert_eq!(link_names(&b_ns), vec![b_if.clone()]);

    // Allowed: TCP 8080 with its replies, UDP, ICMP.
    let mut conn = tcp_connect(&ac, B_SERVER, 8080).expect("A client -> B server 8080 allowed");
    for _ in 0..3 {
        assert!(echo(&mut conn), "replies pass");
    }
    let before = udp_got.load(Ordering::SeqCst);
    udp_send(&ac, B_SERVER, UDP_PORT, 3, 100);
    wait_for("3 datagrams across apps", || {
        udp_got.load(Ordering::SeqCst) == before + 3
    });
    assert!(ping(&ac, B_SERVER), "ICMP allowed");

    // Denied: a port only A allows (dropped by B), a workload A does not
    // allow (dropped by A), a B workload A does not name, the reverse
    // direction (nobody allows B -> A).
    let counters = |ns: &str| {
        node.observe(&prefix)
            .policy_counters
            .remove(ns)
            .unwrap_or_default()
    };
    let (a0, b0) = (counters(&a_ns), counters(&b_ns));
    assert!(
        tcp_connect(&ac, B_SERVER, 8081).is_none(),
        "8081: B does not allow it"
    );
    let (a1, b1) = (counters(&a_ns), counters(&b_ns));
    assert!(
        b1.dropped_ingress.packets > b0.dropped_ingress.packets,
        "B dropped it: {b1:?}"
    );
    assert!(a1.rules["demo/a-out:egress[0]"].packets > a0.rules["demo/a-out:egress[0]"].packets);
    assert!(
        tcp_connect(&ao, B_SERVER, 8080).is_none(),
        "A's other workload denied"
    );
    assert!(!ping(&ao, B_SERVER));
    let a2 = counters(&a_ns);
    assert!(
        a2.dropped_egress.packets > a1.dropped_egress.packets,
        "A dropped it: {a2:?}"
    );
    assert!(
        tcp_connect(&ac, B_OTHER, 8080).is_none(),
        "B's other workload denied"
    );
    assert!(!ping(&bs, A_CLIENT), "B -> A is allowed by nobody");
    let b2 = counters(&b_ns);
    assert_eq!(b2.rules[B_TCP].packets, 1, "one allowed TCP flow: {b2:?}");
    assert_eq!(b2.rules[B_UDP].packets, 3, "{b2:?}");
    assert_eq!(b2.rules[B_ICMP].packets, 1, "{b2:?}");

    // B withdraws its allow (the link stays for now): closed at once for
    // new flows, and the established connection is reset on its next packet.
    desired.apps.get_mut(&b_ns).unwrap().policy = Some(b_side(false));
    let ops = node.sync(&desired, &keys, &prefix);
    assert_eq!(
        ops.iter().map(Op::name).collect::<Vec<_>>(),
        vec!["set_policy"]
    );
    assert!(tcp_connect(&ac, B_SERVER, 8080).is_none(), "closed by B");
    assert!(!ping(&ac, B_SERVER));
    let mut buf = [0u8; 5];
    let err = conn
        .write_all(b"hello")
        .and_then(|()| conn.read_exact(&mut buf))
        .expect_err("the established connection no longer passes once B denies it");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset,
        "closed by a reset, not a timeout: {err}"
    );

    // The planner then drops the link on both sides: it is removed.
    for ns in [&a_ns, &b_ns] {
        let app = desired.apps.get_mut(ns).unwrap();
        app.links.clear();
        app.policy = None;
    }
    let ops = node.sync(&desired, &keys, &prefix);
    assert!(ops.iter().any(|o| o.name() == "delete_app_link"), "{ops:?}");
    assert_eq!(
        ops.iter()
            .filter(|o| o.name() == "set_workload_routes")
            .count(),
        4,
        "{ops:?}"
    );
    assert!(
        node.sync(&desired, &keys, &prefix).is_empty(),
        "converged after removal"
    );
    assert!(link_names(&a_ns).is_empty() && link_names(&b_ns).is_empty());
    let routes = sh(&["ip", "-n", &ac, "route", "show"]);
    assert!(
        !routes.contains(B_RANGE),
        "the other range is gone: {routes}"
    );
    assert!(
        tcp_connect(&ac, B_SERVER, 8080).is_none(),
        "no link, no path"
    );
    assert!(!ping(&ac, B_SERVER));
    drop(node);
}
