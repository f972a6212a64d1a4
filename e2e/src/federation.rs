//! The federation scenario the tests and the demo share: two control
//! planes and a directory hub on one simulated WAN, with the manifests of
//! `examples/federation/`.
//!
//! ```text
//!  node 1  cluster-a            ─┐
//!  node 2  edge-a (of cluster-a) ├─ one WAN ── hub directory (weft-operator hub)
//!  node 3  cluster-b            ─┘
//! ```
//! App `demo/shop` spans all three; `demo/ledger-a` (nodes 1, 2) and
//! `demo/ledger-b` (node 3) are unrelated apps of each cluster.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cluster::Cluster;

/// Namespace of the apps.
pub const NS: &str = "demo";
/// Nodes: (index, site, member whose operator runs it).
pub const NODES: [(usize, &str, &str); 3] = [
    (1, "cluster-a", "cluster-a"),
    (2, "edge-a", "cluster-a"),
    (3, "cluster-b", "cluster-b"),
];
/// Workloads: (name, node, app label).
pub const WORKLOADS: [(&str, usize, &str); 5] = [
    ("shop-1", 1, "shop"),
    ("shop-2", 2, "shop"),
    ("shop-3", 3, "shop"),
    ("ledger-2", 2, "ledger"),
    ("ledger-3", 3, "ledger"),
];

/// `examples/federation/` of the repository.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/federation")
}

/// An example manifest with the hub directory put in, and the grace
/// periods shortened to `stale`/`prune` seconds when given.
pub fn manifest(c: &Cluster, file: &str, grace: Option<(u32, u32)>) -> Result<String> {
    let path = examples_dir().join(file);
    let mut text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text = text.replace("/var/lib/weft-hub", &c.hub_dir().to_string_lossy());
    if let Some((stale, prune)) = grace {
        text = text
            .replace(
                "staleAfterSeconds: 30",
                &format!("staleAfterSeconds: {stale}"),
            )
            .replace(
                "pruneAfterSeconds: 300",
                &format!("pruneAfterSeconds: {prune}"),
            );
    }
    Ok(text)
}

/// Builds the scenario in `c` (a [`Cluster::new`] of 3 nodes, nothing
/// started): the member cluster-b for node 3, the hub, both operators, the
/// daemons and the workloads.
pub fn start(c: &mut Cluster, grace: Option<(u32, u32)>) -> Result<()> {
    c.add_member("cluster-b", &[3])?;
    for (i, site, _) in NODES {
        c.set_daemon_args(i, &["--site", site]);
    }
    c.apply_manifest("federation.yaml", &manifest(c, "cluster-a.yaml", grace)?)?;
    c.apply_member_manifest(
        "cluster-b",
        "federation.yaml",
        &manifest(c, "cluster-b.yaml", grace)?,
    )?;
    c.start_hub(&manifest(c, "hub.yaml", grace)?)?;
    c.start_operator()?;
    c.start_member_operator("cluster-b")?;
    for (i, _, _) in NODES {
        c.start_daemon(i)?;
    }
    for (name, node, app) in WORKLOADS {
        c.add_workload(node, name, NS, &[("app", app)])?;
    }
    Ok(())
}

/// `weft-operator hub-status` of the scenario's hub.
pub fn hub_status(c: &Cluster) -> Result<String> {
    let out = std::process::Command::new(crate::bin("weft-operator")?)
        .args(["hub-status", "--dir"])
        .arg(c.hub_dir())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "weft-operator hub-status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// A test's scenario, started (grace periods `grace` as in [`manifest`]);
/// `None` when the test is skipped for want of privileges (see
/// [`crate::scenario::privileged_or_skip`]).
pub fn start_for_test(test: &str, grace: Option<(u32, u32)>) -> Option<Cluster> {
    if !crate::scenario::privileged_or_skip(test) {
        return None;
    }
    for b in ["weft-operator", "weft-node-daemon"] {
        if let Err(e) = crate::bin(b) {
            panic!("{e:#}: run `cargo build --workspace` first");
        }
    }
    let mut c = Cluster::new(3).expect("build the simulated network");
    start(&mut c, grace).expect("start the federation");
    Some(c)
}

/// Waits until `NS/app` is Ready in `member`'s state (cluster-a's when
/// `None`) and returns its status; panics with the status otherwise.
pub fn wait_ready(
    c: &mut Cluster,
    member: Option<&str>,
    app: &str,
    timeout: std::time::Duration,
) -> weft_api::MeshAppStatus {
    c.check_alive().unwrap();
    let state = match member {
        Some(m) => c.member_state(m).clone(),
        None => c.state().clone(),
    };
    crate::status::wait_for_ready(&state, NS, app, timeout)
        .unwrap_or_else(|e| panic!("{NS}/{app} in {member:?} not Ready: {e:#}"))
}
