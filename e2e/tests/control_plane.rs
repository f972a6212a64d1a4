//! Weft's Kubernetes mode against a real control plane: etcd and
//! kube-apiserver started by the test (see `weft_e2e::apiserver`), nodes
//! simulated by `weft_e2e::kubelet` (network namespaces on a simulated WAN,
//! Node objects, pods through the API and the CNI chain run as a runtime
//! runs it), the operator and daemons as processes with the arguments of
//! `config/`'s Deployment and DaemonSet and their ServiceAccounts' tokens.
//!
//! The binaries come from `WEFT_KUBE_APISERVER` / `WEFT_ETCD` when set, else
//! from `scripts/control-plane.sh` (Debian's kubernetes 1.20.2, built once and
//! cached). Checks the server is too old for (CEL rules and admission
//! policies need 1.30) print `NOT CHECKED on <version>: ...`; point
//! `WEFT_KUBE_APISERVER` at a newer kube-apiserver and they run.
//!
//! Needs root, the workspace binaries (`cargo build --workspace`) and
//! /usr/lib/cni/{bridge,host-local}. Without them the tests print `SKIPPED`,
//! except under `CI=true`, where they fail naming what is missing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use weft_e2e::apiserver::binaries::Binaries;
use weft_e2e::cni::missing_cni_plugins;
use weft_e2e::kubelet::{repo_path, KubeCluster, SYSTEM_NS};
use weft_e2e::netns::list_netns;
use weft_e2e::scenario;
use weft_e2e::traffic::{ping, ping_until_ok};

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

/// Whether the server serves CEL validation rules and admission policies.
fn has_cel(c: &KubeCluster) -> bool {
    c.cp().version() >= (1, 30)
}

fn not_checked(c: &KubeCluster, what: &str) {
    println!("NOT CHECKED on {}: {what}", c.cp().version_text());
}

/// `kubectl apply -k DIR` (see `KubeCluster::apply_kustomization`).
fn apply_kustomization(c: &KubeCluster, dir: &str) -> String {
    apply_kustomization_with(c, dir, &[])
}

fn apply_kustomization_with(c: &KubeCluster, dir: &str, extra: &[&str]) -> String {
    c.apply_kustomization(dir, extra).unwrap()
}

/// The cluster with Weft installed (`config/default`), nodes registered,
/// the operator (`operators` replicas) and every node's daemon running.
fn installed(nodes: usize, operators: usize) -> KubeCluster {
    let mut c = KubeCluster::new(nodes).unwrap();
    apply_kustomization(&c, "config/default");
    c.register_nodes().unwrap();
    c.load_workload_specs().unwrap();
    for k in 1..=operators {
        c.start_operator(k).unwrap();
    }
    c.start_daemons().unwrap();
    c
}

/// Namespace `demo` and `kubectl apply -k examples/` (server-side as a
/// GitOps tool with server-side apply does it, when `server_side`).
fn with_examples(c: &KubeCluster, server_side: bool) {
    c.kubectl(&["create", "namespace", NS]).unwrap();
    c.ensure_default_service_account(NS).unwrap();
    let extra: &[&str] = if server_side {
        &["--server-side", "--field-manager=gitops"]
    } else {
        &[]
    };
    apply_kustomization_with(c, "examples", extra);
}

fn meshnodes(c: &KubeCluster) -> BTreeMap<String, Value> {
    c.cp().get_json(&["meshnodes"]).unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                n.clone(),
            )
        })
        .collect()
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
        "kubectl wait: {}\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.operator_log_tail(30),
        c.daemon_log_tail(1, 30),
        c.daemon_log_tail(2, 30),
    );
}

/// The app address of pod `k`, waiting for the attachment.
fn app_address(c: &KubeCluster, k: usize) -> Ipv4Addr {
    weft_e2e::wait_for(
        &format!("an app address in pod {}", c.pod(k).name),
        WAIT,
        Duration::from_millis(100),
        || c.pod(k).app_address(),
    )
    .unwrap()
}

/// What node `i`'s MeshNode status reports for pod `name`: (app, address).
fn reported(c: &KubeCluster, i: usize, name: &str) -> Option<(String, String)> {
    let nodes = meshnodes(c);
    let n = nodes.get(&c.node_name(i))?;
    n["status"]["workloads"].as_array()?.iter().find_map(|w| {
        (w["namespace"] == NS && w["name"] == name).then(|| {
            (
                w["app"].as_str().unwrap_or_default().to_string(),
                w["address"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// A column of `kubectl get` table output, by header, for the row whose
/// NAME is `name` (cells are cut at the header's character positions, as
/// kubectl aligns them, so empty cells stay empty).
fn column(table: &str, name: &str, header: &str) -> String {
    let mut lines = table.lines();
    let head = lines.next().unwrap_or_default();
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut prev_space = true;
    for (i, ch) in head.char_indices() {
        if prev_space && !ch.is_whitespace() {
            let word = head[i..].split_whitespace().next().unwrap_or_default();
            starts.push((i, word));
        }
        prev_space = ch.is_whitespace();
    }
    let k = starts
        .iter()
        .position(|(_, h)| *h == header)
        .unwrap_or_else(|| panic!("no column {header} in {head}"));
    let from = starts[k].0;
    let to = starts.get(k + 1).map(|(p, _)| *p);
    let row = lines
        .find(|l| l.split_whitespace().any(|w| w == name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"));
    let end = to.unwrap_or(row.len()).min(row.len());
    row.get(from.min(end)..end)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Every private key under the nodes' data directories, base64 and hex.
fn private_keys(c: &KubeCluster) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 1..=c.n_nodes() {
        let dir = c.node_root(i).join("var/lib/weft/keys");
        for b in weft_e2e::private_key_files(&dir) {
            if b.len() == 32 {
                keys.push(base64::engine::general_purpose::STANDARD.encode(&b));
                keys.push(b.iter().map(|x| format!("{x:02x}")).collect());
            }
        }
    }
    keys
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn apps_go_ready_and_pods_on_two_nodes_talk_over_the_app_network() {
    if !runnable("apps_go_ready_and_pods_on_two_nodes_talk_over_the_app_network") {
        return;
    }
    let mut c = installed(2, 1);
    with_examples(&c, true);
    let p1 = c.run_pod(NS, "web-1", 1, &[("tier", "web")]).unwrap();
    let p2 = c.run_pod(NS, "web-2", 2, &[("tier", "web")]).unwrap();
    // A pod of no app starts untouched: its chain succeeds and it gets no weft0.
    let plain = c.run_pod(NS, "plain-1", 1, &[("tier", "batch")]).unwrap();
    wait_ready(&c, "web");

    // Printer columns with real values, and -o wide adds its own.
    let table = c.kubectl(&["get", "meshapps", "-n", NS]).unwrap();
    println!("{table}");
    assert_eq!(column(&table, "web", "READY"), "True", "{table}");
    assert_eq!(column(&table, "web", "NODES"), "2/2", "{table}");
    assert_eq!(column(&table, "web", "CIDR"), "10.100.0.0/16", "{table}");
    assert_eq!(column(&table, "db", "READY"), "False", "{table}");
    let wide = c
        .kubectl(&["get", "meshapps", "-n", NS, "-o", "wide"])
        .unwrap();
    println!("{wide}");
    assert!(column(&wide, "web", "SITES").contains("local"), "{wide}");
    assert_eq!(column(&wide, "web", "REASON"), "Ready", "{wide}");
    assert_eq!(column(&wide, "db", "REASON"), "NoWorkloads", "{wide}");

    // Pods on two nodes reach each other over the app network, and their
    // nodes report the addresses they really carry.
    let a1 = app_address(&c, p1);
    let a2 = app_address(&c, p2);
    for (i, name, a) in [(1, "web-1", a1), (2, "web-2", a2)] {
        assert!(
            a.octets()[..2] == [10, 100],
            "{name}: {a} outside 10.100.0.0/16"
        );
        weft_e2e::wait_for(
            &format!("node {i} to report {name}"),
            WAIT,
            Duration::from_millis(200),
            || {
                Ok(reported(&c, i, name)
                    .filter(|(app, addr)| {
                        app == "demo/web" && addr.split('/').next() == Some(&a.to_string())
                    })
                    .map(|_| ()))
            },
        )
        .unwrap();
    }
    let ns1 = c.pod(p1).netns.name().to_string();
    let ns2 = c.pod(p2).netns.name().to_string();
    ping_until_ok(&ns1, a2, WAIT).unwrap();
    ping_until_ok(&ns2, a1, WAIT).unwrap();
    let r = ping(&ns1, a2, 5, Duration::from_secs(10)).unwrap();
    assert_eq!(r.received, 5, "{}", r.output);
    let links = c.pod(plain).links().unwrap();
    assert!(links.contains(&"eth0".to_string()), "{links:?}");
    assert!(!links.contains(&"weft0".to_string()), "{links:?}");
    assert!(reported(&c, 1, "plain-1").is_some_and(|(app, _)| app.is_empty()));

    // No GitOps drift: the server-side diff of examples/ is empty once the
    // operator has reconciled (status and finalizers are not the user's).
    let diff = c
        .cp()
        .kubectl_output(
            &[
                "diff",
                "--server-side",
                "--field-manager=gitops",
                "-k",
                &repo_path("examples"),
            ],
            None,
        )
        .unwrap();
    assert_eq!(
        diff.status.code(),
        Some(0),
        "kubectl diff --server-side -k examples/:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );

    // No private key in any API object or log.
    let keys = private_keys(&c);
    assert!(
        keys.len() >= 4,
        "each node has a key for web: {}",
        keys.len() / 2
    );
    let objects = c
        .kubectl(&[
            "get",
            "meshapps,meshpolicies,meshsites,meshnodes,events,leases",
            "-A",
            "-o",
            "json",
        ])
        .unwrap();
    let mut files = Vec::new();
    files_under(&c.run_dir().join("logs"), &mut files);
    files.push(c.cp().apiserver_log());
    for k in &keys {
        assert!(
            !objects.contains(k.as_str()),
            "a private key is in an API object"
        );
        for f in &files {
            let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
            assert!(
                !text.contains(k.as_str()),
                "a private key is in {}",
                f.display()
            );
        }
    }

    // A MeshApp deleted is cleaned from every node before its finalizer goes.
    let app_netns = |c: &KubeCluster| -> Vec<String> {
        list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&format!("weft-{}-", c.prefix())))
            .collect()
    };
    assert_eq!(app_netns(&c).len(), 2, "{:?}", app_netns(&c));
    c.kubectl(&["delete", "meshapp", "-n", NS, "web", "--wait=false"])
        .unwrap();
    weft_e2e::wait_for(
        "MeshApp demo/web to be gone",
        WAIT,
        Duration::from_millis(50),
        || {
            let out = c
                .cp()
                .kubectl_output(&["get", "meshapp", "-n", NS, "web", "-o", "name"], None)?;
            Ok((!out.status.success()).then_some(()))
        },
    )
    .unwrap();
    assert_eq!(
        app_netns(&c),
        Vec::<String>::new(),
        "app namespaces left when the finalizer went"
    );
    for (name, n) in meshnodes(&c) {
        assert!(
            !n["spec"].to_string().contains("demo/web"),
            "MeshNode {name} still lists demo/web: {}",
            n["spec"]
        );
    }
    // The pod's end of its veth goes with the app namespace, which the
    // kernel tears down asynchronously after the unmount.
    let detached = Instant::now();
    weft_e2e::wait_for(
        "web-1 detached",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || Ok(c.pod(p1).app_address()?.is_none().then_some(())),
    )
    .unwrap();
    println!(
        "web-1 detached {:?} after its MeshApp was gone",
        detached.elapsed()
    );
    // Every write the operator sent was accepted (the fake API server never
    // refused what a real one does).
    let log = c.operator_log_tail(100_000);
    assert!(
        !log.contains("write failed") && !log.contains("is invalid"),
        "the API server refused a write:\n{log}"
    );

    let w = c.teardown();
    assert!(w.is_empty(), "teardown: {w:?}");
}

/// `kubectl auth can-i ARGS` as the holder of `kubeconfig`.
fn can_i(c: &KubeCluster, kubeconfig: &Path, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let out = c.cp().kubectl_with(kubeconfig, &all, None).unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Runs `kubectl ARGS` as the holder of `kubeconfig` with `stdin`; returns
/// (success, stderr).
fn kubectl_as(
    c: &KubeCluster,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String) {
    let out = c.cp().kubectl_with(kubeconfig, args, stdin).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn edge_meshnode(name: &str, site: &str, apps: Value) -> String {
    json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshNode",
        "metadata": {"name": name, "labels": {"weft.dev/site": site}},
        "spec": {"site": site, "apps": apps},
    })
    .to_string()
}

#[test]
fn rbac_holds_every_account_to_its_own_objects() {
    if !runnable("rbac_holds_every_account_to_its_own_objects") {
        return;
    }
    let c = installed(2, 1);
    // The examples as a user applies them (client-side apply).
    with_examples(&c, false);
    weft_e2e::wait_for(
        "a MeshNode per node",
        WAIT,
        Duration::from_millis(200),
        || {
            let n = meshnodes(&c);
            Ok((1..=2)
                .all(|i| n.contains_key(&c.node_name(i)))
                .then_some(()))
        },
    )
    .unwrap();
    let (n1, n2) = (c.node_name(1), c.node_name(2));

    // The daemon: its node's MeshNode status, pods and apps read-only, no Secrets.
    let daemon_pod = format!("weft-node-daemon-{n1}");
    let daemon = c
        .local_kubeconfig_as(SYSTEM_NS, "weft-node-daemon", Some(&daemon_pod))
        .unwrap();
    assert!(can_i(
        &c,
        &daemon,
        &["patch", "meshnodes", "--subresource=status"]
    ));
    assert!(can_i(&c, &daemon, &["watch", "pods", "-A"]));
    for denied in [
        vec!["get", "secrets", "-A"],
        vec!["list", "secrets", "-n", SYSTEM_NS],
        vec!["create", "meshnodes"],
        vec!["patch", "meshnodes"],
        vec!["delete", "meshnodes"],
        vec!["patch", "meshapps", "-n", NS],
        vec!["patch", "meshapps", "-n", NS, "--subresource=status"],
        vec!["create", "pods", "-n", NS],
    ] {
        assert!(
            !can_i(&c, &daemon, &denied),
            "the node daemon may {denied:?}"
        );
    }
    let (ok, err) = kubectl_as(&c, &daemon, &["get", "secrets", "-n", SYSTEM_NS], None);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    let (ok, err) = kubectl_as(
        &c,
        &daemon,
        &[
            "patch",
            "meshnode",
            &n2,
            "--type=merge",
            "-p",
            r#"{"spec":{"apps":[]}}"#,
        ],
        None,
    );
    assert!(
        !ok && err.contains("Forbidden"),
        "a daemon wrote a MeshNode spec: {err}"
    );
    // Another node's status: only the admission policy (1.30+, node-name
    // claims in tokens) can tell the nodes apart.
    let other_status = [
        "patch",
        "meshnode",
        n2.as_str(),
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"heartbeat":"2000-01-01T00:00:00Z"}}"#,
    ];
    if has_cel(&c) {
        let (ok, err) = kubectl_as(&c, &daemon, &other_status, None);
        assert!(!ok, "the daemon of {n1} wrote the status of {n2}");
        assert!(
            err.contains("may only write the status of its own MeshNode"),
            "{err}"
        );
    } else {
        not_checked(
            &c,
            "a daemon writing another node's MeshNode status is refused (admission policy, 1.30+)",
        );
    }

    // The operator: one Secret by name (its hub kubeconfig), no deletes,
    // MeshApps only through their finalizer patch.
    let operator = c
        .local_kubeconfig_as(SYSTEM_NS, "weft-operator", Some("weft-operator-1"))
        .unwrap();
    assert!(can_i(
        &c,
        &operator,
        &["get", "secrets/weft-hub-kubeconfig", "-n", SYSTEM_NS]
    ));
    assert!(can_i(&c, &operator, &["patch", "meshnodes"]));
    assert!(can_i(
        &c,
        &operator,
        &["patch", "meshapps", "-n", NS, "--subresource=status"]
    ));
    for denied in [
        vec!["get", "secrets", "-A"],
        vec!["list", "secrets", "-n", SYSTEM_NS],
        vec!["get", "secrets/other", "-n", SYSTEM_NS],
        vec!["delete", "meshnodes"],
        vec!["delete", "meshapps", "-n", NS],
        vec!["update", "meshapps", "-n", NS],
        vec!["create", "meshapps", "-n", NS],
        vec!["patch", "nodes"],
        vec!["patch", "pods", "-n", NS],
    ] {
        assert!(
            !can_i(&c, &operator, &denied),
            "the operator may {denied:?}"
        );
    }

    // An edge host (config/edge, kubeconfig from scripts/edge-kubeconfig.sh):
    // its own MeshNode only.
    apply_kustomization(&c, "config/edge");
    let admin = c.cp().admin_kubeconfig().to_path_buf();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", c.cp().netns(), "bash"])
        .arg(repo_path("scripts/edge-kubeconfig.sh"))
        .arg("edge-1")
        .env("KUBECONFIG", &admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edge = c.run_dir().join("edge-1.kubeconfig");
    std::fs::write(&edge, &out.stdout).unwrap();
    let (ok, err) = kubectl_as(
        &c,
        &edge,
        &["create", "-f", "-"],
        Some(&edge_meshnode("edge-1", "edge", json!([]))),
    );
    assert!(ok, "edge-1 registers itself: {err}");
    let (ok, err) = kubectl_as(&c, &edge, &["get", "meshnode", &n1], None);
    assert!(!ok && err.contains("Forbidden"), "{err}");
    let (ok, err) = kubectl_as(&c, &edge, &["get", "meshnodes"], None);
    assert!(
        !ok && err.contains("Forbidden"),
        "edge-1 listed every MeshNode: {err}"
    );
    let (ok, err) = kubectl_as(
        &c,
        &edge,
        &[
            "patch",
            "meshnode",
            &n1,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{}}"#,
        ],
        None,
    );
    assert!(!ok && err.contains("Forbidden"), "{err}");
    assert!(!can_i(&c, &edge, &["get", "secrets", "-A"]));
    if has_cel(&c) {
        // The admission policy's own words, never a raw CEL error.
        for (doc, words) in [
            (
                edge_meshnode("edge-2", "edge", json!([])),
                "may only register and write its own MeshNode, not edge-2",
            ),
            (
                edge_meshnode("edge-1", "local", json!([])),
                "must name the site edge",
            ),
        ] {
            let (ok, err) = kubectl_as(
                &c,
                &edge,
                &["apply", "--server-side", "-f", "-"],
                Some(&doc),
            );
            assert!(!ok, "edge-1 was allowed: {doc}");
            assert!(err.contains(words) && !err.contains("no such key"), "{err}");
        }
        let (ok, err) = kubectl_as(
            &c,
            &edge,
            &[
                "patch",
                "meshnode",
                "edge-1",
                "--type=merge",
                "-p",
                r#"{"spec":{"apps":[{"app":"demo/web","id":"x"}]}}"#,
            ],
            None,
        );
        assert!(!ok, "edge-1 set spec.apps");
        assert!(
            err.contains("may set only spec.site") && !err.contains("no such key"),
            "{err}"
        );
    } else {
        not_checked(
            &c,
            "config/edge's admission policy (an edge host registering another name, claiming a Kubernetes site or setting spec.apps; 1.30+)",
        );
    }
    drop(c);
}

fn lease_holder(c: &KubeCluster) -> Option<String> {
    c.kubectl(&[
        "get",
        "lease",
        "-n",
        SYSTEM_NS,
        "weft-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
    .ok()
    .map(|s| s.trim().to_string())
    .filter(|s| !s.is_empty())
}

/// name → (generation, spec) of every MeshNode.
fn meshnode_specs(c: &KubeCluster) -> BTreeMap<String, (i64, Value)> {
    meshnodes(c)
        .into_iter()
        .map(|(k, n)| {
            (
                k,
                (
                    n["metadata"]["generation"].as_i64().unwrap_or(0),
                    n["spec"].clone(),
                ),
            )
        })
        .collect()
}

#[test]
fn leader_failover_changes_no_meshnode_spec() {
    if !runnable("leader_failover_changes_no_meshnode_spec") {
        return;
    }
    let mut c = installed(2, 2);
    with_examples(&c, false);
    let p1 = c.run_pod(NS, "web-1", 1, &[("tier", "web")]).unwrap();
    let p2 = c.run_pod(NS, "web-2", 2, &[("tier", "web")]).unwrap();
    wait_ready(&c, "web");
    let a2 = app_address(&c, p2);
    let leader = weft_e2e::wait_for("a leader", WAIT, Duration::from_millis(200), || {
        Ok(lease_holder(&c))
    })
    .unwrap();
    let k: usize = leader
        .strip_prefix("weft-operator-")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("leader {leader}"));
    let before = meshnode_specs(&c);
    assert_eq!(before.len(), 2, "{before:?}");

    // The leader crashes; the other replica takes the Lease over once it expires.
    c.operator(k).unwrap().kill_hard();
    let t = Instant::now();
    let other = format!("weft-operator-{}", 3 - k);
    weft_e2e::wait_for(
        "the other replica to lead",
        WAIT,
        Duration::from_millis(200),
        || Ok((lease_holder(&c).as_deref() == Some(other.as_str())).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.operator_log_tail(20)));
    println!(
        "failover: {} took the Lease {:?} after the leader was killed",
        other,
        t.elapsed()
    );
    // Several passes of the new leader: it must find everything as it is.
    weft_e2e::sleep(Duration::from_secs(5)).unwrap();
    let after = meshnode_specs(&c);
    assert_eq!(
        before, after,
        "a MeshNode spec changed because of the failover"
    );
    let r = ping(c.pod(p1).netns.name(), a2, 3, Duration::from_secs(10)).unwrap();
    assert_eq!(r.received, 3, "{}", r.output);

    // And it leads: a new pod is planned and attached.
    let p3 = c.run_pod(NS, "web-3", 2, &[("tier", "web")]).unwrap();
    let a3 = app_address(&c, p3);
    ping_until_ok(c.pod(p1).netns.name(), a3, WAIT).unwrap();
    let w = c.teardown();
    assert!(w.is_empty(), "teardown: {w:?}");
}

/// Pids of both daemons and operator replica 1.
fn process_ids(c: &mut KubeCluster) -> Vec<u32> {
    let mut v: Vec<u32> = (1..=2).map(|i| c.daemon(i).unwrap().pid()).collect();
    v.push(c.operator(1).unwrap().pid());
    v
}

#[test]
fn api_server_outage_loses_no_traffic_and_everything_recovers() {
    if !runnable("api_server_outage_loses_no_traffic_and_everything_recovers") {
        return;
    }
    let mut c = installed(2, 1);
    with_examples(&c, false);
    let p1 = c.run_pod(NS, "web-1", 1, &[("tier", "web")]).unwrap();
    let p2 = c.run_pod(NS, "web-2", 2, &[("tier", "web")]).unwrap();
    wait_ready(&c, "web");
    let a2 = app_address(&c, p2);
    ping_until_ok(c.pod(p1).netns.name(), a2, WAIT).unwrap();
    let pids = process_ids(&mut c);

    // Traffic through the outage: 5 pings a second for its whole length.
    let outage = Duration::from_secs(60);
    let from = c.pod(p1).netns.name().to_string();
    let count = (outage.as_secs() as u32 + 20) * 5;
    let pinger = std::thread::spawn(move || {
        ping(
            &from,
            a2,
            count,
            Duration::from_secs(u64::from(count / 5) + 15),
        )
    });
    weft_e2e::sleep(Duration::from_secs(3)).unwrap();
    c.cp_mut().stop_apiserver();
    weft_e2e::sleep(outage).unwrap();
    let t = Instant::now();
    c.cp_mut().start_apiserver().unwrap();
    println!(
        "API server back after {:?} of outage ({:?} to be ready)",
        outage,
        t.elapsed()
    );

    // A pod created right after the server came back is attached by its
    // CNI ADD (which waits up to 25 s for the operator's plan): recovery
    // takes seconds, not a minute of watch backoff.
    let t = Instant::now();
    let p3 = c.run_pod(NS, "web-3", 2, &[("tier", "web")]);
    let p3 = p3.unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{}\n{}",
            c.operator_log_tail(40),
            c.daemon_log_tail(2, 40)
        )
    });
    println!("first pod after the outage attached in {:?}", t.elapsed());
    let a3 = app_address(&c, p3);
    ping_until_ok(c.pod(p1).netns.name(), a3, WAIT).unwrap();

    let r = pinger.join().unwrap().unwrap();
    println!(
        "ping through the outage: {} sent, {} received",
        r.transmitted, r.received
    );
    assert!(r.transmitted >= count - 5, "{}", r.output);
    assert_eq!(
        r.received, r.transmitted,
        "packets lost during the outage: {}",
        r.output
    );

    // Nothing restarted; statuses flow again.
    assert_eq!(pids, process_ids(&mut c), "a process restarted");
    for i in 1..=2 {
        assert!(c.daemon(i).unwrap().is_running());
    }
    weft_e2e::wait_for(
        "node 2 to report web-3",
        WAIT,
        Duration::from_millis(200),
        || {
            Ok(reported(&c, 2, "web-3")
                .filter(|(app, addr)| app == "demo/web" && addr.starts_with(&a3.to_string()))
                .map(|_| ()))
        },
    )
    .unwrap();
    let w = c.teardown();
    assert!(w.is_empty(), "teardown: {w:?}");
}

/// A kube client from a kubeconfig file (dials from the caller's netns).
async fn member_client(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// Each member's node slice in the test's records (inside the block the
/// hub grants it: the one holding a slice a member already uses).
fn slice_of(site: &str) -> &'static str {
    if site == "cluster-a" {
        "10.120.0.0/26"
    } else {
        "10.120.2.0/26"
    }
}

fn site_record(site: &str, namespace: &str) -> String {
    json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshSiteRecord",
        "metadata": {"name": "demo.shop", "namespace": namespace},
        "spec": {
            "site": site, "app": "demo/shop",
            "appSpec": {"addressSpace": "10.120.0.0/16", "explicit": true, "nodePrefixLength": 26},
            "wantBlocks": 1,
            "nodes": [{"name": "n1", "site": site, "slice": slice_of(site), "endpoint": "192.0.2.9:51820",
                       "publicKey": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}],
        },
    })
    .to_string()
}

/// Federation on a real hub API server: each member's account writes
/// records only in its own namespace; it reads the others' and nothing
/// else. Member A trying to overwrite member B's record is refused.
#[test]
fn hub_members_write_only_their_own_records() {
    if !runnable("hub_members_write_only_their_own_records") {
        return;
    }
    let c = KubeCluster::new(1).unwrap();
    apply_kustomization(&c, "config/hub");
    for m in ["config/hub/member-cluster-a", "config/hub/member-cluster-b"] {
        apply_kustomization(&c, m);
    }
    let a = c
        .local_kubeconfig_as("weft-hub-cluster-a", "weft-member", None)
        .unwrap();
    let b = c
        .local_kubeconfig_as("weft-hub-cluster-b", "weft-member", None)
        .unwrap();
    let apply = ["apply", "-f", "-"];
    let (ok, err) = kubectl_as(
        &c,
        &b,
        &apply,
        Some(&site_record("cluster-b", "weft-hub-cluster-b")),
    );
    assert!(ok, "member b writes its own record: {err}");
    let (ok, err) = kubectl_as(
        &c,
        &a,
        &apply,
        Some(&site_record("cluster-a", "weft-hub-cluster-a")),
    );
    assert!(ok, "member a writes its own record: {err}");

    // A overwrites, patches, deletes B's record: refused, and B's stays.
    let (ok, err) = kubectl_as(
        &c,
        &a,
        &apply,
        Some(&site_record("cluster-a", "weft-hub-cluster-b")),
    );
    assert!(
        !ok && err.contains("Forbidden"),
        "a overwrote b's record: {err}"
    );
    let (ok, err) = kubectl_as(
        &c,
        &a,
        &[
            "patch",
            "meshsiterecord",
            "demo.shop",
            "-n",
            "weft-hub-cluster-b",
            "--type=merge",
            "-p",
            r#"{"spec":{"nodes":[]}}"#,
        ],
        None,
    );
    assert!(
        !ok && err.contains("Forbidden"),
        "a patched b's record: {err}"
    );
    let (ok, err) = kubectl_as(
        &c,
        &a,
        &[
            "delete",
            "meshsiterecord",
            "demo.shop",
            "-n",
            "weft-hub-cluster-b",
        ],
        None,
    );
    assert!(
        !ok && err.contains("Forbidden"),
        "a deleted b's record: {err}"
    );
    let out = c
        .cp()
        .kubectl_output(
            &[
                "get",
                "meshsiterecord",
                "demo.shop",
                "-n",
                "weft-hub-cluster-b",
                "-o",
                "json",
            ],
            None,
        )
        .unwrap();
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["spec"]["site"], "cluster-b");
    assert_eq!(rec["spec"]["nodes"][0]["name"], "n1");

    // A reads B's record (what its peers export), and nothing else.
    let (ok, err) = kubectl_as(&c, &a, &["get", "meshsiterecords", "-A"], None);
    assert!(ok, "a lists every member's records: {err}");
    assert!(can_i(
        &c,
        &a,
        &["watch", "meshhuballocations", "-n", "weft-hub"]
    ));
    for denied in [
        vec!["create", "meshsiterecords", "-n", "weft-hub-cluster-b"],
        vec!["update", "meshsiterecords", "-n", "weft-hub-cluster-b"],
        vec!["delete", "meshsiterecords", "-n", "weft-hub-cluster-b"],
        vec!["create", "meshhuballocations", "-n", "weft-hub"],
        vec!["patch", "meshhubs"],
        vec!["get", "secrets", "-A"],
        vec!["get", "secrets", "-n", "weft-hub-cluster-a"],
        vec!["update", "leases/weft-member", "-n", "weft-hub-cluster-b"],
        vec!["get", "leases/kube-controller-manager", "-n", "kube-system"],
    ] {
        assert!(!can_i(&c, &a, &denied), "member a may {denied:?}");
    }
    assert!(can_i(
        &c,
        &a,
        &["get", "leases/weft-member", "-n", "weft-hub-cluster-b"]
    ));
    let hub_op = c
        .local_kubeconfig_as("weft-hub", "weft-hub-operator", None)
        .unwrap();
    assert!(can_i(
        &c,
        &hub_op,
        &["create", "meshhuballocations", "-n", "weft-hub"]
    ));
    assert!(!can_i(
        &c,
        &hub_op,
        &["create", "meshsiterecords", "-n", "weft-hub-cluster-a"]
    ));
    assert!(!can_i(&c, &hub_op, &["get", "secrets", "-A"]));

    // The hub on this API server: members beat (their Lease), the hub
    // allocates and reports each member in the MeshHub's status.
    let hub = std::fs::read_to_string(repo_path("examples/federation/hub.yaml")).unwrap();
    c.cp()
        .kubectl_output(&["apply", "-f", "-"], Some(&hub))
        .unwrap();
    // MicroTime: exactly six fractional digits.
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    // Member a through the operator's own transport (records and Lease),
    // member b with kubectl, as any client may.
    let a_path = a.clone();
    weft_e2e::netns::in_netns(c.cp().netns(), move || {
        tokio::runtime::Runtime::new()?.block_on(async move {
            let client = member_client(&a_path).await?;
            let record: weft_api::federation::SiteRecordSpec = serde_json::from_value(
                serde_json::from_str::<Value>(&site_record("cluster-a", "x"))?["spec"].clone(),
            )?;
            let records = BTreeMap::from([("demo/shop".to_string(), &record)]);
            let now = u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second())?;
            let mut api = weft_operator::federation::hubapi::MemberApi::default();
            api.sync(&client, "cluster-a", &records, now, 10).await?;
            // Unchanged: nothing written again (the Lease is not due).
            anyhow::ensure!(
                api.sync(&client, "cluster-a", &records, now + 1, 10)
                    .await?
                    == 0
            );
            anyhow::Ok(())
        })
    })
    .unwrap();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "weft-member", "namespace": "weft-hub-cluster-b"},
        "spec": {"holderIdentity": "cluster-b", "renewTime": now},
    });
    let (ok, err) = kubectl_as(&c, &b, &apply, Some(&lease.to_string()));
    assert!(ok, "cluster-b beats: {err}");
    // In the control plane's namespace, where the local kubeconfigs dial.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", c.cp().netns()])
        .arg(weft_e2e::bin("weft-operator").unwrap())
        .args(["hub-kubernetes", "--name", "hub", "--once"])
        .env("KUBECONFIG", &hub_op)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weft-operator hub-kubernetes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c
        .cp()
        .kubectl_output(
            &[
                "get",
                "meshhuballocation",
                "demo.shop",
                "-n",
                "weft-hub",
                "-o",
                "json",
            ],
            None,
        )
        .unwrap();
    let alloc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no allocation: {}", String::from_utf8_lossy(&out.stderr)));
    let blocks = alloc["spec"]["blocks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let of = |site: &str| -> Vec<String> {
        blocks
            .iter()
            .filter(|b| b["site"] == site)
            .map(|b| b["cidr"].as_str().unwrap().to_string())
            .collect()
    };
    let (ba, bb) = (of("cluster-a"), of("cluster-b"));
    assert!(
        !ba.is_empty() && !bb.is_empty() && ba.iter().all(|x| !bb.contains(x)),
        "{blocks:?}"
    );
    let out = c
        .cp()
        .kubectl_output(&["get", "meshhub", "hub", "-o", "json"], None)
        .unwrap();
    let hub: Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = hub["status"]["memberStatus"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(members.len(), 2, "{}", hub["status"]);
    for m in &members {
        assert_eq!(m["state"], "Syncing", "{m}");
        assert!(m["lastSync"].is_string(), "{m}");
        assert_eq!(m["records"], 1, "{m}");
    }
    assert_eq!(hub["status"]["members"], 2);

    // What member a imports from the hub: its grant, and b's node.
    let a_path = a.clone();
    let f = weft_e2e::netns::in_netns(c.cp().netns(), move || {
        tokio::runtime::Runtime::new()?.block_on(async move {
            let client = member_client(&a_path).await?;
            let view = weft_operator::federation::hubapi::read_view(&client, "hub").await?;
            let now = u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second())?;
            let app = weft_operator::planner::ObjectKey::new("demo", "shop");
            anyhow::Ok(weft_operator::federation::import::federated(
                "cluster-a",
                8,
                &app,
                &view,
                now,
            ))
        })
    })
    .unwrap();
    let granted = f.granted.expect("a grant for cluster-a");
    assert_eq!(granted.range.to_string(), "10.120.0.0/16");
    assert_eq!(
        granted
            .blocks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.120.0.0/23"]
    );
    assert_eq!(f.remote.len(), 1, "{:?}", f.problems);
    assert_eq!(f.remote[0].id, "cluster-b/n1");
    assert_eq!(f.remote[0].slice.to_string(), "10.120.2.0/26");

    // In its own namespace, a record naming another member.
    if has_cel(&c) {
        let (ok, err) = kubectl_as(
            &c,
            &a,
            &apply,
            Some(&site_record("cluster-b", "weft-hub-cluster-a")),
        );
        assert!(
            !ok && err.contains("spec.site must be"),
            "a wrote a record naming b: {err}"
        );
    } else {
        not_checked(
            &c,
            "the hub admission policy (a record's spec.site must be its namespace's member; importers refuse such a record anyway)",
        );
    }
}
