//! The real `weft-node-daemon kubernetes` binary against a scripted fake API
//! server (no real API server can run here): a cluster node's daemon watches
//! only its own MeshNode and its own node's pods, serves the attach socket,
//! chains weft-cni into the node's CNI configuration while it runs and takes
//! it out on SIGTERM, passes a pod of no app through at once, and reports the
//! pods it saw; an edge host's daemon registers its own MeshNode and reports
//! its Docker containers.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use weft_e2e::cni::Runtime;
use weft_e2e::docker::{missing_docker, Container, TinyImage};
use weft_e2e::fakeapi::{FakeApi, Seen};
use weft_e2e::netns::NetNs;
use weft_e2e::procs::{bin, Proc};
use weft_e2e::scenario;

const MESHNODES: &str = "/apis/weft.dev/v1alpha1/meshnodes";
const PODS: &str = "/api/v1/pods";
const MESHAPPS: &str = "/apis/weft.dev/v1alpha1/meshapps";

fn runnable(test: &str) -> bool {
    scenario::privileged_or_skip(test)
}

fn pod(name: &str, node: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": labels, "resourceVersion": "1"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running"},
    })
}

fn daemon(name: &str, node: &str, dir: &Path, kubeconfig: &Path, extra: &[String]) -> Result<Proc> {
    let mut args: Vec<String> = [
        "kubernetes",
        "--node",
        node,
        "--advertise-address",
        "127.0.0.1",
        "--interval-ms",
        "100",
        "--idle-interval-ms",
        "100",
        "--heartbeat-seconds",
        "1",
        "--force-userspace",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--data-dir={}", dir.join("data").display()));
    args.push(format!(
        "--workloads-dir={}",
        dir.join("workloads").display()
    ));
    args.extend(extra.iter().cloned());
    Proc::spawn(
        name,
        &bin("weft-node-daemon")?,
        &args,
        &[
            ("KUBECONFIG".into(), kubeconfig.display().to_string()),
            ("RUST_LOG".into(), "info".into()),
        ],
        None,
        &dir.join(format!("{name}.log")),
    )
}

fn requests_to(api: &FakeApi, method: &str, path: &str) -> Vec<Seen> {
    api.seen()
        .into_iter()
        .filter(|s| s.method == method && s.path == path)
        .collect()
}

#[test]
fn kubernetes_mode_serves_the_cni_chain_and_passes_pods_of_no_app() {
    if !runnable("kubernetes_mode_serves_the_cni_chain_and_passes_pods_of_no_app") {
        return;
    }
    let prefix = weft_e2e::unique_prefix();
    let node = format!("{prefix}-k1");
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.set_list(
        MESHNODES,
        "MeshNodeList",
        vec![json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshNode",
            "metadata": {"name": node, "generation": 1, "resourceVersion": "1"},
            "spec": {"site": "local", "apps": []},
        })],
    );
    // The daemon's own view of the apps (its MeshNode lists only the apps
    // it runs, none yet): web claims tier=web in demo; an app of another
    // namespace claims nothing here, whatever its selector.
    api.set_list(
        MESHAPPS,
        "MeshAppList",
        vec![
            json!({
                "apiVersion": "weft.dev/v1alpha1", "kind": "MeshApp",
                "metadata": {"name": "web", "namespace": "demo", "resourceVersion": "1"},
                "spec": {"selector": {"matchLabels": {"tier": "web"}}},
            }),
            json!({
                "apiVersion": "weft.dev/v1alpha1", "kind": "MeshApp",
                "metadata": {"name": "batch", "namespace": "jobs", "resourceVersion": "1"},
                "spec": {"selector": {"matchLabels": {"tier": "batch"}}},
            }),
        ],
    );
    api.set_list(
        PODS,
        "PodList",
        vec![
            pod("plain-1", &node, json!({"tier": "batch"})),
            pod("web-1", &node, json!({"tier": "web"})),
        ],
    );
    let conf_dir = dir.path().join("net.d");
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&bin_dir).unwrap();
    let conflist = conf_dir.join("10-bridge.conflist");
    let original = json!({"cniVersion": "1.0.0", "name": "pods",
                          "plugins": [{"type": "bridge", "bridge": "cni0"}]});
    std::fs::write(&conflist, original.to_string()).unwrap();
    let socket = dir.path().join("attach.sock");
    let mut d = daemon(
        "daemon",
        &node,
        dir.path(),
        &kubeconfig,
        &[
            format!("--attach-socket={}", socket.display()),
            format!("--cni-conf-dir={}", conf_dir.display()),
            format!("--cni-bin-dir={}", bin_dir.display()),
            format!("--cni-plugin={}", bin("weft-cni").unwrap().display()),
        ],
    )
    .unwrap();

    // Chained once the socket listens.
    weft_e2e::wait_for(
        "weft-cni in the node's conflist",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let v: Value = serde_json::from_slice(&std::fs::read(&conflist)?)?;
            let chained = v["plugins"]
                .as_array()
                .is_some_and(|p| p.last().is_some_and(|l| l["type"] == "weft-cni"));
            Ok((chained && socket.exists() && bin_dir.join("weft-cni").exists()).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log_tail(30)));

    // Status lists the pods of this node, with their labels, as the
    // operator needs them; the watches were limited to this node.
    weft_e2e::wait_for(
        "a status naming both pods",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            Ok(
                requests_to(&api, "PATCH", &format!("{MESHNODES}/{node}/status"))
                    .into_iter()
                    .rev()
                    .find(|s| {
                        let w = s.body["status"]["workloads"].to_string();
                        w.contains("plain-1") && w.contains("web-1")
                    })
                    .map(|_| ()),
            )
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log_tail(30)));
    for s in api.seen().iter().filter(|s| s.method == "GET") {
        if s.path == PODS {
            assert!(
                s.query
                    .contains(&format!("fieldSelector=spec.nodeName%3D{node}")),
                "{s:?}"
            );
        } else if s.path == MESHNODES {
            assert!(
                s.query
                    .contains(&format!("fieldSelector=metadata.name%3D{node}")),
                "{s:?}"
            );
        } else if s.path == MESHAPPS || s.path.contains("/namespaces/jobs/") {
            panic!("MeshApps are read only in the namespaces of the node's pods: {s:?}");
        } else if s.path != "/apis/weft.dev/v1alpha1/namespaces/demo/meshapps" {
            panic!("the daemon reads nothing else: {s:?}");
        }
    }

    // A pod no app of the site claims: ADD passes it through untouched.
    let nodens = NetNs::create(&format!("{prefix}-k1node")).unwrap();
    let podns = NetNs::create(&format!("{prefix}-k1pod")).unwrap();
    let rt = Runtime {
        node_netns: nodens.name().to_string(),
        cni_path: bin_dir.display().to_string(),
        container_id: "c-plain-1".into(),
        pod_netns: podns.path(),
        ifname: "eth0".into(),
        pod: ("demo".into(), "plain-1".into()),
    };
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": podns.path()}],
        "ips": [{"address": "10.250.9.2/24", "interface": 0}]});
    let conf = json!({"cniVersion": "1.0.0", "name": "pods", "type": "weft-cni",
                      "daemonSocket": socket.display().to_string(), "prevResult": prev});
    let out = rt.invoke(&bin_dir.join("weft-cni"), "ADD", &conf).unwrap();
    assert_eq!(out.code, 0, "{out:?}\n{}", d.log_tail(30));
    assert_eq!(out.json, prev, "prevResult unchanged");
    let links = weft_e2e::netns::ip_in(podns.name(), &["-o", "link"]).unwrap();
    assert!(!links.contains("weft0"), "{links}");
    // It knew, first hand, from the apps of the pod's namespace alone.
    let meshapp_reads: Vec<String> = api
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.ends_with("/meshapps"))
        .map(|s| s.path)
        .collect();
    assert!(
        !meshapp_reads.is_empty()
            && meshapp_reads
                .iter()
                .all(|p| p == "/apis/weft.dev/v1alpha1/namespaces/demo/meshapps"),
        "{meshapp_reads:?}"
    );

    // SIGTERM: the plugin leaves the chain, the binary goes, exit 0.
    d.signal(Signal::SIGTERM).unwrap();
    let status = d.wait_timeout(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        d.log_tail(30)
    );
    let after: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    assert_eq!(after, original, "the conflist is as before");
    assert!(!bin_dir.join("weft-cni").exists());
}

#[test]
fn an_edge_host_registers_its_own_meshnode_and_reports_its_containers() {
    let test = "an_edge_host_registers_its_own_meshnode_and_reports_its_containers";
    if !scenario::require(test, missing_docker(), " (scripts/setup.sh installs them)") {
        return;
    }
    let prefix = weft_e2e::unique_prefix();
    let node = format!("{prefix}-e1");
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.set_list(MESHNODES, "MeshNodeList", vec![]);
    let image = TinyImage::build(&format!("{prefix}-k8s-edge:test")).unwrap();
    let container = Container::run(
        image.tag(),
        &format!("{prefix}-sensor-1"),
        &[("weft.dev/app", "sensors"), ("weft.dev/namespace", "demo")],
        &["sleep", "3600"],
    )
    .unwrap();
    let mut d = daemon(
        "edge",
        &node,
        dir.path(),
        &kubeconfig,
        &[
            "--register-site=edge".to_string(),
            "--workloads=docker".to_string(),
        ],
    )
    .unwrap();
    let reg = weft_e2e::wait_for(
        "the edge daemon's registration",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || Ok(requests_to(&api, "PATCH", &format!("{MESHNODES}/{node}")).pop()),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log_tail(30)));
    assert!(
        reg.query.contains("fieldManager=weft-node-daemon"),
        "{reg:?}"
    );
    assert!(!reg.query.contains("force"), "{reg:?}");
    assert_eq!(reg.body["spec"], json!({"site": "edge"}));
    assert_eq!(reg.body["metadata"]["labels"]["weft.dev/site"], "edge");
    // Once its MeshNode exists, the status names the container with its
    // labels: what the operator plans the edge host's workloads from.
    let status = weft_e2e::wait_for(
        "a status naming the container",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            Ok(
                requests_to(&api, "PATCH", &format!("{MESHNODES}/{node}/status"))
                    .into_iter()
                    .rev()
                    .find(|s| {
                        s.body["status"]["workloads"]
                            .to_string()
                            .contains(container.name())
                    }),
            )
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log_tail(30)));
    let w = &status.body["status"]["workloads"][0];
    assert_eq!(w["namespace"], "demo");
    assert_eq!(w["labels"]["weft.dev/app"], "sensors");
    // The edge host never watches pods: it has none.
    assert!(requests_to(&api, "GET", PODS).is_empty());
    d.signal(Signal::SIGTERM).unwrap();
    assert!(d
        .wait_timeout(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
}

/// The API server goes away for ten seconds (every request answered 503):
/// the daemon's status writes back off, a handful of tries instead of one
/// every pass, with one warning and one recovery line; once the server is
/// back its watches list again and the next status carries the pod created
/// during the outage. (How fast that is, is pinned down in virtual time by
/// the unit tests of node-daemon/src/kubeapi.rs; here it is printed.)
#[test]
fn after_an_api_outage_the_daemon_backs_off_then_catches_up() {
    if !runnable("after_an_api_outage_the_daemon_backs_off_then_catches_up") {
        return;
    }
    let prefix = weft_e2e::unique_prefix();
    let node = format!("{prefix}-o1");
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.set_list(
        MESHNODES,
        "MeshNodeList",
        vec![json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshNode",
            "metadata": {"name": node, "generation": 1, "resourceVersion": "1"},
            "spec": {"site": "local", "apps": []},
        })],
    );
    api.set_list(MESHAPPS, "MeshAppList", vec![]);
    api.set_list(
        PODS,
        "PodList",
        vec![pod("before-1", &node, json!({"tier": "batch"}))],
    );
    let socket = dir.path().join("attach.sock");
    let mut d = daemon(
        "daemon",
        &node,
        dir.path(),
        &kubeconfig,
        &[format!("--attach-socket={}", socket.display())],
    )
    .unwrap();
    let status_naming = |pod: &'static str| {
        let path = format!("{MESHNODES}/{node}/status");
        let api = &api;
        move || {
            Ok(requests_to(api, "PATCH", &path)
                .into_iter()
                .rev()
                .find(|s| s.body["status"]["workloads"].to_string().contains(pod))
                .map(|_| ()))
        }
    };
    weft_e2e::wait_for(
        "a status naming the first pod",
        Duration::from_secs(30),
        Duration::from_millis(100),
        status_naming("before-1"),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log_tail(30)));

    api.set_down(true);
    let down_from = api.seen().len();
    api.set_list(
        PODS,
        "PodList",
        vec![
            pod("before-1", &node, json!({"tier": "batch"})),
            pod("during-1", &node, json!({"tier": "batch"})),
        ],
    );
    std::thread::sleep(Duration::from_secs(10));
    let status_path = format!("{MESHNODES}/{node}/status");
    let tries = api.seen()[down_from..]
        .iter()
        .filter(|s| s.method == "PATCH" && s.path == status_path)
        .count();
    api.set_down(false);
    let up = std::time::Instant::now();

    weft_e2e::wait_for(
        "a status naming the pod created during the outage",
        Duration::from_secs(30),
        Duration::from_millis(50),
        status_naming("during-1"),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log_tail(30)));
    println!(
        "caught up {:.1} s after the API came back; {tries} status writes tried during the 10 s outage",
        up.elapsed().as_secs_f64()
    );
    // A pass every 100 ms: without the backoff about a hundred tries.
    assert!(
        (2..=20).contains(&tries),
        "{tries} status writes tried during the outage\n{}",
        d.log_tail(30)
    );
    let log = std::fs::read_to_string(d.log()).unwrap();
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        lines("cannot write MeshNode status"),
        1,
        "one warning for the whole outage\n{}",
        d.log_tail(30)
    );
    assert_eq!(
        lines("status write recovered after"),
        1,
        "{}",
        d.log_tail(30)
    );

    d.signal(Signal::SIGTERM).unwrap();
    assert!(d
        .wait_timeout(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
}
