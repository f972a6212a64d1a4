//! Self-tests of the simulation harness that need root but not the Weft
//! daemons: topology, traffic, capture, link cuts, the userspace WireGuard
//! baselines of the benchmark (wireguard-go, boringtun 0.7),
//! and that nothing is left afterwards.

use std::net::SocketAddrV4;
use std::time::Duration;

use weft_e2e::baseline::{Userspace, UserspacePair, VethPair};
use weft_e2e::capture::{Capture, CaptureConfig};
use weft_e2e::cleanup::{find_leftovers, wireguard_sockets};
use weft_e2e::scenario::{privileged_or_skip, require};
use weft_e2e::topology::{Sim, NODE_WAN_IFACE};
use weft_e2e::traffic::{ping, tcp_transfer_opts, udp_probe_until_ok, TransferOpts, UdpEcho};
use weft_e2e::unique_prefix;

#[test]
fn wan_topology_traffic_capture_and_link_cut() {
    if !privileged_or_skip("wan_topology_traffic_capture_and_link_cut") {
        return;
    }
    let prefix = unique_prefix();
    {
        let sim = Sim::with_prefix(&prefix, 2).unwrap();
        let (n1, n2) = (sim.node_netns(1).to_string(), sim.node_netns(2).to_string());
        let r = ping(&n1, Sim::node_addr(2), 3, Duration::from_secs(3)).unwrap();
        assert!(r.ok && r.received == 3, "{r:?}");
        assert!(r.rtt_avg_ms.is_some());

        // Plain TCP over the WAN: the capture on node 1's bridge port must see the marker.
        let marker = b"WEFT-MARKER-7f3a".to_vec();
        let cap = Capture::start(CaptureConfig {
            netns: sim.wan_netns().into(),
            iface: Sim::wan_port(1),
            udp_ports: 1..=65535,
            marker: Some(marker.clone()),
        })
        .unwrap();
        let t = tcp_transfer_opts(
            &n1,
            &n2,
            Sim::node_addr(2),
            &TransferOpts {
                bytes: 4 << 20,
                port: 18080,
                fill: Some(marker.clone()),
                timeout: Duration::from_secs(20),
            },
        )
        .unwrap();
        assert_eq!(t.bytes, 4 << 20);
        let st = cap.stop().unwrap();
        assert!(st.frames > 100, "{st:?}");
        assert!(
            st.marker_seen(),
            "plaintext marker must be visible on the WAN: {st:?}"
        );

        // UDP echo probe.
        let echo = UdpEcho::start(&n2, 7777).unwrap();
        let d = udp_probe_until_ok(
            &n1,
            SocketAddrV4::new(Sim::node_addr(2), 7777),
            Duration::from_millis(5),
            Duration::from_secs(2),
        )
        .unwrap();
        assert!(d < Duration::from_secs(1));
        assert!(echo.stop().unwrap() >= 1);

        // Link cut and restore.
        sim.cut_link(2).unwrap();
        let r = ping(&n1, Sim::node_addr(2), 1, Duration::from_secs(1)).unwrap();
        assert!(!r.ok, "ping must fail while the link is cut: {r:?}");
        sim.restore_link(2).unwrap();
        weft_e2e::traffic::ping_until_ok(&n1, Sim::node_addr(2), Duration::from_secs(5)).unwrap();
        let _ = NODE_WAN_IFACE;
    }
    let left = find_leftovers(&prefix);
    assert!(left.is_empty(), "left behind: {left}");
}

#[test]
fn wireguard_go_baseline_encrypts() {
    baseline_encrypts(
        "wireguard_go_baseline_encrypts",
        Userspace::WireguardGo,
        18081,
    );
}

#[test]
fn boringtun_baseline_encrypts() {
    baseline_encrypts("boringtun_baseline_encrypts", Userspace::Boringtun07, 18082);
}

/// The benchmark's userspace baseline `kind` carries TCP between its two
/// namespaces, encrypted, and leaves nothing behind.
fn baseline_encrypts(test: &str, kind: Userspace, port: u16) {
    if !require(
        test,
        kind.missing(),
        " (scripts/setup.sh, cargo build --workspace --bins)",
    ) {
        return;
    }
    let prefix = unique_prefix();
    let before = wireguard_sockets();
    let dir = tempfile::tempdir().unwrap();
    {
        let veth = VethPair::new(&prefix).unwrap();
        let r = ping(veth.a.name(), VethPair::ADDR_B, 2, Duration::from_secs(3)).unwrap();
        assert!(r.ok, "{r:?}");

        let wg = UserspacePair::new(kind, &prefix, dir.path()).unwrap();
        weft_e2e::traffic::ping_until_ok(
            wg.a.name(),
            UserspacePair::ADDR_B,
            Duration::from_secs(10),
        )
        .unwrap();
        let marker = format!("WEFT-MARKER-{port}").into_bytes();
        let cap = Capture::start(CaptureConfig {
            netns: wg.a.name().into(),
            iface: "u0".into(),
            udp_ports: 51820..=51820,
            marker: Some(marker.clone()),
        })
        .unwrap();
        let t = tcp_transfer_opts(
            wg.a.name(),
            wg.b.name(),
            UserspacePair::ADDR_B,
            &TransferOpts {
                bytes: 2 << 20,
                port,
                fill: Some(marker),
                timeout: Duration::from_secs(30),
            },
        )
        .unwrap();
        assert_eq!(t.bytes, 2 << 20);
        let st = cap.stop().unwrap();
        assert!(st.wg_data > 100, "{st:?}");
        assert!(
            !st.marker_seen(),
            "marker must not be visible outside the tunnel: {st:?}"
        );
    }
    let left = find_leftovers(&prefix);
    assert!(left.is_empty(), "left behind: {left}");
    assert_eq!(wireguard_sockets(), before, "wireguard sockets left behind");
}
