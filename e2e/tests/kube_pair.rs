//! Two Kubernetes clusters on one simulated WAN (`KubeCluster::join_wan`),
//! the ground the federation tests stand on: each cluster has its own etcd
//! and API server, operator, daemons and pods; they share the WAN only, so
//! their nodes reach each other and each operator host reaches the other
//! cluster's API server, and either can be torn down without the other.
//!
//! Needs root, the workspace binaries (`cargo build --workspace`), the
//! control plane's binaries (`scripts/control-plane.sh`) and
//! /usr/lib/cni/{bridge,host-local}. Without them the tests print `SKIPPED`,
//! except under `CI=true`, where they fail naming what is missing.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_e2e::apiserver::binaries::Binaries;
use weft_e2e::cleanup::{find_run_leftovers, is_ours};
use weft_e2e::cni::missing_cni_plugins;
use weft_e2e::kubelet::KubeCluster;
use weft_e2e::netns::{exec_in, ip_in, list_netns, netns_exists};
use weft_e2e::scenario;
use weft_e2e::topology::Sim;
use weft_e2e::traffic::ping;

const NS: &str = "demo";
const WAIT: Duration = Duration::from_secs(90);

fn runnable(test: &str) -> bool {
    let mut missing = missing_cni_plugins();
    if let Err(e) = Binaries::find() {
        missing.push(format!("{e:#}"));
    }
    for b in ["weft-operator", "weft-node-daemon", "weft-cni"] {
        if let Err(e) = weft_e2e::bin(b) {
            missing.push(format!("{e:#}"));
        }
    }
    scenario::require(test, missing, "")
}

/// Weft installed (`config/default`), nodes registered, one operator
/// replica and every node's daemon running, namespace `demo` with
/// `examples/` applied.
fn install(c: &mut KubeCluster) {
    c.apply_kustomization("config/default", &[]).unwrap();
    c.register_nodes().unwrap();
    c.load_workload_specs().unwrap();
    c.start_operator(1).unwrap();
    c.start_daemons().unwrap();
    c.kubectl(&["create", "namespace", NS]).unwrap();
    c.ensure_default_service_account(NS).unwrap();
    c.apply_kustomization("examples", &[]).unwrap();
}

fn names(c: &KubeCluster, kind: &str) -> Vec<String> {
    let list = c.cp().get_json(&[kind]).unwrap();
    let mut v: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn wait_ready(c: &KubeCluster, app: &str) {
    let out = c
        .cp()
        .kubectl_output(
            &[
                "wait",
                "--for=condition=Ready",
                &format!("meshapp/{app}"),
                "-n",
                NS,
                "--timeout=90s",
            ],
            None,
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}: kubectl wait: {}\n{}\n{}",
        c.prefix(),
        String::from_utf8_lossy(&out.stderr),
        c.operator_log_tail(30),
        c.daemon_log_tail(1, 30),
    );
}

/// Bridge ports on the WAN (`n<i>` to nodes, `h<octet>` to hosts).
fn wan_ports(wan: &str) -> Vec<String> {
    let text = ip_in(wan, &["-o", "link"]).unwrap();
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .filter(|n| n != "lo" && n != weft_e2e::topology::WAN_BRIDGE)
        .collect();
    v.sort();
    v
}

fn ours(prefix: &str) -> Vec<String> {
    list_netns()
        .into_iter()
        .filter(|n| is_ours(n, prefix))
        .collect()
}

/// The topology alone (no control plane): a second sim joins the first's
/// WAN with nodes after the first's, each reaches the other, and dropping
/// them in either order removes everything and breaks neither.
#[test]
fn sims_sharing_a_wan_drop_in_either_order() {
    if !scenario::privileged_or_skip("sims_sharing_a_wan_drop_in_either_order") {
        return;
    }
    for first_goes_first in [true, false] {
        let mut a = Sim::new(2).unwrap();
        let mut b = Sim::join(&a, &weft_e2e::unique_prefix(), 1).unwrap();
        let wan = a.wan_netns().to_string();
        assert_eq!(b.wan_netns(), wan);
        assert_eq!(b.node_netns(1), format!("{}-n1", b.prefix()));
        assert_eq!(b.node_wan_addr(1), Ipv4Addr::new(192, 0, 2, 3));
        // Host octets are the WAN's: one host each, whichever sim asks.
        b.add_host("h", 240).unwrap();
        assert!(a.add_host("h", 240).is_err());
        a.add_host("h", 241).unwrap();
        let r = ping(
            a.node_netns(1),
            b.node_wan_addr(1),
            1,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.received, 1, "{}", r.output);
        // Cutting the second sim's node 1 cuts WAN node 3, not the first's node 1.
        b.cut_link(1).unwrap();
        let r = ping(
            a.node_netns(2),
            b.node_wan_addr(1),
            1,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(r.received, 0, "{}", r.output);
        let r = ping(
            a.node_netns(2),
            a.node_wan_addr(1),
            1,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.received, 1, "{}", r.output);
        b.restore_link(1).unwrap();

        let (pa, pb) = (a.prefix().to_string(), b.prefix().to_string());
        let ((gone, gone_prefix), (stays, own_host)) = if first_goes_first {
            ((a, &pa), (b, 240))
        } else {
            ((b, &pb), (a, 241))
        };
        drop(gone);
        assert!(netns_exists(&wan), "the WAN went with a sim still on it");
        let left = ours(gone_prefix);
        assert!(left.iter().all(|n| n == &wan), "{left:?}");
        // The remaining sim's node still reaches its own host over the WAN.
        let r = ping(
            stays.node_netns(1),
            Ipv4Addr::new(192, 0, 2, own_host),
            1,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.received, 1, "{}", r.output);
        drop(stays);
        assert!(!netns_exists(&wan));
        assert!(ours(&pa).is_empty() && ours(&pb).is_empty());
    }
}

#[test]
fn two_clusters_share_one_wan_and_nothing_else() {
    if !runnable("two_clusters_share_one_wan_and_nothing_else") {
        return;
    }
    let t0 = Instant::now();
    let mut a = KubeCluster::new(1).unwrap();
    let mut b = KubeCluster::join_wan(&a, 1).unwrap();
    let (pa, pb) = (a.prefix().to_string(), b.prefix().to_string());
    let wan = a.sim().wan_netns().to_string();
    assert_eq!(b.sim().wan_netns(), wan);
    assert_eq!(a.node_wan_addr(1), Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(b.node_wan_addr(1), Ipv4Addr::new(192, 0, 2, 2));
    assert_eq!(a.control_plane_addr(), Ipv4Addr::new(192, 0, 2, 250));
    assert_eq!(b.control_plane_addr(), Ipv4Addr::new(192, 0, 2, 251));
    println!("two control planes up in {:?}", t0.elapsed());

    // Both installs at once: they share nothing.
    std::thread::scope(|s| {
        s.spawn(|| install(&mut a));
        install(&mut b);
    });
    let pod_a = a.run_pod(NS, "web-a", 1, &[("tier", "web")]).unwrap();
    let pod_b = b.run_pod(NS, "web-b", 1, &[("tier", "web")]).unwrap();
    wait_ready(&a, "web");
    wait_ready(&b, "web");
    for (c, k) in [(&a, pod_a), (&b, pod_b)] {
        let addr = weft_e2e::wait_for(
            &format!("an app address in {}", c.pod(k).netns.name()),
            WAIT,
            Duration::from_millis(100),
            || c.pod(k).app_address(),
        )
        .unwrap();
        assert_eq!(addr.octets()[..2], [10, 100], "{addr}");
    }
    println!("both apps Ready at {:?}", t0.elapsed());

    // Each cluster has its own Node and MeshNode objects, nobody else's.
    for (c, kind) in [
        (&a, "nodes"),
        (&b, "nodes"),
        (&a, "meshnodes"),
        (&b, "meshnodes"),
    ] {
        assert_eq!(names(c, kind), [c.node_name(1)], "{} {kind}", c.prefix());
    }
    let internal_ip = |c: &KubeCluster| -> Value {
        c.cp().get_json(&["node", &c.node_name(1)]).unwrap()["status"]["addresses"][0]["address"]
            .clone()
    };
    assert_eq!(internal_ip(&a), "192.0.2.1");
    assert_eq!(internal_ip(&b), "192.0.2.2");

    // Node to node across the clusters, over the WAN.
    for (from, to) in [(&a, &b), (&b, &a)] {
        let r = ping(
            &from.node_name(1),
            to.node_wan_addr(1),
            3,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.received, 3, "{}", r.output);
    }

    // B's operator host reaches A's API server (TLS to its WAN address, as
    // A's admin: the CA and credentials of A's kubeconfig, A's server URL).
    let kubectl = Binaries::find().unwrap().kubectl;
    let kubeconfig = format!("--kubeconfig={}", a.cp().admin_kubeconfig().display());
    let server = format!("--server={}", a.cp().server_url());
    let op_b = b.operator_netns(1).unwrap().to_string();
    let out = exec_in(
        &op_b,
        &kubectl.to_string_lossy(),
        &[&kubeconfig, &server, "get", "--raw", "/version"],
    )
    .unwrap();
    assert!(
        out.status.success(),
        "kubectl from {op_b} to {}: {}",
        a.cp().server_url(),
        String::from_utf8_lossy(&out.stderr)
    );
    let version: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(version["gitVersion"].is_string(), "{version}");
    println!("checks done at {:?}", t0.elapsed());

    // A (the WAN's maker) goes first: B keeps its WAN, its API server and
    // its node's link; A's ports leave the bridge.
    let warnings = a.teardown();
    assert!(warnings.is_empty(), "teardown of A: {warnings:?}");
    assert!(ours(&pa).iter().all(|n| n == &wan), "{:?}", ours(&pa));
    assert!(netns_exists(&wan), "A's teardown took the WAN B still uses");
    // B's control plane (251), its operator (230 + 1) and its node (WAN node 2).
    let b_ports = ["h231", "h251", "n2"].map(String::from);
    weft_e2e::wait_for(
        "A's ports to leave the WAN",
        WAIT,
        Duration::from_millis(100),
        || Ok((wan_ports(&wan) == b_ports).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", wan_ports(&wan)));
    let r = ping(
        &b.node_name(1),
        b.control_plane_addr(),
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.received, 1, "{}", r.output);
    assert_eq!(names(&b, "nodes"), [b.node_name(1)]);

    let warnings = b.teardown();
    assert!(warnings.is_empty(), "teardown of B: {warnings:?}");
    assert!(!netns_exists(&wan));
    for p in [&pa, &pb] {
        let left = find_run_leftovers(p);
        assert!(left.is_empty(), "{p}: {left}");
    }
    println!("both torn down at {:?}", t0.elapsed());
}
