//! A MeshApp applied to pods that already run: against a real
//! kube-apiserver (see `control_plane.rs` for the set-up and what the test
//! needs), two pods start on two nodes labelled for an app that does not
//! exist yet, so their CNI ADD passes them through unmeshed; then the app
//! is applied, and both pods must join it without a restart and reach each
//! other over the app network. (Before, a pod the daemon had answered "no
//! app" was forgotten, and joined only when it was started again.) While
//! the app is refused, its key is already made on the pods' nodes; once
//! fixed, the node uses that key.

use std::time::Duration;

use serde_json::json;
use weft_e2e::apiserver::binaries::Binaries;
use weft_e2e::cni::missing_cni_plugins;
use weft_e2e::kubelet::{repo_path, KubeCluster};
use weft_e2e::scenario;
use weft_e2e::traffic::ping_until_ok;

const NS: &str = "late";
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

#[test]
fn pods_running_before_their_app_join_it_when_it_is_applied() {
    if !runnable("pods_running_before_their_app_join_it_when_it_is_applied") {
        return;
    }
    let mut c = KubeCluster::new(2).unwrap();
    c.apply_kustomization("config/default", &[]).unwrap();
    c.register_nodes().unwrap();
    c.load_workload_specs().unwrap();
    c.start_operator(1).unwrap();
    c.start_daemons().unwrap();
    for i in 1..=2 {
        c.wait_cni_chained(i).unwrap();
    }
    c.kubectl(&["create", "namespace", NS]).unwrap();
    c.ensure_default_service_account(NS).unwrap();
    c.kubectl(&["apply", "-f", &repo_path("examples/site.yaml")])
        .unwrap();

    let p1 = c.run_pod(NS, "early-1", 1, &[("role", "early")]).unwrap();
    let p2 = c.run_pod(NS, "early-2", 2, &[("role", "early")]).unwrap();
    for p in [p1, p2] {
        assert_eq!(
            c.pod(p).app_address().unwrap(),
            None,
            "{}: no app yet, so no app interface",
            c.pod(p).name
        );
    }

    // First a version the operator refuses (a range no IPv4 network has;
    // 1.20 has no CEL to refuse it at the door): never planned, yet the
    // node of a pod it claims already holds its key, public half in status.
    let app = |range: &str| {
        json!({
            "apiVersion": "weft.dev/v1alpha1",
            "kind": "MeshApp",
            "metadata": {"name": "late", "namespace": NS},
            "spec": {"addressSpace": range, "selector": {"matchLabels": {"role": "early"}}}
        })
    };
    c.apply_json(&app("999.1.0.0/16")).unwrap();
    let node1 = c.node_name(1);
    let status = |c: &KubeCluster| -> serde_json::Value {
        let out = c
            .kubectl(&["get", "meshnode", &node1, "-o", "json"])
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"].clone()
    };
    let prepared = weft_e2e::wait_for(
        "node 1 to prepare the app's key",
        WAIT,
        Duration::from_millis(100),
        || {
            let st = status(&c);
            Ok(st["preparedKeys"].as_array().and_then(|keys| {
                keys.iter()
                    .find(|k| k["app"] == "late/late")
                    .and_then(|k| k["publicKey"].as_str().map(String::from))
            }))
        },
    )
    .unwrap();
    assert_eq!(prepared.len(), 44, "a base64 public key: {prepared}");

    c.apply_json(&app("10.91.0.0/16")).unwrap();
    let address = |p: usize| {
        weft_e2e::wait_for(
            &format!("{} to join the app", c.pod(p).name),
            WAIT,
            Duration::from_millis(100),
            || c.pod(p).app_address(),
        )
        .map_err(|e| {
            format!(
                "{e:#}\n{}\n{}\n{}",
                c.operator_log_tail(20),
                c.daemon_log_tail(1, 20),
                c.daemon_log_tail(2, 20)
            )
        })
        .unwrap()
    };
    let (a1, a2) = (address(p1), address(p2));
    // The node uses exactly the key its peers were given, and keeps no
    // prepared key once the app is here.
    let st = status(&c);
    let used = st["apps"]
        .as_array()
        .and_then(|apps| apps.iter().find(|a| a["app"] == "late/late"))
        .and_then(|a| a["publicKey"].as_str())
        .map(String::from);
    assert_eq!(used.as_deref(), Some(prepared.as_str()), "status: {st}");
    assert!(st["preparedKeys"].is_null(), "status: {st}");
    ping_until_ok(c.pod(p1).netns.name(), a2, WAIT).unwrap();
    ping_until_ok(c.pod(p2).netns.name(), a1, WAIT).unwrap();

    // A pod that joined late is deleted like any other: its CNI DEL, which
    // answers only once the daemon has detached it, succeeds.
    c.delete_pod(p1).unwrap();
    let problems = c.teardown();
    assert!(problems.is_empty(), "teardown: {problems:?}");
}
