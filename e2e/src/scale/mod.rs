//! The control-plane scale benchmark (`weft-bench-scale`, `make bench-scale`):
//! a synthetic cluster generated here, driven through the operator's own
//! pass (the standalone loop's `tick`, the Kubernetes `reconcile_all` against
//! the scripted [`FakeApi`](crate::fakeapi::FakeApi)), no daemons.
//!
//! ```text
//!  parent: for each size and mode ─► child process (own peak RSS, killed over the cap)
//!  child:  Cluster ─► files / objects ─► full pass, converged passes, add an app,
//!          keys arrive, move a workload, restart ─► `METRIC key value` lines
//!  parent: lines ─► tables with growth factors and the issue's targets
//! ```
//!
//! Unlike the rest of this crate nothing here needs root.

pub mod k8s;
pub mod report;
pub mod standalone;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use base64::Engine;
use weft_api::{AppStatus, MeshAppSpec, MeshNodeStatus, Selector, WorkloadStatus};
use weft_operator::planner::PlannerConfig;

/// The sizes of issue 10: 1,000 apps on 100 nodes up to 10,000 on 1,000,
/// and one app on every one of 2,000 nodes.
pub const DEFAULT_SIZES: &str = "100x1000,200x2000,1000x5000,1000x10000,2000x1/all";
/// Tiny sizes for a smoke test (`--quick`).
pub const QUICK_SIZES: &str = "6x10,12x40,8x1/all";

/// Nodes each app runs on when a size does not say.
pub const DEFAULT_NODES_PER_APP: usize = 3;

/// How many nodes each app of a size runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// This many nodes (round-robin).
    Nodes(usize),
    /// Every node.
    All,
}

/// One cluster shape: `NODESxAPPS[/PER]`, PER a count or `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Registered nodes.
    pub nodes: usize,
    /// MeshApps.
    pub apps: usize,
    /// Nodes of each app.
    pub spread: Spread,
}

impl Size {
    /// Nodes each app actually runs on (never more than the cluster has).
    pub fn per_app(&self) -> usize {
        match self.spread {
            Spread::Nodes(k) => k.min(self.nodes),
            Spread::All => self.nodes,
        }
    }

    /// Nodes of the app the benchmark adds: like the others, except next to
    /// an app on every node, where it is a small app (3 nodes), so the
    /// figure shows what one small change costs beside a huge app.
    pub fn added_app_nodes(&self) -> usize {
        match self.spread {
            Spread::Nodes(_) => self.per_app(),
            Spread::All => DEFAULT_NODES_PER_APP.min(self.nodes),
        }
    }

    /// Workloads in the cluster (one per app and node).
    pub fn workloads(&self) -> usize {
        self.apps * self.per_app()
    }

    /// Whether a run of `self` that blew the memory cap or the time limit
    /// says `other` would too (at least as many nodes, apps and workloads).
    pub fn dominated_by(&self, other: &Size) -> bool {
        other.nodes >= self.nodes
            && other.apps >= self.apps
            && other.workloads() >= self.workloads()
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.nodes, self.apps)?;
        match self.spread {
            Spread::Nodes(DEFAULT_NODES_PER_APP) => Ok(()),
            Spread::Nodes(k) => write!(f, "/{k}"),
            Spread::All => write!(f, "/all"),
        }
    }
}

impl FromStr for Size {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (shape, spread) = match s.split_once('/') {
            Some((shape, "all")) => (shape, Spread::All),
            Some((shape, k)) => (
                shape,
                Spread::Nodes(k.parse().with_context(|| format!("{s}: nodes per app"))?),
            ),
            None => (s, Spread::Nodes(DEFAULT_NODES_PER_APP)),
        };
        let (n, m) = shape
            .split_once('x')
            .with_context(|| format!("{s}: expected NODESxAPPS[/PER|/all]"))?;
        let size = Size {
            nodes: n.trim().parse().with_context(|| format!("{s}: nodes"))?,
            apps: m.trim().parse().with_context(|| format!("{s}: apps"))?,
            spread,
        };
        if size.nodes < 2 || size.apps == 0 || size.spread == Spread::Nodes(0) {
            bail!("{s}: at least 2 nodes, 1 app and 1 node per app");
        }
        Ok(size)
    }
}

/// Parses a comma-separated list of sizes.
pub fn parse_sizes(s: &str) -> Result<Vec<Size>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse())
        .collect()
}

/// Which control loop a child drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// `Standalone::tick` over a state directory.
    Standalone,
    /// `k8s::reconcile_all` against the fake API server.
    Kubernetes,
}

impl Mode {
    /// The name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Kubernetes => "kubernetes",
        }
    }
}

impl FromStr for Mode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "standalone" => Ok(Mode::Standalone),
            "kubernetes" | "k8s" => Ok(Mode::Kubernetes),
            _ => bail!("unknown mode {s:?} (standalone, kubernetes)"),
        }
    }
}

/// How apps get their address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipam {
    /// Allocated by the planner from its pool (the planner's IPAM runs).
    Pool,
    /// `spec.addressSpace` set in every MeshApp.
    Explicit,
}

impl FromStr for Ipam {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pool" => Ok(Ipam::Pool),
            "explicit" => Ok(Ipam::Explicit),
            _ => bail!("unknown ipam {s:?} (pool, explicit)"),
        }
    }
}

/// What a child measures, in the order it measures it. The parent parses
/// `METRIC <key> <value>` lines, so a child killed half-way still reports
/// what it finished.
pub mod keys {
    /// Seconds to generate the cluster (files or objects); not a product figure.
    pub const SETUP_S: &str = "setup_s";
    /// Seconds of the first pass over the whole cluster.
    pub const FULL_S: &str = "full_s";
    /// Kubernetes mode: seconds of the first of the passes [`FULL_S`]
    /// counts (every MeshNode written; statuses follow at most 200 a pass).
    pub const FULL_FIRST_S: &str = "full_first_pass_s";
    /// MeshNodes the first pass wrote.
    pub const FULL_MESHNODES: &str = "full_meshnode_writes";
    /// Status / finalizer writes of the first pass.
    pub const FULL_OTHER: &str = "full_other_writes";
    /// Errors the first pass's plan reported (a sane benchmark has none).
    pub const PLAN_ERRORS: &str = "plan_errors";
    /// Largest MeshNode (compact JSON, as stored) after the first pass.
    pub const LARGEST_MESHNODE: &str = "largest_meshnode_bytes";
    /// Median seconds of the passes with nothing new.
    pub const CONVERGED_S: &str = "converged_s";
    /// Slowest pass with nothing new.
    pub const CONVERGED_MAX_S: &str = "converged_max_s";
    /// Most MeshNodes one pass with nothing new wrote.
    pub const CONVERGED_MESHNODES: &str = "converged_meshnode_writes";
    /// Most other writes one pass with nothing new sent.
    pub const CONVERGED_OTHER: &str = "converged_other_writes";
    /// Seconds of the pass that plans a new app (its MeshNodes written).
    pub const ADD_S: &str = "add_s";
    /// MeshNodes that pass wrote.
    pub const ADD_MESHNODES: &str = "add_meshnode_writes";
    /// Seconds of the pass after the new app's keys arrive.
    pub const KEYS_S: &str = "keys_s";
    /// MeshNodes that pass wrote.
    pub const KEYS_MESHNODES: &str = "keys_meshnode_writes";
    /// Seconds of the pass after one workload moved to another node.
    pub const MOVE_S: &str = "move_s";
    /// MeshNodes that pass wrote.
    pub const MOVE_MESHNODES: &str = "move_meshnode_writes";
    /// Seconds of the first pass of a new operator over the same state.
    pub const RESTART_S: &str = "restart_s";
    /// MeshNodes that pass wrote.
    pub const RESTART_MESHNODES: &str = "restart_meshnode_writes";
    /// Seconds of snapshot + `planner::plan` alone on the converged cluster.
    pub const PLAN_ONLY_S: &str = "plan_only_s";
    /// The child's peak resident memory (VmHWM).
    pub const PEAK_RSS: &str = "peak_rss_bytes";
}

/// Prints one measurement for the parent (flushed: the child may be killed).
pub fn emit(key: &str, value: f64) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "METRIC {key} {value}");
    let _ = out.flush();
}

/// Parses a line [`emit`] printed.
pub fn parse_metric(line: &str) -> Option<(String, f64)> {
    let mut parts = line.strip_prefix("METRIC ")?.split_whitespace();
    let key = parts.next()?.to_string();
    let value = parts.next()?.parse().ok()?;
    Some((key, value))
}

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
pub fn proc_status_bytes(pid: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line
        .trim_start_matches(field)
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Median of a non-empty list (the lower middle for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get((v.len().max(1) - 1) / 2).copied().unwrap_or(0.0)
}

/// Namespace of app `j`: apps come in teams of 100 per namespace (the fake
/// API server scans a namespace's list on every status patch).
pub fn app_namespace(j: usize) -> String {
    format!("team-{:03}", j / 100)
}

/// Name of app `j`.
pub fn app_name(j: usize) -> String {
    format!("app-{j:05}")
}

/// `namespace/name` of app `j`.
pub fn app_key(j: usize) -> String {
    format!("{}/{}", app_namespace(j), app_name(j))
}

/// Name of node `n`.
pub fn node_name(n: usize) -> String {
    format!("node-{n:05}")
}

/// IPv4 address of node `n` (172.16.0.0/12, never a network address).
pub fn node_address(n: usize) -> String {
    let i = n + 1;
    format!("172.{}.{}.{}", 16 + (i >> 16), (i >> 8) & 255, i & 255)
}

/// Name of workload `k` of app `j`.
pub fn workload_name(j: usize, k: usize) -> String {
    format!("{}-{k}", app_name(j))
}

/// Labels every workload of app `j` carries (its app's selector).
pub fn workload_labels(j: usize) -> BTreeMap<String, String> {
    [("app".to_string(), app_name(j))].into()
}

/// A stable fake WireGuard public key of app `j` on node `n`.
pub fn public_key(n: usize, j: usize) -> String {
    let mut x = (n as u64) << 32 | j as u64;
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        // splitmix64: distinct inputs give distinct, random-looking keys.
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn ceil_log2(x: usize) -> u8 {
    let mut bits = 0u8;
    while (1usize << bits) < x {
        bits += 1;
    }
    bits
}

/// A workload: app `app`, its `index`-th.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    /// App index.
    pub app: usize,
    /// Index among the app's workloads.
    pub index: usize,
}

/// The synthetic cluster and what its (absent) daemons have reported.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Its shape.
    pub size: Size,
    /// How apps get ranges.
    pub ipam: Ipam,
    /// Apps defined (grows by [`Cluster::add_app`]).
    pub apps: usize,
    /// Workloads by node.
    pub workloads: Vec<BTreeSet<Workload>>,
    /// Apps whose public key each node reported.
    pub keys: Vec<BTreeSet<usize>>,
    app_prefix: u8,
    node_prefix: u8,
}

impl Cluster {
    /// The cluster of `size`, every app placed round-robin and every key
    /// already reported (daemons that caught up: the first pass can reach
    /// the converged state).
    pub fn new(size: Size, ipam: Ipam) -> Result<Cluster> {
        // Room for the apps plus the one added, each with room for its
        // nodes plus one a workload moves to, in 10.0.0.0/8.
        let app_prefix = 8 + ceil_log2(size.apps + 2);
        let node_prefix = app_prefix + ceil_log2(size.per_app() + 2);
        if node_prefix > 30 {
            bail!("{size}: 10.0.0.0/8 has no room for that many apps and nodes per app");
        }
        let mut c = Cluster {
            size,
            ipam,
            apps: 0,
            workloads: vec![BTreeSet::new(); size.nodes],
            keys: vec![BTreeSet::new(); size.nodes],
            app_prefix,
            node_prefix,
        };
        for _ in 0..size.apps {
            let j = c.place_app(size.per_app());
            c.report_keys(j);
        }
        Ok(c)
    }

    /// Planner settings: a /8 pool cut in ranges just large enough.
    pub fn planner_config(&self) -> PlannerConfig {
        PlannerConfig {
            pool: "10.0.0.0/8".parse().unwrap_or_default(),
            app_prefix_len: self.app_prefix,
            ..PlannerConfig::default()
        }
    }

    /// Spec of app `j`.
    pub fn app_spec(&self, j: usize) -> MeshAppSpec {
        let address_space = (self.ipam == Ipam::Explicit).then(|| {
            let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0))
                + ((j as u32) << (32 - u32::from(self.app_prefix)));
            format!("{}/{}", std::net::Ipv4Addr::from(base), self.app_prefix)
        });
        MeshAppSpec {
            selector: Selector::labels([("app", app_name(j))]),
            node_prefix_length: Some(self.node_prefix),
            address_space,
            ..Default::default()
        }
    }

    /// App `j` as a manifest document.
    pub fn app_manifest(&self, j: usize) -> String {
        let spec = self.app_spec(j);
        let range = spec
            .address_space
            .map(|r| format!("  addressSpace: {r}\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {{name: {}, namespace: {}}}\nspec:\n{range}  nodePrefixLength: {}\n  selector: {{matchLabels: {{app: {}}}}}\n",
            app_name(j),
            app_namespace(j),
            self.node_prefix,
            app_name(j)
        )
    }

    /// Node of workload `k` of app `j`: apps follow one another round-robin.
    fn home(&self, j: usize, k: usize) -> usize {
        (j * self.size.per_app() + k) % self.size.nodes
    }

    /// Defines one more app (on [`Size::added_app_nodes`]) with its
    /// workloads, no key reported yet; returns its index.
    pub fn add_app(&mut self) -> usize {
        self.place_app(self.size.added_app_nodes())
    }

    fn place_app(&mut self, nodes: usize) -> usize {
        let j = self.apps;
        self.apps += 1;
        for k in 0..nodes {
            let n = self.home(j, k);
            self.workloads[n].insert(Workload { app: j, index: k });
        }
        j
    }

    /// Nodes carrying a workload of app `j`.
    pub fn nodes_of(&self, j: usize) -> Vec<usize> {
        (0..self.size.nodes)
            .filter(|&n| self.workloads[n].iter().any(|w| w.app == j))
            .collect()
    }

    /// The daemons of app `j`'s nodes report their key for it.
    pub fn report_keys(&mut self, j: usize) {
        for n in self.nodes_of(j) {
            self.keys[n].insert(j);
        }
    }

    /// Moves workload 0 of app 0 to a node that does not run the app (the
    /// next one when every node does). Returns `(workload, from, to)`.
    pub fn move_workload(&mut self) -> (Workload, usize, usize) {
        let w = Workload { app: 0, index: 0 };
        let from = (0..self.size.nodes)
            .find(|&n| self.workloads[n].contains(&w))
            .unwrap_or(0);
        let carrying = self.nodes_of(0);
        let to = (1..self.size.nodes)
            .map(|d| (from + d) % self.size.nodes)
            .find(|n| !carrying.contains(n))
            .unwrap_or((from + 1) % self.size.nodes);
        self.workloads[from].remove(&w);
        self.workloads[to].insert(w);
        (w, from, to)
    }

    /// What node `n`'s daemon reports: heartbeat, workloads, keys.
    pub fn node_status(&self, n: usize, heartbeat: &str) -> MeshNodeStatus {
        MeshNodeStatus {
            heartbeat: Some(heartbeat.to_string()),
            endpoint_address: Some(node_address(n)),
            workloads: self.workloads[n]
                .iter()
                .map(|w| WorkloadStatus {
                    name: workload_name(w.app, w.index),
                    namespace: app_namespace(w.app),
                    labels: workload_labels(w.app),
                    ..Default::default()
                })
                .collect(),
            apps: self.keys[n]
                .iter()
                .map(|&j| AppStatus {
                    app: app_key(j),
                    public_key: public_key(n, j),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        let s: Size = "100x1000".parse().unwrap();
        assert_eq!(s.per_app(), 3);
        assert_eq!(s.to_string(), "100x1000");
        let s: Size = "2000x1/all".parse().unwrap();
        assert_eq!((s.per_app(), s.to_string().as_str()), (2000, "2000x1/all"));
        assert_eq!("10x4/5".parse::<Size>().unwrap().to_string(), "10x4/5");
        assert!("10".parse::<Size>().is_err());
        assert!("1x1".parse::<Size>().is_err());
    }

    #[test]
    fn apps_are_spread_round_robin_and_a_move_changes_one_node() {
        let mut c = Cluster::new("5x4".parse().unwrap(), Ipam::Pool).unwrap();
        assert_eq!(c.nodes_of(0), [0, 1, 2]);
        assert_eq!(c.nodes_of(1), [0, 3, 4]);
        let total: usize = c.workloads.iter().map(BTreeSet::len).sum();
        assert_eq!(total, 12);
        let (_, from, to) = c.move_workload();
        assert_eq!((from, to), (0, 3));
        assert_eq!(c.nodes_of(0), [1, 2, 3]);
        let j = c.add_app();
        assert_eq!(c.nodes_of(j), [2, 3, 4]);
    }

    #[test]
    fn keys_differ_and_ranges_fit() {
        assert_ne!(public_key(1, 2), public_key(2, 1));
        assert_eq!(public_key(0, 0).len(), 44);
        let mut c = Cluster::new("4x10/all".parse().unwrap(), Ipam::Explicit).unwrap();
        let j = c.add_app();
        assert_eq!(c.nodes_of(j).len(), 3);
        assert_eq!(c.app_spec(1).address_space.as_deref(), Some("10.16.0.0/12"));
        assert_eq!(c.app_spec(1).node_prefix_length, Some(15));
    }
}
