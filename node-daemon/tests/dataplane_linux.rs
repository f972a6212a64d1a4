//! Privileged data-plane tests: real namespaces, real links, real WireGuard
//! handshakes and real packets, all inside namespaces each test creates (and
//! removes, also when it fails). Needs root and /dev/net/tun; without them a
//! test prints "SKIPPED: ..." unless CI=true, where it fails instead.
//!
//! Each simulated node is a netns with its own `LinuxDataplane`, driven from
//! a dedicated thread that entered the node netns first (as the daemon does).

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
mod support;

use support::{net, privileged, run, sh, sh_ok, Cleanup, Keys, Node};
use weft_node_daemon::core::diff::diff;
use weft_node_daemon::core::ops::Op;
use weft_node_daemon::core::state::{AppNet, Device, NodeState, Peer, WorkloadLink};
use weft_node_daemon::dataplane::linux::LinuxOptions;
use weft_node_daemon::dataplane::Dataplane;
use weft_node_daemon::keys::PrivateKey;

const PORT: u16 = 51820;
/// Ping payload marker ("WeftPing"): must never be visible on the node link.
const MARKER: &[u8] = b"WeftPing";
const MARKER_HEX: &str = "5765667450696e67";

/// One ping from `netns` to `dst` (retrying for up to `secs` seconds).
fn ping(netns: &str, dst: Ipv4Addr, secs: u32) -> bool {
    let dst = dst.to_string();
    let w = secs.to_string();
    sh_ok(&[
        "ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", &w, "-p",
        MARKER_HEX, &dst,
    ])
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------- node workers

/// What these tests read off a node worker besides the data plane.
trait NodeExt {
    fn threads(&self) -> usize;
    fn udp_bound(&self, port: u16) -> bool;
}

impl NodeExt for Node {
    /// Threads of this process named like the worker (the userspace
    /// WireGuard runtime names its threads after the thread that started it).
    fn threads(&self) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .map(|c| c.trim() == self.thread_name)
                    .unwrap_or(false)
            })
            .count()
    }

    /// Whether a UDP socket is bound to `port` in the node netns (read from
    /// the worker thread, which sits in that netns).
    fn udp_bound(&self, port: u16) -> bool {
        self.call(move |_| {
            let needle = format!(":{port:04X} ");
            ["/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"]
                .iter()
                .any(|f| {
                    std::fs::read_to_string(f)
                        .unwrap()
                        .lines()
                        .skip(1)
                        .any(|l| {
                            l.split_whitespace()
                                .nth(1)
                                .is_some_and(|local| format!("{local} ").contains(&needle))
                        })
                })
        })
    }
}

struct AppSpec<'a> {
    netns: &'a str,
    interface: &'a str,
    key: &'a PrivateKey,
    address: &'a str,
    range: &'a str,
    port: u16,
    /// (public key, endpoint, allowed slice)
    peers: Vec<(String, SocketAddr, &'a str)>,
    /// (host interface, workload netns name, address)
    workloads: Vec<(String, String, Ipv4Addr)>,
}

fn app(spec: AppSpec<'_>) -> AppNet {
    AppNet {
        app: "default/demo".into(),
        netns: spec.netns.into(),
        device: Some(Device {
            interface: spec.interface.into(),
            mtu: 1420,
            up: true,
            addresses: vec![net(spec.address)],
            routes: vec![net(spec.range)],
            listen_port: spec.port,
            public_key: spec.key.public_key(),
            peers: spec
                .peers
                .into_iter()
                .map(|(pk, ep, allowed)| {
                    (
                        pk,
                        Peer {
                            endpoint: Some(ep),
                            allowed_ips: vec![net(allowed)],
                            persistent_keepalive: 25,
                        },
                    )
                })
                .collect(),
        }),
        workloads: spec
            .workloads
            .into_iter()
            .map(|(host_if, wl, address)| {
                let link = WorkloadLink {
                    workload: format!("default/{wl}"),
                    workload_netns: format!("/run/netns/{wl}"),
                    address,
                    mtu: 1420,
                };
                (host_if, link)
            })
            .collect(),
        policy: None,
        links: Default::default(),
    }
}

// ---------------------------------------------------------------- a two-node mesh

/// Two node netns joined by a veth (192.0.2.1/24, 192.0.2.2/24), one app
/// (10.123.0.0/16) spanning both, one workload per node.
struct Mesh {
    // Field order is drop order: workers (and their devices) stop before the
    // namespaces go.
    nodes: Vec<Node>,
    desired: Vec<NodeState>,
    keys: Vec<Keys>,
    prefixes: Vec<String>,
    app_netns: Vec<String>,
    node_netns: Vec<String>,
    wg_if: Vec<String>,
    workload_netns: Vec<String>,
    node_link: Vec<String>,
    _cleanup: Cleanup,
}

const WL_ADDR: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 123, 1, 10), Ipv4Addr::new(10, 123, 2, 10)];

impl Mesh {
    fn new(t: &str) -> Mesh {
        let pid = std::process::id();
        let tag = format!("{t}{pid}");
        let mut cleanup = Cleanup::default();
        let node_netns: Vec<String> = (1..=2).map(|n| format!("wtn-{tag}-{n}")).collect();
        let workload_netns: Vec<String> = (1..=2).map(|n| format!("wtw-{tag}-{n}")).collect();
        let prefixes: Vec<String> = (1..=2).map(|n| format!("wta-{tag}-{n}-")).collect();
        let app_netns: Vec<String> = prefixes.iter().map(|p| format!("{p}demo")).collect();
        let wg_if: Vec<String> = (1..=2).map(|n| format!("wg{tag}{n}")).collect();
        let host_if: Vec<String> = (1..=2).map(|n| format!("wv{tag}{n}")).collect();
        let node_link: Vec<String> = (1..=2).map(|n| format!("wn{tag}{n}")).collect();
        for n in node_netns.iter().chain(&workload_netns).chain(&app_netns) {
            cleanup.netns.push(n.clone());
        }
        for n in node_netns.iter().chain(&workload_netns) {
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip",
            "link",
            "add",
            &node_link[0],
            "netns",
            &node_netns[0],
            "type",
            "veth",
            "peer",
            "name",
            &node_link[1],
            "netns",
            &node_netns[1],
        ]);
        for i in 0..2 {
            let addr = format!("192.0.2.{}/24", i + 1);
            sh(&[
                "ip",
                "-n",
                &node_netns[i],
                "addr",
                "add",
                &addr,
                "dev",
                &node_link[i],
            ]);
            sh(&[
                "ip",
                "-n",
                &node_netns[i],
                "link",
                "set",
                &node_link[i],
                "up",
            ]);
        }
        let k = [PrivateKey::generate(), PrivateKey::generate()];
        let mut desired = Vec::new();
        let mut keys = Vec::new();
        for i in 0..2 {
            let o = 1 - i;
            let address = format!("10.123.{}.1/32", i + 1);
            let slice = format!("10.123.{}.0/24", o + 1);
            let endpoint: SocketAddr = format!("192.0.2.{}:{PORT}", o + 1).parse().unwrap();
            let a = app(AppSpec {
                netns: &app_netns[i],
                interface: &wg_if[i],
                key: &k[i],
                address: &address,
                range: "10.123.0.0/16",
                port: PORT,
                peers: vec![(k[o].public_key(), endpoint, &slice)],
                workloads: vec![(host_if[i].clone(), workload_netns[i].clone(), WL_ADDR[i])],
            });
            let mut s = NodeState::default();
            s.apps.insert(app_netns[i].clone(), a);
            desired.push(s);
            keys.push(Keys([(app_netns[i].clone(), k[i].clone())].into()));
        }
        let nodes = (0..2)
            .map(|i| {
                Node::start(
                    &node_netns[i],
                    &format!("{t}-node{}", i + 1),
                    LinuxOptions::default(),
                )
            })
            .collect();
        Mesh {
            nodes,
            desired,
            keys,
            prefixes,
            app_netns,
            node_netns,
            wg_if,
            workload_netns,
            node_link,
            _cleanup: cleanup,
        }
    }

    fn sync(&self, i: usize) -> Vec<Op> {
        self.nodes[i].sync(&self.desired[i], &self.keys[i], &self.prefixes[i])
    }

    fn converge(&self) {
        for i in 0..2 {
            let ops = self.sync(i);
            assert!(!ops.is_empty());
        }
    }

    fn peer_key(&self, i: usize) -> String {
        let o = 1 - i;
        self.keys[o].0.values().next().unwrap().public_key()
    }
}

// ---------------------------------------------------------------- packet capture

/// Captures every frame on every link of a netns (AF_PACKET, ETH_P_ALL) on a
/// thread that entered it, until stopped.
struct Capture {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    fn start(netns: &str) -> Capture {
        use nix::sys::socket::{
            setsockopt, socket, sockopt, AddressFamily, SockFlag, SockProtocol, SockType,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = channel();
        let path = format!("/run/netns/{netns}");
        let flag = stop.clone();
        let join = std::thread::spawn(move || {
            let ns = File::open(&path).unwrap();
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
            let fd = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::empty(),
                SockProtocol::EthAll,
            )
            .unwrap();
            setsockopt(
                &fd,
                sockopt::ReceiveTimeout,
                &nix::sys::time::TimeVal::new(0, 100_000),
            )
            .unwrap();
            let mut f = File::from(fd);
            ready_tx.send(()).unwrap();
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::SeqCst) {
                if let Ok(n) = f.read(&mut buf) {
                    frames.push(buf[..n].to_vec());
                }
            }
            frames
        });
        ready_rx.recv().unwrap();
        Capture {
            stop,
            join: Some(join),
        }
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        self.join.take().unwrap().join().unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// (src port, dst port, payload) of an Ethernet/IPv4/UDP frame.
fn udp_of(frame: &[u8]) -> Option<(u16, u16, &[u8])> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    let udp = &ip[ihl..];
    Some((
        u16::from_be_bytes([udp[0], udp[1]]),
        u16::from_be_bytes([udp[2], udp[3]]),
        &udp[8..],
    ))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------- tests

#[test]
fn workloads_on_two_nodes_ping_over_a_real_wireguard_handshake() {
    if !privileged(
        "workloads_on_two_nodes_ping_over_a_real_wireguard_handshake",
        &[],
    ) {
        return;
    }
    let m = Mesh::new("a");
    println!("data plane kind: {:?}", m.nodes[0].kind);
    // Capture from before the devices exist: with a persistent keepalive the
    // device may start its handshake as soon as the peer is configured.
    let cap = Capture::start(&m.node_netns[0]);
    m.converge();

    assert!(
        ping(&m.workload_netns[0], WL_ADDR[1], 10),
        "workload 1 cannot ping workload 2 through WireGuard"
    );
    // A few more packets with the marker while capturing.
    assert!(
        ping(&m.workload_netns[1], WL_ADDR[0], 5),
        "workload 2 cannot ping workload 1"
    );
    let frames = cap.finish();

    // What went over the node link was WireGuard: UDP between the listen
    // ports, WireGuard message types, and never the plaintext payload.
    let wg: Vec<&[u8]> = frames
        .iter()
        .filter_map(|f| udp_of(f))
        .filter(|(s, d, _)| *s == PORT && *d == PORT)
        .map(|(_, _, p)| p)
        .collect();
    assert!(
        wg.iter().any(|p| p.first() == Some(&1)),
        "no handshake initiation seen on the node link"
    );
    assert!(
        wg.iter().any(|p| p.first() == Some(&4) && p.len() > 32),
        "no WireGuard data packets on the node link"
    );
    assert!(
        wg.iter().all(|p| (1..=4).contains(&p[0])),
        "non-WireGuard UDP on the WireGuard port"
    );
    assert!(
        !frames.iter().any(|f| contains(f, MARKER)),
        "plaintext ping payload visible on the node netns"
    );

    for i in 0..2 {
        let obs = m.nodes[i].observe(&m.prefixes[i]);
        let st = obs
            .stats
            .get(&(m.app_netns[i].clone(), m.peer_key(i)))
            .expect("stats for the peer");
        assert!(
            st.last_handshake_seconds.is_some(),
            "no handshake recorded on node {i}: {st:?}"
        );
        assert!(
            st.rx_bytes > 0 && st.tx_bytes > 0,
            "no traffic counted on node {i}: {st:?}"
        );
        let dev = obs.state.apps[&m.app_netns[i]].device.clone().unwrap();
        assert_eq!(
            dev.public_key,
            m.keys[i].0.values().next().unwrap().public_key()
        );
        assert_eq!(dev.listen_port, PORT);
        // The TUN lives in the app netns, its UDP socket in the node netns.
        assert!(sh_ok(&[
            "ip",
            "-n",
            &m.app_netns[i],
            "link",
            "show",
            &m.wg_if[i]
        ]));
        assert!(!sh_ok(&[
            "ip",
            "-n",
            &m.node_netns[i],
            "link",
            "show",
            &m.wg_if[i]
        ]));
        assert!(
            m.nodes[i].udp_bound(PORT),
            "UDP port not bound in node netns {i}"
        );
        // The device's socket was enlarged past the 208 KiB default
        // (the kernel reports twice the requested 4 MiB as `rb`).
        let mem = sh(&[
            "ip",
            "netns",
            "exec",
            &m.node_netns[i],
            "ss",
            "-uanm",
            "sport",
            "=",
            &format!(":{PORT}"),
        ]);
        let rb: Vec<u64> = mem
            .split("rb")
            .skip(1)
            .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        assert!(
            !rb.is_empty() && rb.iter().all(|b| *b >= 4 << 20),
            "receive buffers on port {PORT}: {mem}"
        );
    }
    // Workloads keep their own default route (none here): only the app range goes to weft0.
    let routes = sh(&["ip", "-n", &m.workload_netns[0], "route"]);
    assert!(
        routes.contains("10.123.0.0/16 via 169.254.1.1 dev weft0"),
        "{routes}"
    );
    assert!(!routes.contains("default"), "{routes}");
    let _ = &m.node_link;
}

#[test]
fn converged_resync_makes_zero_writes() {
    if !privileged("converged_resync_makes_zero_writes", &[]) {
        return;
    }
    let m = Mesh::new("b");
    m.converge();
    assert!(
        ping(&m.workload_netns[0], WL_ADDR[1], 10),
        "mesh does not carry traffic"
    );
    for round in 0..2 {
        for i in 0..2 {
            let ops = m.sync(i);
            assert!(
                ops.is_empty(),
                "round {round}, node {i}: converged resync wrote {ops:#?}"
            );
        }
    }
    // Re-applying the full op list is harmless (every op is idempotent).
    for i in 0..2 {
        let empty = NodeState::default();
        let all = diff(&m.desired[i], &empty, &m.keys[i]);
        let all = all
            .into_iter()
            .filter(|op| !matches!(op, Op::CreateDevice { .. }))
            .collect::<Vec<_>>();
        m.nodes[i].call(move |dp| {
            for op in &all {
                dp.apply(op)
                    .unwrap_or_else(|e| panic!("re-apply {op:?}: {e}"));
            }
        });
    }
    assert!(
        ping(&m.workload_netns[0], WL_ADDR[1], 10),
        "re-applying broke the mesh"
    );
    for i in 0..2 {
        let ops = m.sync(i);
        assert!(ops.is_empty(), "node {i} after re-apply: {ops:#?}");
    }
}

#[test]
fn deleted_interface_is_recreated_on_resync() {
    if !privileged("deleted_interface_is_recreated_on_resync", &[]) {
        return;
    }
    let m = Mesh::new("c");
    m.converge();
    assert!(ping(&m.workload_netns[0], WL_ADDR[1], 10));

    // Someone deletes the WireGuard link.
    sh(&["ip", "-n", &m.app_netns[0], "link", "del", &m.wg_if[0]]);
    assert!(!ping(&m.workload_netns[0], WL_ADDR[1], 1));
    let ops = m.sync(0);
    assert!(
        ops.iter().any(|o| matches!(o, Op::CreateDevice { .. })),
        "{ops:#?}"
    );
    assert!(
        !ops.iter().any(|o| matches!(o, Op::AttachWorkload { .. })),
        "workload link was fine: {ops:#?}"
    );
    assert!(
        ping(&m.workload_netns[0], WL_ADDR[1], 10),
        "traffic did not come back after recreating the device"
    );
    assert!(m.sync(0).is_empty());

    // Someone removes the device's address, then its route. A converged
    // pass reuses its last read of the netns until the kernel says the
    // netns changed: each removal must still show on the very next pass.
    sh(&[
        "ip",
        "-n",
        &m.app_netns[0],
        "addr",
        "del",
        "10.123.1.1/32",
        "dev",
        &m.wg_if[0],
    ]);
    // (The kernel takes the routes that used the address with it.)
    let ops = m.sync(0);
    assert!(
        ops.iter().any(|o| matches!(o, Op::AddAddress { .. })),
        "{ops:#?}"
    );
    assert!(m.sync(0).is_empty());
    sh(&[
        "ip",
        "-n",
        &m.app_netns[0],
        "route",
        "del",
        "10.123.0.0/16",
        "dev",
        &m.wg_if[0],
    ]);
    // (A change of the app's own route re-attaches its workloads.)
    let ops = m.sync(0);
    assert!(
        ops.iter().any(|o| matches!(o, Op::AddRoute { .. })),
        "{ops:#?}"
    );
    assert!(m.sync(0).is_empty());

    // Someone deletes the whole app netns.
    sh(&["ip", "netns", "del", &m.app_netns[0]]);
    let ops = m.sync(0);
    assert!(
        matches!(ops.first(), Some(Op::CreateNetns { .. })),
        "{ops:#?}"
    );
    assert!(
        ops.iter().any(|o| matches!(o, Op::AttachWorkload { .. })),
        "{ops:#?}"
    );
    assert!(
        ping(&m.workload_netns[0], WL_ADDR[1], 10),
        "traffic did not come back after recreating the netns"
    );
    assert!(m.sync(0).is_empty());
    assert_eq!(
        m.nodes[0].threads(),
        1 + 2,
        "exactly the worker and the 2 userspace WireGuard runtime threads should run"
    );
}

#[test]
fn a_change_made_by_hand_wakes_the_loop() {
    if !privileged("a_change_made_by_hand_wakes_the_loop", &[]) {
        return;
    }
    let m = Mesh::new("k");
    m.converge();
    let wake = weft_node_daemon::wake::Wake::default();
    let w = wake.clone();
    m.nodes[0].call(move |dp| dp.wake_on_change(&w));
    // Let the announcements of the set-up settle, then start clean.
    assert!(m.sync(0).is_empty());
    std::thread::sleep(Duration::from_millis(200));
    wake.take();
    let woken = |what: &str| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if wake.wait(Duration::from_millis(50)) {
                return;
            }
        }
        panic!("{what} did not wake the loop");
    };
    sh(&[
        "ip",
        "-n",
        &m.app_netns[0],
        "route",
        "del",
        "10.123.0.0/16",
        "dev",
        &m.wg_if[0],
    ]);
    woken("a route deleted by hand");
    let ops = m.sync(0);
    assert!(
        ops.iter().any(|o| matches!(o, Op::AddRoute { .. })),
        "{ops:#?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(m.sync(0).is_empty());
    wake.take();
    sh(&["ip", "netns", "del", &m.app_netns[0]]);
    woken("a namespace deleted by hand");
    let ops = m.sync(0);
    assert!(
        matches!(ops.first(), Some(Op::CreateNetns { .. })),
        "{ops:#?}"
    );
}

#[test]
fn deleted_app_is_fully_cleaned_up() {
    if !privileged("deleted_app_is_fully_cleaned_up", &[]) {
        return;
    }
    let m = Mesh::new("d");
    m.converge();
    assert!(ping(&m.workload_netns[0], WL_ADDR[1], 10));
    let node = &m.nodes[0];
    assert!(node.udp_bound(PORT));
    assert_eq!(
        node.threads(),
        1 + 2,
        "worker + 2 userspace WireGuard runtime threads"
    );

    let ops = node.sync(&NodeState::default(), &m.keys[0], &m.prefixes[0]);
    assert_eq!(
        ops,
        vec![Op::DeleteNetns {
            netns: m.app_netns[0].clone()
        }]
    );

    assert!(
        !Path::new("/run/netns").join(&m.app_netns[0]).exists(),
        "app netns still pinned"
    );
    assert!(
        !node.udp_bound(PORT),
        "WireGuard UDP port still bound in the node netns"
    );
    assert_eq!(node.threads(), 1, "userspace WireGuard threads left behind");
    assert!(!sh_ok(&[
        "ip",
        "-n",
        &m.node_netns[0],
        "link",
        "show",
        &m.wg_if[0]
    ]));
    // The workload's end of the veth goes with the app netns (asynchronously).
    wait_until("workload veth gone", 10, || {
        !sh_ok(&["ip", "-n", &m.workload_netns[0], "link", "show", "weft0"])
    });
    assert!(node.observe(&m.prefixes[0]).state.apps.is_empty());
    assert!(node
        .sync(&NodeState::default(), &m.keys[0], &m.prefixes[0])
        .is_empty());
    // Deleting again is fine.
    let again = Op::DeleteNetns {
        netns: m.app_netns[0].clone(),
    };
    node.call(move |dp| dp.apply(&again)).unwrap();
}

#[test]
fn two_apps_on_one_node_cannot_reach_each_other() {
    if !privileged("two_apps_on_one_node_cannot_reach_each_other", &[]) {
        return;
    }
    let pid = std::process::id();
    let tag = format!("e{pid}");
    let mut cleanup = Cleanup::default();
    let node_ns = format!("wtn-{tag}");
    let prefix = format!("wta-{tag}-");
    let (ns_a, ns_b) = (format!("{prefix}a"), format!("{prefix}b"));
    let wl: Vec<String> = ["a1", "a2", "b1"]
        .iter()
        .map(|w| format!("wtw-{tag}-{w}"))
        .collect();
    for n in [&node_ns, &ns_a, &ns_b].into_iter().chain(&wl) {
        cleanup.netns.push(n.clone());
    }
    for n in std::iter::once(&node_ns).chain(&wl) {
        sh(&["ip", "netns", "add", n]);
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let (a1, a2, b1) = (
        Ipv4Addr::new(10, 123, 1, 10),
        Ipv4Addr::new(10, 123, 1, 11),
        Ipv4Addr::new(10, 124, 1, 10),
    );
    let app_a = app(AppSpec {
        netns: &ns_a,
        interface: &format!("wg{tag}a"),
        key: &ka,
        address: "10.123.1.1/32",
        range: "10.123.0.0/16",
        port: PORT,
        peers: vec![],
        workloads: vec![
            (format!("wv{tag}a1"), wl[0].clone(), a1),
            (format!("wv{tag}a2"), wl[1].clone(), a2),
        ],
    });
    let app_b = app(AppSpec {
        netns: &ns_b,
        interface: &format!("wg{tag}b"),
        key: &kb,
        address: "10.124.1.1/32",
        range: "10.124.0.0/16",
        port: PORT + 1,
        peers: vec![],
        workloads: vec![(format!("wv{tag}b1"), wl[2].clone(), b1)],
    });
    let mut desired = NodeState::default();
    desired.apps.insert(ns_a.clone(), app_a);
    desired.apps.insert(ns_b.clone(), app_b);
    let keys = Keys([(ns_a.clone(), ka), (ns_b.clone(), kb)].into());
    let node = Node::start(&node_ns, "e-node", LinuxOptions::default());
    assert!(!node.sync(&desired, &keys, &prefix).is_empty());
    assert!(node.sync(&desired, &keys, &prefix).is_empty());

    // Positive control: two workloads of app A reach each other.
    assert!(
        ping(&wl[0], a2, 5),
        "workloads of the same app cannot reach each other"
    );
    // App B's workload is unreachable from app A, even when the workload
    // routes app B's range to its gateway itself...
    assert!(!ping(&wl[0], b1, 2));
    sh(&[
        "ip",
        "-n",
        &wl[0],
        "route",
        "add",
        "10.124.0.0/16",
        "via",
        "169.254.1.1",
        "dev",
        "weft0",
    ]);
    assert!(
        !ping(&wl[0], b1, 2),
        "app A's workload reached app B's workload"
    );
    // ...and the other way round.
    sh(&[
        "ip",
        "-n",
        &wl[2],
        "route",
        "add",
        "10.123.0.0/16",
        "via",
        "169.254.1.1",
        "dev",
        "weft0",
    ]);
    assert!(
        !ping(&wl[2], a1, 2),
        "app B's workload reached app A's workload"
    );
    drop(node);
    drop(cleanup);
}

#[test]
fn a_workload_cannot_send_from_an_address_that_is_not_its_own() {
    if !privileged(
        "a_workload_cannot_send_from_an_address_that_is_not_its_own",
        &[("nft", "--version")],
    ) {
        return;
    }
    let tag = format!("s{}", std::process::id());
    let mut cleanup = Cleanup::default();
    let node_ns = format!("wtn-{tag}");
    let prefix = format!("wta-{tag}-");
    let ns_a = format!("{prefix}a");
    let wl: Vec<String> = ["w1", "w2"]
        .iter()
        .map(|w| format!("wtw-{tag}-{w}"))
        .collect();
    for n in [&node_ns, &ns_a].into_iter().chain(&wl) {
        cleanup.netns.push(n.clone());
    }
    for n in std::iter::once(&node_ns).chain(&wl) {
        sh(&["ip", "netns", "add", n]);
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    let key = PrivateKey::generate();
    let (w1, w2) = (Ipv4Addr::new(10, 123, 1, 10), Ipv4Addr::new(10, 123, 1, 11));
    let mut desired = NodeState::default();
    desired.apps.insert(
        ns_a.clone(),
        app(AppSpec {
            netns: &ns_a,
            interface: &format!("wg{tag}"),
            key: &key,
            address: "10.123.1.1/32",
            range: "10.123.0.0/16",
            port: PORT,
            peers: vec![],
            workloads: vec![
                (format!("wv{tag}1"), wl[0].clone(), w1),
                (format!("wv{tag}2"), wl[1].clone(), w2),
            ],
        }),
    );
    let keys = Keys([(ns_a.clone(), key)].into());
    let node = Node::start(&node_ns, "s-node", LinuxOptions::default());
    assert!(!node.sync(&desired, &keys, &prefix).is_empty());

    // Count what reaches w2, by source address, in w2's own netns.
    sh(&[
        "ip", "netns", "exec", &wl[1], "nft", "add", "table", "ip", "probe",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &wl[1],
        "nft",
        "add",
        "chain",
        "ip",
        "probe",
        "in",
        "{ type filter hook input priority 0 ; }",
    ]);
    for src in ["10.123.1.10", "10.123.1.99"] {
        sh(&[
            "ip",
            "netns",
            "exec",
            &wl[1],
            "nft",
            "add",
            "rule",
            "ip",
            "probe",
            "in",
            "ip",
            "saddr",
            src,
            "icmp",
            "type",
            "echo-request",
            "counter",
        ]);
    }
    let count = |src: &str| -> u64 {
        let out = sh(&[
            "ip", "netns", "exec", &wl[1], "nft", "list", "table", "ip", "probe",
        ]);
        out.lines()
            .find(|l| l.contains(&format!("saddr {src} ")))
            .and_then(|l| l.split("packets ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter for {src} in:\n{out}"))
    };
    // Positive control: w1's own address gets through.
    assert!(ping(&wl[0], w2, 5));
    assert!(count("10.123.1.10") >= 1);
    // w1 claims another address of the app's range and sends from it.
    sh(&[
        "ip",
        "-n",
        &wl[0],
        "addr",
        "add",
        "10.123.1.99/32",
        "dev",
        "weft0",
    ]);
    let _ = run(&[
        "ip",
        "netns",
        "exec",
        &wl[0],
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        "10.123.1.99",
        &w2.to_string(),
    ]);
    assert_eq!(
        count("10.123.1.99"),
        0,
        "a spoofed source must be dropped in the app netns"
    );
    drop(node);
}

/// Runs `f` on a thread that entered `netns` first.
fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap();
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// (rx, tx) packet counters of `link` in `netns`.
fn link_packets(netns: &str, link: &str) -> (usize, usize) {
    let read = |what: &str| -> usize {
        sh(&[
            "ip",
            "netns",
            "exec",
            netns,
            "cat",
            &format!("/sys/class/net/{link}/statistics/{what}_packets"),
        ])
        .trim()
        .parse()
        .unwrap()
    };
    (read("rx"), read("tx"))
}

/// `len` bytes that differ with their position and with `salt`.
fn pattern(len: usize, salt: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) ^ (i >> 9) ^ salt.wrapping_mul(29)) as u8)
        .collect()
}

/// The userspace device's offloads (TSO super-packets cut on the way in,
/// segments joined on the way out, partial checksums completed, UDP GSO
/// on the node link) must deliver
/// every byte of every size unchanged, both ways: TCP writes from 1 byte to
/// several 64 KiB super-packets, UDP just under, at and over the MTU (IP
/// fragments), echoed back and compared byte for byte.
#[test]
fn every_size_crosses_the_tunnel_byte_for_byte() {
    use std::io::Write;
    use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket};

    if !privileged("every_size_crosses_the_tunnel_byte_for_byte", &[]) {
        return;
    }
    let m = Mesh::new("o");
    m.converge();
    assert!(ping(&m.workload_netns[0], WL_ADDR[1], 10), "no tunnel");

    // TCP: the server echoes what it reads; the client checks what comes back.
    let sizes = [
        1usize,
        2,
        3,
        100,
        1351,
        1352,
        1353,
        1367,
        1368,
        1369,
        1400,
        2736,
        4000,
        9000,
        16_384,
        65_535,
        65_536,
        65_537,
        200_000,
        4 << 20,
    ];
    let mut sent = Vec::new();
    for (k, n) in sizes.iter().enumerate() {
        sent.extend(pattern(*n, k));
    }
    let total = sent.len();
    let (ready_tx, ready_rx) = channel();
    let server = in_netns(&m.workload_netns[1], move || {
        let l = TcpListener::bind(SocketAddrV4::new(WL_ADDR[1], 7000)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0usize;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).unwrap();
            got += n;
        }
        s.shutdown(Shutdown::Write).unwrap();
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let to_send = sent.clone();
    let sizes_c = sizes;
    let client = in_netns(&m.workload_netns[0], move || {
        let s = TcpStream::connect_timeout(
            &SocketAddrV4::new(WL_ADDR[1], 7000).into(),
            Duration::from_secs(10),
        )
        .unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = s.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            back
        });
        let mut w = &s;
        let mut off = 0;
        for n in sizes_c {
            w.write_all(&to_send[off..off + n]).unwrap();
            off += n;
        }
        s.shutdown(Shutdown::Write).unwrap();
        reader.join().unwrap()
    });
    let back = client.join().expect("TCP client");
    assert_eq!(server.join().expect("TCP server"), total);
    assert_eq!(back.len(), total, "bytes echoed back");
    if let Some(i) = back.iter().zip(&sent).position(|(a, b)| a != b) {
        panic!("TCP stream differs at byte {i} of {total}");
    }
    // The offloads were in use: one packet per MSS-sized segment is the
    // least any link carries without them (the stream's data alone, before
    // ACKs), so fewer packets than that each way prove super-packets on the
    // TUN links and GSO sends on the node links.
    for i in 0..2 {
        let (rx, tx) = link_packets(&m.app_netns[i], &m.wg_if[i]);
        let segments = total / 1368;
        println!("TUN {i}: {rx} packets in, {tx} out, for about {segments} segments each way");
        assert!(
            rx < segments && tx < segments,
            "TUN {i}: {rx} packets in, {tx} out for about {segments} segments: no super-packets"
        );
        let (_, sent) = link_packets(&m.node_netns[i], &m.node_link[i]);
        println!("node link {i}: {sent} packets out");
        assert!(
            sent < segments,
            "node link {i}: {sent} packets out for about {segments} segments: no UDP GSO"
        );
    }

    // UDP: one datagram at a time, echoed; the MTU is 1420, so 1392 bytes
    // of payload is the last size that is not fragmented.
    let echo = in_netns(&m.workload_netns[1], move || {
        let s = UdpSocket::bind(SocketAddrV4::new(WL_ADDR[1], 7001)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 65_536];
        let mut echoed = 0usize;
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if n == 1 && buf[0] == 0xff {
                break;
            }
            s.send_to(&buf[..n], from).unwrap();
            echoed += 1;
        }
        echoed
    });
    let udp_sizes = [
        1usize, 2, 100, 1391, 1392, 1393, 1394, 2000, 2785, 8000, 30_000, 65_507,
    ];
    let client = in_netns(&m.workload_netns[0], move || {
        let s = UdpSocket::bind(SocketAddrV4::new(WL_ADDR[0], 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let dst = SocketAddrV4::new(WL_ADDR[1], 7001);
        let mut buf = vec![0u8; 65_536];
        let mut failures = Vec::new();
        for (k, n) in udp_sizes.iter().enumerate() {
            let d = pattern(*n, 100 + k);
            // 0xff alone stops the echo: never send it as a probe.
            let ok = (0..5).any(|_| {
                s.send_to(&d, dst).unwrap();
                matches!(s.recv_from(&mut buf), Ok((len, _)) if buf[..len] == d[..])
            });
            if !ok {
                failures.push(*n);
            }
        }
        s.send_to(&[0xff], dst).unwrap();
        failures
    });
    let failures = client.join().expect("UDP client");
    assert!(echo.join().expect("UDP echo") >= udp_sizes.len());
    assert!(
        failures.is_empty(),
        "UDP datagrams of these sizes did not come back intact: {failures:?}"
    );
}
