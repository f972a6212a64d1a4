//! A planner-level federation: members and a hub exchanging records in
//! memory, each member planned with the real planner, the hub with the real
//! allocator. No I/O; for tests and the scale benchmark, which check that
//! every member's plan agrees with every other's.

use std::collections::BTreeMap;

use weft_api::federation::{HubAllocationSpec, HubState, SiteRecordSpec};

use super::allocate::{allocate, HubSettings};
use super::import::{federated, HubView};
use crate::planner::{plan, ObjectKey, Plan, Snapshot};

/// One member: its own cluster's snapshot and its last plan.
pub struct Member {
    /// What the member's operator reads from its own cluster (no
    /// federation input; each round adds it).
    pub snapshot: Snapshot,
    /// The last plan.
    pub plan: Plan,
}

/// Members and a hub.
pub struct Federation {
    /// The hub's settings.
    pub hub: HubSettings,
    /// Members by name.
    pub members: BTreeMap<String, Member>,
    /// Records on the hub, by (member, app).
    pub records: BTreeMap<(String, String), SiteRecordSpec>,
    /// Allocations on the hub, by app.
    pub allocations: BTreeMap<String, HubAllocationSpec>,
}

impl Federation {
    /// A hub with these settings and no members yet.
    pub fn new(hub: HubSettings) -> Self {
        Federation {
            hub,
            members: BTreeMap::new(),
            records: BTreeMap::new(),
            allocations: BTreeMap::new(),
        }
    }

    /// What every member reads from the hub.
    pub fn view(&self, now: u64) -> HubView {
        HubView {
            state: Some(HubState {
                hub: "hub".into(),
                members: self.hub.members.clone(),
                stale_after_seconds: 30,
                prune_after_seconds: 300,
                block_slices: self.hub.block_slices,
            }),
            allocations: self.allocations.clone(),
            records: self.records.clone(),
            heartbeats: self.members.keys().map(|m| (m.clone(), now)).collect(),
            error: None,
            read_at: now,
        }
    }

    /// One round: every member plans with what the hub holds and writes its
    /// records, then the hub allocates. Returns whether anything on the hub
    /// changed (a converged federation returns false).
    pub fn round(&mut self) -> bool {
        let view = self.view(0);
        let before = (self.records.clone(), self.allocations.clone());
        for (name, m) in &mut self.members {
            let exported: Vec<ObjectKey> = self
                .hub
                .members
                .iter()
                .filter(|h| h.site == *name)
                .flat_map(|h| h.exports.iter().map(|a| ObjectKey::parse(a)))
                .filter(|k| m.snapshot.apps.contains_key(k))
                .collect();
            m.snapshot.federation = exported
                .iter()
                .map(|k| {
                    let f = federated(name, self.hub.block_slices, k, &view, 0);
                    (k.clone(), f)
                })
                .collect();
            m.plan = plan(&m.snapshot);
            // What the operator stores after writing: the specs and ranges.
            m.snapshot.previous_specs = m.plan.nodes.clone();
            for (k, o) in &m.plan.apps {
                if let Some(r) = &o.address_space {
                    m.snapshot.previous_ranges.insert(k.clone(), r.clone());
                }
                if let Some(spec) = &o.accepted_spec {
                    let enforced = weft_api::EnforcedApp {
                        generation: 1,
                        spec: spec.clone(),
                    };
                    m.snapshot.previous_apps.insert(k.clone(), enforced);
                }
            }
            self.records.retain(|(site, _), _| site != name);
            for (k, r) in &m.plan.exports {
                self.records
                    .insert((name.clone(), k.to_string()), r.clone());
            }
        }
        self.allocations = allocate(&self.hub, &self.records, &self.allocations);
        (self.records.clone(), self.allocations.clone()) != before
    }

    /// Rounds until nothing changes, at most `max`; the rounds it took.
    pub fn converge(&mut self, max: usize) -> Option<usize> {
        (1..=max).find(|_| !self.round())
    }
}
