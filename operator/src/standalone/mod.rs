//! The standalone control loop: a state directory plays the API server.
//!
//! ```text
//!  manifests/*.yaml ──┐                          ┌─► nodes/<n>/meshnode.json (only on change)
//!  nodes/<n>/node.json ├─► Snapshot ─► plan ─────┤
//!  nodes/<n>/status.json┘                        └─► status/<kind>/<key>.json (only on change)
//! ```
//!
//! [`Standalone::tick`] does one pass and reports what it wrote, so tests can
//! assert that a pass with nothing new writes nothing.

pub mod files;
pub mod get;
pub mod manifests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use anyhow::Context;
use ipnet::Ipv4Net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use weft_api::standalone::{NodeRegistration, StateDir, StoredStatus};
use weft_api::{
    MeshAppSpec, MeshAppStatus, MeshNode, MeshNodeSpec, MeshNodeStatus, MeshPolicySpec,
    MeshPolicyStatus, MeshSiteSpec, MeshSiteStatus,
};

use crate::planner::{self, NodeInfo, ObjectKey, PlanError, PlannerConfig, Snapshot};
use crate::status::{self, ConditionedStatus, NodeView};
use manifests::{Manifest, ManifestCache};

/// A node whose heartbeat is older than this is lost.
pub const LOST_AFTER_SECONDS: i64 = 30;

/// Settings of the standalone operator.
#[derive(Clone, Debug)]
pub struct StandaloneConfig {
    /// Directory of manifests (MeshApp, MeshPolicy, MeshSite documents).
    pub manifests: PathBuf,
    /// The shared state directory.
    pub state: PathBuf,
    /// Planner settings (pool, prefix, base port).
    pub planner: PlannerConfig,
    /// Seconds before moving counters alone rewrite a MeshApp's traffic
    /// figures (see [`status::TRAFFIC_REFRESH_SECONDS`]).
    pub traffic_refresh_seconds: i64,
}

impl StandaloneConfig {
    /// Defaults for everything but the two directories.
    pub fn new(manifests: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Self {
        StandaloneConfig {
            manifests: manifests.into(),
            state: state.into(),
            planner: PlannerConfig::default(),
            traffic_refresh_seconds: status::TRAFFIC_REFRESH_SECONDS,
        }
    }

    /// Sets how often traffic figures alone rewrite MeshApp status.
    pub fn with_traffic_refresh(mut self, seconds: i64) -> Self {
        self.traffic_refresh_seconds = seconds;
        self
    }

    /// Sets the allocation pool.
    pub fn with_pool(mut self, pool: Ipv4Net) -> Self {
        self.planner.pool = pool;
        self
    }
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TickReport {
    /// Nodes whose meshnode.json was written.
    pub meshnode_writes: Vec<String>,
    /// Status files written, as `plural/key`.
    pub status_writes: Vec<String>,
    /// Status files removed (object gone), as `plural/key`.
    pub status_deletes: Vec<String>,
    /// Every plan error of this tick.
    pub errors: Vec<PlanError>,
    /// Manifest files that do not parse (their last good content is used).
    pub manifest_errors: Vec<(PathBuf, String)>,
}

impl TickReport {
    /// Whether the tick wrote or removed any file.
    pub fn wrote_anything(&self) -> bool {
        !(self.meshnode_writes.is_empty()
            && self.status_writes.is_empty()
            && self.status_deletes.is_empty())
    }
}

/// Stored statuses of one kind, by key.
type Stored<S> = BTreeMap<String, StoredStatus<S>>;

#[derive(Default)]
struct NodeFiles {
    registration: Option<NodeRegistration>,
    status: Option<MeshNodeStatus>,
}

/// The standalone operator's in-memory state between ticks.
pub struct Standalone {
    cfg: StandaloneConfig,
    dir: StateDir,
    manifests: ManifestCache,
    /// Last good node.json / status.json per node.
    nodes: BTreeMap<String, NodeFiles>,
    stored: Option<(
        Stored<MeshAppStatus>,
        Stored<MeshPolicyStatus>,
        Stored<MeshSiteStatus>,
    )>,
    /// Errors logged last tick (each is logged once when it appears).
    logged: BTreeSet<String>,
}

const APPS: &str = "meshapps";
const POLICIES: &str = "meshpolicies";
const SITES: &str = "meshsites";

fn spec_hash<T: Serialize>(spec: &T) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn load_stored<S: DeserializeOwned>(dir: &StateDir, plural: &str) -> Stored<S> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir.status_dir(plural)) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match files::read_json::<StoredStatus<S>>(&path) {
            Ok(Some(s)) => {
                out.insert(s.key.clone(), s);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "ignoring unreadable stored status")
            }
        }
    }
    out
}

impl Standalone {
    /// A loop over the given directories; nothing is read until the first tick.
    pub fn new(cfg: StandaloneConfig) -> Self {
        let dir = StateDir::new(cfg.state.clone());
        Standalone {
            cfg,
            dir,
            manifests: ManifestCache::default(),
            nodes: BTreeMap::new(),
            stored: None,
            logged: BTreeSet::new(),
        }
    }

    /// One pass: read, plan, write what changed.
    pub fn tick(&mut self, now: Timestamp) -> anyhow::Result<TickReport> {
        let mut report = TickReport::default();
        let now_time = Time(now);

        // 1. Manifests.
        for err in self.manifests.refresh(&self.cfg.manifests) {
            tracing::warn!(file = %err.file.display(), error = %err.message, "manifest does not parse; keeping its last good content");
        }
        report.manifest_errors = self
            .manifests
            .current_errors()
            .iter()
            .map(|(p, m)| (p.clone(), m.clone()))
            .collect();
        let mut snapshot = Snapshot {
            config: self.cfg.planner.clone(),
            ..Default::default()
        };
        for (file, obj) in self.manifests.objects() {
            let duplicate = match obj {
                Manifest::App(k, spec) => snapshot.apps.insert(k.clone(), spec.clone()).is_some(),
                Manifest::Policy(k, spec) => {
                    snapshot.policies.insert(k.clone(), spec.clone()).is_some()
                }
                Manifest::Site(n, spec) => snapshot.sites.insert(n.clone(), spec.clone()).is_some(),
                Manifest::Hub(..) => false,
            };
            if duplicate {
                tracing::warn!(file = %file.display(), object = ?obj, "object defined twice; the later file wins");
            }
        }

        // 2. Nodes.
        let node_names = self.refresh_nodes();
        let mut generations: BTreeMap<String, i64> = BTreeMap::new();
        for name in &node_names {
            let Some(files) = self.nodes.get(name) else {
                continue;
            };
            let Some(reg) = &files.registration else {
                continue;
            };
            let lost = files
                .status
                .as_ref()
                .and_then(|s| s.heartbeat.as_deref())
                .and_then(|h| h.parse::<Timestamp>().ok())
                .is_some_and(|hb| {
                    now.duration_since(hb) > SignedDuration::from_secs(LOST_AFTER_SECONDS)
                });
            snapshot.nodes.insert(
                name.clone(),
                NodeInfo {
                    site: reg.site.clone(),
                    address: reg.address.clone(),
                    lost,
                },
            );
            if let Some(st) = &files.status {
                for w in &st.workloads {
                    snapshot.add_workload(
                        name,
                        ObjectKey::new(&w.namespace, &w.name),
                        w.labels.clone(),
                    );
                    if let Some(addr) = &w.address {
                        snapshot.add_workload_address(
                            name,
                            ObjectKey::new(&w.namespace, &w.name),
                            addr.clone(),
                        );
                    }
                }
                for a in &st.apps {
                    if !a.public_key.is_empty() {
                        snapshot.add_public_key(
                            name,
                            ObjectKey::parse(&a.app),
                            a.public_key.clone(),
                        );
                    }
                }
            }
            match files::read_json::<MeshNode>(&self.dir.meshnode(name)) {
                Ok(Some(prev)) => {
                    generations.insert(name.clone(), prev.metadata.generation.unwrap_or(0));
                    snapshot.previous_specs.insert(name.clone(), prev.spec);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(node = %name, error = %format!("{e:#}"), "previous meshnode.json unreadable; rewriting it")
                }
            }
        }

        // 3. Stored statuses (loaded once; memory is authoritative afterwards).
        if self.stored.is_none() {
            self.stored = Some((
                load_stored(&self.dir, APPS),
                load_stored(&self.dir, POLICIES),
                load_stored(&self.dir, SITES),
            ));
        }
        let Some((stored_apps, stored_policies, stored_sites)) = self.stored.as_mut() else {
            anyhow::bail!("stored statuses not loaded");
        };
        for (key, st) in stored_apps.iter() {
            if let Some(range) = &st.status.address_space {
                snapshot
                    .previous_ranges
                    .insert(ObjectKey::parse(key), range.clone());
            }
        }
        for (key, st) in stored_policies.iter() {
            if let Some(e) = &st.status.enforced {
                snapshot
                    .previous_policies
                    .insert(ObjectKey::parse(key), e.clone());
            }
        }

        // 4. Plan.
        let plan = planner::plan(&snapshot);

        // 5. MeshNode specs, only when changed.
        for (name, spec) in &plan.nodes {
            if snapshot.previous_specs.get(name) == Some(spec) && generations.contains_key(name) {
                continue;
            }
            let generation = generations.get(name).copied().unwrap_or(0) + 1;
            write_meshnode(&self.dir, name, spec, generation)
                .with_context(|| format!("writing MeshNode {name}"))?;
            tracing::info!(node = %name, generation, apps = spec.apps.len(), "wrote MeshNode spec");
            generations.insert(name.clone(), generation);
            report.meshnode_writes.push(name.clone());
        }

        // 6. Errors: log each once when it appears.
        let errors: Vec<PlanError> = plan.errors().into_iter().cloned().collect();
        let current: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
        for e in &errors {
            if !self.logged.contains(&e.to_string()) {
                tracing::warn!(object = %e.object, field = %e.field, reason = %e.reason, "{}", e.message);
            }
        }
        for gone in self.logged.difference(&current) {
            tracing::info!(error = %gone, "resolved");
        }
        self.logged = current;
        report.errors = errors;

        // 7. Statuses.
        let views: BTreeMap<String, NodeView<'_>> = snapshot
            .nodes
            .iter()
            .map(|(name, info)| {
                (
                    name.clone(),
                    NodeView {
                        spec_generation: generations.get(name).copied(),
                        status: self.nodes.get(name).and_then(|f| f.status.as_ref()),
                        lost: info.lost,
                    },
                )
            })
            .collect();
        let first_seen = now.to_string();
        let mut writes = Vec::new();
        let mut deletes = Vec::new();
        let traffic_refresh = self.cfg.traffic_refresh_seconds;

        let app_items: BTreeMap<String, (&MeshAppSpec, _)> = snapshot
            .apps
            .iter()
            .filter_map(|(k, spec)| Some((k.to_string(), (spec, plan.apps.get(k)?))))
            .collect();
        sync_kind(
            &self.dir,
            APPS,
            stored_apps,
            &app_items,
            &first_seen,
            &mut writes,
            &mut deletes,
            |key, (_, outcome), generation, prev| {
                status::app_status_with_refresh(
                    &ObjectKey::parse(key),
                    outcome,
                    &views,
                    generation,
                    prev,
                    &now_time,
                    traffic_refresh,
                )
            },
        )?;
        let policy_items: BTreeMap<String, (&MeshPolicySpec, _)> = snapshot
            .policies
            .iter()
            .filter_map(|(k, spec)| Some((k.to_string(), (spec, plan.policies.get(k)?))))
            .collect();
        sync_kind(
            &self.dir,
            POLICIES,
            stored_policies,
            &policy_items,
            &first_seen,
            &mut writes,
            &mut deletes,
            |_, (_, outcome), generation, prev| {
                status::policy_status(outcome, generation, prev, &now_time)
            },
        )?;
        let site_items: BTreeMap<String, (&MeshSiteSpec, _)> = snapshot
            .sites
            .iter()
            .filter_map(|(k, spec)| Some((k.clone(), (spec, plan.sites.get(k)?))))
            .collect();
        sync_kind(
            &self.dir,
            SITES,
            stored_sites,
            &site_items,
            &first_seen,
            &mut writes,
            &mut deletes,
            |_, (_, outcome), generation, prev| {
                status::site_status(outcome, generation, prev, &now_time)
            },
        )?;
        report.status_writes = writes;
        report.status_deletes = deletes;
        Ok(report)
    }

    /// Re-reads node.json and status.json of every node directory, keeping
    /// the last good content of files that do not parse. Returns the nodes
    /// that have a registration.
    fn refresh_nodes(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        if let Ok(entries) = fs::read_dir(self.dir.nodes_dir()) {
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(String::from) else {
                    continue;
                };
                if !entry.path().is_dir() {
                    continue;
                }
                let files = self.nodes.entry(name.clone()).or_default();
                match files::read_json::<NodeRegistration>(&self.dir.registration(&name)) {
                    Ok(Some(r)) => files.registration = Some(r),
                    Ok(None) => files.registration = None,
                    Err(e) => {
                        tracing::warn!(node = %name, error = %format!("{e:#}"), "node.json unreadable; keeping the last good one")
                    }
                }
                match files::read_json::<MeshNodeStatus>(&self.dir.node_status(&name)) {
                    Ok(s @ Some(_)) => files.status = s,
                    Ok(None) => files.status = None,
                    Err(e) => {
                        tracing::debug!(node = %name, error = %format!("{e:#}"), "status.json unreadable; keeping the last good one")
                    }
                }
                if files.registration.is_some() {
                    seen.push(name);
                }
            }
        }
        seen.sort();
        self.nodes.retain(|n, _| seen.contains(n));
        seen
    }
}

fn write_meshnode(
    dir: &StateDir,
    name: &str,
    spec: &MeshNodeSpec,
    generation: i64,
) -> anyhow::Result<()> {
    let mut obj = MeshNode::new(name, spec.clone());
    obj.metadata.generation = Some(generation);
    files::write_json_atomic(&dir.meshnode(name), &obj)
}

/// Brings the stored statuses of one kind in line with the current objects:
/// writes those that changed (ignoring condition times), removes those of
/// objects that are gone.
#[allow(clippy::too_many_arguments)]
fn sync_kind<Spec: Serialize, O, S>(
    dir: &StateDir,
    plural: &str,
    stored: &mut Stored<S>,
    items: &BTreeMap<String, (&Spec, O)>,
    first_seen: &str,
    writes: &mut Vec<String>,
    deletes: &mut Vec<String>,
    compute: impl Fn(&str, &(&Spec, O), i64, Option<&S>) -> S,
) -> anyhow::Result<()>
where
    S: ConditionedStatus + Serialize + DeserializeOwned,
{
    for (key, item) in items {
        let hash = spec_hash(item.0);
        let prev = stored.get(key);
        let generation = match prev {
            Some(p) if p.spec_hash == hash => p.generation,
            Some(p) => p.generation + 1,
            None => 1,
        };
        let status = compute(key, item, generation, prev.map(|p| &p.status));
        let unchanged = prev.is_some_and(|p| {
            p.generation == generation
                && p.spec_hash == hash
                && p.status.same_ignoring_time(&status)
        });
        if unchanged {
            continue;
        }
        let record = StoredStatus {
            key: key.clone(),
            first_seen: prev.map_or_else(|| first_seen.to_string(), |p| p.first_seen.clone()),
            generation,
            spec_hash: hash,
            status,
        };
        files::write_json_atomic(&dir.status_file(plural, key), &record)
            .with_context(|| format!("writing status of {plural} {key}"))?;
        tracing::debug!(kind = plural, object = %key, generation, "wrote status");
        stored.insert(key.clone(), record);
        writes.push(format!("{plural}/{key}"));
    }
    let gone: Vec<String> = stored
        .keys()
        .filter(|k| !items.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        stored.remove(&key);
        deletes.push(format!("{plural}/{key}"));
    }
    // Also sweep files nobody tracks (e.g. left by an earlier run).
    if let Ok(entries) = fs::read_dir(dir.status_dir(plural)) {
        for entry in entries.flatten() {
            let path = entry.path();
            let tracked = stored.keys().any(|k| dir.status_file(plural, k) == path);
            if !tracked && path.extension().is_some_and(|e| e == "json") {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(file = %path.display(), "removed status of a deleted object")
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "cannot remove stale status")
                    }
                }
            }
        }
    }
    Ok(())
}
