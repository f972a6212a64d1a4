//! Edits to the planner's last input, made in place, with what each entry
//! held before: the next pass learns what changed from the edits instead of
//! diffing (and copying, and dropping) the whole snapshot.
//!
//! ```text
//!  caller ─► Edit::put_*(key, value) ─► snapshot entry replaced
//!                                   └─► Journal: the entry's old value (first edit only)
//!  pass   ─► changed keys = journal keys whose old value differs from the new
//!         ─► Before = snapshot + journal: the last planned input, as a view
//! ```

use std::collections::BTreeMap;

use weft_api::{EnforcedApp, EnforcedPolicy, EnforcedSite, MeshAppSpec, MeshHubSpec};
use weft_api::{MeshPolicySpec, MeshSiteSpec};

use crate::planner::snapshot::{Federated, HubLink, Labels, NodeInfo};
use crate::planner::{ObjectKey, PlanError, PlannerConfig, Snapshot};

/// Old values by key: `None`, the key was absent.
pub(super) type Log<K, V> = BTreeMap<K, Option<V>>;

/// What the edits since the last plan replaced, per snapshot field: the
/// value each touched entry had in the last planned input.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    pub(super) config: Option<PlannerConfig>,
    pub(super) apps: Log<ObjectKey, MeshAppSpec>,
    pub(super) policies: Log<ObjectKey, MeshPolicySpec>,
    pub(super) sites: Log<String, MeshSiteSpec>,
    pub(super) nodes: Log<String, NodeInfo>,
    pub(super) workloads: Log<String, BTreeMap<ObjectKey, Labels>>,
    pub(super) workload_addresses: Log<String, BTreeMap<ObjectKey, String>>,
    pub(super) public_keys: Log<(String, ObjectKey), String>,
    pub(super) previous_ranges: Log<ObjectKey, String>,
    pub(super) previous_policies: Log<ObjectKey, EnforcedPolicy>,
    pub(super) previous_apps: Log<ObjectKey, EnforcedApp>,
    pub(super) previous_sites: Log<String, EnforcedSite>,
    pub(super) hubs: Log<String, MeshHubSpec>,
    pub(super) input_errors: Log<String, Vec<PlanError>>,
    pub(super) node_errors: Log<String, Vec<PlanError>>,
    pub(super) federation: Log<ObjectKey, Federated>,
    pub(super) hub_links: Log<String, HubLink>,
}

/// Logs the entries of `old` and `new` that differ, keeping what `log`
/// already holds (an older value).
fn log_diff<K: Ord + Clone, V: Clone + PartialEq>(
    log: &mut Log<K, V>,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) {
    if old == new {
        return;
    }
    for (k, v) in old {
        if new.get(k) != Some(v) {
            log.entry(k.clone()).or_insert_with(|| Some(v.clone()));
        }
    }
    for k in new.keys() {
        if !old.contains_key(k) {
            log.entry(k.clone()).or_insert(None);
        }
    }
}

impl Journal {
    /// Adds what turning `old` into `new` replaces (for a caller that
    /// hands a whole new snapshot: the diff the edits would have logged).
    pub(super) fn record_between(&mut self, old: &Snapshot, new: &Snapshot) {
        if old.config != new.config && self.config.is_none() {
            self.config = Some(old.config.clone());
        }
        log_diff(&mut self.apps, &old.apps, &new.apps);
        log_diff(&mut self.policies, &old.policies, &new.policies);
        log_diff(&mut self.sites, &old.sites, &new.sites);
        log_diff(&mut self.nodes, &old.nodes, &new.nodes);
        log_diff(&mut self.workloads, &old.workloads, &new.workloads);
        log_diff(
            &mut self.workload_addresses,
            &old.workload_addresses,
            &new.workload_addresses,
        );
        log_diff(&mut self.public_keys, &old.public_keys, &new.public_keys);
        log_diff(
            &mut self.previous_ranges,
            &old.previous_ranges,
            &new.previous_ranges,
        );
        log_diff(
            &mut self.previous_policies,
            &old.previous_policies,
            &new.previous_policies,
        );
        log_diff(
            &mut self.previous_apps,
            &old.previous_apps,
            &new.previous_apps,
        );
        log_diff(
            &mut self.previous_sites,
            &old.previous_sites,
            &new.previous_sites,
        );
        log_diff(&mut self.hubs, &old.hubs, &new.hubs);
        log_diff(&mut self.input_errors, &old.input_errors, &new.input_errors);
        log_diff(&mut self.node_errors, &old.node_errors, &new.node_errors);
        log_diff(&mut self.federation, &old.federation, &new.federation);
        log_diff(&mut self.hub_links, &old.hub_links, &new.hub_links);
    }

    /// Whether no edit was logged (a logged edit may still have been undone).
    pub fn is_empty(&self) -> bool {
        self.config.is_none()
            && self.apps.is_empty()
            && self.policies.is_empty()
            && self.sites.is_empty()
            && self.nodes.is_empty()
            && self.workloads.is_empty()
            && self.workload_addresses.is_empty()
            && self.public_keys.is_empty()
            && self.previous_ranges.is_empty()
            && self.previous_policies.is_empty()
            && self.previous_apps.is_empty()
            && self.previous_sites.is_empty()
            && self.hubs.is_empty()
            && self.input_errors.is_empty()
            && self.node_errors.is_empty()
            && self.federation.is_empty()
            && self.hub_links.is_empty()
    }
}

/// Keys of `log` whose entry in `now` is not the old value.
pub(super) fn changed<'a, K: Ord, V: PartialEq>(
    log: &'a Log<K, V>,
    now: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = &'a K> + 'a {
    log.iter()
        .filter(move |(k, old)| old.as_ref() != now.get(k))
        .map(|(k, _)| k)
}

/// The value `key` had in the last planned input.
pub(super) fn before<'a, K, V, Q>(
    log: &'a Log<K, V>,
    now: &'a BTreeMap<K, V>,
    key: &Q,
) -> Option<&'a V>
where
    K: Ord + std::borrow::Borrow<Q>,
    Q: Ord + ?Sized,
{
    match log.get(key) {
        Some(old) => old.as_ref(),
        None => now.get(key),
    }
}

/// Replaces (or removes) one entry, logging its old value the first time.
fn put<K: Ord + Clone, V: PartialEq>(
    map: &mut BTreeMap<K, V>,
    log: &mut Log<K, V>,
    key: K,
    value: Option<V>,
) {
    if map.get(&key) == value.as_ref() {
        return;
    }
    let old = match value {
        Some(v) => map.insert(key.clone(), v),
        None => map.remove(&key),
    };
    log.entry(key).or_insert(old);
}

/// Makes `map` equal `want`, entry by entry.
fn set_all<K: Ord + Clone, V: PartialEq + Clone>(
    map: &mut BTreeMap<K, V>,
    log: &mut Log<K, V>,
    want: &BTreeMap<K, V>,
) {
    if map == want {
        return;
    }
    let gone: Vec<K> = map
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    for k in gone {
        put(map, log, k, None);
    }
    for (k, v) in want {
        put(map, log, k.clone(), Some(v.clone()));
    }
}

/// A snapshot being edited, with the journal of what the edits replace.
/// Every change goes through here, so nothing escapes the journal.
pub struct Edit<'a> {
    s: &'a mut Snapshot,
    j: &'a mut Journal,
}

impl<'a> Edit<'a> {
    /// Edits `s`, logging into `j` (the planner's own edit logs into the
    /// journal it reads next pass; any other snapshot, into a scratch one).
    pub fn new(s: &'a mut Snapshot, j: &'a mut Journal) -> Self {
        Edit { s, j }
    }

    /// The same edit, borrowed for a shorter while.
    pub fn reborrow(&mut self) -> Edit<'_> {
        Edit {
            s: self.s,
            j: self.j,
        }
    }

    /// The snapshot as it stands.
    pub fn view(&self) -> &Snapshot {
        self.s
    }

    /// Whether an edit was logged since the last plan.
    pub fn touched(&self) -> bool {
        !self.j.is_empty()
    }

    /// Sets the planner settings.
    pub fn set_config(&mut self, config: &PlannerConfig) {
        if self.s.config != *config {
            let old = std::mem::replace(&mut self.s.config, config.clone());
            self.j.config.get_or_insert(old);
        }
    }

    /// Puts (`Some`) or removes (`None`) a MeshApp.
    pub fn put_app(&mut self, key: ObjectKey, spec: Option<MeshAppSpec>) {
        put(&mut self.s.apps, &mut self.j.apps, key, spec);
    }

    /// Puts or removes a MeshPolicy.
    pub fn put_policy(&mut self, key: ObjectKey, spec: Option<MeshPolicySpec>) {
        put(&mut self.s.policies, &mut self.j.policies, key, spec);
    }

    /// Puts or removes a MeshSite.
    pub fn put_site(&mut self, name: String, spec: Option<MeshSiteSpec>) {
        put(&mut self.s.sites, &mut self.j.sites, name, spec);
    }

    /// Puts or removes a MeshHub.
    pub fn put_hub(&mut self, name: String, spec: Option<MeshHubSpec>) {
        put(&mut self.s.hubs, &mut self.j.hubs, name, spec);
    }

    /// Puts or removes an object's input errors (`MeshApp ns/name`...).
    pub fn put_input_errors(&mut self, object: String, errors: Option<Vec<PlanError>>) {
        put(
            &mut self.s.input_errors,
            &mut self.j.input_errors,
            object,
            errors,
        );
    }

    /// Puts or removes a registered node.
    pub fn put_node(&mut self, name: String, info: Option<NodeInfo>) {
        put(&mut self.s.nodes, &mut self.j.nodes, name, info);
    }

    /// Puts or removes a node's registration errors.
    pub fn put_node_errors(&mut self, name: String, errors: Option<Vec<PlanError>>) {
        put(
            &mut self.s.node_errors,
            &mut self.j.node_errors,
            name,
            errors,
        );
    }

    /// Sets a node's workloads (`None` or empty: none).
    pub fn put_workloads(&mut self, node: String, w: Option<BTreeMap<ObjectKey, Labels>>) {
        let w = w.filter(|w| !w.is_empty());
        put(&mut self.s.workloads, &mut self.j.workloads, node, w);
    }

    /// Sets a node's reported workload addresses (`None` or empty: none).
    pub fn put_workload_addresses(&mut self, node: String, a: Option<BTreeMap<ObjectKey, String>>) {
        let a = a.filter(|a| !a.is_empty());
        put(
            &mut self.s.workload_addresses,
            &mut self.j.workload_addresses,
            node,
            a,
        );
    }

    /// Adds or replaces one workload of a node.
    pub fn add_workload(&mut self, node: &str, key: ObjectKey, labels: Labels) {
        let mut w = self.s.workloads.get(node).cloned().unwrap_or_default();
        w.insert(key, labels);
        self.put_workloads(node.to_string(), Some(w));
    }

    /// Removes one workload of a node; its labels.
    pub fn remove_workload(&mut self, node: &str, key: &ObjectKey) -> Option<Labels> {
        let mut w = self.s.workloads.get(node)?.clone();
        let labels = w.remove(key)?;
        self.put_workloads(node.to_string(), Some(w));
        Some(labels)
    }

    /// Records the address a node reported for one of its workloads.
    pub fn add_workload_address(&mut self, node: &str, key: ObjectKey, address: String) {
        let mut a = self
            .s
            .workload_addresses
            .get(node)
            .cloned()
            .unwrap_or_default();
        a.insert(key, address);
        self.put_workload_addresses(node.to_string(), Some(a));
    }

    /// Puts or removes the public key a node reported for an app.
    pub fn put_public_key(&mut self, node: String, app: ObjectKey, key: Option<String>) {
        put(
            &mut self.s.public_keys,
            &mut self.j.public_keys,
            (node, app),
            key,
        );
    }

    /// Makes a node's public keys exactly `keys` (app → key).
    pub fn set_public_keys_of(&mut self, node: &str, keys: BTreeMap<ObjectKey, String>) {
        let have: Vec<ObjectKey> = self
            .s
            .public_keys
            .range((node.to_string(), ObjectKey::new("", ""))..)
            .take_while(|((n, _), _)| n == node)
            .map(|((_, app), _)| app.clone())
            .filter(|app| !keys.contains_key(app))
            .collect();
        for app in have {
            self.put_public_key(node.to_string(), app, None);
        }
        for (app, key) in keys {
            self.put_public_key(node.to_string(), app, Some(key));
        }
    }

    /// Puts or removes an app's recorded range.
    pub fn put_previous_range(&mut self, key: ObjectKey, range: Option<String>) {
        put(
            &mut self.s.previous_ranges,
            &mut self.j.previous_ranges,
            key,
            range,
        );
    }

    /// Puts or removes an app's last accepted spec.
    pub fn put_previous_app(&mut self, key: ObjectKey, e: Option<EnforcedApp>) {
        put(&mut self.s.previous_apps, &mut self.j.previous_apps, key, e);
    }

    /// Puts or removes a policy's last accepted spec.
    pub fn put_previous_policy(&mut self, key: ObjectKey, e: Option<EnforcedPolicy>) {
        put(
            &mut self.s.previous_policies,
            &mut self.j.previous_policies,
            key,
            e,
        );
    }

    /// Puts or removes a site's last accepted spec.
    pub fn put_previous_site(&mut self, name: String, e: Option<EnforcedSite>) {
        put(
            &mut self.s.previous_sites,
            &mut self.j.previous_sites,
            name,
            e,
        );
    }

    /// Makes the federation imports `want`.
    pub fn set_federation(&mut self, want: &BTreeMap<ObjectKey, Federated>) {
        set_all(&mut self.s.federation, &mut self.j.federation, want);
    }

    /// Makes the hub links `want`.
    pub fn set_hub_links(&mut self, want: &BTreeMap<String, HubLink>) {
        set_all(&mut self.s.hub_links, &mut self.j.hub_links, want);
    }
}

/// What the planner reads of one version of the input: the snapshot as it
/// is, or as it was at the last plan ([`Before`]).
pub(super) trait View {
    fn app(&self, key: &ObjectKey) -> Option<&MeshAppSpec>;
    /// The apps of a namespace, in key order.
    fn apps_in(&self, ns: &str) -> Vec<(&ObjectKey, &MeshAppSpec)>;
    fn previous_app(&self, key: &ObjectKey) -> Option<&EnforcedApp>;
    fn node(&self, name: &str) -> Option<&NodeInfo>;
    fn workloads(&self, node: &str) -> Option<&BTreeMap<ObjectKey, Labels>>;
    /// Nodes with workloads, in name order.
    fn workload_nodes(&self) -> Vec<&String>;
}

/// Apps of namespace `ns` in a key-ordered map: keys of one namespace are
/// contiguous (`ns/` prefixes every one of them and nothing else).
pub(super) fn in_namespace<'a, 'n, V>(
    map: &'a BTreeMap<ObjectKey, V>,
    ns: &'n str,
) -> impl Iterator<Item = (&'a ObjectKey, &'a V)> + use<'a, 'n, V> {
    map.range(ObjectKey::new(ns, "")..)
        .take_while(move |(k, _)| k.namespace == ns)
}

impl View for Snapshot {
    fn app(&self, key: &ObjectKey) -> Option<&MeshAppSpec> {
        self.apps.get(key)
    }
    fn apps_in(&self, ns: &str) -> Vec<(&ObjectKey, &MeshAppSpec)> {
        in_namespace(&self.apps, ns).collect()
    }
    fn previous_app(&self, key: &ObjectKey) -> Option<&EnforcedApp> {
        self.previous_apps.get(key)
    }
    fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }
    fn workloads(&self, node: &str) -> Option<&BTreeMap<ObjectKey, Labels>> {
        self.workloads.get(node)
    }
    fn workload_nodes(&self) -> Vec<&String> {
        self.workloads.keys().collect()
    }
}

/// The last planned input: the snapshot with the journal's old values.
pub(super) struct Before<'a> {
    pub s: &'a Snapshot,
    pub j: &'a Journal,
}

impl Before<'_> {
    /// How many apps there were.
    pub fn app_count(&self) -> usize {
        let mut n = self.s.apps.len();
        for (k, old) in &self.j.apps {
            match (old.is_some(), self.s.apps.contains_key(k)) {
                (true, false) => n += 1,
                (false, true) => n -= 1,
                _ => {}
            }
        }
        n
    }

    pub fn policy(&self, key: &ObjectKey) -> Option<&MeshPolicySpec> {
        before(&self.j.policies, &self.s.policies, key)
    }

    pub fn previous_policy(&self, key: &ObjectKey) -> Option<&EnforcedPolicy> {
        before(&self.j.previous_policies, &self.s.previous_policies, key)
    }

    /// The registered nodes, in name order.
    pub fn node_names(&self) -> Vec<&String> {
        let mut names: Vec<&String> = self
            .s
            .nodes
            .keys()
            .filter(|n| !self.j.nodes.contains_key(*n))
            .chain(
                self.j
                    .nodes
                    .iter()
                    .filter(|(_, old)| old.is_some())
                    .map(|(n, _)| n),
            )
            .collect();
        names.sort_unstable();
        names
    }
}

impl View for Before<'_> {
    fn app(&self, key: &ObjectKey) -> Option<&MeshAppSpec> {
        before(&self.j.apps, &self.s.apps, key)
    }
    fn apps_in(&self, ns: &str) -> Vec<(&ObjectKey, &MeshAppSpec)> {
        let mut out: Vec<(&ObjectKey, &MeshAppSpec)> = in_namespace(&self.s.apps, ns)
            .filter(|(k, _)| !self.j.apps.contains_key(*k))
            .chain(in_namespace(&self.j.apps, ns).filter_map(|(k, old)| Some((k, old.as_ref()?))))
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
    fn previous_app(&self, key: &ObjectKey) -> Option<&EnforcedApp> {
        before(&self.j.previous_apps, &self.s.previous_apps, key)
    }
    fn node(&self, name: &str) -> Option<&NodeInfo> {
        before(&self.j.nodes, &self.s.nodes, name)
    }
    fn workloads(&self, node: &str) -> Option<&BTreeMap<ObjectKey, Labels>> {
        before(&self.j.workloads, &self.s.workloads, node)
    }
    fn workload_nodes(&self) -> Vec<&String> {
        let mut names: Vec<&String> = self
            .s
            .workloads
            .keys()
            .filter(|n| !self.j.workloads.contains_key(*n))
            .chain(
                self.j
                    .workloads
                    .iter()
                    .filter(|(_, old)| old.is_some())
                    .map(|(n, _)| n),
            )
            .collect();
        names.sort_unstable();
        names
    }
}
