//! A node with many apps (`weft-bench` (k)): `n` MeshApps, each with one
//! workload on node 1, applied at once. Measured: cold programming (from
//! the manifest to the node reporting every app programmed), the daemon's
//! mean pass and CPU share while it settles ([`SETTLING_WINDOW`], passes at
//! its short interval), then at rest the same over [`IDLE_WINDOW`] and its
//! resident memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cluster::Cluster;
use crate::procs::{cpu_seconds, rss_kib};

/// How long the node is watched at rest: long enough to take in the
/// daemon's slower periodic work (netns re-reads, connection counts), so
/// the figure is what a node costs over time.
pub const IDLE_WINDOW: Duration = Duration::from_secs(40);

/// How long after its last write a daemon still counts as settling and
/// passes at its short interval (the daemon's `run::SETTLING`, which a test
/// keeps equal): the first window covers it, the at-rest window starts
/// after it.
pub const SETTLING_WINDOW: Duration = Duration::from_secs(30);

/// The daemon over one window.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Mean pass (ms) and the passes it is over.
    pub pass_ms: Option<(f64, f64)>,
    /// CPU, in % of one core.
    pub cpu_percent: f64,
}

/// What `n` apps on one node cost.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Apps.
    pub apps: usize,
    /// Manifest written to every app programmed on the node.
    pub cold: Duration,
    /// The [`SETTLING_WINDOW`] right after programming.
    pub settling: Window,
    /// Mean daemon pass at rest (ms) and the passes it is over.
    pub pass_ms: Option<(f64, f64)>,
    /// The daemon's CPU at rest, in % of one core.
    pub cpu_percent: f64,
    /// The daemon's resident memory at rest (KiB).
    pub rss_kib: Option<u64>,
}

/// One app per workload: explicit ranges (the default pool holds 64 apps
/// of /16), small node slices.
pub fn manifest(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "---\napiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {{name: bulk-{i}, namespace: bulk}}\nspec:\n  addressSpace: 10.{}.{}.0/24\n  nodePrefixLength: 28\n  selector: {{matchLabels: {{app: bulk-{i}}}}}\n",
            200 + i / 256,
            i % 256
        ));
    }
    out
}

/// (sum of seconds, count) of node `i`'s reconcile passes.
fn pass_stats(c: &Cluster, i: usize) -> Option<(f64, f64)> {
    let (_, body) = c.daemon_http_get(i, "/metrics").ok()?;
    let v = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    Some((
        v("weft_node_reconcile_duration_seconds_sum")?,
        v("weft_node_reconcile_duration_seconds_count")?,
    ))
}

/// Runs the measurement on a started cluster (node 1 gets the workloads).
pub fn measure(c: &mut Cluster, n: usize, timeout: Duration) -> Result<Figures> {
    for i in 0..n {
        let name = format!("bulk-{i}");
        c.add_workload(1, &name, "bulk", &[("app", &name)])?;
    }
    let started = Instant::now();
    c.apply_manifest("bulk.yaml", &manifest(n))?;
    crate::wait_for(
        &format!("{n} apps programmed on node 1"),
        timeout,
        Duration::from_millis(20),
        || {
            let ready = c.node_status(1)?.map_or(0, |s| s.apps_ready as usize);
            Ok((ready >= n).then_some(()))
        },
    )
    .context("cold programming")?;
    let cold = started.elapsed();
    // Let the last status writes and the operator's answer settle.
    crate::sleep(Duration::from_secs(3))?;
    let pid = c.daemon(1)?.pid();
    let settling = window(c, pid, SETTLING_WINDOW)?;
    let rest = window(c, pid, IDLE_WINDOW)?;
    Ok(Figures {
        apps: n,
        cold,
        settling,
        pass_ms: rest.pass_ms,
        cpu_percent: rest.cpu_percent,
        rss_kib: rss_kib(pid),
    })
}

/// Node 1's daemon (`pid`) over the next `d`.
fn window(c: &Cluster, pid: u32, d: Duration) -> Result<Window> {
    let before = (pass_stats(c, 1), cpu_seconds(pid), Instant::now());
    crate::sleep(d)?;
    let after = (pass_stats(c, 1), cpu_seconds(pid), Instant::now());
    let pass_ms = match (before.0, after.0) {
        (Some((s0, n0)), Some((s1, n1))) if n1 > n0 => Some(((s1 - s0) / (n1 - n0) * 1e3, n1 - n0)),
        _ => None,
    };
    let cpu_percent = match (before.1, after.1) {
        (Some(t0), Some(t1)) => (t1 - t0) / (after.2 - before.2).as_secs_f64() * 100.0,
        _ => f64::NAN,
    };
    Ok(Window {
        pass_ms,
        cpu_percent,
    })
}
