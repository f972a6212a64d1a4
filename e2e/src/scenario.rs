//! The standard scenario shared by the demo, the e2e test and the benchmark:
//! two apps in namespace `demo`, `web` (selects `tier: web`) and `db`
//! (selects `weft.dev/app: db`), each with one workload on each of two nodes.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cluster::Cluster;
use crate::traffic::which;

/// Namespace of the scenario's apps.
pub const NS: &str = "demo";
/// Manifest file of the `web` app.
pub const WEB_FILE: &str = "web.yaml";
/// Manifest file of the `db` app.
pub const DB_FILE: &str = "db.yaml";

/// A MeshApp manifest.
pub fn app_manifest(
    name: &str,
    namespace: &str,
    match_labels: &[(&str, &str)],
    address_space: Option<&str>,
) -> String {
    let mut s = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  selector:\n    matchLabels:\n"
    );
    for (k, v) in match_labels {
        s.push_str(&format!("      {k}: {v}\n"));
    }
    if let Some(a) = address_space {
        s.push_str(&format!("  addressSpace: {a}\n"));
    }
    s
}

/// Whether some YAML file text defines MeshApp `ns/name` (a textual check,
/// enough for example files).
fn defines_app(text: &str, ns: &str, name: &str) -> bool {
    text.split("\n---").any(|doc| {
        doc.contains("kind: MeshApp")
            && doc.lines().any(|l| l.trim() == format!("name: {name}"))
            && doc.lines().any(|l| l.trim() == format!("namespace: {ns}"))
    })
}

/// Applies every manifest in `examples_dir` (what a user would apply), and
/// checks it defines the scenario's `web` and `db` apps in their own files
/// (`web.yaml`, `db.yaml`), so the examples cannot silently rot. Returns the
/// file names written.
pub fn install_manifests(cluster: &Cluster, examples_dir: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let (mut have_web, mut have_db) = (false, false);
    let mut files: Vec<_> = std::fs::read_dir(examples_dir)
        .with_context(|| format!("read {}", examples_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .filter(|p| p.file_name().is_none_or(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?;
        let name = f
            .file_name()
            .context("file name")?
            .to_string_lossy()
            .into_owned();
        have_web |= name == WEB_FILE && defines_app(&text, NS, "web");
        have_db |= name == DB_FILE && defines_app(&text, NS, "db");
        cluster.apply_manifest(&name, &text)?;
        written.push(name);
    }
    anyhow::ensure!(
        have_web && have_db,
        "{} must define MeshApp {NS}/web in {WEB_FILE} and {NS}/db in {DB_FILE}",
        examples_dir.display()
    );
    Ok(written)
}

/// Announces the four workloads: `web-1`/`db-1` on node 1, `web-2`/`db-2` on node 2.
pub fn add_workloads(cluster: &mut Cluster) -> Result<()> {
    for i in 1..=2 {
        cluster.add_workload(i, &format!("web-{i}"), NS, &[("tier", "web")])?;
        cluster.add_workload(
            i,
            &format!("db-{i}"),
            NS,
            &[(weft_api::labels::APP_LABEL, "db")],
        )?;
    }
    Ok(())
}

/// Addresses of the four workloads once the daemons attached them.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    /// web-1 (node 1).
    pub web1: Ipv4Addr,
    /// web-2 (node 2).
    pub web2: Ipv4Addr,
    /// db-1 (node 1).
    pub db1: Ipv4Addr,
    /// db-2 (node 2).
    pub db2: Ipv4Addr,
}

/// Waits for the four workload addresses.
pub fn wait_addresses(cluster: &mut Cluster, timeout: Duration) -> Result<Addrs> {
    Ok(Addrs {
        web1: cluster.wait_address("web-1", timeout)?,
        web2: cluster.wait_address("web-2", timeout)?,
        db1: cluster.wait_address("db-1", timeout)?,
        db2: cluster.wait_address("db-2", timeout)?,
    })
}

/// What is missing to run privileged scenarios (root, `ip`, `ping`), if anything.
pub fn missing_privileges() -> Option<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root privileges".to_string());
    }
    for tool in ["ip", "ping"] {
        if which(tool).is_none() {
            missing.push(format!("the `{tool}` tool"));
        }
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// For tests: `true` if the privileged scenario can run. Otherwise panics
/// under CI (`CI=true`: a skip there is a failure) or prints `SKIPPED: ...`.
pub fn privileged_or_skip(test: &str) -> bool {
    require(test, [], "")
}

/// Like [`privileged_or_skip`], with more requirements: `extra` lists what
/// else is missing, `hint` says how to get it.
pub fn require(test: &str, extra: impl IntoIterator<Item = String>, hint: &str) -> bool {
    let mut missing: Vec<String> = missing_privileges().into_iter().collect();
    missing.extend(extra);
    if missing.is_empty() {
        return true;
    }
    let m = missing.join(", ");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: cannot run under CI, missing {m}{hint}");
    }
    println!("SKIPPED: {test}: missing {m}");
    false
}

/// For tests: `nodes` simulated nodes with the operator and their daemons
/// running, or `None` when the test is skipped (see [`privileged_or_skip`]).
/// The binaries must have been built (`cargo build --workspace`).
pub fn started_cluster(test: &str, nodes: usize) -> Option<crate::cluster::Cluster> {
    if !privileged_or_skip(test) {
        return None;
    }
    for b in ["weft-operator", "weft-node-daemon"] {
        if let Err(e) = crate::bin(b) {
            panic!("{e:#}: run `cargo build --workspace` first");
        }
    }
    let mut c = crate::cluster::Cluster::new(nodes).expect("build the simulated network");
    c.start_all().expect("start operator and daemons");
    Some(c)
}

/// [`started_cluster`] with the repository's `examples/` applied.
pub fn cluster_with_examples(test: &str, nodes: usize) -> Option<crate::cluster::Cluster> {
    let c = started_cluster(test, nodes)?;
    install_manifests(&c, &repo_examples_dir()).expect("write manifests");
    Some(c)
}

/// Path of the repository's `examples/` directory (from this crate's location).
pub fn repo_examples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
}
