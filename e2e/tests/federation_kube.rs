//! Federation between two Kubernetes clusters, each with its own real
//! control plane (etcd + kube-apiserver), operator and daemons, their nodes
//! on one simulated WAN. Cluster a's API server is also the hub (a hub may
//! be one of the members): the hub's CRDs, the members' namespaces and
//! accounts (`config/hub`), the MeshHub, and `weft-operator
//! hub-kubernetes` against it. Each member's operator reaches the hub with
//! the kubeconfig in its Secret `weft-system/weft-hub-kubeconfig`, scoped
//! to that member, as a user sets it up (README, "Federation").
//!
//! Needs what `control_plane.rs` needs; prints `SKIPPED` without it, except
//! under `CI=true`, where it fails naming what is missing.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use weft_e2e::apiserver::binaries::Binaries;
use weft_e2e::cni::missing_cni_plugins;
use weft_e2e::kubelet::{repo_path, KubeCluster, SYSTEM_NS};
use weft_e2e::procs::Proc;
use weft_e2e::scenario;
use weft_e2e::traffic::{ping, ping_until_ok, tcp_transfer, udp_probe_until_ok, UdpEcho};

const NS: &str = "demo";
const WAIT: Duration = Duration::from_secs(120);

fn runnable(test: &str) -> bool {
    let mut missing = missing_cni_plugins();
    if weft_e2e::traffic::which("busybox").is_none() {
        missing.push("busybox (nslookup; apt-get install busybox-static)".into());
    }
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

/// A member cluster with Weft installed, its nodes in site `site`.
fn member(c: &KubeCluster, site: &str) {
    c.apply_kustomization("config/default", &[]).unwrap();
    c.register_nodes().unwrap();
    for i in 1..=c.n_nodes() {
        c.kubectl(&[
            "label",
            "node",
            &c.node_name(i),
            &format!("weft.dev/site={site}"),
        ])
        .unwrap();
    }
}

/// The member's own view: itself (Local), the other member (Remote,
/// through the hub), the shared app `web`, and a local-only app `other`.
fn member_manifests(site: &str, other_site: &str) -> String {
    let docs = [
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshSite",
               "metadata": {"name": site}, "spec": {"kind": "Local"}}),
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshSite",
               "metadata": {"name": other_site},
               "spec": {"kind": "Remote", "hub": "hub",
                        "hubAccess": {"kubeconfigSecret": "weft-hub-kubeconfig"}}}),
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshApp",
               "metadata": {"name": "web", "namespace": NS},
               "spec": {"sites": ["cluster-a", "cluster-b"], "addressSpace": "10.100.0.0/16",
                        "selector": {"matchLabels": {"tier": "web"}}}}),
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshApp",
               "metadata": {"name": "other", "namespace": NS},
               "spec": {"sites": [site], "selector": {"matchLabels": {"tier": "other"}}}}),
    ];
    json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string()
}

/// Stores `kubeconfig` as the member's hub Secret (what a user does with
/// the output of `scripts/hub-kubeconfig.sh`).
fn hub_secret(c: &KubeCluster, kubeconfig: &Path) {
    let from = format!("--from-file=kubeconfig={}", kubeconfig.display());
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "weft-hub-kubeconfig",
        "-n",
        SYSTEM_NS,
        &from,
    ])
    .unwrap();
}

fn app_address(c: &KubeCluster, k: usize) -> Ipv4Addr {
    weft_e2e::wait_for(
        &format!("an app address in pod {}", c.pod(k).name),
        WAIT,
        Duration::from_millis(100),
        || c.pod(k).app_address(),
    )
    .unwrap()
}

fn meshapp(c: &KubeCluster, name: &str) -> Value {
    c.cp().get_json(&["meshapp", "-n", NS, name]).unwrap()
}

fn logs(a: &KubeCluster, b: &KubeCluster, hub: &Proc) -> String {
    format!(
        "cluster a: {}\n{}\ncluster b: {}\n{}\nhub log:\n{}",
        a.operator_log_tail(40),
        a.daemon_log_tail(1, 20),
        b.operator_log_tail(40),
        b.daemon_log_tail(1, 20),
        hub.log_tail(40)
    )
}

/// Two clusters, same node names, one app across both through a hub on a
/// real API server: pods talk across clusters directly node to node (TCP,
/// UDP, ping), `kubectl get meshapps` counts the remote node, the MeshHub
/// reports both members syncing, an app of only one cluster stays isolated
/// from it, and the hub holds no private key.
#[test]
fn two_clusters_share_an_app_through_a_hub_on_a_real_api_server() {
    let test = "two_clusters_share_an_app_through_a_hub_on_a_real_api_server";
    if !runnable(test) {
        return;
    }
    let mut a = KubeCluster::new(1).unwrap();
    let mut b = KubeCluster::join_wan(&a, 1).unwrap();
    member(&a, "cluster-a");
    member(&b, "cluster-b");

    // The hub, on a's API server: its CRDs and accounts, one namespace and
    // account per member, the MeshHub, and the hub operator.
    a.apply_kustomization("config/hub", &[]).unwrap();
    a.apply_kustomization("config/hub/member-cluster-a", &[])
        .unwrap();
    let member_b = std::fs::read_to_string(repo_path("config/hub/member-cluster-a/member.yaml"))
        .unwrap()
        .replace("cluster-a", "cluster-b");
    a.cp()
        .kubectl_stdin(&["apply", "-f", "-"], &member_b)
        .unwrap();
    let hub = json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshHub",
        "metadata": {"name": "hub"},
        "spec": {"members": [{"site": "cluster-a", "exports": ["demo/web"]},
                             {"site": "cluster-b", "exports": ["demo/web"]}],
                 "staleAfterSeconds": 30, "pruneAfterSeconds": 300}});
    a.apply_json(&hub).unwrap();
    let hub_op = a
        .local_kubeconfig_as("weft-hub", "weft-hub-operator", None)
        .unwrap();
    let hub_proc = Proc::spawn(
        "weft-hub",
        &weft_e2e::bin("weft-operator").unwrap(),
        &["hub-kubernetes".to_string(), "--name".into(), "hub".into()],
        &[(
            "KUBECONFIG".to_string(),
            hub_op.to_string_lossy().into_owned(),
        )],
        Some(a.cp().netns()),
        &a.run_dir().join("logs/weft-hub.log"),
    )
    .unwrap();

    // Each member's kubeconfig for the hub (its own account, dialing the
    // hub over the WAN), stored as its Secret.
    for (c, site) in [(&a, "cluster-a"), (&b, "cluster-b")] {
        let path = a.run_dir().join(format!("hub-{site}.kubeconfig"));
        a.cp()
            .service_account_kubeconfig(
                &format!("weft-hub-{site}"),
                "weft-member",
                None,
                &a.cp().server_url(),
                &path,
            )
            .unwrap();
        hub_secret(c, &path);
    }

    for (c, site, other) in [
        (&mut a, "cluster-a", "cluster-b"),
        (&mut b, "cluster-b", "cluster-a"),
    ] {
        c.kubectl(&["create", "namespace", NS]).unwrap();
        c.ensure_default_service_account(NS).unwrap();
        c.cp()
            .kubectl_stdin(&["apply", "-f", "-"], &member_manifests(site, other))
            .unwrap();
        c.load_workload_specs().unwrap();
        c.start_operator(1).unwrap();
        c.start_daemons().unwrap();
    }
    let pa = a.run_pod(NS, "web-a", 1, &[("tier", "web")]).unwrap();
    let pb = b.run_pod(NS, "web-b", 1, &[("tier", "web")]).unwrap();
    let po = b.run_pod(NS, "other-b", 1, &[("tier", "other")]).unwrap();
    let addr_a = app_address(&a, pa);
    let addr_b = app_address(&b, pb);
    let addr_o = app_address(&b, po);
    println!("web-a {addr_a}, web-b {addr_b}, other-b {addr_o}");
    assert!(
        addr_a.octets()[..2] == [10, 100] && addr_b.octets()[..2] == [10, 100],
        "one address space: {addr_a} {addr_b}"
    );

    // Across clusters over the app network: ping, UDP, TCP.
    let ns_a = a.pod(pa).netns.name().to_string();
    let ns_b = b.pod(pb).netns.name().to_string();
    if let Err(e) = ping_until_ok(&ns_a, addr_b, WAIT) {
        panic!(
            "web-a cannot reach web-b: {e:#}\n{}",
            logs(&a, &b, &hub_proc)
        );
    }
    ping_until_ok(&ns_b, addr_a, WAIT).unwrap();
    let r = ping(&ns_a, addr_b, 5, Duration::from_secs(10)).unwrap();
    assert_eq!(r.received, 5, "{}", r.output);
    let echo = UdpEcho::start(&ns_b, 17000).unwrap();
    udp_probe_until_ok(
        &ns_a,
        SocketAddrV4::new(addr_b, 17000),
        Duration::from_millis(20),
        Duration::from_secs(20),
    )
    .unwrap();
    echo.stop().unwrap();
    let t = tcp_transfer(&ns_a, &ns_b, addr_b, 4 << 20).unwrap();
    println!("TCP a -> b across clusters: {t:?}");

    // Names across clusters, at the fixed resolver address a pod's
    // dnsConfig names: each pod finds the other cluster's pod by name.
    let resolver = Ipv4Addr::new(169, 254, 1, 53);
    for (from, name, want) in [
        (&ns_a, "web-b.web.demo.weft.", addr_b),
        (&ns_b, "web-a.web.demo.weft.", addr_a),
    ] {
        weft_e2e::wait_for(
            &format!("{name} to resolve from the other cluster"),
            WAIT,
            Duration::from_millis(300),
            || Ok((weft_e2e::netns::nslookup(from, name, resolver)? == [want]).then_some(())),
        )
        .unwrap();
    }

    // One hop: a's node peers with b's node at b's own WAN address.
    let spec = a.cp().get_json(&["meshnode", &a.node_name(1)]).unwrap();
    let peers = spec["spec"]["apps"][0]["peers"].clone();
    let b_endpoint = format!("{}:", b.node_wan_addr(1));
    assert!(
        peers.as_array().unwrap().iter().any(|p| p["endpoint"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&b_endpoint)),
        "a's node has no direct peer at {b_endpoint}: {peers}"
    );

    // Isolation: an app of cluster b alone cannot reach web in cluster a.
    let ns_o = b.pod(po).netns.name().to_string();
    let r = ping(&ns_o, addr_a, 3, Duration::from_secs(6)).unwrap();
    assert_eq!(r.received, 0, "other-b reached web-a: {}", r.output);

    // What users read: every node of every site in `kubectl get meshapps`
    // on both sides, and both members syncing on the hub.
    weft_e2e::wait_for(
        "web to count both clusters' nodes on both sides",
        WAIT,
        Duration::from_millis(200),
        || {
            let ok = [&a, &b].iter().all(|c| {
                let st = &meshapp(c, "web")["status"];
                st["nodes"] == "1/1 +1 remote" && st["peers"] == "1/1"
            });
            Ok(ok.then_some(()))
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\na: {}\nb: {}\n{}",
            meshapp(&a, "web")["status"],
            meshapp(&b, "web")["status"],
            logs(&a, &b, &hub_proc)
        )
    });
    for c in [&a, &b] {
        println!(
            "{}",
            c.kubectl(&["get", "meshapps", "-n", NS, "-o", "wide"])
                .unwrap()
        );
        println!("{}", c.kubectl(&["get", "meshsites"]).unwrap());
    }
    weft_e2e::wait_for(
        "both members syncing on the hub",
        WAIT,
        Duration::from_millis(200),
        || {
            let h = a.cp().get_json(&["meshhub", "hub"])?;
            let states: Vec<String> = h["status"]["memberStatus"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| format!("{}={}", m["site"], m["state"]))
                .collect();
            Ok(
                (states.len() == 2 && states.iter().all(|s| s.ends_with("=\"Syncing\"")))
                    .then_some(()),
            )
        },
    )
    .unwrap();
    weft_e2e::wait_for(
        "the MeshHub's table to read MEMBERS 2, READY True, both syncing",
        WAIT,
        Duration::from_millis(200),
        || {
            let table = a.kubectl(&["get", "meshhub", "hub"])?;
            let row: Vec<String> = table
                .lines()
                .nth(1)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let want = ["2", "True", "cluster-a,cluster-b"];
            let ok = row.len() > 4 && row[1..4].iter().zip(want).all(|(a, b)| a == b);
            Ok(ok.then(|| println!("{table}")))
        },
    )
    .unwrap();

    // The hub out of b's reach (its rights to read the hub revoked): b keeps
    // what the hub said last, traffic goes on, and b's Remote site says why;
    // with the rights back, b syncs again.
    a.kubectl(&["delete", "clusterrolebinding", "weft-hub-member-cluster-b"])
        .unwrap();
    let site_ready = |c: &KubeCluster, site: &str| -> anyhow::Result<(String, String, String)> {
        let s = c.cp().get_json(&["meshsite", site])?;
        let ready = s["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or_default();
        Ok((
            ready["status"].as_str().unwrap_or_default().into(),
            ready["reason"].as_str().unwrap_or_default().into(),
            ready["message"].as_str().unwrap_or_default().into(),
        ))
    };
    let (_, _, msg) = weft_e2e::wait_for(
        "b's Remote site to say HubUnreachable",
        WAIT,
        Duration::from_millis(200),
        || Ok(site_ready(&b, "cluster-a")?).map(|r| (r.1 == "HubUnreachable").then_some(r)),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&a, &b, &hub_proc)));
    println!("b, hub unreachable: {msg}");
    assert!(
        msg.contains("forbidden") || msg.contains("Forbidden"),
        "{msg}"
    );
    let r = ping(&ns_b, addr_a, 5, Duration::from_secs(10)).unwrap();
    assert_eq!(
        r.received, 5,
        "traffic stops with the hub away: {}",
        r.output
    );
    assert_eq!(
        meshapp(&b, "web")["status"]["nodes"],
        "1/1 +1 remote",
        "b keeps a's node"
    );
    a.cp()
        .kubectl_stdin(&["apply", "-f", "-"], &member_b)
        .unwrap();
    weft_e2e::wait_for(
        "b's Remote site to be Ready again",
        WAIT,
        Duration::from_millis(200),
        || Ok(site_ready(&b, "cluster-a")?).map(|r| (r.0 == "True").then_some(())),
    )
    .unwrap();

    // The hub holds public data only: no node's private key in any record.
    let records = a
        .kubectl(&[
            "get",
            "meshsiterecords,meshhuballocations,leases",
            "-A",
            "-o",
            "json",
        ])
        .unwrap();
    assert!(records.contains("cluster-b"), "b's record is on the hub");
    for c in [&a, &b] {
        for i in 1..=c.n_nodes() {
            let dir = c.node_root(i).join("var/lib/weft/keys");
            for key in weft_e2e::private_key_files(&dir) {
                if key.len() == 32 {
                    use base64::Engine;
                    let text = base64::engine::general_purpose::STANDARD.encode(&key);
                    assert!(!records.contains(&text), "a private key is on the hub");
                }
            }
        }
    }

    drop(hub_proc);
    let wb = b.teardown();
    let wa = a.teardown();
    assert!(wb.is_empty() && wa.is_empty(), "teardown: {wb:?} {wa:?}");
}
