//! End-to-end: `kubectl-weft` against a real API server (etcd and
//! kube-apiserver from `weft_e2e::apiserver`), reached the way kubectl
//! reaches one: a kubeconfig file (`--kubeconfig`, or `$KUBECONFIG`) and a
//! context of it (`--context`, or the current one).
//!
//! The CRDs of `crds/` are applied; namespaces `ns1` and `ns2` get MeshApps
//! (with a status written through the status subresource, as the operator
//! writes it), and MeshNodes `n1`..`n3` a spec and a status naming their
//! peers with handshake ages, as the daemons report them; no operator or
//! daemon runs. The test then checks
//!
//! * `get meshapps` in one namespace (`-n`, or the namespace of the
//!   context) and across all (`-A`, with a NAMESPACE column), one app as
//!   JSON and YAML, `get meshnodes -o wide`;
//! * `--context` picks a context of the file (and its namespace), as does
//!   `$KUBECONFIG`, and a YAML kubeconfig naming credential files by
//!   relative paths works;
//! * what goes wrong is one clear line and exit status 1: the CRDs not
//!   installed yet, a missing context or kubeconfig, a server refusing the
//!   connection, one without a route, one refusing the credentials (401),
//!   one that never answers (`--request-timeout`);
//! * `graph -o dot` and `graph -o svg` draw the MeshNodes and the peer
//!   links of their statuses, classed by handshake age.
//!
//! The API server listens in the control plane's network namespace, so
//! `kubectl-weft` runs there (`ip netns exec`), as the harness's `kubectl`
//! does. Needs root, the workspace binaries (`cargo build --workspace
//! --bins`) and the control plane's binaries (`scripts/control-plane.sh`).
//! Without root or the control plane the test prints `SKIPPED`, except
//! under `CI=true`, where it fails naming what is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use weft_api::{
    AppAttachment, AppStatus, DataplaneKind, MeshAppStatus, MeshNodeSpec, MeshNodeStatus, PeerSpec,
    PeerStatus,
};
use weft_e2e::apiserver::binaries::Binaries;
use weft_e2e::apiserver::ControlPlane;
use weft_e2e::kubelet::{repo_path, KubeCluster};
use weft_e2e::{netns, scenario, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
/// The longest one `kubectl-weft` run may take (an unreachable server
/// included): it is killed after this.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Contexts of the test's kubeconfig besides the harness's own
/// (`weft-e2e`, the current one, namespace `default`).
const CTX_NS1: &str = "ns1-admin";
const CTX_REFUSED: &str = "refused";
const CTX_NO_ROUTE: &str = "no-route";
const CTX_BAD_TOKEN: &str = "bad-token";
const CTX_SILENT: &str = "silent";
/// Where a listener of the test accepts connections and never answers.
const SILENT_PORT: u16 = 7443;
/// A port nothing listens on in the control plane's namespace.
const REFUSED_SERVER: &str = "https://127.0.0.1:1";
/// An address the control plane's namespace has no route to (TEST-NET-2).
const NO_ROUTE_SERVER: &str = "https://198.51.100.7:6443";

fn runnable(test: &str) -> bool {
    let missing = Binaries::find().err().map(|e| format!("{e:#}"));
    scenario::require(
        test,
        missing,
        " (scripts/control-plane.sh provides the control plane's binaries)",
    )
}

/// `kubectl-weft` in the control plane's namespace with a kubeconfig.
#[derive(Clone)]
struct Weft {
    bin: PathBuf,
    netns: String,
    kubeconfig: PathBuf,
}

impl Weft {
    /// `kubectl-weft --kubeconfig FILE ARGS` (no `--kubeconfig` when
    /// `kubeconfig_flag` is false: `$KUBECONFIG` from `env` then), killed
    /// after [`RUN_LIMIT`].
    fn output_with(&self, args: &[&str], kubeconfig_flag: bool, env: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(&self.bin);
        if kubeconfig_flag {
            cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        }
        cmd.args(args)
            // Only what the test gives: no kubeconfig of the machine's user.
            .env_remove("KUBECONFIG")
            .env("HOME", self.kubeconfig.parent().expect("kubeconfig dir"))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run kubectl-weft");
        let start = Instant::now();
        loop {
            if child.try_wait().expect("wait for kubectl-weft").is_some() {
                break;
            }
            if start.elapsed() > RUN_LIMIT {
                let _ = child.kill();
                let out = child.wait_with_output().expect("kubectl-weft output");
                panic!(
                    "kubectl-weft {args:?} still running after {RUN_LIMIT:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().expect("kubectl-weft output")
    }

    fn output(&self, args: &[&str]) -> Output {
        self.output_with(args, true, &[])
    }

    /// Stdout of a run that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        checked(args, self.output(args))
    }

    /// Stderr of a run that must fail (exit status 1).
    fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "kubectl-weft {args:?} should fail; stdout: {}, stderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert!(
            stderr.starts_with("error: "),
            "{args:?}: one error line: {stderr}"
        );
        stderr
    }
}

fn checked(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl-weft {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The harness's admin kubeconfig with more contexts: `ns1-admin` (the
/// same cluster and user, namespace `ns1`), and two whose server cannot be
/// reached. The current context stays the harness's.
fn write_kubeconfig(cp: &ControlPlane, path: &Path) {
    let text = std::fs::read_to_string(cp.admin_kubeconfig()).expect("read admin kubeconfig");
    let mut kc: Value = serde_json::from_str(&text).expect("admin kubeconfig is JSON");
    let ca = kc["clusters"][0]["cluster"]["certificate-authority-data"].clone();
    let silent = format!("https://127.0.0.1:{SILENT_PORT}");
    let clusters = kc["clusters"].as_array_mut().expect("clusters");
    for (name, server) in [
        (CTX_REFUSED, REFUSED_SERVER),
        (CTX_NO_ROUTE, NO_ROUTE_SERVER),
        (CTX_SILENT, silent.as_str()),
    ] {
        clusters.push(json!({"name": name, "cluster": {
            "server": server, "certificate-authority-data": ca,
        }}));
    }
    kc["users"]
        .as_array_mut()
        .expect("users")
        .push(json!({"name": CTX_BAD_TOKEN, "user": {"token": "not-a-token"}}));
    let contexts = kc["contexts"].as_array_mut().expect("contexts");
    contexts.push(json!({"name": CTX_NS1, "context": {
        "cluster": "weft-e2e", "user": "user", "namespace": "ns1",
    }}));
    contexts.push(json!({"name": CTX_BAD_TOKEN, "context": {
        "cluster": "weft-e2e", "user": CTX_BAD_TOKEN,
    }}));
    for name in [CTX_REFUSED, CTX_NO_ROUTE, CTX_SILENT] {
        contexts.push(json!({"name": name, "context": {"cluster": name, "user": "user"}}));
    }
    std::fs::write(path, serde_json::to_string_pretty(&kc).unwrap()).expect("write kubeconfig");
}

/// The harness's admin credentials as files next to a YAML kubeconfig that
/// names them by relative paths (as minikube's or kind's files do, in
/// another layout), resolved against the kubeconfig's directory.
fn write_file_kubeconfig(cp: &ControlPlane, dir: &Path) -> PathBuf {
    use base64::Engine;
    let text = std::fs::read_to_string(cp.admin_kubeconfig()).expect("read admin kubeconfig");
    let kc: Value = serde_json::from_str(&text).expect("admin kubeconfig is JSON");
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    for (value, file) in [
        (
            &kc["clusters"][0]["cluster"]["certificate-authority-data"],
            "ca.crt",
        ),
        (
            &kc["users"][0]["user"]["client-certificate-data"],
            "admin.crt",
        ),
        (&kc["users"][0]["user"]["client-key-data"], "admin.key"),
    ] {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("embedded credential"))
            .expect("base64");
        std::fs::write(dir.join("certs").join(file), bytes).unwrap();
    }
    let server = kc["clusters"][0]["cluster"]["server"].as_str().unwrap();
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: files
  cluster:
    server: {server}
    certificate-authority: certs/ca.crt
users:
- name: admin
  user:
    client-certificate: certs/admin.crt
    client-key: certs/admin.key
contexts:
- name: files
  context:
    cluster: files
    user: admin
    namespace: ns2
current-context: files
"
    );
    let path = dir.join("files.kubeconfig");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn meshapp(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshApp",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

fn ready(status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(Timestamp::now()),
        observed_generation: Some(1),
    }
}

/// `kubectl patch KIND NAME [-n NS] --subresource=status --type=merge`.
fn patch_status(c: &KubeCluster, kind: &str, ns: Option<&str>, name: &str, status: &Value) {
    let patch = json!({ "status": status }).to_string();
    let mut args = vec![
        "patch",
        kind,
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    c.kubectl(&args)
        .unwrap_or_else(|e| panic!("status of {kind} {name}: {e:#}"));
}

/// The test's MeshNodes: `site`, then per app its peers in the spec.
struct NodePlan {
    name: &'static str,
    site: &'static str,
    address: &'static str,
    apps: Vec<(&'static str, Vec<&'static str>)>,
}

fn plans() -> Vec<NodePlan> {
    vec![
        NodePlan {
            name: "n1",
            site: "local",
            address: "192.0.2.1",
            apps: vec![("ns1/web", vec!["n2", "n3"]), ("ns2/api", vec!["n2"])],
        },
        NodePlan {
            name: "n2",
            site: "local",
            address: "192.0.2.2",
            apps: vec![("ns1/web", vec!["n1", "n3"]), ("ns2/api", vec!["n1"])],
        },
        NodePlan {
            name: "n3",
            site: "edge",
            address: "192.0.2.3",
            apps: vec![("ns1/web", vec!["n1", "n2"])],
        },
    ]
}

fn spec_of(p: &NodePlan) -> MeshNodeSpec {
    let addr = |n: &str| match n {
        "n1" => "192.0.2.1",
        "n2" => "192.0.2.2",
        _ => "192.0.2.3",
    };
    MeshNodeSpec {
        site: p.site.into(),
        apps: p
            .apps
            .iter()
            .enumerate()
            .map(|(k, (app, peers))| AppAttachment {
                app: app.to_string(),
                app_id: format!("app{k}"),
                netns: format!("weft-app{k}"),
                interface: format!("wg-app{k}"),
                address_space: format!("10.10{k}.0.0/16"),
                node_slice: format!("10.10{k}.{}.0/24", &p.name[1..]),
                address: format!("10.10{k}.{}.1", &p.name[1..]),
                listen_port: 51820 + k as u16,
                mtu: 1420,
                workloads: vec![format!("{}-{}", app, p.name)],
                peers: peers
                    .iter()
                    .map(|n| {
                        Arc::new(PeerSpec {
                            node: n.to_string(),
                            public_key: format!("key-{n}-{k}"),
                            endpoint: format!("{}:{}", addr(n), 51820 + k),
                            allowed_ips: vec![format!("10.10{k}.{}.0/24", &n[1..])],
                        })
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

fn peer(node: &str, age: Option<u64>) -> PeerStatus {
    PeerStatus {
        node: node.into(),
        public_key: format!("key-{node}"),
        last_handshake_seconds: age,
        ..Default::default()
    }
}

fn app_status(app: &str, peers: Vec<PeerStatus>) -> AppStatus {
    AppStatus {
        app: app.into(),
        public_key: format!("key-{app}"),
        listen_port: 51820,
        interface: "wg0".into(),
        programmed: true,
        peers_up: peers
            .iter()
            .filter(|p| p.last_handshake_seconds.is_some_and(|s| s < 180))
            .count() as u32,
        peers,
        ..Default::default()
    }
}

/// What the daemons report: ns1/web fresh between n1 and n2 (both ends),
/// never with n3 (which is lost: its last heartbeat is an hour old); ns2/api
/// stale between n1 and n2; and n1 sees a peer `far-1` of ns1/web that is no
/// MeshNode here (another site's node).
fn status_of(p: &NodePlan, now: Timestamp) -> MeshNodeStatus {
    let apps = match p.name {
        "n1" => vec![
            app_status(
                "ns1/web",
                vec![
                    peer("far-1", Some(12)),
                    peer("n2", Some(5)),
                    peer("n3", None),
                ],
            ),
            app_status("ns2/api", vec![peer("n2", Some(400))]),
        ],
        "n2" => vec![
            app_status("ns1/web", vec![peer("n1", Some(9)), peer("n3", None)]),
            app_status("ns2/api", vec![peer("n1", None)]),
        ],
        _ => vec![app_status(
            "ns1/web",
            vec![peer("n1", None), peer("n2", None)],
        )],
    };
    let heartbeat = if p.name == "n3" {
        now - SignedDuration::from_secs(3600)
    } else {
        now
    };
    MeshNodeStatus {
        conditions: vec![ready("True", "AppsProgrammed", "every app is programmed")],
        observed_generation: Some(1),
        dataplane: Some(DataplaneKind::Kernel),
        endpoint_address: Some(p.address.into()),
        apps_ready: apps.len() as u32,
        apps,
        heartbeat: Some(heartbeat.to_string()),
        ..Default::default()
    }
}

/// Writes every MeshNode's status with heartbeats of `now`.
fn report(c: &KubeCluster, now: Timestamp) {
    for p in plans() {
        let st = serde_json::to_value(status_of(&p, now)).unwrap();
        patch_status(c, "meshnode", None, p.name, &st);
    }
}

/// The value of attribute `name` in the start tag beginning `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let end = tag.find('>')?;
    let head = &tag[..end];
    let key = format!(" {name}=\"");
    let at = head.find(&key)? + key.len();
    let len = head[at..].find('"')?;
    Some(&head[at..at + len])
}

/// `<g class="...">` start tags of the SVG whose class begins with `prefix`.
fn groups<'a>(svg: &'a str, prefix: &str) -> Vec<&'a str> {
    let open = format!("<g class=\"{prefix}");
    svg.match_indices(&open).map(|(i, _)| &svg[i..]).collect()
}

/// The row of a table whose column `col` (NAME) is `name`.
fn row<'a>(table: &'a str, col: usize, name: &str) -> &'a str {
    table
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(col) == Some(name))
        .unwrap_or_else(|| panic!("no row {name}:\n{table}"))
}

/// Column `col` of every row of a table.
fn names(table: &str, col: usize) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(col).map(String::from))
        .collect()
}

#[test]
fn kubectl_weft_gets_and_draws_from_a_real_api_server() {
    let test = "kubectl_weft_gets_and_draws_from_a_real_api_server";
    if !runnable(test) {
        return;
    }
    let bin = weft_e2e::bin("kubectl-weft")
        .unwrap_or_else(|e| panic!("{e:#}: run `cargo build --workspace --bins` first"));
    let c = KubeCluster::new(0).expect("start the control plane");
    let cp = c.cp();
    println!("API server {} ({})", cp.version_text(), cp.netns());

    let kubeconfig = c.run_dir().join("cli.kubeconfig");
    write_kubeconfig(cp, &kubeconfig);
    let weft = Weft {
        bin,
        netns: cp.netns().to_string(),
        kubeconfig: kubeconfig.clone(),
    };

    // Before the CRDs: the server does not know the kinds, and says so.
    let e = weft.fails(&["get", "meshapps", "-n", "ns1"]);
    println!("without the CRDs: {e}");
    assert!(
        e.contains("meshapps.weft.dev") && e.contains("CRDs") && e.contains("404"),
        "{e}"
    );
    let e = weft.fails(&["graph"]);
    assert!(
        e.contains("meshnodes.weft.dev") && e.contains("CRDs"),
        "{e}"
    );

    // The CRDs, served.
    let crd_dir = repo_path("crds");
    let mut crds = vec!["apply", "-k", &crd_dir];
    if cp.version() < (1, 25) {
        // kubectl's client-side schema of CRDs lacks x-kubernetes-validations
        // before 1.25; the server drops the field and keeps the rest.
        crds.push("--validate=false");
    }
    cp.kubectl(&crds).expect("apply the CRDs");
    wait_for("the Weft kinds to be served", WAIT, POLL, || {
        Ok(["meshapps", "meshnodes"]
            .iter()
            .all(|k| c.kubectl(&["get", k, "-A"]).is_ok())
            .then_some(()))
    })
    .unwrap();

    // Apps in two namespaces, with the status the operator would write.
    for ns in ["ns1", "ns2"] {
        c.kubectl(&["create", "namespace", ns]).unwrap();
    }
    let apps = [
        (
            "ns1",
            "web",
            json!({"addressSpace": "10.100.0.0/16", "selector": {"matchLabels": {"tier": "web"}}}),
        ),
        ("ns1", "db", json!({})),
        (
            "ns2",
            "api",
            json!({"selector": {"matchLabels": {"tier": "api"}}}),
        ),
    ];
    for (ns, name, spec) in &apps {
        c.apply_json(&meshapp(ns, name, spec.clone()))
            .unwrap_or_else(|e| panic!("create MeshApp {ns}/{name}: {e:#}"));
    }
    let app_statuses = [
        (
            "ns1",
            "web",
            MeshAppStatus {
                conditions: vec![ready("True", "AllPeersUp", "every peer link is up")],
                address_space: Some("10.100.0.0/16".into()),
                nodes: Some("3/3".into()),
                peers: Some("1/3".into()),
                sites: vec!["edge".into(), "local".into()],
                ..Default::default()
            },
        ),
        (
            "ns1",
            "db",
            MeshAppStatus {
                conditions: vec![ready("False", "NoWorkloads", "no workload selected")],
                address_space: Some("100.64.0.0/16".into()),
                nodes: Some("0/0".into()),
                peers: Some("0/0".into()),
                ..Default::default()
            },
        ),
        (
            "ns2",
            "api",
            MeshAppStatus {
                conditions: vec![ready("False", "PeersDown", "1 peer link is down")],
                address_space: Some("100.65.0.0/16".into()),
                nodes: Some("2/2".into()),
                peers: Some("0/1".into()),
                sites: vec!["local".into()],
                ..Default::default()
            },
        ),
    ];
    for (ns, name, st) in &app_statuses {
        patch_status(
            &c,
            "meshapp",
            Some(ns),
            name,
            &serde_json::to_value(st).unwrap(),
        );
    }

    // MeshNodes: the spec as the operator plans it, the status as daemons report it.
    for p in plans() {
        let obj = json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshNode",
            "metadata": {"name": p.name},
            "spec": serde_json::to_value(spec_of(&p)).unwrap(),
        });
        c.apply_json(&obj)
            .unwrap_or_else(|e| panic!("create MeshNode {}: {e:#}", p.name));
    }
    report(&c, Timestamp::now());

    // get meshapps -n ns1: that namespace only, no NAMESPACE column.
    let ns1 = weft.ok(&["get", "meshapps", "-n", "ns1"]);
    println!("kubectl-weft get meshapps -n ns1:\n{ns1}");
    assert!(ns1.starts_with("NAME "), "{ns1}");
    assert_eq!(names(&ns1, 0), ["db", "web"], "{ns1}");
    let web = row(&ns1, 0, "web");
    for w in ["True", "3/3", "1/3", "10.100.0.0/16"] {
        assert!(web.contains(w), "web lacks {w}:\n{ns1}");
    }
    assert!(row(&ns1, 0, "db").contains("False"), "{ns1}");
    let ns2 = weft.ok(&["get", "mapp", "-n", "ns2"]);
    assert_eq!(names(&ns2, 0), ["api"], "{ns2}");

    // -A: both namespaces, a NAMESPACE column; -o wide adds reasons and sites.
    let all = weft.ok(&["get", "meshapps", "-A"]);
    println!("kubectl-weft get meshapps -A:\n{all}");
    assert!(all.starts_with("NAMESPACE "), "{all}");
    let rows: Vec<(String, String)> = all
        .lines()
        .skip(1)
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().into(), w.next().unwrap().into())
        })
        .collect();
    let want: Vec<(String, String)> = [("ns1", "db"), ("ns1", "web"), ("ns2", "api")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(rows, want, "{all}");
    let wide = weft.ok(&["get", "meshapps", "-A", "-o", "wide"]);
    println!("kubectl-weft get meshapps -A -o wide:\n{wide}");
    assert!(row(&wide, 1, "api").contains("PeersDown"), "{wide}");
    assert!(row(&wide, 1, "web").contains("edge,local"), "{wide}");

    // One app as JSON and as YAML: the object itself, as the server has it.
    let one: Value =
        serde_json::from_str(&weft.ok(&["get", "meshapp", "web", "-n", "ns1", "-o", "json"]))
            .expect("JSON");
    assert_eq!(one["apiVersion"], "weft.dev/v1alpha1");
    assert_eq!(one["kind"], "MeshApp");
    assert_eq!(one["metadata"]["name"], "web");
    assert_eq!(one["metadata"]["namespace"], "ns1");
    assert!(one["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty()));
    assert!(one["metadata"]["resourceVersion"].is_string());
    assert_eq!(one["spec"]["addressSpace"], "10.100.0.0/16");
    assert_eq!(one["spec"]["selector"]["matchLabels"]["tier"], "web");
    assert_eq!(one["status"]["peers"], "1/3");
    assert_eq!(one["status"]["conditions"][0]["reason"], "AllPeersUp");
    let server: Value = c
        .cp()
        .get_json(&["meshapp", "web", "-n", "ns1"])
        .expect("kubectl get");
    assert_eq!(one["metadata"]["uid"], server["metadata"]["uid"]);
    assert_eq!(one["spec"], server["spec"]);
    // Like kubectl: managedFields only when asked for.
    assert!(one["metadata"].get("managedFields").is_none(), "{one}");
    let full: Value = serde_json::from_str(&weft.ok(&[
        "get",
        "meshapp",
        "web",
        "-n",
        "ns1",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .expect("JSON");
    assert!(
        full["metadata"]["managedFields"].is_array(),
        "the server keeps managedFields: {full}"
    );
    let yaml = weft.ok(&["get", "meshapp", "web", "-n", "ns1", "-o", "yaml"]);
    println!("kubectl-weft get meshapp web -n ns1 -o yaml:\n{yaml}");
    for w in [
        "apiVersion: weft.dev/v1alpha1",
        "kind: MeshApp",
        "name: web",
        "namespace: ns1",
        "addressSpace: 10.100.0.0/16",
    ] {
        assert!(yaml.lines().any(|l| l.trim() == w), "{w}:\n{yaml}");
    }
    assert!(!yaml.contains("managedFields"), "{yaml}");
    // A list as JSON names the items of the namespace only.
    let list: Value =
        serde_json::from_str(&weft.ok(&["get", "meshapps", "-n", "ns2", "-o", "json"]))
            .expect("JSON list");
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["items"][0]["metadata"]["name"], "api");
    // An app of another namespace, or of none, is not found.
    let e = weft.fails(&["get", "meshapp", "api", "-n", "ns1"]);
    assert!(e.contains("not found") && e.contains("api"), "{e}");

    // MeshNodes, wide.
    let nodes = weft.ok(&["get", "meshnodes", "-o", "wide"]);
    println!("kubectl-weft get meshnodes -o wide:\n{nodes}");
    assert!(nodes.starts_with("NAME "), "{nodes}");
    assert_eq!(names(&nodes, 0), ["n1", "n2", "n3"], "{nodes}");
    for p in plans() {
        let r = row(&nodes, 0, p.name);
        assert_eq!(r.split_whitespace().nth(1), Some(p.site), "{nodes}");
        for w in [p.address, "Kernel", "True", "AppsProgrammed"] {
            assert!(r.contains(w), "{} lacks {w}:\n{nodes}", p.name);
        }
        let apps = format!("{n}/{n}", n = p.apps.len());
        assert_eq!(r.split_whitespace().nth(2), Some(apps.as_str()), "{nodes}");
    }
    let n1: Value =
        serde_json::from_str(&weft.ok(&["get", "mnode", "n1", "-o", "json"])).expect("JSON");
    assert_eq!(n1["kind"], "MeshNode");
    assert_eq!(
        n1["status"]["apps"][0]["peers"][1]["lastHandshakeSeconds"],
        5
    );

    // Contexts: the namespace of the context is the default one.
    let ctx = weft.ok(&["--context", CTX_NS1, "get", "meshapps"]);
    assert_eq!(names(&ctx, 0), ["db", "web"], "{ctx}");
    let out = weft.output(&["--context", "weft-e2e", "get", "meshapps"]);
    let stdout = checked(&["--context", "weft-e2e"], out.clone());
    assert!(stdout.is_empty(), "nothing in namespace default: {stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No resources found"),
        "{out:?}"
    );
    // And $KUBECONFIG is read like --kubeconfig.
    let env = weft.output_with(
        &["--context", CTX_NS1, "get", "meshapps"],
        false,
        &[("KUBECONFIG", &kubeconfig)],
    );
    assert_eq!(
        names(&checked(&["$KUBECONFIG"], env), 0),
        ["db", "web"],
        "with $KUBECONFIG"
    );

    let env = weft.output_with(
        &["get", "meshapps", "-n", "ns1"],
        false,
        &[("KUBECONFIG", &kubeconfig)],
    );
    assert_eq!(
        names(&checked(&["$KUBECONFIG", "-n"], env), 0),
        ["db", "web"],
        "with $KUBECONFIG and its current context"
    );
    // Neither: no ~/.kube/config in $HOME, not in a pod.
    let none = weft.output_with(&["get", "meshapps"], false, &[]);
    let e = String::from_utf8_lossy(&none.stderr);
    println!("no configuration: {e}");
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    assert!(e.contains("no Kubernetes configuration"), "{e}");

    // A YAML kubeconfig naming credential files relative to itself (the
    // CLI runs in /): its current context, and the namespace of it.
    let files = Weft {
        kubeconfig: write_file_kubeconfig(cp, &c.run_dir().join("files")),
        ..weft.clone()
    };
    assert_eq!(
        names(&files.ok(&["get", "meshapps"]), 0),
        ["api"],
        "namespace ns2 of the current context"
    );

    // A context the file lacks.
    let e = weft.fails(&["--context", "nope", "get", "meshapps"]);
    println!("missing context: {e}");
    assert!(e.contains("\"nope\"") && e.contains("context"), "{e}");
    assert!(e.contains(&kubeconfig.display().to_string()), "{e}");
    assert!(e.contains(CTX_NS1), "lists the contexts there are: {e}");
    // A missing kubeconfig file.
    let missing = c.run_dir().join("missing.kubeconfig");
    let e = Weft {
        kubeconfig: missing.clone(),
        ..weft.clone()
    }
    .fails(&["get", "meshapps"]);
    println!("missing kubeconfig: {e}");
    assert!(
        e.contains(&missing.display().to_string()) && e.contains("No such file"),
        "{e}"
    );
    assert_eq!(e.matches("No such file").count(), 1, "said once: {e}");
    // Servers that cannot be reached: the message names the server.
    for (ctx, server, why) in [
        (CTX_REFUSED, REFUSED_SERVER, "refused"),
        (CTX_NO_ROUTE, NO_ROUTE_SERVER, "unreachable"),
    ] {
        let start = Instant::now();
        let e = weft.fails(&["--context", ctx, "get", "meshapps"]);
        println!("{ctx} ({:?}): {e}", start.elapsed());
        assert!(e.contains(server), "{ctx}: names the server: {e}");
        assert!(
            e.contains(&format!("\"{ctx}\"")),
            "{ctx}: names the context: {e}"
        );
        assert!(e.to_lowercase().contains(why), "{ctx}: says {why}: {e}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{ctx}: fails fast"
        );
        let e = weft.fails(&["--context", ctx, "graph"]);
        assert!(e.contains(server), "{ctx}: graph names the server: {e}");
    }

    // A server that refuses the credentials: its answer, and the code.
    let e = weft.fails(&["--context", CTX_BAD_TOKEN, "get", "meshnodes"]);
    println!("{CTX_BAD_TOKEN}: {e}");
    assert!(e.contains("Unauthorized") && e.contains("401"), "{e}");
    // A server that accepts connections and never answers: the request
    // gives up after --request-timeout.
    let stop = Arc::new(AtomicBool::new(false));
    let listener = {
        let stop = stop.clone();
        netns::spawn_in_netns(cp.netns(), move || {
            let l = TcpListener::bind(("127.0.0.1", SILENT_PORT))?;
            l.set_nonblocking(true)?;
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((conn, _)) => held.push(conn),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(held.len())
        })
        .expect("start the silent listener")
    };
    let start = Instant::now();
    let e = weft.fails(&[
        "--context",
        CTX_SILENT,
        "--request-timeout",
        "2s",
        "get",
        "meshapps",
    ]);
    let took = start.elapsed();
    println!("{CTX_SILENT} ({took:?}): {e}");
    assert!(e.contains(&format!("127.0.0.1:{SILENT_PORT}")), "{e}");
    assert!(e.contains("timed out") || e.contains("deadline"), "{e}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(e.contains("timed out after 2s"), "{e}");
    // A timeout that is none is a usage error (clap's exit status 2).
    let out = weft.output(&["--request-timeout", "soon", "get", "meshapps"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("soon"),
        "{out:?}"
    );
    stop.store(true, Ordering::Relaxed);
    let accepted = listener
        .join()
        .expect("listener thread")
        .expect("silent listener");
    assert!(accepted >= 1, "the CLI connected to the silent server");

    // graph: heartbeats of now, so only n3 (an hour old) is lost.
    report(&c, Timestamp::now());
    let dot = weft.ok(&["graph", "-o", "dot"]);
    let svg = weft.ok(&["graph", "-o", "svg"]);
    println!("kubectl-weft graph -o dot:\n{dot}");
    if let Ok(path) = std::env::var("WEFT_GRAPH_OUT") {
        std::fs::write(&path, &svg).expect("write SVG");
        std::fs::write(format!("{path}.dot"), &dot).expect("write DOT");
    }
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    // Nodes: every MeshNode in its site, n3 lost, far-1 external.
    let drawn: BTreeMap<&str, (&str, &str)> = groups(&svg, "node")
        .iter()
        .map(|g| {
            (
                attr(g, "id").expect("node id").trim_start_matches("node-"),
                (
                    attr(g, "class").expect("class"),
                    attr(g, "data-site").expect("site"),
                ),
            )
        })
        .collect();
    let want: BTreeMap<&str, (&str, &str)> = [
        ("far-1", ("node external", "remote")),
        ("n1", ("node", "local")),
        ("n2", ("node", "local")),
        ("n3", ("node lost", "edge")),
    ]
    .into();
    assert_eq!(drawn, want, "nodes drawn");
    let sites: BTreeSet<&str> = groups(&svg, "site")
        .iter()
        .map(|g| attr(g, "id").expect("site id"))
        .collect();
    assert_eq!(
        sites,
        ["site-edge", "site-local", "site-remote"].into(),
        "sites"
    );

    // Edges: every peer link of the specs and statuses, by its youngest
    // handshake either end reports.
    let edges: BTreeMap<(&str, &str, &str), &str> = groups(&svg, "edge ")
        .iter()
        .map(|g| {
            (
                (
                    attr(g, "data-app").expect("app"),
                    attr(g, "data-a").expect("a"),
                    attr(g, "data-b").expect("b"),
                ),
                attr(g, "class").expect("class").trim_start_matches("edge "),
            )
        })
        .collect();
    let want: BTreeMap<(&str, &str, &str), &str> = [
        (("ns1/web", "far-1", "n1"), "fresh"),
        (("ns1/web", "n1", "n2"), "fresh"),
        (("ns1/web", "n1", "n3"), "never"),
        (("ns1/web", "n2", "n3"), "never"),
        (("ns2/api", "n1", "n2"), "stale"),
    ]
    .into();
    assert_eq!(edges, want, "edges drawn");

    // The DOT: the same nodes, ids and edges, one statement each.
    for (node, class) in [
        ("n1", "class=node"),
        ("n2", "class=node"),
        ("n3", "class=\"node lost\""),
        ("far-1", "class=\"node external\""),
    ] {
        let line = dot
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("\"{node}\" [")))
            .unwrap_or_else(|| panic!("no node {node}:\n{dot}"));
        assert!(line.contains(&format!("id=\"node-{node}\"")), "{line}");
        assert!(line.contains(class), "{line}");
    }
    for ((app, a, b), class) in &want {
        let head = format!("\"{a}\" -- \"{b}\" [");
        let line = dot
            .lines()
            .find(|l| l.trim_start().starts_with(&head) && l.contains(&format!("\"{app} ")))
            .unwrap_or_else(|| panic!("no edge {app} {a} -- {b}:\n{dot}"));
        assert!(line.contains(&format!("class=\"edge {class}\"")), "{line}");
        assert!(
            line.contains(&format!("id=\"edge-{app}-{a}-{b}\"")),
            "{line}"
        );
    }
    assert_eq!(
        dot.lines()
            .filter(|l| l.trim_start().starts_with('"') && l.contains("\" -- \""))
            .count(),
        want.len(),
        "{dot}"
    );
    assert!(dot.contains("subgraph \"cluster_edge\""), "{dot}");
    assert!(dot.contains("\"ns1/web 5s\""), "{dot}");
    assert!(dot.contains("ns2/api 400s"), "{dot}");

    // One app: `graph api -n ns2` and `graph ns2/api` draw its link only.
    for args in [
        &["graph", "api", "-n", "ns2", "-o", "svg"][..],
        &["graph", "ns2/api", "-o", "svg"][..],
    ] {
        let one = weft.ok(args);
        let e = groups(&one, "edge ");
        assert_eq!(e.len(), 1, "{args:?}");
        assert_eq!(attr(e[0], "data-app"), Some("ns2/api"));
        assert_eq!(attr(e[0], "class"), Some("edge stale"));
        let nodes: BTreeSet<&str> = groups(&one, "node")
            .iter()
            .filter_map(|g| attr(g, "id"))
            .collect();
        assert_eq!(nodes, ["node-n1", "node-n2"].into(), "{args:?}");
    }
    // An app no node runs: an empty picture and a note, not an error.
    let out = weft.output(&["graph", "nothing", "-n", "ns1"]);
    let stdout = checked(&["graph", "nothing"], out.clone());
    assert!(!stdout.contains(" -- "), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No node runs app ns1/nothing"),
        "{out:?}"
    );

    drop(c);
}
