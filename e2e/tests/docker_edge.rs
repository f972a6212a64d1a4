//! End-to-end: a Docker-only edge host joins an app's mesh. Node 1 of the
//! simulation is a cluster node (site `local`, workloads announced as
//! usual); node 2 is an edge host (site `edge` from
//! `examples/site-edge.yaml`) whose daemon runs with `--workloads docker`
//! and takes its workloads from this machine's real Docker engine.
//!
//! Where the namespaces are: the edge daemon runs in node 2's namespace,
//! so the app's WireGuard sockets live there, on the simulated WAN. The
//! containers run on the machine's Docker engine with `--network none`
//! (only loopback); their namespaces belong to no node. None of that
//! matters to the veth: the daemon creates it in the app's namespace and
//! moves one end into `/proc/<pid>/ns/net` by file descriptor, so a
//! container's `weft0` leads straight into its app's namespace on the edge
//! node and from there through the tunnel; the host namespace Docker runs
//! in carries none of the traffic.
//!
//! Checked with real packets: a container of app `sensors` pings and talks
//! TCP to the `sensors` workload on the cluster node; a container of app
//! `billing` reaches its own app there but not `sensors`; an unlabelled
//! container gets nothing. A stopped container loses its attachment; a
//! container started while the daemon is down is caught up on restart.
//!
//! Needs root, `ip`, `ping`, a running Docker engine, busybox-static and
//! the workspace binaries. Without them the test prints `SKIPPED` — except
//! under `CI=true`, where it fails naming what is missing.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

use weft_api::labels::APP_LABEL;
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::docker::{leftovers, missing_docker, Container, TinyImage};
use weft_e2e::netns::{ip_in, spawn_in_netns};
use weft_e2e::scenario::{self, NS};
use weft_e2e::workload::reported_address;

const WAIT: Duration = Duration::from_secs(40);
const EDGE: usize = 2;
const NAMESPACE_LABEL: &str = "weft.dev/namespace";

fn runnable(test: &str) -> bool {
    scenario::require(test, missing_docker(), " (scripts/setup.sh installs them)")
}

/// An app spanning the cluster and the edge, joined by `weft.dev/app`.
fn app(name: &str, range: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         spec:\n  addressSpace: {range}\n  sites: [local, edge]\n"
    )
}

fn labels(app: &str) -> [(&'static str, String); 2] {
    [
        (APP_LABEL, app.to_string()),
        (NAMESPACE_LABEL, NS.to_string()),
    ]
}

fn run_container(image: &TinyImage, name: &str, app: Option<&str>) -> Container {
    let l = app.map(labels);
    let l: Vec<(&str, &str)> = l.iter().flatten().map(|(k, v)| (*k, v.as_str())).collect();
    Container::run(image.tag(), name, &l, &["sleep", "3600"])
        .unwrap_or_else(|e| panic!("start container {name}: {e:#}"))
}

/// The address node `i` reports for workload `name`, once it has one.
fn wait_reported(c: &mut Cluster, i: usize, name: &str) -> Ipv4Addr {
    let node = c.node_name(i);
    let state = c.state().clone();
    let r = weft_e2e::wait_for(
        &format!("an address for {NS}/{name} on {node}"),
        WAIT,
        Duration::from_millis(50),
        || {
            Ok(reported_address(&state, &node, NS, name)?
                .map(|a| a.split('/').next().unwrap_or(&a).parse::<Ipv4Addr>())
                .transpose()?)
        },
    );
    match r {
        Ok(a) => a,
        Err(e) => {
            c.check_alive().expect("processes alive");
            panic!(
                "{e:#}\nedge daemon log:\n{}",
                c.daemon(i).unwrap().log_tail(30)
            );
        }
    }
}

/// `ping -c 1` from inside the container (busybox's own ping).
fn container_pings(ct: &Container, addr: Ipv4Addr) -> bool {
    ct.exec(&["ping", "-c", "1", "-W", "1", &addr.to_string()])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ping_until_ok(ct: &Container, addr: Ipv4Addr) -> Duration {
    let start = Instant::now();
    while !container_pings(ct, addr) {
        assert!(
            start.elapsed() < WAIT,
            "container {} never reached {addr}",
            ct.name()
        );
    }
    start.elapsed()
}

/// The address of the container's `weft0` (busybox `ip`), if any.
fn weft0_address(ct: &Container) -> Option<Ipv4Addr> {
    let o = ct
        .exec(&["ip", "-4", "-o", "addr", "show", "dev", "weft0"])
        .ok()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next()?.parse().ok())
}

/// The `wv*` (workload) veth ends in an app namespace.
fn workload_links(app_netns: &str) -> Vec<String> {
    ip_in(app_netns, &["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("wv"))
        .collect()
}

#[test]
fn edge_containers_join_their_app_through_docker() {
    if !runnable("edge_containers_join_their_app_through_docker") {
        return;
    }
    let mut c = Cluster::new(2).expect("simulation");
    let prefix = c.prefix().to_string();
    // Declared before the containers, so it is dropped after them.
    let image = TinyImage::build(&format!("{prefix}-edge:busybox")).expect("build the tiny image");
    c.set_daemon_args(EDGE, &["--site", "edge", "--workloads", "docker"]);
    let examples = scenario::repo_examples_dir();
    for f in ["site.yaml", "site-edge.yaml"] {
        let text = std::fs::read_to_string(examples.join(f)).expect("example site");
        c.apply_manifest(f, &text).unwrap();
    }
    c.apply_manifest("sensors.yaml", &app("sensors", "10.120.0.0/16"))
        .unwrap();
    c.apply_manifest("billing.yaml", &app("billing", "10.121.0.0/16"))
        .unwrap();
    c.add_workload(1, "sensors-1", NS, &[(APP_LABEL, "sensors")])
        .unwrap();
    c.add_workload(1, "billing-1", NS, &[(APP_LABEL, "billing")])
        .unwrap();
    c.start_all().expect("start operator and daemons");

    let sensors_edge = run_container(&image, &format!("{prefix}-sensors-edge"), Some("sensors"));
    let billing_edge = run_container(&image, &format!("{prefix}-billing-edge"), Some("billing"));
    let plain = run_container(&image, &format!("{prefix}-plain"), None);

    let sensors_1 = c.wait_address("sensors-1", WAIT).unwrap();
    let billing_1 = c.wait_address("billing-1", WAIT).unwrap();
    let sensors_e = wait_reported(&mut c, EDGE, sensors_edge.name());
    let billing_e = wait_reported(&mut c, EDGE, billing_edge.name());
    println!("sensors: cluster {sensors_1}, edge {sensors_e}; billing: cluster {billing_1}, edge {billing_e}");
    assert!(sensors_e.octets()[..2] == [10, 120] && billing_e.octets()[..2] == [10, 121]);
    c.wait_ready(NS, "sensors", WAIT).expect("sensors Ready");
    c.wait_ready(NS, "billing", WAIT).expect("billing Ready");

    // The reported address is really on the container's weft0.
    assert_eq!(weft0_address(&sensors_edge), Some(sensors_e));
    assert_eq!(weft0_address(&billing_edge), Some(billing_e));
    assert_eq!(
        weft0_address(&plain),
        None,
        "unlabelled container got weft0"
    );
    let st = c.node_status(EDGE).unwrap().unwrap();
    assert!(
        !st.workloads.iter().any(|w| w.name == plain.name()),
        "unlabelled container listed: {:?}",
        st.workloads
    );
    let watched = st
        .conditions
        .iter()
        .find(|x| x.type_ == "WorkloadsWatched")
        .expect("edge status has the WorkloadsWatched condition");
    assert_eq!(watched.status, "True", "{watched:?}");

    // A labelled container sharing another container's namespace is
    // refused, named in the condition, and that namespace gets no weft0.
    let shared = Container::run_on(
        image.tag(),
        &format!("{prefix}-shared"),
        &format!("container:{}", plain.name()),
        &[(APP_LABEL, "sensors"), (NAMESPACE_LABEL, NS)],
        &["sleep", "3600"],
    )
    .unwrap();
    let node = c.node_name(EDGE);
    let state = c.state().clone();
    let watched = |reason: &'static str| {
        let (state, node) = (state.clone(), node.clone());
        move || {
            let st = weft_e2e::status::read_node_status(&state, &node)?;
            Ok(st
                .and_then(|s| {
                    s.conditions
                        .into_iter()
                        .find(|x| x.type_ == "WorkloadsWatched")
                })
                .filter(|x| x.reason == reason))
        }
    };
    let refused = weft_e2e::wait_for(
        "the refusal in status",
        WAIT,
        Duration::from_millis(50),
        watched("ContainersRefused"),
    )
    .unwrap();
    assert!(
        refused.message.contains(shared.name()) && refused.message.contains("NetworkMode"),
        "{refused:?}"
    );
    assert_eq!(weft0_address(&plain), None);
    drop(shared);
    weft_e2e::wait_for(
        "the refusal to clear",
        WAIT,
        Duration::from_millis(50),
        watched("Watching"),
    )
    .unwrap();

    // sensors: edge container -> cluster workload, ICMP and TCP.
    let took = ping_until_ok(&sensors_edge, sensors_1);
    println!("sensors edge -> cluster: first ping reply after {took:?}");
    let listener = spawn_in_netns(c.workload("sensors-1").netns(), move || {
        let l = TcpListener::bind(SocketAddrV4::new(sensors_1, 7070))?;
        let (mut s, peer) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        s.write_all(format!("ack:{line}").as_bytes())?;
        Ok((peer, line))
    })
    .unwrap();
    let out = weft_e2e::wait_for("the TCP exchange", WAIT, Duration::from_millis(100), || {
        let o = sensors_edge.exec(&[
            "sh",
            "-c",
            &format!("echo hello-from-the-edge | nc -w 5 {sensors_1} 7070"),
        ])?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        Ok(text.contains("ack:").then_some(text))
    })
    .unwrap();
    assert_eq!(out.trim(), "ack:hello-from-the-edge");
    let (peer, line) = listener.join().unwrap().unwrap();
    assert_eq!(line.trim(), "hello-from-the-edge");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(sensors_e),
        "the cluster workload sees the container's own app address"
    );
    let st = c.node_status(EDGE).unwrap().unwrap();
    let sensors_app = st
        .apps
        .iter()
        .find(|a| a.app == format!("{NS}/sensors"))
        .unwrap();
    assert!(
        sensors_app
            .peers
            .iter()
            .any(|p| p.rx_bytes > 0 && p.tx_bytes > 0),
        "the edge's sensors tunnel carried traffic: {:?}",
        sensors_app.peers
    );

    // billing reaches billing, never sensors.
    ping_until_ok(&billing_edge, billing_1);
    for _ in 0..3 {
        assert!(
            !container_pings(&billing_edge, sensors_1),
            "billing reached sensors"
        );
    }
    let o = billing_edge
        .exec(&["sh", "-c", &format!("echo x | nc -w 2 {sensors_1} 7070")])
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("ack:"),
        "billing talked TCP to sensors"
    );
    assert!(!container_pings(&plain, sensors_1));

    // A stopped container loses its attachment.
    let edge_ns = c
        .app_netns(EDGE, &format!("{NS}/sensors"))
        .unwrap()
        .expect("sensors namespace on the edge");
    assert_eq!(workload_links(&edge_ns).len(), 1, "one sensors container");
    sensors_edge.stop().unwrap();
    let name = sensors_edge.name().to_string();
    weft_e2e::wait_for(
        "the stopped container to be detached",
        WAIT,
        Duration::from_millis(50),
        || {
            let st = weft_e2e::status::read_node_status(&state, &node)?;
            let listed = st.is_some_and(|s| s.workloads.iter().any(|w| w.name == name));
            Ok((!listed && workload_links(&edge_ns).is_empty()).then_some(()))
        },
    )
    .unwrap();

    // Containers that start while the daemon is down are caught up.
    c.daemon(EDGE).unwrap().stop(Duration::from_secs(5));
    sensors_edge.start().unwrap(); // the same container, a new namespace
    let late = run_container(&image, &format!("{prefix}-sensors-late"), Some("sensors"));
    c.daemon(EDGE).unwrap().restart().unwrap();
    let late_e = wait_reported(&mut c, EDGE, late.name());
    let again_e = wait_reported(&mut c, EDGE, sensors_edge.name());
    assert_ne!(late_e, again_e);
    assert_eq!(weft0_address(&late), Some(late_e));
    assert_eq!(weft0_address(&sensors_edge), Some(again_e));
    ping_until_ok(&late, sensors_1);
    ping_until_ok(&sensors_edge, sensors_1);
    assert_eq!(workload_links(&edge_ns).len(), 2);

    // Removed containers go too; then everything else.
    drop((late, sensors_edge, billing_edge, plain));
    weft_e2e::wait_for(
        "every container detached",
        WAIT,
        Duration::from_millis(50),
        || {
            let st = c.node_status(EDGE)?;
            Ok(st.is_some_and(|s| s.workloads.is_empty()).then_some(()))
        },
    )
    .unwrap();
    assert!(workload_links(&edge_ns).is_empty());
    assert_torn_down_cleanly(c);
    drop(image);
    assert_eq!(leftovers(&prefix).unwrap(), Vec::<String>::new());
}
