//! The parts of the planner's snapshot that outlive a pass: what the nodes
//! report and what was in force before (stored statuses). Each is patched
//! where its input changed (a node read anew, a status written) and copied
//! whole into each pass's snapshot: a copy of built maps costs far less than
//! building 1,000 nodes' workloads and 10,000 apps' previous state anew.

use std::collections::BTreeSet;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::{NodeFiles, StoredAll, APPS, LOST_AFTER_SECONDS, POLICIES, SITES};
use crate::planner::{ErrorKind, NodeInfo, ObjectKey, PlanError, Snapshot};

/// Nodes, workloads, their addresses, public keys and registration errors.
#[derive(Default)]
pub(super) struct NodePart {
    part: Snapshot,
    /// Nodes put into `part`.
    members: BTreeSet<String>,
}

fn lost(files: &NodeFiles, now: Timestamp) -> bool {
    files
        .heartbeat
        .is_some_and(|hb| now.duration_since(hb) > SignedDuration::from_secs(LOST_AFTER_SECONDS))
}

impl NodePart {
    /// Brings the part in line with `names` (sorted): nodes gone are taken
    /// out, nodes read anew put in again, and every node's heartbeat is
    /// checked against `now`.
    pub fn sync(
        &mut self,
        names: &[String],
        nodes: &mut std::collections::BTreeMap<String, NodeFiles>,
        now: Timestamp,
    ) {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|n| names.binary_search(n).is_err())
            .cloned()
            .collect();
        for name in &gone {
            self.remove(name);
        }
        for name in names {
            let Some(files) = nodes.get_mut(name) else {
                continue;
            };
            if files.reread || !self.members.contains(name) {
                self.remove(name);
                self.add(name, files, now);
                files.reread = false;
            }
        }
        for (name, info) in self.part.nodes.iter_mut() {
            info.lost = nodes.get(name).is_some_and(|f| lost(f, now));
        }
    }

    fn remove(&mut self, name: &str) {
        self.members.remove(name);
        let s = &mut self.part;
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

    fn add(&mut self, name: &str, files: &NodeFiles, now: Timestamp) {
        self.members.insert(name.to_string());
        let s = &mut self.part;
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

    /// Copies the part into `s`.
    pub fn fill(&self, s: &mut Snapshot) {
        s.nodes = self.part.nodes.clone();
        s.node_errors = self.part.node_errors.clone();
        s.workloads = self.part.workloads.clone();
        s.workload_addresses = self.part.workload_addresses.clone();
        s.public_keys = self.part.public_keys.clone();
    }
}

/// App ranges and the last accepted specs, from the stored statuses.
#[derive(Default)]
pub(super) struct Previous {
    part: Snapshot,
    built: bool,
}

impl Previous {
    /// Copies the part into `s`, building it from `stored` the first time.
    pub fn fill(&mut self, stored: &StoredAll, s: &mut Snapshot) {
        if !self.built {
            for key in stored.apps.keys() {
                self.app(stored, key);
            }
            for key in stored.policies.keys() {
                self.policy(stored, key);
            }
            for key in stored.sites.keys() {
                self.site(stored, key);
            }
            self.built = true;
        }
        s.previous_ranges = self.part.previous_ranges.clone();
        s.previous_apps = self.part.previous_apps.clone();
        s.previous_policies = self.part.previous_policies.clone();
        s.previous_sites = self.part.previous_sites.clone();
    }

    /// A stored status written or removed, as `plural/key`.
    pub fn changed(&mut self, stored: &StoredAll, what: &str) {
        if !self.built {
            return;
        }
        match what.split_once('/') {
            Some((APPS, key)) => self.app(stored, key),
            Some((POLICIES, key)) => self.policy(stored, key),
            Some((SITES, key)) => self.site(stored, key),
            _ => {}
        }
    }

    fn app(&mut self, stored: &StoredAll, key: &str) {
        let k = ObjectKey::parse(key);
        let st = stored.apps.get(key).map(|s| &s.status);
        match st.and_then(|s| s.address_space.clone()) {
            Some(range) => self.part.previous_ranges.insert(k.clone(), range),
            None => self.part.previous_ranges.remove(&k),
        };
        match st.and_then(|s| s.enforced.clone()) {
            Some(e) => self.part.previous_apps.insert(k, e),
            None => self.part.previous_apps.remove(&k),
        };
    }

    fn policy(&mut self, stored: &StoredAll, key: &str) {
        let k = ObjectKey::parse(key);
        match stored
            .policies
            .get(key)
            .and_then(|s| s.status.enforced.clone())
        {
            Some(e) => self.part.previous_policies.insert(k, e),
            None => self.part.previous_policies.remove(&k),
        };
    }

    fn site(&mut self, stored: &StoredAll, key: &str) {
        match stored
            .sites
            .get(key)
            .and_then(|s| s.status.enforced.clone())
        {
            Some(e) => self.part.previous_sites.insert(key.to_string(), e),
            None => self.part.previous_sites.remove(key),
        };
    }
}
