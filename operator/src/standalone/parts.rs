//! The nodes' and the previous state's parts of the planner's snapshot,
//! edited into the planner's last input where their input changed (a node
//! read anew, a status written): the planner learns from the edits what
//! changed, so nothing is copied, diffed or rebuilt for the rest.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::{NodeFiles, StoredAll, APPS, LOST_AFTER_SECONDS, POLICIES, SITES};
use crate::planner::incremental::{Edit, Journal};
use crate::planner::{ErrorKind, NodeInfo, ObjectKey, PlanError, PlannerConfig, Snapshot};

/// The snapshot a pass hands the planner: the planner's last input edited
/// in place, or (before a first plan) one of its own, built from nothing.
pub(super) struct Patch<'a> {
    state: State<'a>,
    /// There was no snapshot to edit: everything is put in.
    fresh: bool,
}

enum State<'a> {
    Edit(Edit<'a>),
    Own(Box<(Snapshot, Journal)>),
}

impl<'a> Patch<'a> {
    /// Edits the planner's last input (`edit`), or builds from nothing.
    pub fn new(edit: Option<Edit<'a>>, config: &PlannerConfig) -> Self {
        let fresh = edit.is_none();
        let state = match edit {
            Some(e) => State::Edit(e),
            None => State::Own(Box::new((
                Snapshot {
                    config: config.clone(),
                    ..Default::default()
                },
                Journal::default(),
            ))),
        };
        Patch { state, fresh }
    }

    /// Edits `edit` (`fresh`: it is empty, everything is put in).
    #[cfg(test)]
    pub fn over(edit: Edit<'a>, fresh: bool) -> Self {
        Patch {
            state: State::Edit(edit),
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
            State::Edit(e) => e.view(),
            State::Own(own) => &own.0,
        }
    }

    /// The snapshot to change.
    pub fn edit(&mut self) -> Edit<'_> {
        match &mut self.state {
            State::Edit(e) => e.reborrow(),
            State::Own(own) => {
                let (s, j) = &mut **own;
                Edit::new(s, j)
            }
        }
    }

    /// Whether anything may have changed since the last plan.
    pub fn changed(&self) -> bool {
        match &self.state {
            State::Edit(e) => e.touched(),
            State::Own(..) => true,
        }
    }

    /// The snapshot built from nothing; `None` when the planner's was edited.
    pub fn into_owned(self) -> Option<Snapshot> {
        match self.state {
            State::Edit(_) => None,
            State::Own(own) => Some(own.0),
        }
    }
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
            self.members.remove(name);
            put_node(name, None, now, &mut out.edit());
        }
        for name in names {
            let Some(files) = nodes.get_mut(name) else {
                continue;
            };
            if files.reread || !self.members.contains(name) {
                self.members.insert(name.clone());
                put_node(name, Some(files), now, &mut out.edit());
                files.reread = false;
            }
        }
        // Time alone can make a node lost (or found again).
        let flips: Vec<(String, NodeInfo)> = out
            .view()
            .nodes
            .iter()
            .filter(|(name, info)| info.lost != nodes.get(*name).is_some_and(|f| lost(f, now)))
            .map(|(name, info)| {
                let flipped = NodeInfo {
                    lost: !info.lost,
                    ..info.clone()
                };
                (name.clone(), flipped)
            })
            .collect();
        let mut e = out.edit();
        for (name, info) in flips {
            e.put_node(name, Some(info));
        }
    }
}

/// Makes node `name`'s part of the snapshot what `files` say (`None`: the
/// node is gone). Only entries that differ are edited.
fn put_node(name: &str, files: Option<&NodeFiles>, now: Timestamp, e: &mut Edit<'_>) {
    let errors = files
        .filter(|f| !f.registration_errors.is_empty())
        .map(|f| {
            let object = format!("MeshNode {}", weft_api::validation::printable(name, 80));
            f.registration_errors
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
                .collect()
        });
    e.put_node_errors(name.to_string(), errors);
    let registered = files.and_then(|f| Some((f, f.registration.as_ref()?)));
    let info = registered.map(|(f, reg)| NodeInfo {
        site: reg.site.clone(),
        address: reg.address.clone(),
        lost: lost(f, now),
    });
    e.put_node(name.to_string(), info);
    let status = registered.and_then(|(f, _)| f.status.as_ref());
    let mut workloads = BTreeMap::new();
    let mut addresses = BTreeMap::new();
    let mut keys = BTreeMap::new();
    if let Some(st) = status {
        for w in &st.workloads {
            let key = ObjectKey::new(&w.namespace, &w.name);
            if let Some(addr) = &w.address {
                addresses.insert(key.clone(), addr.clone());
            }
            workloads.insert(key, w.labels.clone());
        }
        for (app, key) in st.app_public_keys() {
            keys.insert(ObjectKey::parse(app), key.to_string());
        }
    }
    e.put_workloads(name.to_string(), Some(workloads));
    e.put_workload_addresses(name.to_string(), Some(addresses));
    e.set_public_keys_of(name, keys);
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
            let mut e = out.edit();
            for key in stored.apps.keys() {
                app(stored, key, &mut e);
            }
            for key in stored.policies.keys() {
                policy(stored, key, &mut e);
            }
            for key in stored.sites.keys() {
                site(stored, key, &mut e);
            }
            return;
        }
        for what in std::mem::take(&mut self.pending) {
            let mut e = out.edit();
            match what.split_once('/') {
                Some((APPS, key)) => app(stored, key, &mut e),
                Some((POLICIES, key)) => policy(stored, key, &mut e),
                Some((SITES, key)) => site(stored, key, &mut e),
                _ => {}
            }
        }
    }

    /// A stored status was written or removed (`plural/key`).
    pub fn changed(&mut self, what: &str) {
        self.pending.push(what.to_string());
    }
}

fn app(stored: &StoredAll, key: &str, e: &mut Edit<'_>) {
    let k = ObjectKey::parse(key);
    let st = stored.apps.get(key).map(|st| &st.status);
    e.put_previous_range(k.clone(), st.and_then(|st| st.address_space.clone()));
    e.put_previous_app(k, st.and_then(|st| st.enforced.clone()));
}

fn policy(stored: &StoredAll, key: &str, e: &mut Edit<'_>) {
    let enforced = stored
        .policies
        .get(key)
        .and_then(|st| st.status.enforced.clone());
    e.put_previous_policy(ObjectKey::parse(key), enforced);
}

fn site(stored: &StoredAll, key: &str, e: &mut Edit<'_>) {
    let enforced = stored
        .sites
        .get(key)
        .and_then(|st| st.status.enforced.clone());
    e.put_previous_site(key.to_string(), enforced);
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
