//! (l) of `weft-bench`: Kubernetes mode against a real kube-apiserver, with
//! the operator and the node daemons started from the manifests of
//! `config/default` and the kubelet's part played by [`crate::kubelet`]
//! (each pod's CNI chain run as a runtime runs it). All at the shipped
//! default intervals. Two figures:
//!
//! * **apply to first packet**: two pods already run on two nodes, labelled
//!   for an app that does not exist yet (their CNI ADD passed them through,
//!   unmeshed); from `kubectl apply` of the MeshApp to the first UDP
//!   datagram from one pod reaching the other over the app network;
//! * **CNI ADD**: once the app is planned on both nodes, the wall time of a
//!   new pod's whole ADD chain (the bridge plugin, then `weft-cni`, which
//!   answers when the daemon has attached the pod), from after the Pod
//!   object was created, as a kubelet runs the chain. Beside it, the same
//!   chain for a pod of no app, which `weft-cni` passes through.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::kubelet::KubeCluster;
use crate::traffic::{udp_probe_until_ok, UdpEcho};

/// The namespace the bench's apps and pods live in.
const NS: &str = "bench";
/// Port of the echo in the receiving pod.
const PORT: u16 = 7777;
/// How long one measurement may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The figures of one run of (l).
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// `kubectl apply` to the first packet, per app, in ms.
    pub apply_to_first_ms: Vec<f64>,
    /// A pod's CNI ADD chain once its app is planned, in ms.
    pub cni_add_ms: Vec<f64>,
    /// The same chain for pods of no app (weft-cni passes them through once
    /// it is sure no app claims them), in ms.
    pub cni_add_unmeshed_ms: Vec<f64>,
    /// kube-apiserver version the figures were taken against.
    pub server: String,
}

fn meshapp(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "MeshApp",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"matchLabels": {"bench": name}}}
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs (l): `apps` apps, each measured once for apply-to-first-packet and
/// once for a CNI ADD on each node.
pub fn measure(apps: usize) -> Result<Figures> {
    let mut c = KubeCluster::new(2)?;
    let res = run(&mut c, apps);
    if res.is_err() {
        eprintln!("operator:\n{}", c.operator_log_tail(20));
        for i in 1..=2 {
            eprintln!("daemon {i}:\n{}", c.daemon_log_tail(i, 20));
        }
    }
    let problems = c.teardown();
    if !problems.is_empty() {
        eprintln!("(l) teardown: {problems:?}");
    }
    res
}

fn run(c: &mut KubeCluster, apps: usize) -> Result<Figures> {
    let mut f = Figures {
        server: c.cp().version_text(),
        ..Default::default()
    };
    c.apply_kustomization("config/default", &[])?;
    c.register_nodes()?;
    c.load_workload_specs()?;
    c.start_operator(1)?;
    c.start_daemons()?;
    for i in 1..=2 {
        c.wait_cni_chained(i)?;
    }
    c.kubectl(&["create", "namespace", NS])?;
    c.ensure_default_service_account(NS)?;
    c.kubectl(&[
        "apply",
        "-f",
        &crate::kubelet::repo_path("examples/site.yaml"),
    ])?;

    for a in 0..apps {
        let app = format!("b{a}");
        let first = c.run_pod(NS, &format!("{app}-1"), 1, &[("bench", &app)])?;
        let second = c.run_pod(NS, &format!("{app}-2"), 2, &[("bench", &app)])?;
        let (from, to) = (
            c.pod(first).netns.name().to_string(),
            c.pod(second).netns.name().to_string(),
        );
        let echo = UdpEcho::start(&to, PORT)?;
        let t0 = Instant::now();
        c.apply_json(&meshapp(&app))?;
        let applied = t0.elapsed();
        let addr = crate::wait_for(
            &format!("{app}-2's app address"),
            TIMEOUT,
            Duration::from_millis(5),
            || c.pod(second).app_address(),
        )?;
        udp_probe_until_ok(
            &from,
            SocketAddrV4::new(addr, PORT),
            Duration::from_millis(5),
            TIMEOUT.saturating_sub(t0.elapsed()),
        )
        .with_context(|| format!("first packet of {app}"))?;
        let took = t0.elapsed();
        drop(echo);
        println!(
            "  apply to first packet, {app}: {:.0} ms (kubectl apply itself returned after {:.0} ms)",
            ms(took),
            ms(applied)
        );
        f.apply_to_first_ms.push(ms(took));

        // The app is planned on both nodes now: a new pod of it on each.
        for node in 1..=2 {
            let k = c.run_pod(NS, &format!("{app}-n{node}"), node, &[("bench", &app)])?;
            let took = c.pod(k).add_took;
            let attached = c.pod(k).app_address()?;
            anyhow::ensure!(
                attached.is_some(),
                "{app}-n{node}: the ADD answered without attaching the pod"
            );
            println!(
                "  CNI ADD of a pod of {app} on node {node}: {:.0} ms",
                ms(took)
            );
            f.cni_add_ms.push(ms(took));
        }
        let k = c.run_pod(NS, &format!("plain-{a}"), 1, &[("tier", "none")])?;
        f.cni_add_unmeshed_ms.push(ms(c.pod(k).add_took));
        anyhow::ensure!(
            c.pod(k).app_address()?.is_none(),
            "a pod of no app got an app address"
        );
    }
    Ok(f)
}
