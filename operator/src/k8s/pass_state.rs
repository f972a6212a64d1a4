//! What one reconcile pass keeps for the next: the planner's last plan, and
//! what the MeshApp statuses were last computed from, so a pass computes
//! only the statuses a change can reach (10,000 statuses a pass otherwise,
//! most of a converged pass at that size).
//!
//! A MeshApp's status depends on its outcome (the planner says which
//! changed), on its object (generation, stored status: its resourceVersion
//! tells), on the MeshNodes of its nodes (spec generation, reported status:
//! their resourceVersions tell), and on time only through the traffic
//! refresh: every status is computed again once a refresh is due.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use weft_api::{MeshApp, MeshNode};

use super::snapshot::key_of;
use crate::planner::incremental::{Incremental, Pass};
use crate::planner::{ObjectKey, Plan, PlannerConfig};
use crate::status::TRAFFIC_REFRESH_SECONDS;

/// Kept between passes by the run loop (a new one after a restart or a
/// change of leader: the first pass then does everything).
#[derive(Default)]
pub struct PassState {
    /// The last plan.
    pub planner: Incremental,
    /// What the planner's input was last brought in line with.
    pub(crate) sync: super::snapshot_sync::SnapshotSync,
    /// What the statuses were last computed from.
    pub(crate) statuses: StatusMemory,
    /// resourceVersion of each MeshNode when the last pass planned.
    meshnodes: BTreeMap<String, String>,
    /// Nodes the last pass meant to write: the store may not show the
    /// write yet (or it failed), so their stored spec is compared again.
    unsynced: BTreeSet<String>,
    /// What the last plan was made from: the caches' fingerprint (see
    /// [`input_fingerprint`](super::snapshot::input_fingerprint)) and the
    /// settings.
    pub(crate) input: Option<(u64, PlannerConfig)>,
    /// What the federation hubs say (set by the run loop before a pass;
    /// see [`super::federation`]).
    pub federation: Option<std::sync::Arc<super::federation::FedInputs>>,
    /// The last pass's plan (its exports go to the hubs).
    pub last_plan: Option<std::sync::Arc<Plan>>,
}

impl PassState {
    /// The nodes whose stored spec may differ from what the planner last
    /// planned (see [`Incremental::plan_stored`]).
    pub(crate) fn meshnodes_changed(
        &self,
        stored: &BTreeMap<String, &MeshNode>,
    ) -> BTreeSet<String> {
        let mut out = self.unsynced.clone();
        for (name, node) in stored {
            if self.meshnodes.get(name) != Some(&version(*node)) {
                out.insert(name.clone());
            }
        }
        out
    }

    /// Records what a pass planned from.
    pub(crate) fn planned(&mut self, stored: &BTreeMap<String, &MeshNode>, pass: &Pass) {
        self.meshnodes = stored
            .iter()
            .map(|(n, o)| (n.clone(), version(*o)))
            .collect();
        self.unsynced = match &pass.changed_nodes {
            Some(changed) => changed.clone(),
            None => stored
                .keys()
                .cloned()
                .chain(pass.plan.nodes.keys().cloned())
                .collect(),
        };
    }
}

/// See the module doc.
#[derive(Default)]
pub(crate) struct StatusMemory {
    /// When every status was last computed.
    all_at: Option<Timestamp>,
    /// resourceVersion of each MeshApp and MeshNode then.
    apps: BTreeMap<ObjectKey, String>,
    nodes: BTreeMap<String, String>,
    /// Statuses computed but not written (over budget, or refused).
    pending: BTreeSet<ObjectKey>,
    /// Each app's (peer links up, planned) as last computed, for metrics.
    pub(crate) peers: BTreeMap<ObjectKey, (u32, u32)>,
}

fn version<K: ResourceExt>(o: &K) -> String {
    o.resource_version().unwrap_or_default()
}

impl StatusMemory {
    /// The MeshApps whose status to compute this pass; `None`: all.
    pub(crate) fn scope(
        &self,
        now: Timestamp,
        changed_apps: &Option<BTreeSet<ObjectKey>>,
        apps: &[&MeshApp],
        meshnodes: &BTreeMap<String, &MeshNode>,
        plan: &Plan,
    ) -> Option<BTreeSet<ObjectKey>> {
        let m = self;
        let at = m.all_at?;
        if now.duration_since(at) >= SignedDuration::from_secs(TRAFFIC_REFRESH_SECONDS) {
            return None;
        }
        let mut scope: BTreeSet<ObjectKey> = changed_apps.clone()?;
        scope.extend(m.pending.iter().cloned());
        for app in apps {
            let key = key_of(*app);
            if m.apps.get(&key) != Some(&version(*app)) {
                scope.insert(key);
            }
        }
        for (name, node) in meshnodes {
            if m.nodes.get(name) != Some(&version(*node)) {
                if let Some(spec) = plan.nodes.get(name) {
                    scope.extend(spec.apps.iter().map(|a| ObjectKey::parse(&a.app)));
                }
            }
        }
        Some(scope)
    }

    /// Records what this pass computed statuses from.
    pub(crate) fn computed(
        &mut self,
        now: Timestamp,
        all: bool,
        apps: &[&MeshApp],
        meshnodes: &BTreeMap<String, &MeshNode>,
        pending: BTreeSet<ObjectKey>,
        peers: BTreeMap<ObjectKey, (u32, u32)>,
    ) {
        let m = self;
        if all {
            m.all_at = Some(now);
        }
        m.apps = apps.iter().map(|a| (key_of(*a), version(*a))).collect();
        m.nodes = meshnodes
            .iter()
            .map(|(n, o)| (n.clone(), version(*o)))
            .collect();
        m.pending = pending;
        m.peers = peers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::{AppAttachment, MeshAppSpec, MeshNodeSpec};

    fn app(name: &str, rv: &str) -> MeshApp {
        let mut a = MeshApp::new(name, MeshAppSpec::default());
        a.metadata.namespace = Some("demo".into());
        a.metadata.resource_version = Some(rv.into());
        a
    }

    fn node(name: &str, rv: &str) -> MeshNode {
        let mut n = MeshNode::new(name, MeshNodeSpec::default());
        n.metadata.resource_version = Some(rv.into());
        n
    }

    #[test]
    fn statuses_are_computed_for_what_changed_and_all_once_a_refresh_is_due() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let mut plan = Plan::default();
        plan.nodes.insert(
            "n1".into(),
            MeshNodeSpec {
                site: "local".into(),
                apps: vec![AppAttachment {
                    app: "demo/b".into(),
                    ..Default::default()
                }],
            },
        );
        let (a, b, c) = (app("a", "1"), app("b", "1"), app("c", "1"));
        let n1 = node("n1", "7");
        let apps = vec![&a, &b, &c];
        let nodes: BTreeMap<String, &MeshNode> = [("n1".to_string(), &n1)].into();
        let nothing = Some(BTreeSet::new());
        let mut m = StatusMemory::default();
        assert_eq!(
            m.scope(t0, &nothing, &apps, &nodes, &plan),
            None,
            "first pass: all"
        );
        m.computed(t0, true, &apps, &nodes, BTreeSet::new(), BTreeMap::new());
        let t1 = t0 + SignedDuration::from_secs(5);
        assert_eq!(
            m.scope(t1, &nothing, &apps, &nodes, &plan),
            Some(BTreeSet::new())
        );
        assert_eq!(
            m.scope(t1, &None, &apps, &nodes, &plan),
            None,
            "a full plan: all"
        );

        // c's object changed, n1 (carrying b) reported, a's outcome changed.
        let c2 = app("c", "2");
        let n1b = node("n1", "8");
        let apps2 = vec![&a, &b, &c2];
        let nodes2: BTreeMap<String, &MeshNode> = [("n1".to_string(), &n1b)].into();
        let changed = Some([ObjectKey::new("demo", "a")].into());
        let scope = m.scope(t1, &changed, &apps2, &nodes2, &plan).unwrap();
        let names: Vec<String> = scope.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["demo/a", "demo/b", "demo/c"]);

        // A deferred write comes back; a due refresh computes everything.
        let pending: BTreeSet<ObjectKey> = [ObjectKey::new("demo", "c")].into();
        m.computed(t1, false, &apps2, &nodes2, pending, BTreeMap::new());
        let scope = m.scope(t1, &nothing, &apps2, &nodes2, &plan).unwrap();
        assert_eq!(scope, [ObjectKey::new("demo", "c")].into());
        let late = t0 + SignedDuration::from_secs(TRAFFIC_REFRESH_SECONDS);
        assert_eq!(m.scope(late, &nothing, &apps2, &nodes2, &plan), None);
    }
}
