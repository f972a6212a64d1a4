//! The nodes' and the previous state's parts of the planner's snapshot,
//! patched into the last pass's snapshot where their input changed (a node
//! read anew, a status written): a copy of built maps costs far less than
//! building 1,000 nodes' workloads and 10,000 apps' previous state anew, and
//! no second copy is kept between passes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::{NodeFiles, StoredAll, APPS, LOST_AFTER_SECONDS, POLICIES, SITES};
use crate::planner::{ErrorKind, NodeInfo, ObjectKey, PlanError, PlannerConfig, Snapshot};

/// The snapshot a pass hands the planner: the last pass's, copied only
/// once something in it must change, so a pass with nothing new copies
/// (and plans) nothing.
pub(super) struct Patch<'a> {
    state: State<'a>,
    config: &'a PlannerConfig,
    /// There was no snapshot to patch: everything is put in.
    fresh: bool,
}

enum State<'a> {
    Base(&'a Snapshot),
    Own(Box<Snapshot>),
}

impl<'a> Patch<'a> {
    /// Patches `base` (the planner's last input), or builds from nothing.
    pub fn new(base: Option<&'a Snapshot>, config: &'a PlannerConfig) -> Self {
        let state = match base {
            Some(b) => State::Base(b),
            None => State::Own(Box::new(Snapshot {
                config: config.clone(),
                ..Default::default()
            })),
        };
        let fresh = base.is_none();
        Patch {
            state,
            config,
            fresh,
        }
    }

    /// Whether there was no snapshot to patch (everything is put in).
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// The snapshot as it stands.
    pub fn view(&self) -> &Snapshot {
        match &self.state {
            State::Base(b) => b,
            State::Own(s) => s,
        }
    }

    /// The snapshot to change (copied from the base the first time).
    pub fn get(&mut self) -> &mut Snapshot {
        if let State::Base(b) = self.state {
            self.state = State::Own(Box::new(own_copy(b, self.config)));
        }
        match &mut self.state {
            State::Own(s) => s,
            State::Base(_) => unreachable!("copied above"),
        }
    }

    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        matches!(self.state, State::Own(_))
    }

    /// The snapshot, owned.
    pub fn take(self) -> Snapshot {
        match self.state {
            State::Base(b) => own_copy(b, self.config),
            State::Own(s) => *s,
        }
    }
}

/// A copy of the planner's last input to hand it again: the planner's own
/// fields (reserved allocations, stored specs) are left empty.
fn own_copy(b: &Snapshot, config: &PlannerConfig) -> Snapshot {
    let mut s = b.clone();
    s.config = config.clone();
    s.reserved = Default::default();
    s.previous_specs = BTreeMap::new();
    s
}

/// Nodes, workloads, their addresses, public keys and registration errors.
#[derive(Default)]
pub(super) struct NodePart {
    /// Nodes put into the last snapshot.
    members: BTreeSet<String>,
}

fn lost(files: &NodeFiles, now: Timestamp) -> bool {
    files
        .heartbeat
        .is_some_and(|hb| now.duration_since(hb) > SignedDuration::from_secs(LOST_AFTER_SECONDS))
}

impl NodePart {
    /// Brings `out` in line with `names` (sorted): nodes gone are taken
    /// out, nodes read anew put in again, and every node's heartbeat is
    /// checked against `now`.
    pub fn sync(
        &mut self,
        names: &[String],
        nodes: &mut BTreeMap<String, NodeFiles>,
        now: Timestamp,
        out: &mut Patch<'_>,
    ) {
        if out.fresh() {
            self.members.clear();
        }
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|n| names.binary_search(n).is_err())
            .cloned()
            .collect();
        for name in &gone {
            self.remove(name, out.get());
        }
        for name in names {
            let Some(files) = nodes.get_mut(name) else {
                continue;
            };
            if files.reread || !self.members.contains(name) {
                let s = out.get();
                self.remove(name, s);
                self.add(name, files, now, s);
                files.reread = false;
            }
        }
        // Time alone can make a node lost (or found again).
        let flips: Vec<String> = out
            .view()
            .nodes
            .iter()
            .filter(|(name, info)| info.lost != nodes.get(*name).is_some_and(|f| lost(f, now)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in flips {
            if let Some(info) = out.get().nodes.get_mut(&name) {
                info.lost = !info.lost;
            }
        }
    }

    fn remove(&mut self, name: &str, s: &mut Snapshot) {
        self.members.remove(name);
        s.nodes.remove(name);
        s.node_errors.remove(name);
        s.workloads.remove(name);
        s.workload_addresses.remove(name);
        let keys: Vec<(String, ObjectKey)> = s
            .public_keys
            .range((name.to_string(), ObjectKey::new("", ""))..)
            .take_while(|((n, _), _)| n == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            s.public_keys.remove(&k);
        }
    }

    fn add(&mut self, name: &str, files: &NodeFiles, now: Timestamp, s: &mut Snapshot) {
        self.members.insert(name.to_string());
        if !files.registration_errors.is_empty() {
            let object = format!("MeshNode {}", weft_api::validation::printable(name, 80));
            s.node_errors.insert(
                name.to_string(),
                files
                    .registration_errors
                    .iter()
                    .map(|(f, m)| {
                        let field = if f.is_empty() {
                            "registration".to_string()
                        } else {
                            format!("registration.{f}")
                        };
                        PlanError::new(
                            ErrorKind::Invalid,
                            &object,
                            field,
                            "InvalidRegistration",
                            m.clone(),
                        )
                    })
                    .collect(),
            );
        }
        let Some(reg) = &files.registration else {
            return;
        };
        s.nodes.insert(
            name.to_string(),
            NodeInfo {
                site: reg.site.clone(),
                address: reg.address.clone(),
                lost: lost(files, now),
            },
        );
        if let Some(st) = &files.status {
            for w in &st.workloads {
                s.add_workload(
                    name,
                    ObjectKey::new(&w.namespace, &w.name),
                    w.labels.clone(),
                );
                if let Some(addr) = &w.address {
                    s.add_workload_address(
                        name,
                        ObjectKey::new(&w.namespace, &w.name),
                        addr.clone(),
                    );
                }
            }
            for a in &st.apps {
                if !a.public_key.is_empty() {
                    s.add_public_key(name, ObjectKey::parse(&a.app), a.public_key.clone());
                }
            }
        }
    }
}

/// App ranges and the last accepted specs, from the stored statuses.
#[derive(Default)]
pub(super) struct Previous {
    /// Statuses written or removed since the last pass, as `plural/key`.
    pending: Vec<String>,
}

impl Previous {
    /// Brings `out` in line with `stored`.
    pub fn fill(&mut self, stored: &StoredAll, out: &mut Patch<'_>) {
        if out.fresh() {
            self.pending.clear();
            let s = out.get();
            for key in stored.apps.keys() {
                app(stored, key, s);
            }
            for key in stored.policies.keys() {
                policy(stored, key, s);
            }
            for key in stored.sites.keys() {
                site(stored, key, s);
            }
            return;
        }
        for what in std::mem::take(&mut self.pending) {
            let s = out.get();
            match what.split_once('/') {
                Some((APPS, key)) => app(stored, key, s),
                Some((POLICIES, key)) => policy(stored, key, s),
                Some((SITES, key)) => site(stored, key, s),
                _ => {}
            }
        }
    }

    /// A stored status was written or removed (`plural/key`).
    pub fn changed(&mut self, what: &str) {
        self.pending.push(what.to_string());
    }
}

fn app(stored: &StoredAll, key: &str, s: &mut Snapshot) {
    let k = ObjectKey::parse(key);
    let st = stored.apps.get(key).map(|st| &st.status);
    match st.and_then(|st| st.address_space.clone()) {
        Some(range) => s.previous_ranges.insert(k.clone(), range),
        None => s.previous_ranges.remove(&k),
    };
    match st.and_then(|st| st.enforced.clone()) {
        Some(e) => s.previous_apps.insert(k, e),
        None => s.previous_apps.remove(&k),
    };
}

fn policy(stored: &StoredAll, key: &str, s: &mut Snapshot) {
    let k = ObjectKey::parse(key);
    match stored
        .policies
        .get(key)
        .and_then(|st| st.status.enforced.clone())
    {
        Some(e) => s.previous_policies.insert(k, e),
        None => s.previous_policies.remove(&k),
    };
}

fn site(stored: &StoredAll, key: &str, s: &mut Snapshot) {
    match stored
        .sites
        .get(key)
        .and_then(|st| st.status.enforced.clone())
    {
        Some(e) => s.previous_sites.insert(key.to_string(), e),
        None => s.previous_sites.remove(key),
    };
}

#[cfg(test)]
mod tests {
    use std::fs;

    use k8s_openapi::jiff::Timestamp;
    use weft_api::standalone::{NodeRegistration, StateDir};
    use weft_api::{AppStatus, MeshNodeStatus, WorkloadStatus};

    use crate::standalone::files::write_json_atomic;
    use crate::standalone::{Standalone, StandaloneConfig};

    fn app(name: &str, tier: &str) -> String {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{tier: {tier}}}}}\n"
        )
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn node(dir: &StateDir, n: &str, tiers: &[&str], heartbeat: i64, keys: &[&str]) {
        let reg = NodeRegistration {
            name: n.into(),
            site: "local".into(),
            address: format!("192.0.2.{}", n.trim_start_matches('n')),
            labels: Default::default(),
        };
        write_json_atomic(&dir.registration(n), &reg).unwrap();
        let st = MeshNodeStatus {
            heartbeat: Some(t(heartbeat).to_string()),
            workloads: tiers
                .iter()
                .map(|tier| WorkloadStatus {
                    name: format!("w-{n}-{tier}"),
                    namespace: "demo".into(),
                    labels: [("tier".to_string(), tier.to_string())].into(),
                    address: Some(format!("100.64.{}.{}", n.len(), tier.len())),
                    ..Default::default()
                })
                .collect(),
            apps: keys
                .iter()
                .map(|a| AppStatus {
                    app: format!("demo/{a}"),
                    public_key: format!("{n}-{a}-key"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        fs::write(dir.node_status(n), serde_json::to_vec(&st).unwrap()).unwrap();
    }

    /// After every kind of change, the snapshot patched pass by pass is the
    /// one a new operator builds from every file.
    #[test]
    fn a_patched_snapshot_is_the_one_built_from_scratch() {
        let manifests = tempfile::TempDir::new().unwrap();
        let state = tempfile::TempDir::new().unwrap();
        let dir = StateDir::new(state.path());
        let m = |name: &str| manifests.path().join(name);
        let cfg = StandaloneConfig::new(manifests.path(), state.path());
        fs::write(m("web.yaml"), app("web", "web")).unwrap();
        fs::write(m("db.yaml"), app("db", "db")).unwrap();
        node(&dir, "n1", &["web", "db"], 0, &[]);
        node(&dir, "n2", &["web"], 0, &[]);
        let mut op = Standalone::new(cfg.clone());
        let now = t(10);
        let changes: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| node(&dir, "n1", &["web", "db"], 0, &["web", "db"])),
            Box::new(|| node(&dir, "n3", &["db"], 0, &["db"])),
            Box::new(|| fs::write(m("db.yaml"), app("db", "web")).unwrap()),
            Box::new(|| fs::write(m("cache.yaml"), "not: [yaml").unwrap()),
            // A heartbeat too old: the node is lost.
            Box::new(|| node(&dir, "n2", &["web"], -100, &["web"])),
            Box::new(|| fs::remove_dir_all(dir.node_dir("n3")).unwrap()),
            Box::new(|| fs::remove_file(m("db.yaml")).unwrap()),
        ];
        op.tick(now).unwrap();
        for (i, change) in changes.iter().enumerate() {
            change();
            op.tick(now).unwrap();
            // The statuses the pass wrote reach the next snapshot.
            op.tick(now).unwrap();
            let mut fresh = Standalone::new(cfg.clone());
            fresh.tick(now).unwrap();
            assert_eq!(op.planner.input(), fresh.planner.input(), "change {i}");
        }
        // Time alone: n1's heartbeat ages past the limit, no file changes.
        let later = t(100);
        op.tick(later).unwrap();
        op.tick(later).unwrap();
        let mut fresh = Standalone::new(cfg);
        fresh.tick(later).unwrap();
        assert_eq!(op.planner.input(), fresh.planner.input(), "later");
        assert!(op.planner.input().is_some_and(|s| s.nodes["n1"].lost));
    }
}
