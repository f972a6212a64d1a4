//! The daemon's MeshApp watches against a real control plane (etcd and
//! kube-apiserver from `weft_e2e::apiserver`): a daemon watches MeshApps only
//! in the namespaces of its own node's pods, so its cache and the changes it
//! receives do not grow with the apps of the rest of the cluster.
//!
//! The daemon's pod and MeshApp watches (`PodAnnouncements`, what serves the
//! CNI ADD) run in this process, as the daemon's ServiceAccount with the
//! ClusterRole of `config/rbac`, so the test can ask which namespaces they
//! watch. Namespace `a` has a pod on the node, namespace `b` only apps and a
//! pod on another node.
//!
//! Needs root and the control plane's binaries (`scripts/control-plane.sh`).
//! Without them the test prints `SKIPPED`, except under `CI=true`, where it
//! fails naming what is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use weft_e2e::apiserver::binaries::Binaries;
use weft_e2e::kubelet::{repo_path, KubeCluster, SYSTEM_NS};
use weft_e2e::{netns, scenario, wait_for};
use weft_node_daemon::workloads::pods::PodAnnouncements;
use weft_node_daemon::workloads::Announcements;

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
const SITE: &str = "local";

fn runnable(test: &str) -> bool {
    let missing = Binaries::find().err().map(|e| format!("{e:#}"));
    scenario::require(
        test,
        missing,
        " (scripts/control-plane.sh provides the control plane's binaries)",
    )
}

fn meshapp(ns: &str, name: &str, tier: &str) -> serde_json::Value {
    json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshApp",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"tier": tier}}},
    })
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Open long-running requests, by the API server's metric: renamed in
/// 1.23 (`apiserver_longrunning_gauge` before).
const OPEN: &[&str] = &[
    "apiserver_longrunning_requests",
    "apiserver_longrunning_gauge",
];
/// Finished requests (a watch counts once it ended).
const ENDED: &[&str] = &["apiserver_request_total"];

/// The API server's count of MeshApp watches (`verb="WATCH"`) with `scope`
/// (`cluster` or `namespace`), from the first metric of `names` it serves
/// (none served fails, rather than counting nothing).
fn meshapp_watches(c: &KubeCluster, names: &[&str], scope: &str) -> f64 {
    let text = c.kubectl(&["get", "--raw", "/metrics"]).unwrap();
    let series = |name: &str| format!("{name}{{");
    let name = names
        .iter()
        .find(|n| text.lines().any(|l| l.starts_with(&series(n))))
        .unwrap_or_else(|| panic!("the API server serves none of {names:?}"));
    let want = [
        r#"resource="meshapps""#.to_string(),
        r#"verb="WATCH""#.to_string(),
        format!(r#"scope="{scope}""#),
    ];
    text.lines()
        .filter(|l| l.starts_with(&series(name)))
        .filter(|l| want.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The apps of `selectors` for `namespaces`, once known.
fn apps(pods: &PodAnnouncements, namespaces: &BTreeSet<String>) -> Option<Vec<String>> {
    pods.selectors(SITE, namespaces)
        .map(|s| s.into_iter().map(|s| s.app).collect())
}

#[test]
fn a_daemon_watches_meshapps_only_in_its_pods_namespaces() {
    let test = "a_daemon_watches_meshapps_only_in_its_pods_namespaces";
    if !runnable(test) {
        return;
    }
    let c = KubeCluster::new(1).expect("start the control plane");
    let cp = c.cp();
    let mut crds = vec!["apply", "-k"];
    let crd_dir = repo_path("crds");
    crds.push(&crd_dir);
    if cp.version() < (1, 25) {
        // kubectl's client-side schema of CRDs lacks x-kubernetes-validations
        // before 1.25; the server drops the field and keeps the rest.
        crds.push("--validate=false");
    }
    cp.kubectl(&crds).expect("apply the CRDs");
    // The daemon's identity and ClusterRole exactly as config/rbac has them
    // (not the whole kustomization: its admission policies need 1.30).
    c.kubectl(&["create", "namespace", SYSTEM_NS]).unwrap();
    c.kubectl(&[
        "apply",
        "-f",
        &repo_path("config/rbac/service_accounts.yaml"),
        "-f",
        &repo_path("config/rbac/node_daemon_role.yaml"),
    ])
    .expect("apply the daemon's RBAC");
    c.register_nodes().unwrap();
    // The CRDs serve a moment after they are created.
    wait_for("MeshApps to be served", WAIT, POLL, || {
        Ok(c.kubectl(&["get", "meshapps", "-A"]).is_ok().then_some(()))
    })
    .unwrap();
    for ns in ["a", "b"] {
        c.kubectl(&["create", "namespace", ns]).unwrap();
        c.ensure_default_service_account(ns).unwrap();
    }
    c.apply_json(&meshapp("a", "web", "web")).unwrap();
    c.apply_json(&meshapp("b", "other", "web")).unwrap();
    c.apply_json(&meshapp("b", "more", "db")).unwrap();
    let node = c.node_name(1);
    let labels: BTreeMap<String, String> = [("tier".to_string(), "web".to_string())].into();
    c.create_pod_object("a", "web-1", &node, &labels, "default")
        .unwrap();
    // Namespace b has a pod too, on another node: not this daemon's.
    c.create_pod_object("b", "web-1", "some-other-node", &labels, "default")
        .unwrap();

    let kubeconfig = c
        .local_kubeconfig_as(SYSTEM_NS, "weft-node-daemon", None)
        .unwrap();
    // The API server listens in the control plane's network namespace: the
    // client's threads enter it (only tasks on them open connections).
    let cp_ns = cp.netns().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || netns::enter(&cp_ns).expect("enter the control plane's netns"))
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        // As the daemon's own client (weft_node_daemon::kubeapi::client).
        config.default_retry = false;
        anyhow::Ok(kube::Client::try_from(config)?)
    });
    let pods = PodAnnouncements::start(
        client.unwrap(),
        &node,
        rt.handle(),
        weft_node_daemon::wake::Wake::default(),
    );
    // Every namespace the daemon watched at any point of the test (a watch
    // lives at least its linger, minutes, so polling cannot miss one).
    let mut ever: BTreeSet<String> = BTreeSet::new();
    let mut watched = |pods: &PodAnnouncements| {
        let now = pods.watched_namespaces();
        ever.extend(now.iter().cloned());
        now
    };

    // The pod of this node alone makes its namespace watched (no ADD asked).
    wait_for(
        "namespace a watched for this node's pod",
        WAIT,
        POLL,
        || Ok((watched(&pods) == set(&["a"])).then_some(())),
    )
    .unwrap();
    let scanned: Vec<String> = pods
        .scan()
        .iter()
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect();
    assert_eq!(
        scanned,
        ["a/web-1"],
        "the pod watch holds this node's pods only"
    );

    let a = set(&["a"]);
    let known = wait_for("the apps of namespace a", WAIT, POLL, || {
        watched(&pods);
        Ok(apps(&pods, &a))
    })
    .unwrap();
    assert_eq!(known, ["a/web"], "a's apps only");

    // An app created later in a shows up through the watch.
    c.apply_json(&meshapp("a", "late", "db")).unwrap();
    wait_for("a/late in the selectors of a", WAIT, POLL, || {
        watched(&pods);
        Ok(apps(&pods, &a).filter(|s| s.iter().any(|x| x == "a/late")))
    })
    .map(|s| assert_eq!(s, ["a/late", "a/web"]))
    .unwrap();

    // Apps changing in b (and their status writes) reach nobody here.
    c.apply_json(&meshapp("b", "late", "web")).unwrap();
    c.kubectl(&["delete", "meshapp", "-n", "b", "more", "--wait=false"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(apps(&pods, &a).unwrap(), ["a/late", "a/web"]);
    assert_eq!(watched(&pods), set(&["a"]));
    assert_eq!(
        ever,
        set(&["a"]),
        "the daemon watched MeshApps outside its pods' namespaces"
    );
    // And as the API server counts them (nothing else watches MeshApps
    // here): no cluster-wide MeshApp watch is open or was (a watch counts
    // in requests only once it ended), and exactly one namespaced one is open.
    for names in [OPEN, ENDED] {
        assert_eq!(
            meshapp_watches(&c, names, "cluster"),
            0.0,
            "{names:?}: a cluster-wide MeshApp watch"
        );
    }
    assert_eq!(
        meshapp_watches(&c, OPEN, "namespace"),
        1.0,
        "namespaced MeshApp watches open"
    );
    drop(pods);
    rt.shutdown_timeout(Duration::from_secs(2));
}

/// The bench's (k) settling window is the daemon's own settling period.
#[test]
fn the_bench_settling_window_is_the_daemons() {
    assert_eq!(
        weft_e2e::manyapps::SETTLING_WINDOW,
        weft_node_daemon::run::SETTLING
    );
}
