//! End-to-end: two apps with workloads on BOTH nodes, real packets through
//! the standalone operator and real node daemons. `demo/alpha` sorts before
//! `demo/beta`, so every allowed alpha–beta pair crosses on the alpha
//! workload's node and beta's tunnel carries it: a1→b2 crosses on node 1
//! (beta carries a1/32 to node 2), a2→b1 on node 2 (beta carries a2/32 to
//! node 1), a1→b1 and a2→b2 take the app link of their node. So beta's
//! namespace on each node has the link's route for alpha's whole range AND
//! a carried /32 of alpha through its tunnel: longest prefix must win, both
//! ways, for the requests and for the replies.
//!
//! Checked in the kernel, not only in MeshNode specs: the carried /32 routes
//! in beta's netns (`ip -n`), and the carried /32 in beta's per-peer ranges
//! of its `weft_stats` table, which the daemon builds from the AllowedIPs it
//! hands WireGuard (the userspace device runs in the daemon and is
//! configured through its Rust API, so this is the closest kernel-visible
//! copy; that packets
//! sourced from a carried address cross the tunnel at all is WireGuard's own
//! proof, as it drops sources outside a peer's AllowedIPs).
//!
//! Then b1 leaves (beta on node 1 becomes a transit placement) and a TCP
//! connection a1→b2 is established through it, twice: (a) beta narrows its
//! allow to UDP/ICMP (the pair stays carried): the connection is reset and
//! a new one fails while UDP still passes; (b) beta withdraws its whole
//! allow: the connection must end too (the path is gone, so no table sees
//! its packets: the daemon closes the workload's sockets to the lost route,
//! ECONNABORTED), a new one must fail, and the carried route, the carried
//! range and the transit netns must be gone. (b)'s end is asserted last,
//! after teardown, so that every other check runs whatever its outcome.
//!
//! Needs root, `ip`, `ping`, `nft` and the workspace binaries built first
//! (`cargo build --workspace`). Without root the test prints `SKIPPED` —
//! except under `CI=true`, where a skip is a failure.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::Value;
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::netns::{exec_in, in_netns, ip_in, spawn_in_netns};
use weft_e2e::probe;
use weft_e2e::scenario::{self, app_manifest, NS};
use weft_e2e::traffic::{udp_probe_until_ok, UdpEcho};

const READY: Duration = Duration::from_secs(30);
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const DENIED_TCP: u16 = 7002;
const DENIED_UDP: u16 = 7003;
/// How long a probe that should fail is given (it is dropped silently).
const REFUSED: Duration = Duration::from_secs(2);

/// A TCP echo server inside a namespace: every accepted connection gets its
/// bytes back.
struct TcpEcho {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl TcpEcho {
    fn start(netns: &str, port: u16) -> Result<TcpEcho> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let handle = spawn_in_netns(netns, move || {
            let l = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("bind :{port}: {e}")));
                    return Err(e.into());
                }
            };
            l.set_nonblocking(true)?;
            let _ = tx.send(Ok(()));
            let mut conns = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        accepted2.fetch_add(1, Ordering::SeqCst);
                        let stop3 = stop2.clone();
                        conns.push(std::thread::spawn(move || echo(s, &stop3)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            for c in conns {
                let _ = c.join();
            }
            Ok(())
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .context("TCP echo did not start")??;
        Ok(TcpEcho {
            stop,
            accepted,
            handle: Some(handle),
        })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Echoes `s` until EOF, an error or `stop`.
fn echo(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => {
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// From `from`, connects to `dst` (waiting at most `timeout`), sends 32 KiB
/// and checks the same bytes come back: the request AND its replies passed.
fn tcp_echo(from: &str, dst: SocketAddrV4, timeout: Duration) -> Result<()> {
    in_netns(from, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout)
            .with_context(|| format!("connect {dst}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let msg: Vec<u8> = (0..32u32 << 10).map(|i| (i * 7 + 3) as u8).collect();
        s.write_all(&msg)?;
        s.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        s.read_to_end(&mut back).context("read the echo")?;
        ensure!(back == msg, "echo differs ({} bytes back)", back.len());
        Ok(())
    })
}

/// TCP 7000, UDP 7001 and ICMP (YAML list items of `ports`).
const ALL_PORTS: &str = "        - {protocol: TCP, port: 7000}\n        - {protocol: UDP, port: 7001}\n        - {protocol: ICMP}\n";
/// The same without TCP 7000.
const NO_TCP: &str = "        - {protocol: UDP, port: 7001}\n        - {protocol: ICMP}\n";

/// App `demo/<app>`'s netns, WireGuard interface and public key on node `i`
/// (from the node's status).
fn device(c: &Cluster, i: usize, app: &str) -> (String, String, String) {
    let ns = c.app_netns(i, &format!("{NS}/{app}")).unwrap().unwrap();
    let st = c.node_status(i).unwrap().unwrap();
    let a = st
        .apps
        .iter()
        .find(|a| a.app == format!("{NS}/{app}"))
        .unwrap_or_else(|| panic!("{app} not in node {i}'s status"));
    (ns, a.interface.clone(), a.public_key.clone())
}

/// The device of the kernel route for exactly `dst` in `netns` (`ip route`
/// prints a /32 without its length), if there is one.
fn route_dev(netns: &str, dst: &str) -> Option<String> {
    let out = ip_in(netns, &["-4", "route", "show"]).unwrap();
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(dst))
        .and_then(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.iter()
                .position(|x| *x == "dev")
                .map(|p| w[p + 1].to_string())
        })
}

/// `nft list table ip <table>` inside `netns`.
fn nft_table(netns: &str, table: &str) -> String {
    let o = exec_in(netns, "nft", &["list", "table", "ip", table]).unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The ranges `weft_stats` counts for the peer with public key `key` on
/// the way out (its `peers_tx` rule), i.e. that peer's AllowedIPs as the
/// daemon programmed them.
fn counted_ranges(netns: &str, key: &str) -> Option<String> {
    let t = nft_table(netns, "weft_stats");
    t.lines()
        .find(|l| l.contains("ip daddr") && l.contains(&format!("comment \"{key}\"")))
        .map(|l| l.trim().to_string())
}

/// Whether `line` (an nft rule) names `addr` as an element of its set.
fn names_addr(line: &str, addr: Ipv4Addr) -> bool {
    line.split(|ch: char| ch.is_whitespace() || ch == ',' || ch == '{' || ch == '}')
        .any(|w| w == addr.to_string())
}

/// Kernel state worth reading when an assertion fails.
fn dump(c: &Cluster, apps: &[(usize, &str)]) -> String {
    let mut s = String::new();
    for &(i, app) in apps {
        let Ok(Some(ns)) = c.app_netns(i, &format!("{NS}/{app}")) else {
            continue;
        };
        s.push_str(&format!(
            "\n== node {i} {app} ({ns})\n{}\n{}",
            ip_in(&ns, &["-4", "route", "show"]).unwrap_or_default(),
            nft_table(&ns, "weft")
        ));
    }
    s
}

/// A long-lived TCP connection, kept busy with one small round trip every
/// 100 ms (a silent one is waited for, TCP retransmits it) until it fails
/// or is told to stop.
struct Held {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Outcome>>,
}

/// How a [`Held`] connection ended.
#[derive(Debug)]
struct Outcome {
    /// Round trips completed after the first one.
    round_trips: u64,
    /// The error that ended it, or `None` if it was still open when told
    /// to stop (it lingered).
    ended: Option<ErrorKind>,
}

impl Held {
    /// Connects from `from` to `dst` and returns once a first round trip
    /// came back (the connection is ESTABLISHED end to end).
    fn open(from: &str, dst: SocketAddrV4) -> Result<Held> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (tx, rx) = mpsc::channel::<()>();
        let handle = spawn_in_netns(from, move || {
            let mut s = TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            let mut buf = [0u8; 8];
            s.write_all(b"hello!!!")?;
            s.read_exact(&mut buf).context("first round trip")?;
            ensure!(&buf == b"hello!!!", "echo differs");
            let _ = tx.send(());
            let (mut round_trips, mut pending) = (0u64, 0usize);
            let end = |round_trips, e: Option<ErrorKind>| Outcome {
                round_trips,
                ended: e,
            };
            while !stop2.load(Ordering::SeqCst) {
                if pending == 0 {
                    std::thread::sleep(Duration::from_millis(100));
                    if let Err(e) = s.write_all(b"still-up") {
                        return Ok(end(round_trips, Some(e.kind())));
                    }
                    pending = 8;
                }
                match s.read(&mut buf[..pending]) {
                    Ok(0) => return Ok(end(round_trips, Some(ErrorKind::UnexpectedEof))),
                    Ok(n) => {
                        pending -= n;
                        round_trips += u64::from(pending == 0);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Ok(end(round_trips, Some(e.kind()))),
                }
            }
            Ok(end(round_trips, None))
        })?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(Held { stop, handle }),
            Err(_) => {
                stop.store(true, Ordering::SeqCst);
                let r = handle.join().map_err(|_| anyhow!("client panicked"))?;
                Err(anyhow!("connection not established: {r:?}"))
            }
        }
    }

    /// Whether the connection already ended.
    fn ended(&self) -> bool {
        self.handle.is_finished()
    }

    /// Stops it (if still open) and says how it ended.
    fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("client panicked").unwrap()
    }
}

/// Waits until `cond` holds (the update is in the kernel), then lets `held`
/// retransmit through 20 more round-trip attempts (2 s) before judging it:
/// a reset comes with the first packet judged by the new rules. Also
/// returns `snapshot()` taken just before the connection is closed.
fn settle_and_finish(
    held: Held,
    what: &str,
    mut cond: impl FnMut() -> bool,
    snapshot: impl FnOnce() -> String,
) -> (Outcome, String) {
    probe::wait(what, READY, || held.ended() || cond());
    for _ in 0..20 {
        if held.ended() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = snapshot();
    (held.finish(), state)
}

/// The client's sockets and the connection tracking of the app namespaces
/// on the path, for a lingering connection.
fn flow_state(c: &Cluster, client: &str, app_ns: &[String]) -> String {
    let mut s = String::new();
    let run = |ns: &str, prog: &str, args: &[&str]| {
        exec_in(ns, prog, args)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let client_ns = c.workload(client).netns();
    s.push_str(&format!(
        "\n== {client} sockets\n{}",
        run(client_ns, "ss", &["-tnio"])
    ));
    for ns in app_ns {
        s.push_str(&format!(
            "\n== conntrack {ns}\n{}",
            run(ns, "cat", &["/proc/net/nf_conntrack"])
        ));
    }
    s
}

#[test]
fn apps_on_both_nodes_carry_every_pair_and_reset_withdrawn_flows() {
    let Some(mut c) = scenario::started_cluster(
        "apps_on_both_nodes_carry_every_pair_and_reset_withdrawn_flows",
        2,
    ) else {
        return;
    };
    for (app, range) in [("alpha", "10.150.0.0/16"), ("beta", "10.151.0.0/16")] {
        c.apply_manifest(
            &format!("{app}.yaml"),
            &app_manifest(app, NS, &[("tier", app)], Some(range)),
        )
        .unwrap();
    }
    for (node, name, tier, role) in [
        (1, "a1", "alpha", "client"),
        (2, "a2", "alpha", "client"),
        (1, "b1", "beta", "server"),
        (2, "b2", "beta", "server"),
    ] {
        c.add_workload(node, name, NS, &[("tier", tier), ("role", role)])
            .unwrap();
    }
    for app in ["alpha", "beta"] {
        c.wait_ready(NS, app, READY)
            .unwrap_or_else(|e| panic!("{NS}/{app} not Ready: {e:#}"));
    }
    let mut addr = |n: &str| c.wait_address(n, READY).unwrap();
    let (a1, a2, b1, b2) = (addr("a1"), addr("a2"), addr("b1"), addr("b2"));
    let ns = |c: &Cluster, w: &str| c.workload(w).netns().to_string();
    let nodes = [(1, "alpha"), (1, "beta"), (2, "alpha"), (2, "beta")];

    c.apply_manifest(
        "alpha-out.yaml",
        &probe::cross_app_policy(
            "alpha-out",
            "alpha",
            "client",
            "egress",
            ("beta", "server"),
            ALL_PORTS,
        ),
    )
    .unwrap();
    c.apply_manifest(
        "beta-in.yaml",
        &probe::cross_app_policy(
            "beta-in",
            "beta",
            "server",
            "ingress",
            ("alpha", "client"),
            ALL_PORTS,
        ),
    )
    .unwrap();

    // 1. Every allowed pair, both node combinations across nodes and the
    // link on each node, with its replies (the echo comes back intact).
    let pairs = [
        ("a1", "b1", b1, "same node 1, app link"),
        ("a2", "b2", b2, "same node 2, app link"),
        (
            "a1",
            "b2",
            b2,
            "node 1 -> 2, crosses on 1, beta carries a1/32",
        ),
        (
            "a2",
            "b1",
            b1,
            "node 2 -> 1, crosses on 2, beta carries a2/32",
        ),
    ];
    let servers: Vec<TcpEcho> = [("b1", TCP_PORT), ("b2", TCP_PORT)]
        .iter()
        .map(|(w, p)| TcpEcho::start(&ns(&c, w), *p).unwrap())
        .collect();
    for (from, _, dst, what) in pairs {
        let from = ns(&c, from);
        probe::wait(&format!("TCP {what}"), READY, || {
            tcp_echo(
                &from,
                SocketAddrV4::new(dst, TCP_PORT),
                Duration::from_secs(1),
            )
            .is_ok()
        });
    }
    drop(servers);
    for (from, to, dst, what) in pairs {
        assert!(
            probe::udp(&c, from, to, dst, UDP_PORT, Duration::from_secs(5)),
            "UDP {what}{}",
            dump(&c, &nodes)
        );
        assert!(probe::pings(&c, from, dst), "ICMP {what}");
    }
    // A port neither side allows fails for every pair (TCP and UDP, all at
    // once: each probe waits for nothing to come back), and so does the
    // direction nobody allows.
    let denied: Vec<TcpEcho> = [
        ("b1", DENIED_TCP),
        ("b2", DENIED_TCP),
        ("a1", TCP_PORT),
        ("a2", TCP_PORT),
    ]
    .iter()
    .map(|(w, p)| TcpEcho::start(&ns(&c, w), *p).unwrap())
    .collect();
    let udp_echos: Vec<UdpEcho> = ["b1", "b2"]
        .iter()
        .map(|w| UdpEcho::start(&ns(&c, w), DENIED_UDP).unwrap())
        .collect();
    let probes: Vec<(String, bool)> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for (from, to, dst, what) in pairs {
            let (from_ns, to_ns) = (ns(&c, from), ns(&c, to));
            hs.push(s.spawn(move || {
                let ok = tcp_echo(&from_ns, SocketAddrV4::new(dst, DENIED_TCP), REFUSED).is_ok();
                (format!("TCP {DENIED_TCP} {what}"), ok)
            }));
            let from_ns = ns(&c, from);
            hs.push(s.spawn(move || {
                let ok = udp_probe_until_ok(
                    &from_ns,
                    SocketAddrV4::new(dst, DENIED_UDP),
                    Duration::from_millis(100),
                    REFUSED,
                )
                .is_ok();
                (format!("UDP {DENIED_UDP} {what}"), ok)
            }));
            // The reverse direction, on the allowed port number.
            let back = [("a1", a1), ("a2", a2)]
                .into_iter()
                .find(|(n, _)| *n == from)
                .unwrap()
                .1;
            hs.push(s.spawn(move || {
                let ok = tcp_echo(&to_ns, SocketAddrV4::new(back, TCP_PORT), REFUSED).is_ok();
                (format!("TCP {TCP_PORT} reverse of {what}"), ok)
            }));
        }
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (what, ok) in &probes {
        assert!(!ok, "{what} passed{}", dump(&c, &nodes));
    }
    assert!(
        denied.iter().all(|e| e.accepted() == 0),
        "a denied connection reached a server"
    );
    drop(denied);
    drop(udp_echos);

    // 2. Kernel state on both nodes: beta's netns routes alpha's range into
    // the link and the carried alpha address into its tunnel; beta's peer
    // for the other node counts the carried /32 among its ranges.
    let (beta1_ns, beta1_wg, beta1_key) = device(&c, 1, "beta");
    let (beta2_ns, beta2_wg, beta2_key) = device(&c, 2, "beta");
    for (ns_, wg, carried, peer_key, what) in [
        (
            &beta2_ns,
            &beta2_wg,
            a1,
            &beta1_key,
            "beta on node 2 carries a1",
        ),
        (
            &beta1_ns,
            &beta1_wg,
            a2,
            &beta2_key,
            "beta on node 1 carries a2",
        ),
    ] {
        let dev = route_dev(ns_, &carried.to_string());
        assert_eq!(
            dev.as_deref(),
            Some(wg.as_str()),
            "{what}{}",
            dump(&c, &nodes)
        );
        let range = route_dev(ns_, "10.150.0.0/16");
        assert!(
            range.as_ref().is_some_and(|d| d != wg),
            "{what}: alpha's range goes into the link: {range:?}{}",
            dump(&c, &nodes)
        );
        let counted = counted_ranges(ns_, peer_key);
        assert!(
            counted.as_deref().is_some_and(|l| names_addr(l, carried)),
            "{what}: weft_stats peer ranges {counted:?}"
        );
    }
    for (i, other, carried) in [(1, 2, a2), (2, 1, a1)] {
        let att = probe::attachment(&c, i, "beta").unwrap();
        let peer = att["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == c.node_name(other))
            .unwrap()
            .clone();
        assert!(
            peer["allowedIps"]
                .as_array()
                .unwrap()
                .contains(&Value::from(format!("{carried}/32"))),
            "{peer}"
        );
    }

    // 3. b1 leaves: beta stays on node 1 as a transit placement for a1 -> b2.
    c.remove_workload("b1");
    probe::wait(
        "beta on node 1 to become a transit placement",
        READY,
        || probe::attachment(&c, 1, "beta").is_some_and(|a| a.get("workloads").is_none()),
    );
    let (transit_ns, _, _) = device(&c, 1, "beta");
    let alpha1_ns = c.app_netns(1, &format!("{NS}/alpha")).unwrap().unwrap();
    let (b2_ns, a1_ns) = (ns(&c, "b2"), ns(&c, "a1"));
    let to_b2 = SocketAddrV4::new(b2, TCP_PORT);
    let server = TcpEcho::start(&b2_ns, TCP_PORT).unwrap();
    probe::wait("a1 -> b2 through the transit placement", READY, || {
        tcp_echo(&a1_ns, to_b2, Duration::from_secs(1)).is_ok()
    });

    // 3a. beta narrows its allow to UDP and ICMP: the pair stays carried (the
    // path stays), and an established TCP connection on the port no longer
    // allowed is reset by the next table that judges it.
    let held = Held::open(&a1_ns, to_b2).expect("a1 -> b2 established");
    let old_rules = nft_table(&transit_ns, "weft");
    c.apply_manifest(
        "beta-in.yaml",
        &probe::cross_app_policy(
            "beta-in",
            "beta",
            "server",
            "ingress",
            ("alpha", "client"),
            NO_TCP,
        ),
    )
    .unwrap();
    let (narrowed, narrowed_state) = settle_and_finish(
        held,
        "beta's new rules on node 1",
        || {
            let t = nft_table(&transit_ns, "weft");
            t != old_rules && !t.contains(&format!("dport {TCP_PORT}"))
        },
        || {
            let path = [alpha1_ns.clone(), transit_ns.clone(), beta2_ns.clone()];
            format!("{}{}", dump(&c, &nodes), flow_state(&c, "a1", &path))
        },
    );
    assert_eq!(
        narrowed.ended,
        Some(ErrorKind::ConnectionReset),
        "established a1 -> b2 after beta dropped TCP {TCP_PORT} ({} round trips): {narrowed:?}{narrowed_state}",
        narrowed.round_trips
    );
    assert!(
        tcp_echo(&a1_ns, to_b2, REFUSED).is_err(),
        "a new a1 -> b2:{TCP_PORT} connection passed"
    );
    assert!(
        probe::udp(&c, "a1", "b2", b2, UDP_PORT, Duration::from_secs(5)),
        "UDP a1 -> b2 still allowed and carried"
    );
    assert!(
        route_dev(&beta2_ns, &a1.to_string()).is_some(),
        "still carried"
    );

    // 3b. beta allows TCP again, then withdraws its whole allow: the pair is
    // no longer carried at all. The established connection must end too,
    // not be left retransmitting into a path that is gone: the workload's
    // route for it goes, and the daemon closes the sockets that used it
    // (the application sees ECONNABORTED).
    c.apply_manifest(
        "beta-in.yaml",
        &probe::cross_app_policy(
            "beta-in",
            "beta",
            "server",
            "ingress",
            ("alpha", "client"),
            ALL_PORTS,
        ),
    )
    .unwrap();
    probe::wait("a1 -> b2:7000 allowed again", READY, || {
        tcp_echo(&a1_ns, to_b2, Duration::from_secs(1)).is_ok()
    });
    let held = Held::open(&a1_ns, to_b2).expect("a1 -> b2 established");
    c.delete_manifest("beta-in.yaml").unwrap();
    // The carried address leaves the kernel: no route in beta's netns on
    // node 2, not among its peer's ranges; the transit netns is deleted.
    let (withdrawn, withdrawn_state) = settle_and_finish(
        held,
        "the withdrawal to reach the kernel",
        || {
            route_dev(&beta2_ns, &a1.to_string()).is_none()
                && counted_ranges(&beta2_ns, &beta1_key).is_none_or(|l| !names_addr(&l, a1))
                && probe::attachment(&c, 1, "beta").is_none()
                && !c.weft_netns(1).contains(&transit_ns)
        },
        || {
            let path = [alpha1_ns.clone(), beta2_ns.clone()];
            format!("{}{}", dump(&c, &nodes), flow_state(&c, "a1", &path))
        },
    );
    assert!(
        tcp_echo(&a1_ns, to_b2, REFUSED).is_err(),
        "a new a1 -> b2 connection passed"
    );
    assert!(
        tcp_echo(&ns(&c, "a2"), to_b2, REFUSED).is_err(),
        "a new a2 -> b2 connection (link on node 2) passed"
    );
    drop(server);
    probe::wait("the carried a1/32 to leave node 2's kernel", READY, || {
        route_dev(&beta2_ns, &a1.to_string()).is_none()
            && counted_ranges(&beta2_ns, &beta1_key).is_none_or(|l| !names_addr(&l, a1))
    });
    probe::wait("the transit netns to be deleted", READY, || {
        probe::attachment(&c, 1, "beta").is_none() && !c.weft_netns(1).contains(&transit_ns)
    });
    let beta2 = probe::attachment(&c, 2, "beta").unwrap();
    assert!(!beta2.to_string().contains(&format!("{a1}/32")), "{beta2}");
    assert!(probe::pings(&c, "a1", a2), "alpha still works inside");
    assert_torn_down_cleanly(c);
    // Judged last so that everything above is checked whatever its outcome.
    assert!(
        matches!(
            withdrawn.ended,
            Some(ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
        ),
        "established a1 -> b2 after beta withdrew its whole allow: {withdrawn:?}{withdrawn_state}"
    );
}
