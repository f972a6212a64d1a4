//! Short checks between the workloads of a running [`Cluster`], for the
//! tests: TCP, UDP and ICMP reachability as booleans, a bounded wait, and
//! the cross-app policy manifests and MeshNode reads the cross-app tests
//! share.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::Cluster;
use crate::scenario::NS;
use crate::traffic::{ping, tcp_transfer_opts, udp_probe_until_ok, TransferOpts, UdpEcho};

/// Whether `bytes` cross by TCP from workload `from` to a sink in `to`
/// (listening on `addr:port`) within `secs`.
pub fn tcp(
    c: &Cluster,
    from: &str,
    to: &str,
    addr: Ipv4Addr,
    port: u16,
    bytes: u64,
    secs: u64,
) -> bool {
    let (from, to) = (
        c.workload(from).netns().to_string(),
        c.workload(to).netns().to_string(),
    );
    tcp_transfer_opts(
        &from,
        &to,
        addr,
        &TransferOpts {
            bytes,
            port,
            fill: None,
            timeout: Duration::from_secs(secs),
        },
    )
    .is_ok()
}

/// Whether workload `from` gets an answer to 2 pings of `to`.
pub fn pings(c: &Cluster, from: &str, to: Ipv4Addr) -> bool {
    ping(c.workload(from).netns(), to, 2, Duration::from_secs(2))
        .unwrap()
        .ok
}

/// Whether a UDP datagram from `from` to an echo server in `to` (on
/// `addr:port`) comes back within `within`.
pub fn udp(c: &Cluster, from: &str, to: &str, addr: Ipv4Addr, port: u16, within: Duration) -> bool {
    let echo = UdpEcho::start(c.workload(to).netns(), port).unwrap();
    let ok = udp_probe_until_ok(
        c.workload(from).netns(),
        SocketAddrV4::new(addr, port),
        Duration::from_millis(100),
        within,
    )
    .is_ok();
    echo.stop().unwrap();
    ok
}

/// Polls `f` every 200 ms; panics naming `what` after `timeout`.
pub fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An `egress` or `ingress` (`dir`) MeshPolicy of `app` for its workloads
/// labelled role=`role`, towards/from `peer`'s (app, role), on `ports`
/// (YAML list items), plus `{}` (its own app stays open).
pub fn cross_app_policy(
    name: &str,
    app: &str,
    role: &str,
    dir: &str,
    peer: (&str, &str),
    ports: &str,
) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshPolicy\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  app: {app}\n  selector:\n    matchLabels:\n      role: {role}\n  {dir}:\n    - peers:\n        - app: {}\n          selector:\n            matchLabels:\n              role: {}\n      ports:\n{ports}    - {{}}\n",
        peer.0, peer.1
    )
}

/// Node `i`'s MeshNode spec entry for app `demo/<app>`, if any.
pub fn attachment(c: &Cluster, i: usize, app: &str) -> Option<Value> {
    let n = crate::status::read_meshnode(c.state(), &c.node_name(i))
        .unwrap()
        .unwrap();
    n["spec"]["apps"]
        .as_array()?
        .iter()
        .find(|a| a["app"] == format!("{NS}/{app}"))
        .cloned()
}
