//! End-to-end: each app's DNS resolver (`<workload>.<app>.<namespace>.weft`)
//! on simulated nodes, asked from inside real workload namespaces.
//!
//! Needs root, `ip`, `ping` and busybox (`nslookup`), and the workspace
//! binaries built first (`cargo build --workspace`). Without them the test
//! prints `SKIPPED`, except under `CI=true`, where a skip is a failure.
//!
//! Names outside `.weft` are forwarded to the daemon's resolv.conf
//! nameservers: here a file naming 127.0.0.1, where the test serves a fake
//! upstream inside node 1's namespace, so no query ever leaves the machine.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::netns::spawn_in_netns;
use weft_e2e::scenario::{self, NS};
use weft_e2e::traffic::{ping_until_ok, which};

const READY: Duration = Duration::from_secs(25);
/// What the fake upstream answers for every name.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

/// A DNS server on 127.0.0.1:53 inside a node namespace (the node's
/// "upstream resolver"), answering [`UPSTREAM_ANSWER`] to any A query;
/// stopped on drop.
struct FakeUpstream {
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl FakeUpstream {
    fn start(node_netns: &str) -> FakeUpstream {
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, q) = (stop.clone(), queries.clone());
        let thread = spawn_in_netns(node_netns, move || {
            let sock = UdpSocket::bind("127.0.0.1:53")?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            ready_tx.send(()).ok();
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                let mut m = Message::response(req.metadata.id, req.metadata.op_code);
                m.metadata.recursion_desired = req.metadata.recursion_desired;
                m.metadata.recursion_available = true;
                m.add_queries(req.queries.iter().cloned());
                for query in &req.queries {
                    if query.query_type() == RecordType::A {
                        m.add_answer(Record::from_rdata(
                            query.name().clone(),
                            60,
                            RData::A(A(UPSTREAM_ANSWER)),
                        ));
                    }
                }
                sock.send_to(&m.to_vec()?, peer)?;
            }
            Ok(())
        })
        .expect("start the fake upstream");
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("fake upstream bound 127.0.0.1:53");
        FakeUpstream {
            stop,
            queries,
            thread: Some(thread),
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `busybox nslookup name server` inside `netns` (see
/// [`weft_e2e::netns::nslookup`]).
fn nslookup(netns: &str, name: &str, server: Ipv4Addr) -> Vec<Ipv4Addr> {
    weft_e2e::netns::nslookup(netns, name, server).expect("run busybox nslookup")
}

fn query_bytes(name: &str) -> (u16, Vec<u8>) {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    (m.metadata.id, m.to_vec().expect("encode"))
}

/// One UDP query from inside `netns`; `None` when no answer came within 2 s
/// (or the address does not route at all).
fn query_udp(netns: &str, server: Ipv4Addr, name: &str) -> Option<Message> {
    let (id, q) = query_bytes(name);
    spawn_in_netns(netns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        if sock.send_to(&q, SocketAddrV4::new(server, 53)).is_err() {
            return Ok(None); // unreachable from here
        }
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == SocketAddr::V4(SocketAddrV4::new(server, 53)) {
                let m = Message::from_vec(&buf[..n])?;
                if m.metadata.id == id {
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    })
    .expect("spawn")
    .join()
    .expect("join")
    .expect("UDP query")
}

/// One query over TCP from inside `netns`.
fn query_tcp(netns: &str, server: Ipv4Addr, name: &str) -> anyhow::Result<Message> {
    use std::io::{Read, Write};
    let (_, q) = query_bytes(name);
    spawn_in_netns(netns, move || {
        let mut s = std::net::TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(server, 53)),
            Duration::from_secs(3),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let len = u16::try_from(q.len())?;
        s.write_all(&len.to_be_bytes())?;
        s.write_all(&q)?;
        let mut l = [0u8; 2];
        s.read_exact(&mut l)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(l))];
        s.read_exact(&mut buf)?;
        Ok(Message::from_vec(&buf)?)
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("TCP query thread panicked"))?
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// The resolver address every workload routes into its app netns
/// (`weft_node_daemon::core::state::RESOLVER_ADDRESS`, spelled out: a change of it
/// breaks every pod's `dnsConfig`, so this test must notice).
const FIXED: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 53);

/// Node `i`'s tunnel address of app `demo/<app>` (where its resolver listens).
fn resolver(c: &Cluster, i: usize, app: &str) -> Ipv4Addr {
    let a = weft_e2e::probe::attachment(c, i, app)
        .unwrap_or_else(|| panic!("no {app} attachment on node {i}"));
    let s = a["address"].as_str().expect("address").to_string();
    s.split('/').next().unwrap().parse().expect("IPv4 address")
}

/// Waits until `name` resolves to exactly `want` from `netns` via `server`.
fn wait_resolves(netns: &str, server: Ipv4Addr, name: &str, want: &[Ipv4Addr]) {
    let mut want = want.to_vec();
    want.sort();
    let mut last = Vec::new();
    let ok = weft_e2e::wait_for(
        &format!("{name} to resolve to {want:?} via {server}"),
        READY,
        Duration::from_millis(300),
        || {
            last = nslookup(netns, name, server);
            Ok((last == want).then_some(()))
        },
    );
    if let Err(e) = ok {
        panic!("{e:#}; last answer {last:?}");
    }
}

fn web_egress_policy() -> String {
    // Isolates web workloads for egress: only ICMP to other web workloads.
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshPolicy\nmetadata:\n  name: web-egress\n  namespace: {NS}\nspec:\n  app: web\n  selector:\n    matchLabels:\n      tier: web\n  egress:\n    - peers:\n        - selector:\n            matchLabels:\n              tier: web\n      ports:\n        - protocol: ICMP\n"
    )
}

#[test]
fn app_dns_resolves_workloads_and_keeps_apps_apart() {
    let test = "app_dns_resolves_workloads_and_keeps_apps_apart";
    let missing = which("busybox")
        .is_none()
        .then(|| "busybox (nslookup)".to_string());
    if !scenario::require(test, missing, " (apt-get install busybox-static)") {
        return;
    }
    for b in ["weft-operator", "weft-node-daemon"] {
        if let Err(e) = weft_e2e::bin(b) {
            panic!("{e:#}: run `cargo build --workspace` first");
        }
    }
    let mut c = Cluster::new(2).expect("build the simulated network");
    let resolv = c.run_dir().join("node-resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let resolv = resolv.to_string_lossy().into_owned();
    for i in 1..=2 {
        c.set_daemon_args(i, &["--dns-resolv-conf", &resolv]);
    }
    let upstream = FakeUpstream::start(&c.node_name(1));
    c.start_all().expect("start operator and daemons");
    scenario::install_manifests(&c, &scenario::repo_examples_dir()).expect("manifests");
    scenario::add_workloads(&mut c).expect("announce workloads");
    for app in ["web", "db"] {
        c.wait_ready(NS, app, READY)
            .unwrap_or_else(|e| panic!("{NS}/{app} not Ready: {e:#}"));
    }
    let a = scenario::wait_addresses(&mut c, READY).expect("workload addresses");
    let ns = |c: &Cluster, n: &str| c.workload(n).netns().to_string();
    let (web1, db1, db2) = (ns(&c, "web-1"), ns(&c, "db-1"), ns(&c, "db-2"));
    let (web_dns1, web_dns2, db_dns1) = (
        resolver(&c, 1, "web"),
        resolver(&c, 2, "web"),
        resolver(&c, 1, "db"),
    );

    // A workload finds the other node's workload of its app by name, then
    // reaches it at that address. (web workloads are isolated for ingress by
    // examples/policy-web.yaml: the resolver is reached all the same.)
    wait_resolves(&web1, web_dns1, "web-2.web.demo.weft.", &[a.web2]);
    let got = nslookup(&web1, "web-2.web.demo.weft.", web_dns1);
    ping_until_ok(&web1, got[0], Duration::from_secs(15)).expect("ping the resolved address");
    // The fixed address every workload routes to its app's resolver on its
    // node: the same answer, with nothing per node to know.
    assert_eq!(nslookup(&web1, "web-2.web.demo.weft.", FIXED), vec![a.web2]);
    // Any case; and each node's resolver knows the whole app.
    assert_eq!(
        nslookup(&web1, "WEB-2.Web.Demo.WEFT.", web_dns1),
        vec![a.web2]
    );
    wait_resolves(
        &ns(&c, "web-2"),
        web_dns2,
        "web-1.web.demo.weft.",
        &[a.web1],
    );
    wait_resolves(&db2, resolver(&c, 2, "db"), "db-1.db.demo.weft.", &[a.db1]);

    // Unknown names and other apps' names are NXDOMAIN, not forwarded.
    let before = upstream.queries();
    for name in ["nosuch.web.demo.weft.", "db-1.db.demo.weft.", "demo.weft."] {
        let m = query_udp(&web1, web_dns1, name).unwrap_or_else(|| panic!("{name}: no answer"));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.answers.is_empty(), "{name}: {m:?}");
    }
    assert_eq!(
        upstream.queries(),
        before,
        ".weft names must not be forwarded"
    );

    // Other names go to the node's own resolvers, from the node's netns.
    assert_eq!(
        nslookup(&web1, "example.test.", web_dns1),
        vec![UPSTREAM_ANSWER]
    );
    assert!(upstream.queries() > before, "the upstream saw the query");
    assert_eq!(
        nslookup(&web1, "example.test.", FIXED),
        vec![UPSTREAM_ANSWER]
    );

    // TCP answers the same.
    let m = query_tcp(&web1, web_dns1, "web-2.web.demo.weft.").expect("TCP query");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(a_records(&m), vec![a.web2]);

    // Another app's workloads get no answer from this app's resolver: on
    // the same node, and across nodes.
    for (from, server, what) in [
        (&db1, web_dns1, "db-1 -> web resolver on node 1"),
        (&db1, web_dns2, "db-1 -> web resolver on node 2"),
        (&db2, web_dns1, "db-2 -> web resolver on node 1"),
    ] {
        assert!(
            query_udp(from, server, "web-1.web.demo.weft.").is_none(),
            "{what} answered"
        );
        assert!(
            query_tcp(from, server, "web-1.web.demo.weft.").is_err(),
            "{what} answered over TCP"
        );
    }
    assert!(nslookup(&db1, "web-2.web.demo.weft.", web_dns1).is_empty());
    // ...while their own resolver answers them, at its tunnel address and
    // at the fixed one (which, from a db workload, is the db resolver: it
    // knows nothing of web).
    assert_eq!(nslookup(&db1, "db-2.db.demo.weft.", db_dns1), vec![a.db2]);
    assert_eq!(nslookup(&db1, "db-2.db.demo.weft.", FIXED), vec![a.db2]);
    let m = query_udp(&db1, FIXED, "web-1.web.demo.weft.").expect("db's own resolver answers");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty(), "{m:?}");

    // A new workload shows up by name on the other node.
    c.add_workload(2, "web-3", NS, &[("tier", "web")])
        .expect("add web-3");
    let web3 = c.wait_address("web-3", READY).expect("web-3 address");
    wait_resolves(&web1, web_dns1, "web-3.web.demo.weft.", &[web3]);

    // It moves to node 1: the name follows it to its new address.
    c.remove_workload("web-3");
    wait_resolves(&web1, web_dns1, "web-3.web.demo.weft.", &[]);
    c.add_workload(1, "web-3", NS, &[("tier", "web")])
        .expect("re-add web-3 on node 1");
    let moved = c
        .wait_address("web-3", READY)
        .expect("web-3 address on node 1");
    wait_resolves(&web1, web_dns1, "web-3.web.demo.weft.", &[moved]);
    ping_until_ok(&web1, moved, Duration::from_secs(15)).expect("ping the moved workload");

    // Egress isolation of the web workloads (only ICMP to web workloads)
    // still lets them ask their resolver.
    c.apply_manifest("dns-web-egress.yaml", &web_egress_policy())
        .expect("egress policy");
    let tcp_blocked = || !weft_e2e::probe::tcp(&c, "web-1", "web-2", a.web2, 18053, 1024, 2);
    weft_e2e::probe::wait("web-1 -> web-2 TCP to be denied", READY, tcp_blocked);
    assert_eq!(
        nslookup(&web1, "web-2.web.demo.weft.", web_dns1),
        vec![a.web2]
    );
    let m = query_tcp(&web1, web_dns1, "web-1.web.demo.weft.").expect("TCP query under policy");
    assert_eq!(a_records(&m), vec![a.web1]);
    assert_eq!(nslookup(&web1, "web-2.web.demo.weft.", FIXED), vec![a.web2]);
    let m =
        query_tcp(&web1, FIXED, "web-1.web.demo.weft.").expect("TCP query at the fixed address");
    assert_eq!(a_records(&m), vec![a.web1]);

    // A restarted daemon serves again, at both addresses.
    c.restart_daemon(1).expect("restart daemon 1");
    wait_resolves(&web1, web_dns1, "web-2.web.demo.weft.", &[a.web2]);
    wait_resolves(&web1, FIXED, "web-2.web.demo.weft.", &[a.web2]);

    // The app's resolver goes with the app.
    c.delete_manifest(scenario::WEB_FILE).expect("delete web");
    weft_e2e::wait_for(
        "the web resolver to stop",
        READY,
        Duration::from_millis(300),
        || {
            Ok(
                (query_udp(&web1, web_dns1, "web-2.web.demo.weft.").is_none()
                    && query_udp(&web1, FIXED, "web-2.web.demo.weft.").is_none())
                .then_some(()),
            )
        },
    )
    .unwrap();

    c.check_alive().unwrap();
    drop(upstream);
    assert_torn_down_cleanly(c);
}
