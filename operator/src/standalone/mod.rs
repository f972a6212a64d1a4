//! The standalone control loop: a state directory plays the API server.
//!
//! ```text
//!  manifests/*.yaml ──┐                          ┌─► nodes/<n>/meshnode.json (only on change)
//!  nodes/<n>/node.json ├─► Snapshot ─► plan ─────┼─► selectors/<site>/<ns>.json (only on change)
//!  nodes/<n>/status.json┘                        └─► status/<kind>/<key>.json (only on change)
//! ```
//!
//! [`Standalone::tick`] does one pass and reports what it wrote, so tests can
//! assert that a pass with nothing new writes nothing.

mod defs;
pub mod files;
pub mod get;
pub mod manifests;
mod parts;
pub mod registration;
pub mod schema;
pub mod stamp;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::Ipv4Net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use watch::{Dirty, NodeDirty, Watcher};
use weft_api::standalone::{ManifestProblem, NodeRegistration, StateDir, StoredStatus};
use weft_api::{
    AppSelector, MeshAppSpec, MeshAppStatus, MeshHubSpec, MeshHubStatus, MeshNode, MeshNodeSpec,
    MeshNodeStatus, MeshPolicySpec, MeshPolicyStatus, MeshSiteSpec, MeshSiteStatus,
};

use crate::planner::incremental::{Edit, Incremental, PassKind};
use crate::planner::peers::PeerPool;
use crate::planner::{self, ErrorKind, ObjectKey, PlanError, PlannerConfig};
use crate::status::{self, ConditionedStatus, NodeView};
use manifests::{Entry, Kind, Manifest, ManifestCache, ObjectRef};
use stamp::{LastRead, Stamp};

/// How long a pass waits after the first input change it is woken by.
pub const INPUT_SETTLE: std::time::Duration = std::time::Duration::from_millis(10);

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
    /// Selector files written, as `site/namespace`.
    pub selector_writes: Vec<String>,
    /// Selector files removed (no app left there), as `site/namespace`.
    pub selector_deletes: Vec<String>,
    /// Status files written, as `plural/key`.
    pub status_writes: Vec<String>,
    /// Status files removed (object gone), as `plural/key`.
    pub status_deletes: Vec<String>,
    /// Every plan error of this tick.
    pub errors: Vec<PlanError>,
    /// Manifest files with problems (what they defined when last good stays).
    pub manifest_errors: Vec<(PathBuf, String)>,
    /// How the pass planned (unchanged, only some apps, or all and why).
    pub planned: Option<PassKind>,
    /// Where the pass's time went, in order.
    pub phases: Vec<(&'static str, std::time::Duration)>,
    /// Files written to federation hubs (records, heartbeats).
    pub hub_writes: usize,
}

impl TickReport {
    fn phase(&mut self, name: &'static str, since: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        self.phases.push((name, now - *since));
        *since = now;
    }

    /// Whether the tick wrote or removed any file.
    pub fn wrote_anything(&self) -> bool {
        !(self.meshnode_writes.is_empty()
            && self.selector_writes.is_empty()
            && self.selector_deletes.is_empty()
            && self.status_writes.is_empty()
            && self.status_deletes.is_empty()
            && self.hub_writes == 0)
    }
}

/// Stored statuses of one kind, by key.
type Stored<S> = BTreeMap<String, StoredStatus<S>>;

#[derive(Default)]
struct NodeFiles {
    /// The last registration that was valid.
    registration: Option<NodeRegistration>,
    /// What is wrong with the current one, as `(field, message)`.
    registration_errors: Vec<(String, String)>,
    /// node.json when last read: unchanged, it is not read again.
    registration_read: LastRead,
    status: Option<MeshNodeStatus>,
    /// status.json when last read.
    status_read: LastRead,
    /// Its content changed in this pass's read (statuses of the node's
    /// apps may change).
    status_changed: bool,
    /// meshnode.json as this operator last wrote or read it (None: read it).
    meshnode: Option<KnownMeshNode>,
    /// node.json or status.json is a symlink: its target can change where
    /// no watch sees, so the node is checked by stamp every pass.
    linked: bool,
    /// A file was read since the node's part of the snapshot was built.
    reread: bool,
    /// The heartbeat of `status`, parsed.
    heartbeat: Option<Timestamp>,
}

/// A node's meshnode.json as the operator last wrote or read it: while the
/// file keeps its stamp, its spec and generation come from here, not from
/// parsing ~18 KB of JSON per node every pass.
struct KnownMeshNode {
    spec: MeshNodeSpec,
    file: MeshNodeFile,
}

/// What tells whether meshnode.json is still the one known.
struct MeshNodeFile {
    generation: i64,
    /// Its stamp right after the operator wrote it or right before it read it.
    stamp: Option<Stamp>,
    /// SHA-256 of its bytes.
    digest: [u8; 32],
    /// Whether `stamp` alone vouches for the content: it was seen with the
    /// file settled. Until then (a file written this pass), the file's bytes
    /// are compared with `digest` each pass, which still costs no parse.
    trusted: bool,
}

/// The previous MeshNode in `path`: the known one when the file still has
/// its stamp (and, unless settled, its bytes), else parsed from disk.
/// `Ok(None)` when there is no file.
fn previous_meshnode(
    path: &Path,
    known: Option<KnownMeshNode>,
    pool: &mut PeerPool,
    reads: &mut u64,
) -> anyhow::Result<Option<KnownMeshNode>> {
    let now = Stamp::of(path);
    let stamp = now.map(|(s, _)| s);
    let known = known.filter(|k| k.file.stamp.is_some() && k.file.stamp == stamp);
    if known.as_ref().is_some_and(|k| k.file.trusted) {
        return Ok(known);
    }
    *reads += 1;
    let Some(body) = files::read_bytes(path)? else {
        return Ok(None);
    };
    let settled = now.is_some_and(|(_, settled)| settled);
    let digest: [u8; 32] = Sha256::digest(&body).into();
    if let Some(mut k) = known.filter(|k| k.file.digest == digest) {
        k.file.trusted = settled;
        return Ok(Some(k));
    }
    let mut obj: MeshNode = files::parse_json(path, &body)?;
    pool.share(&mut obj.spec);
    Ok(Some(KnownMeshNode {
        spec: obj.spec,
        file: MeshNodeFile {
            generation: obj.metadata.generation.unwrap_or(0),
            stamp,
            digest,
            trusted: settled,
        },
    }))
}

/// The standalone operator's in-memory state between ticks.
pub struct Standalone {
    cfg: StandaloneConfig,
    dir: StateDir,
    manifests: ManifestCache,
    /// Last good node.json / status.json per node.
    nodes: BTreeMap<String, NodeFiles>,
    stored: Option<StoredAll>,
    /// Errors logged last tick (each is logged once when it appears).
    logged: BTreeSet<String>,
    /// Whether `status/manifests.json` holds the statuses of `defs`.
    manifest_status_written: bool,
    /// The definitions in force and the manifests' part of the snapshot.
    defs: defs::Definitions,
    /// Whether the stored statuses changed since `defs` was brought up to date.
    stored_moved: bool,
    /// Which input files changed, from inotify.
    watcher: Watcher,
    /// Node files read since start (see [`Standalone::reads`]).
    node_reads: u64,
    /// The nodes' part of the snapshot.
    node_part: parts::NodePart,
    /// What was in force before, from the stored statuses.
    previous: parts::Previous,
    /// The planner's last plan.
    last_plan: Option<std::sync::Arc<planner::Plan>>,
    /// The last selector sync failed (the next compares every namespace).
    selectors_failed: bool,
    /// The plan whose selectors the files hold (not kept alive for it).
    selectors_for: std::sync::Weak<planner::Plan>,
    /// What `selectors/` holds, by (site, namespace): read once, then
    /// memory is authoritative (as for stored statuses).
    selector_files: Option<BTreeMap<(String, String), Vec<AppSelector>>>,
    /// The last plan: a tick whose input did not change does not replan.
    /// The last plan, so a pass plans only what changed.
    planner: Incremental,
    /// When every app's status was last computed, and from which files the
    /// objects came then (see [`Standalone::status_scope`]).
    all_statuses: Option<(Timestamp, BTreeMap<ObjectRef, String>)>,
    /// Nodes whose meshnode.json may differ from the planner's last plan
    /// (read anew, or not yet written): the planner compares only these.
    unsynced: BTreeSet<String>,
    /// This operator as a member of federation hubs.
    federation: crate::federation::member::Member,
}

/// The stored statuses of every user kind.
#[derive(Default)]
struct StoredAll {
    apps: Stored<MeshAppStatus>,
    policies: Stored<MeshPolicyStatus>,
    sites: Stored<MeshSiteStatus>,
    hubs: Stored<MeshHubStatus>,
}

impl StoredAll {
    /// The objects whose stored status says `file` defined them.
    fn defined_by(&self, file: &str) -> Vec<ObjectRef> {
        fn of<'a, S>(
            kind: Kind,
            m: &'a Stored<S>,
            file: &'a str,
        ) -> impl Iterator<Item = ObjectRef> + 'a {
            m.values()
                .filter(move |s| s.source.as_deref() == Some(file))
                .map(move |s| ObjectRef {
                    kind,
                    key: s.key.clone(),
                })
        }
        of(Kind::App, &self.apps, file)
            .chain(of(Kind::Policy, &self.policies, file))
            .chain(of(Kind::Site, &self.sites, file))
            .chain(of(Kind::Hub, &self.hubs, file))
            .collect()
    }

    /// The file that defined an object when its status was last written.
    fn source_of(&self, o: &ObjectRef) -> Option<&str> {
        let src = match o.kind {
            Kind::App => self.apps.get(&o.key).map(|s| &s.source),
            Kind::Policy => self.policies.get(&o.key).map(|s| &s.source),
            Kind::Site => self.sites.get(&o.key).map(|s| &s.source),
            Kind::Hub => self.hubs.get(&o.key).map(|s| &s.source),
        };
        src?.as_deref()
    }
}

const APPS: &str = "meshapps";
const POLICIES: &str = "meshpolicies";
const SITES: &str = "meshsites";
const HUBS: &str = "meshhubs";

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
        let watcher = Watcher::new(watch::node_file_names(&dir));
        Standalone {
            cfg,
            dir,
            manifests: ManifestCache::default(),
            nodes: BTreeMap::new(),
            stored: None,
            logged: BTreeSet::new(),
            manifest_status_written: false,
            defs: defs::Definitions::default(),
            stored_moved: true,
            watcher,
            node_reads: 0,
            node_part: parts::NodePart::default(),
            previous: parts::Previous::default(),
            selectors_for: std::sync::Weak::new(),
            last_plan: None,
            selectors_failed: false,
            selector_files: None,
            planner: Incremental::default(),
            all_statuses: None,
            unsynced: BTreeSet::new(),
            federation: Default::default(),
        }
    }

    /// Input files read (opened) since start: manifests and node files. A
    /// pass with nothing new reads none.
    pub fn reads(&self) -> u64 {
        self.manifests.reads() + self.node_reads
    }

    /// The next pass scans every input file by stamp, as after an inotify
    /// queue overflow.
    pub fn force_full_scan(&mut self) {
        self.watcher.force_full_scan();
    }

    /// Waits for the next pass: until an input changes or `interval`
    /// passes (the timer stays as the safety net: hub directories and
    /// polled nodes have no watch). A change gets [`INPUT_SETTLE`] to
    /// settle, so files applied together are planned together.
    pub fn wait_for_input(&self, interval: std::time::Duration) {
        if self.watcher.wait(interval) {
            std::thread::sleep(INPUT_SETTLE);
        }
    }

    /// Whether input changes are learnt from inotify (else every pass scans).
    pub fn watching(&self) -> bool {
        self.watcher.available()
    }

    /// One pass: read, plan, write what changed.
    pub fn tick(&mut self, now: Timestamp) -> anyhow::Result<TickReport> {
        let mut report = TickReport::default();
        let mut phase = std::time::Instant::now();
        let now_time = Time(now);

        // 1. Stored statuses (loaded once; memory is authoritative
        // afterwards): they say which spec of each object is in force and
        // which file defined it.
        if self.stored.is_none() {
            self.stored = Some(StoredAll {
                apps: load_stored(&self.dir, APPS),
                policies: load_stored(&self.dir, POLICIES),
                sites: load_stored(&self.dir, SITES),
                hubs: load_stored(&self.dir, HUBS),
            });
        }
        let mut stored = self.stored.take().unwrap_or_default();

        report.phase("stored statuses", &mut phase);
        // 2. Manifests. A directory that cannot be listed says nothing about
        // what exists: plan nothing rather than delete everything.
        let changes = self
            .watcher
            .poll(&self.cfg.manifests, &self.dir.nodes_dir());
        let fresh = match &changes.manifests {
            Dirty::All(why) => {
                tracing::debug!(why, "scanning every manifest");
                self.manifests.refresh(&self.cfg.manifests)
            }
            Dirty::Names(names) => Ok(self.manifests.refresh_names(&self.cfg.manifests, names)),
        };
        match fresh {
            Ok(fresh) => {
                for (file, msg) in fresh {
                    tracing::warn!(file = %file.display(), error = %msg, "manifest has problems; what it defined when last good stays in force");
                }
            }
            Err(manifests::DirError(msg)) => {
                tracing::warn!(error = %msg, "not planning: the manifests directory cannot be read");
                report.manifest_errors = vec![(self.cfg.manifests.clone(), msg)];
                self.stored = Some(stored);
                return Ok(report);
            }
        }
        // Only the files that changed (and, when the stored statuses moved,
        // the few whose definitions depend on them) cost anything here.
        // The planner's last input, edited below where its inputs changed:
        // the edits tell the planner what changed (no copy, no diff).
        let mut snapshot = parts::Patch::new(self.planner.edit(), &self.cfg.planner);
        let changed = self.manifests.take_changed();
        let stored_moved = std::mem::take(&mut self.stored_moved);
        self.defs.update(
            &self.manifests,
            changed,
            &stored,
            stored_moved,
            &mut snapshot,
        );
        report.manifest_errors = self.defs.errors();
        if !self.manifest_status_written || self.defs.statuses_changed() {
            // What `get manifests` shows, written again at every start: a
            // crash may leave the last version, so no sync (~1 MB at
            // 10,000 files, 30-50 ms to sync on a busy disk).
            match files::write_volatile(&self.dir.manifest_status(), &self.defs.statuses_json()) {
                Ok(()) => {
                    self.manifest_status_written = true;
                    self.defs.statuses_recorded();
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot record the manifests' state")
                }
            }
        }
        let sources = &self.defs.sources;

        report.phase("manifests", &mut phase);
        // 2b. Nodes.
        let node_names = refresh_nodes(
            &self.dir,
            &mut self.nodes,
            &mut self.watcher,
            changes.nodes.as_ref(),
            &mut self.node_reads,
        );
        let check_meshnode = |name: &str, files: &NodeFiles| match &changes.nodes {
            None => true,
            Some(dirty) => {
                files.linked
                    || dirty.get(name).is_some_and(|d| d.meshnode || d.dir)
                    || self.watcher.unwatched_nodes().contains(name)
            }
        };
        // Only nodes read anew are built again; the rest is copied.
        self.node_part
            .sync(&node_names, &mut self.nodes, now, &mut snapshot);
        let mut generations: BTreeMap<String, i64> = BTreeMap::new();
        // Specs read from disk share equal peer entries, as planned ones do.
        let mut pool = PeerPool::default();
        for name in &node_names {
            let Some(files) = self.nodes.get_mut(name) else {
                continue;
            };
            // The known specs stay here; the planner reads them in place
            // (~18 MB at 1,000 nodes, not copied each pass).
            // No event for meshnode.json since it was last written or read:
            // it is the one known (its own write's events came the pass
            // after, which compared its bytes).
            if !check_meshnode(name, files) {
                if let Some(k) = &files.meshnode {
                    generations.insert(name.clone(), k.file.generation);
                    continue;
                }
            }
            let before = files.meshnode.as_ref().map(|k| k.file.digest);
            match previous_meshnode(
                &self.dir.meshnode(name),
                files.meshnode.take(),
                &mut pool,
                &mut self.node_reads,
            ) {
                Ok(Some(prev)) => {
                    generations.insert(name.clone(), prev.file.generation);
                    if before != Some(prev.file.digest) {
                        self.unsynced.insert(name.clone());
                    }
                    files.meshnode = Some(prev);
                }
                Ok(None) => {
                    self.unsynced.insert(name.clone());
                }
                Err(e) => {
                    tracing::warn!(node = %name, error = %format!("{e:#}"), "previous meshnode.json unreadable; rewriting it")
                }
            }
        }

        report.phase("nodes", &mut phase);
        // 3. What was in force before.
        self.previous.fill(&stored, &mut snapshot);

        report.phase("previous state", &mut phase);
        // 3b. Federation: what the hubs say about the shared apps (the last
        // good read while a hub cannot be read).
        let epoch = u64::try_from(now.as_second()).unwrap_or(0);
        let (imports, links) = self.federation.inputs(snapshot.view(), epoch);
        if snapshot.view().federation != imports {
            snapshot.edit().set_federation(&imports);
        }
        if snapshot.view().hub_links != links {
            snapshot.edit().set_hub_links(&links);
        }
        report.phase("federation", &mut phase);
        // 4. Plan. A node's stored spec counts only when the node is
        // registered (a removed node's file is not an input).
        let stored_specs: BTreeMap<String, &MeshNodeSpec> = node_names
            .iter()
            .filter_map(|n| Some((n.clone(), &self.nodes.get(n)?.meshnode.as_ref()?.spec)))
            .collect();
        // Nothing in the snapshot changed and every stored spec is the last
        // plan's: the planner would find nothing to do.
        let reuse = !snapshot.changed() && self.unsynced.is_empty();
        let pass = match self.last_plan.take() {
            Some(plan) if reuse => {
                drop(snapshot);
                planner::incremental::Pass {
                    plan,
                    kind: PassKind::Unchanged,
                    changed_nodes: Some(BTreeSet::new()),
                    changed_apps: Some(BTreeSet::new()),
                }
            }
            // Not held while planning: a partial plan updates the last one
            // in place only while the planner holds the sole reference (a
            // second one made it copy the whole plan, ~60 ms at 10,000
            // apps), and a full plan drops the old one first.
            last => {
                drop(last);
                let hint = Some(&self.unsynced);
                match snapshot.into_owned() {
                    Some(s) => self.planner.plan_stored(s, &stored_specs, hint),
                    None => match self.planner.plan_edited(&stored_specs, hint) {
                        Some(pass) => pass,
                        None => anyhow::bail!("the planner lost the input it was editing"),
                    },
                }
            }
        };
        drop(stored_specs);
        self.last_plan = Some(pass.plan.clone());
        // The nodes this pass may write: until the writes are done, their
        // files may lag the plan.
        self.unsynced = match &pass.changed_nodes {
            Some(changed) => changed.clone(),
            None => node_names.iter().cloned().collect(),
        };
        tracing::debug!(kind = ?pass.kind, "planned");
        report.planned = Some(pass.kind.clone());
        let plan = pass.plan.clone();

        report.phase("plan", &mut phase);
        // 5. Selector files before MeshNodes: a daemon that sees a spec
        // naming a new app also finds the app among its namespace's selectors.
        // An unchanged plan is the same Arc: its selectors are on disk.
        if !std::ptr::eq(self.selectors_for.as_ptr(), std::sync::Arc::as_ptr(&plan)) {
            // Only the namespaces of apps the pass may have changed can hold
            // other selectors (comparing all is ~20 ms at 10,000 apps);
            // after a failed sync, or before the files were read, all.
            let scope: Option<BTreeSet<&str>> = pass
                .changed_apps
                .as_ref()
                .filter(|_| !self.selectors_failed && self.selector_files.is_some())
                .map(|apps| apps.iter().map(|k| k.namespace.as_str()).collect());
            self.selectors_failed = true;
            sync_selectors(
                &self.dir,
                &mut self.selector_files,
                &plan.selectors,
                scope.as_ref(),
                &mut report,
            )?;
            self.selectors_failed = false;
            self.selectors_for = std::sync::Arc::downgrade(&plan);
        }

        // 5b. MeshNode specs, only when changed, made durable together:
        // only nodes the pass may have changed (the planner checked the
        // others' stored specs against its last plan).
        let candidates: Vec<(&String, &MeshNodeSpec)> = match &pass.changed_nodes {
            Some(changed) => changed
                .iter()
                .filter_map(|n| plan.nodes.get_key_value(n))
                .collect(),
            None => plan.nodes.iter().collect(),
        };
        let stored_specs: BTreeMap<&String, &MeshNodeSpec> = node_names
            .iter()
            .filter_map(|n| Some((n, &self.nodes.get(n)?.meshnode.as_ref()?.spec)))
            .collect();
        let mut batch = files::Batch::default();
        let mut staged = Vec::new();
        for (name, spec) in candidates {
            if stored_specs.get(name) == Some(&spec) && generations.contains_key(name) {
                continue;
            }
            let generation = generations.get(name).copied().unwrap_or(0) + 1;
            let mut obj = MeshNode::new(name, spec.clone());
            obj.metadata.generation = Some(generation);
            // Compact: at 2,000 nodes in one app a pass writes 2,000 specs of
            // ~280 KB (twice that pretty); `weft get` is the human view.
            let body = serde_json::to_vec(&obj)
                .context("serialising")
                .and_then(|body| batch.stage(&self.dir.meshnode(name), &body).map(|()| body))
                .with_context(|| format!("writing MeshNode {name}"))?;
            staged.push((name, obj.spec, generation, Sha256::digest(&body).into()));
        }
        drop(stored_specs);
        let mut failed = None;
        let mut unsynced = BTreeSet::new();
        for ((name, spec, generation, digest), written) in staged.into_iter().zip(batch.commit()) {
            if let Err(e) = written {
                // Not known any more: the next pass reads the file.
                if let Some(files) = self.nodes.get_mut(name) {
                    files.meshnode = None;
                }
                unsynced.insert(name.clone());
                failed.get_or_insert(e.context(format!("writing MeshNode {name}")));
                continue;
            }
            tracing::info!(node = %name, generation, apps = spec.apps.len(), "wrote MeshNode spec");
            generations.insert(name.clone(), generation);
            report.meshnode_writes.push(name.clone());
            if let Some(files) = self.nodes.get_mut(name) {
                files.meshnode = Some(KnownMeshNode {
                    spec,
                    file: MeshNodeFile {
                        generation,
                        stamp: Stamp::of(&self.dir.meshnode(name)).map(|(s, _)| s),
                        digest,
                        trusted: false,
                    },
                });
            }
        }
        self.unsynced = unsynced;
        if let Some(e) = failed {
            return Err(e);
        }

        // 5c. This member's records, after the MeshNodes that carry them.
        if self.federation.active() {
            match self.federation.export(&plan, epoch) {
                Ok(n) => report.hub_writes = n,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot write to the hub; retrying next pass")
                }
            }
        }

        report.phase("writes", &mut phase);
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

        report.phase("errors", &mut phase);
        // 7. Statuses.
        let Some(snapshot) = self.planner.input() else {
            unreachable!("the planner keeps the snapshot it planned")
        };
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
        let traffic_refresh = self.cfg.traffic_refresh_seconds;

        let src = |kind: Kind, key: &str| {
            sources
                .get(&ObjectRef {
                    kind,
                    key: key.to_string(),
                })
                .cloned()
        };
        let mut sync = Sync {
            dir: &self.dir,
            first_seen: &first_seen,
            writes: Vec::new(),
            deletes: Vec::new(),
            scope: None,
        };
        let scope = status_scope(
            &self.all_statuses,
            now,
            traffic_refresh,
            sources,
            &pass.changed_apps,
            &plan,
            self.nodes
                .iter()
                .filter(|(_, f)| f.status_changed)
                .map(|(n, _)| n)
                .chain(&report.meshnode_writes),
        );
        let app_items: BTreeMap<String, (&MeshAppSpec, _)> = match &scope {
            None => snapshot
                .apps
                .iter()
                .filter_map(|(k, spec)| Some((k.to_string(), (spec, plan.apps.get(k)?))))
                .collect(),
            Some(keys) => keys
                .iter()
                .filter_map(|k| {
                    let key = ObjectKey::parse(k);
                    let (key, spec) = snapshot.apps.get_key_value(&key)?;
                    Some((key.to_string(), (spec, plan.apps.get(key)?)))
                })
                .collect(),
        };
        sync.scope = scope.as_ref();
        sync.kind(
            APPS,
            &mut stored.apps,
            &app_items,
            |key| src(Kind::App, key),
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
        );
        sync.scope = None;
        let policy_items: BTreeMap<String, (&MeshPolicySpec, _)> = snapshot
            .policies
            .iter()
            .filter_map(|(k, spec)| Some((k.to_string(), (spec, plan.policies.get(k)?))))
            .collect();
        sync.kind(
            POLICIES,
            &mut stored.policies,
            &policy_items,
            |key| src(Kind::Policy, key),
            |_, (_, outcome), generation, prev| {
                status::policy_status(outcome, generation, prev, &now_time)
            },
        );
        let site_items: BTreeMap<String, (&MeshSiteSpec, _)> = snapshot
            .sites
            .iter()
            .filter_map(|(k, spec)| Some((k.clone(), (spec, plan.sites.get(k)?))))
            .collect();
        sync.kind(
            SITES,
            &mut stored.sites,
            &site_items,
            |key| src(Kind::Site, key),
            |_, (_, outcome), generation, prev| {
                status::site_status(outcome, generation, prev, &now_time)
            },
        );
        let hub_items: BTreeMap<String, (&MeshHubSpec, _)> = snapshot
            .hubs
            .iter()
            .filter_map(|(k, spec)| Some((k.clone(), (spec, plan.hubs.get(k)?))))
            .collect();
        sync.kind(
            HUBS,
            &mut stored.hubs,
            &hub_items,
            |key| src(Kind::Hub, key),
            |_, (_, outcome), generation, prev| {
                status::hub_status(outcome, generation, prev, &now_time)
            },
        );
        let all = scope.is_none();
        self.stored_moved = !sync.writes.is_empty() || !sync.deletes.is_empty();
        for what in sync.writes.iter().chain(&sync.deletes) {
            self.previous.changed(what);
        }
        self.stored = Some(stored);
        let (writes, deletes) = (sync.writes, sync.deletes);
        if all {
            self.all_statuses = Some((now, sources.clone()));
        }
        report.status_writes = writes;
        report.status_deletes = deletes;
        report.phase("statuses", &mut phase);
        Ok(report)
    }
}

/// Writes `selectors/<site>/<namespace>.json` where it differs from
/// `wanted` and removes the files of namespaces no app is left in. A
/// failed write stops the tick (the MeshNodes must not get ahead of the
/// selectors); what was done is remembered, the rest retried. With a
/// `scope`, only those namespaces (and new or gone files) are compared.
fn sync_selectors(
    dir: &StateDir,
    selector_files: &mut Option<BTreeMap<(String, String), Vec<AppSelector>>>,
    wanted: &BTreeMap<String, BTreeMap<String, Vec<AppSelector>>>,
    scope: Option<&BTreeSet<&str>>,
    report: &mut TickReport,
) -> anyhow::Result<()> {
    let have = selector_files.get_or_insert_with(|| load_selector_files(dir));
    let wanted_keys: BTreeSet<(&str, &str)> = wanted
        .iter()
        .flat_map(|(site, by_ns)| by_ns.keys().map(move |ns| (site.as_str(), ns.as_str())))
        .collect();
    let gone: Vec<(String, String)> = have
        .keys()
        .filter(|(site, ns)| !wanted_keys.contains(&(site.as_str(), ns.as_str())))
        .cloned()
        .collect();
    for (site, ns) in gone {
        if let Some(path) = dir.selectors_file(&site, &ns) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
            // Only once the site has no file left.
            if let Some(site_dir) = path.parent() {
                let _ = fs::remove_dir(site_dir);
            }
        }
        report.selector_deletes.push(format!("{site}/{ns}"));
        have.remove(&(site, ns));
    }
    let mut batch = files::Batch::default();
    let mut staged = Vec::new();
    for (site, by_ns) in wanted {
        for (ns, selectors) in by_ns {
            let key = (site.clone(), ns.clone());
            let out_of_scope = scope.is_some_and(|s| !s.contains(ns.as_str()));
            // A file that exists outside the scope holds what it held.
            if (out_of_scope && have.contains_key(&key)) || have.get(&key) == Some(selectors) {
                continue;
            }
            // Sites and namespaces of planned apps are validated names.
            let Some(path) = dir.selectors_file(site, ns) else {
                continue;
            };
            files::json_bytes(selectors)
                .and_then(|body| batch.stage(&path, &body))
                .with_context(|| format!("writing the selectors of {site}/{ns}"))?;
            staged.push((site, ns, selectors));
        }
    }
    let mut failed = None;
    for ((site, ns, selectors), written) in staged.into_iter().zip(batch.commit()) {
        if let Err(e) = written {
            failed.get_or_insert(e.context(format!("writing the selectors of {site}/{ns}")));
            continue;
        }
        report.selector_writes.push(format!("{site}/{ns}"));
        have.insert((site.clone(), ns.clone()), selectors.clone());
    }
    failed.map_or(Ok(()), Err)
}

/// Re-reads node.json and status.json where they changed, keeping the last
/// good content of files that do not parse. `dirty`: the nodes inotify says
/// changed (`None`: scan every node directory by stamp). Returns the nodes
/// that have a registration, sorted.
fn refresh_nodes(
    dir: &StateDir,
    nodes: &mut BTreeMap<String, NodeFiles>,
    watcher: &mut Watcher,
    dirty: Option<&BTreeMap<String, NodeDirty>>,
    reads: &mut u64,
) -> Vec<String> {
    let Some(dirty) = dirty else {
        let mut seen = Vec::new();
        let mut listed = Vec::new();
        if let Ok(entries) = fs::read_dir(dir.nodes_dir()) {
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(String::from) else {
                    continue;
                };
                let path = entry.path();
                if !path.is_dir() {
                    continue;
                }
                // Watched before its files are read: a change after the
                // read is an event for the next pass.
                watcher.watch_node(&name, &path);
                let files = nodes.entry(name.clone()).or_default();
                if refresh_node(dir, &name, files, NodeDirty::default(), true, reads) {
                    seen.push(name.clone());
                }
                listed.push(name);
            }
        }
        listed.sort_unstable();
        let gone: Vec<String> = nodes
            .keys()
            .filter(|n| listed.binary_search(n).is_err())
            .cloned()
            .collect();
        for name in gone {
            nodes.remove(&name);
            watcher.forget_node(&name);
        }
        seen.sort_unstable();
        return seen;
    };
    for files in nodes.values_mut() {
        files.status_changed = false;
    }
    // Nodes with events, and those no watch covers (checked by stamp).
    let mut check: BTreeMap<String, NodeDirty> = dirty.clone();
    for name in watcher.unwatched_nodes() {
        check.entry(name.clone()).or_default();
    }
    for (name, files) in nodes.iter() {
        if files.linked {
            check.entry(name.clone()).or_default();
        }
    }
    for (name, mut d) in check {
        let path = dir.node_dir(&name);
        if !path.is_dir() {
            nodes.remove(&name);
            watcher.forget_node(&name);
            continue;
        }
        let known = nodes.contains_key(&name);
        match watcher.watch_node(&name, &path) {
            // New, or another directory now: what happened before its
            // watch is unknown, so every file is read.
            watch::Watched::New => d.dir = true,
            watch::Watched::Known => {}
            // Polled by stamp every pass.
            watch::Watched::No => {}
        }
        d.dir |= !known;
        let files = nodes.entry(name.clone()).or_default();
        // A watched node's files are read only when an event names them;
        // the others are checked by stamp.
        let by_stamp = files.linked || watcher.unwatched_nodes().contains(&name);
        refresh_node(dir, &name, files, d, by_stamp, reads);
    }
    nodes
        .iter()
        .filter(|(_, f)| f.registration.is_some() || !f.registration_errors.is_empty())
        .map(|(n, _)| n.clone())
        .collect()
}

/// Reads a node's node.json and status.json when `d` names them (forced)
/// or, `by_stamp`, when their stamp moved. Returns whether the node has a
/// registration.
fn refresh_node(
    dir: &StateDir,
    name: &str,
    files: &mut NodeFiles,
    d: NodeDirty,
    by_stamp: bool,
    reads: &mut u64,
) -> bool {
    let is_link = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    // A file whose stamp is the one of its last read is not read again (a
    // thousand nodes' files per pass otherwise): what that read gave
    // stands, errors included. A file inotify names is read regardless.
    let path = dir.registration(name);
    let named = d.registration || d.dir;
    // Records the stamp of what is read, for the next full scan.
    let stale = (by_stamp || named) && files.registration_read.must_read(&path);
    if stale || named {
        *reads += 1;
        files.reread = true;
        let before = std::mem::take(&mut files.registration_errors);
        match files::read_json::<NodeRegistration>(&path) {
            Ok(Some(r)) => {
                let errs = registration::errors(name, &r);
                if errs.is_empty() {
                    files.registration = Some(r);
                } else {
                    files.registration_errors = errs;
                }
            }
            Ok(None) => files.registration = None,
            Err(e) => {
                files.registration_errors = vec![(String::new(), format!("{e:#}"))];
            }
        }
        if files.registration_errors != before && !files.registration_errors.is_empty() {
            tracing::warn!(node = %weft_api::validation::printable(name, 80), errors = ?files.registration_errors, "node registration refused; keeping the last good one");
        }
    }
    let status_path = dir.node_status(name);
    files.status_changed = false;
    let named = d.status || d.dir;
    let stale = (by_stamp || named) && files.status_read.must_read(&status_path);
    if stale || named {
        *reads += 1;
        files.reread = true;
        match files::read_json::<MeshNodeStatus>(&status_path) {
            Ok(s) => {
                files.status_changed = s != files.status;
                files.heartbeat = s
                    .as_ref()
                    .and_then(|s| s.heartbeat.as_deref())
                    .and_then(|h| h.parse::<Timestamp>().ok());
                files.status = s;
            }
            Err(e) => {
                tracing::debug!(node = %name, error = %format!("{e:#}"), "status.json unreadable; keeping the last good one")
            }
        }
    }
    if by_stamp || d.registration || d.status || d.dir {
        files.linked = is_link(&path) || is_link(&status_path);
    }
    files.registration.is_some() || !files.registration_errors.is_empty()
}

/// The selector files on disk, by (site, namespace). An unreadable one
/// counts as empty, so the next sync rewrites or removes it.
fn load_selector_files(dir: &StateDir) -> BTreeMap<(String, String), Vec<AppSelector>> {
    let mut out = BTreeMap::new();
    let Ok(sites) = fs::read_dir(dir.selectors_dir()) else {
        return out;
    };
    for site in sites.flatten() {
        let Some(site) = site.file_name().to_str().map(String::from) else {
            continue;
        };
        let Ok(files) = fs::read_dir(dir.selectors_dir().join(&site)) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            let Some(ns) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            // Only files this layout names (not a leftover temp file).
            let Some(path) = dir.selectors_file(&site, ns) else {
                continue;
            };
            match files::read_json::<Vec<AppSelector>>(&path) {
                Ok(Some(v)) => {
                    out.insert((site.clone(), ns.to_string()), v);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "unreadable selector file; replacing it");
                    out.insert((site.clone(), ns.to_string()), Vec::new());
                }
            }
        }
    }
    out
}

/// Writes stored statuses; a status that cannot be written is logged and
/// retried next pass, and never keeps the other objects' statuses from
/// being written.
struct Sync<'a> {
    dir: &'a StateDir,
    first_seen: &'a str,
    writes: Vec<String>,
    deletes: Vec<String>,
    /// Only these objects may have changed (`None`: any): the others are
    /// neither computed nor taken for gone.
    scope: Option<&'a BTreeSet<String>>,
}

impl Sync<'_> {
    /// Brings the stored statuses of one kind in line with the current
    /// objects: writes those that changed (ignoring condition times),
    /// removes those of objects that are gone.
    fn kind<Spec: Serialize, O, S>(
        &mut self,
        plural: &str,
        stored: &mut Stored<S>,
        items: &BTreeMap<String, (&Spec, O)>,
        source: impl Fn(&str) -> Option<String>,
        compute: impl Fn(&str, &(&Spec, O), i64, Option<&S>) -> S,
    ) where
        S: ConditionedStatus + Serialize + DeserializeOwned,
    {
        let dir = self.dir;
        // Written together: one sync for all, not one per status.
        let mut batch = files::Batch::default();
        let mut staged = Vec::new();
        for (key, item) in items {
            let hash = spec_hash(item.0);
            let prev = stored.get(key);
            let generation = match prev {
                Some(p) if p.spec_hash == hash => p.generation,
                Some(p) => p.generation + 1,
                None => 1,
            };
            let status = compute(key, item, generation, prev.map(|p| &p.status));
            let source = source(key);
            let unchanged = prev.is_some_and(|p| {
                p.generation == generation
                    && p.spec_hash == hash
                    && p.source == source
                    && p.status.same_ignoring_time(&status)
            });
            if unchanged {
                continue;
            }
            let record = StoredStatus {
                key: key.clone(),
                first_seen: prev
                    .map_or_else(|| self.first_seen.to_string(), |p| p.first_seen.clone()),
                generation,
                spec_hash: hash,
                status,
                source,
            };
            let path = dir.status_file(plural, key);
            if let Err(e) = files::json_bytes(&record).and_then(|body| batch.stage(&path, &body)) {
                cannot_write(plural, key, &e);
                continue;
            }
            staged.push(record);
        }
        for (record, written) in staged.into_iter().zip(batch.commit()) {
            let key = &record.key;
            if let Err(e) = written {
                cannot_write(plural, key, &e);
                continue;
            }
            tracing::debug!(kind = plural, object = %key, generation = record.generation, "wrote status");
            self.writes.push(format!("{plural}/{key}"));
            stored.insert(key.clone(), record);
        }
        let gone: Vec<String> = match self.scope {
            None => stored
                .keys()
                .filter(|k| !items.contains_key(*k))
                .cloned()
                .collect(),
            Some(keys) => keys
                .iter()
                .filter(|k| stored.contains_key(*k) && !items.contains_key(*k))
                .cloned()
                .collect(),
        };
        for key in &gone {
            stored.remove(key);
            self.deletes.push(format!("{plural}/{key}"));
        }
        if let Some(keys) = self.scope {
            // Only the files of objects gone now; the sweep below is for
            // passes that see every object.
            for key in gone.iter().filter(|k| keys.contains(*k)) {
                let path = dir.status_file(plural, key);
                if let Err(e) = fs::remove_file(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(file = %path.display(), error = %e, "cannot remove stale status");
                    }
                }
            }
            return;
        }
        // Also sweep files nobody tracks (e.g. left by an earlier run).
        let tracked: BTreeSet<PathBuf> =
            stored.keys().map(|k| dir.status_file(plural, k)).collect();
        if let Ok(entries) = fs::read_dir(dir.status_dir(plural)) {
            for entry in entries.flatten() {
                let path = entry.path();
                if !tracked.contains(&path) && path.extension().is_some_and(|e| e == "json") {
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
    }
}

/// The MeshApps whose status may have changed this pass, or `None` for
/// all. A status depends on the app's outcome (the planner says which
/// changed), on the statuses and MeshNode generations of its nodes, on the
/// file defining it, and on time only through the traffic refresh: every app
/// is computed again when a refresh is due and whenever the whole cluster
/// was planned.
fn status_scope<'a>(
    all: &Option<(Timestamp, BTreeMap<ObjectRef, String>)>,
    now: Timestamp,
    traffic_refresh: i64,
    sources: &BTreeMap<ObjectRef, String>,
    changed_apps: &Option<BTreeSet<ObjectKey>>,
    plan: &planner::Plan,
    changed_nodes: impl Iterator<Item = &'a String>,
) -> Option<BTreeSet<String>> {
    let (at, last_sources) = all.as_ref()?;
    if now.duration_since(*at) >= SignedDuration::from_secs(traffic_refresh.max(1)) {
        return None;
    }
    let mut keys: BTreeSet<String> = changed_apps
        .as_ref()?
        .iter()
        .map(ToString::to_string)
        .collect();
    // Apps defined by another file than when every status was computed
    // (computed again each pass until the next pass that computes all).
    if last_sources != sources {
        for (object, file) in sources.iter().chain(last_sources.iter()) {
            if object.kind == Kind::App
                && (sources.get(object) != Some(file) || last_sources.get(object) != Some(file))
            {
                keys.insert(object.key.clone());
            }
        }
    }
    for node in changed_nodes {
        if let Some(spec) = plan.nodes.get(node) {
            keys.extend(spec.apps.iter().map(|a| a.app.clone()));
        }
    }
    Some(keys)
}

fn cannot_write(plural: &str, key: &str, e: &anyhow::Error) {
    tracing::warn!(kind = plural, object = %weft_api::validation::printable(key, 120), error = %format!("{e:#}"), "cannot write status; retrying next pass");
}

/// One definition per object. When two files define the same object, the
/// one that defined it before (its stored status says which) keeps it, else
/// the first file in path order; both files get the problem. The reference
/// that [`defs::Definitions`] keeps up to date file by file.
#[cfg(test)]
fn choose_definitions(
    entries: Vec<Entry>,
    stored: &StoredAll,
    files: &mut [weft_api::standalone::ManifestFileStatus],
) -> BTreeMap<ObjectRef, Entry> {
    let mut by_object: BTreeMap<ObjectRef, Vec<Entry>> = BTreeMap::new();
    for e in entries {
        by_object.entry(e.object.clone()).or_default().push(e);
    }
    let mut out = BTreeMap::new();
    for (object, mut defs) in by_object {
        if defs.len() > 1 {
            let before = stored.source_of(&object);
            let winner = defs
                .iter()
                .position(|d| Some(d.file.display().to_string().as_str()) == before)
                .unwrap_or(0);
            let used = defs[winner].file.display().to_string();
            let all: Vec<String> = defs
                .iter()
                .map(|d| match d.document {
                    Some(i) => format!("{} (document {i})", d.file.display()),
                    None => d.file.display().to_string(),
                })
                .collect();
            let message = format!(
                "{object} is defined more than once: {}; the definition in {used} is used, remove the others",
                all.join(", ")
            );
            tracing::warn!(object = %object, "{message}");
            for d in &defs {
                if let Some(f) = files
                    .iter_mut()
                    .find(|f| f.file == d.file.display().to_string())
                {
                    f.errors.push(ManifestProblem {
                        document: d.document,
                        object: Some(object.to_string()),
                        field: "metadata.name".into(),
                        message: message.clone(),
                    });
                }
            }
            out.insert(object, defs.swap_remove(winner));
        } else if let Some(d) = defs.pop() {
            out.insert(object, d);
        }
    }
    out
}

fn manifest_summary(errors: &[ManifestProblem]) -> String {
    let first = errors.first().map_or_else(String::new, |p| {
        let doc = p
            .document
            .map_or_else(String::new, |d| format!("document {d}: "));
        let field = if p.field.is_empty() {
            String::new()
        } else {
            format!("{}: ", p.field)
        };
        format!("{doc}{field}{}", p.message)
    });
    match errors.len() {
        0 | 1 => first,
        n => format!("{first} (and {} more)", n - 1),
    }
}

/// Puts one definition into the snapshot: its spec when accepted, else a
/// placeholder and the problems, so the planner keeps the spec last
/// accepted in force and the status names the file, document and field.
fn add_entry(s: &mut Edit<'_>, e: &Entry) {
    let object = e.object.to_string();
    if let Some(m) = &e.manifest {
        match m.clone() {
            Manifest::App(k, spec) => s.put_app(k, Some(spec)),
            Manifest::Policy(k, spec) => s.put_policy(k, Some(spec)),
            Manifest::Site(n, spec) => s.put_site(n, Some(spec)),
            Manifest::Hub(n, spec) => s.put_hub(n, Some(spec)),
        }
        return;
    }
    match e.object.kind {
        Kind::App => s.put_app(
            ObjectKey::parse(&e.object.key),
            Some(MeshAppSpec::default()),
        ),
        Kind::Policy => s.put_policy(
            ObjectKey::parse(&e.object.key),
            Some(MeshPolicySpec::default()),
        ),
        Kind::Site => s.put_site(e.object.key.clone(), Some(MeshSiteSpec::default())),
        Kind::Hub => s.put_hub(e.object.key.clone(), Some(MeshHubSpec::default())),
    }
    let errors = e
        .problems
        .iter()
        .map(|p| {
            let at = match e.document {
                Some(i) => format!("{} document {i}", e.file.display()),
                None => e.file.display().to_string(),
            };
            let field = if p.field.is_empty() {
                "manifest".to_string()
            } else {
                p.field.clone()
            };
            PlanError::new(
                ErrorKind::Invalid,
                &object,
                field,
                "InvalidManifest",
                format!("{at}: {}", p.message),
            )
        })
        .collect();
    s.put_input_errors(object, Some(errors));
}
