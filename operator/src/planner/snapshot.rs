//! Everything the planner reads, gathered by the caller (the standalone loop
//! from files, the Kubernetes controller from reflectors). Plain data in
//! ordered maps, so iteration order never depends on how it was filled.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use weft_api::{
    EnforcedApp, EnforcedPolicy, EnforcedSite, MeshAppSpec, MeshHubSpec, MeshNodeSpec,
    MeshPolicySpec, MeshSiteSpec,
};

use super::error::PlanError;

/// Labels of a workload.
pub type Labels = BTreeMap<String, String>;

/// `namespace/name` of a namespaced object. Ordered as the string
/// `namespace/name` (the order users see in lists and tie-breaks).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `namespace/name`; a bare `name` is in namespace `default`.
    pub fn parse(s: &str) -> Self {
        match s.split_once('/') {
            Some((ns, name)) => ObjectKey::new(ns, name),
            None => ObjectKey::new("default", s),
        }
    }

    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.namespace
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(self.name.bytes())
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> Ordering {
        // The order of `namespace/name` without building it: namespaces
        // first, and where one namespace is a prefix of the other, its `/`
        // against the other's next byte. Byte by byte only in the odd case
        // of a `/` inside a namespace (keys from `parse` never have one).
        let (a, b) = (self.namespace.as_bytes(), other.namespace.as_bytes());
        if a == b {
            return self.name.cmp(&other.name);
        }
        let n = a.len().min(b.len());
        match a[..n].cmp(&b[..n]) {
            Ordering::Equal => {
                let (x, y) = (a.get(n).unwrap_or(&b'/'), b.get(n).unwrap_or(&b'/'));
                if x != y {
                    x.cmp(y)
                } else {
                    self.bytes().cmp(other.bytes())
                }
            }
            o => o,
        }
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A node that registered (a Node in Kubernetes, `node.json` standalone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// MeshSite of the node; empty means `local`.
    pub site: String,
    /// IPv4 address peers reach the node's WireGuard ports at.
    pub address: String,
    /// The node stopped reporting: it keeps its allocations but no other node
    /// peers with it.
    pub lost: bool,
}

/// Planner settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannerConfig {
    /// Pool app ranges are allocated from when `spec.addressSpace` is unset.
    pub pool: Ipv4Net,
    /// Prefix length of allocated app ranges.
    pub app_prefix_len: u8,
    /// First WireGuard listen port on every node.
    pub base_listen_port: u16,
    /// Largest MeshNode spec (serialised JSON) the planner hands out; apps
    /// that would push a node over it are not placed there (condition
    /// `MeshNodeTooLarge`), those already placed first.
    pub max_meshnode_bytes: usize,
}

/// Default allocation pool (CGNAT space, rarely used inside clusters).
pub const DEFAULT_POOL: &str = "100.64.0.0/10";
/// Default prefix length of allocated app ranges.
pub const DEFAULT_APP_PREFIX_LEN: u8 = 16;
/// Default first listen port.
pub const DEFAULT_BASE_LISTEN_PORT: u16 = 51820;

impl PlannerConfig {
    /// The defaults with this pool and app range size, checked: the ranges
    /// must fit the pool, and leave room for node slices (at most /30).
    pub fn with_pool(pool: Ipv4Net, app_prefix_len: u8) -> Result<Self, String> {
        if app_prefix_len < pool.prefix_len() || app_prefix_len > 30 {
            return Err(format!(
                "--app-prefix-length {app_prefix_len}: app ranges must fit the pool {pool} (/{} to /30)",
                pool.prefix_len()
            ));
        }
        Ok(PlannerConfig {
            pool,
            app_prefix_len,
            ..Default::default()
        })
    }

    /// How many apps the pool holds without explicit ranges.
    pub fn pool_capacity(&self) -> u64 {
        1u64 << (self.app_prefix_len - self.pool.prefix_len().min(self.app_prefix_len))
    }
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            pool: Ipv4Net::new(std::net::Ipv4Addr::new(100, 64, 0, 0), 10).unwrap_or_default(),
            app_prefix_len: DEFAULT_APP_PREFIX_LEN,
            base_listen_port: DEFAULT_BASE_LISTEN_PORT,
            max_meshnode_bytes: weft_api::validation::MAX_MESHNODE_BYTES,
        }
    }
}

/// The planner's whole input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Settings.
    pub config: PlannerConfig,
    /// MeshApps by `namespace/name`.
    pub apps: BTreeMap<ObjectKey, MeshAppSpec>,
    /// MeshPolicies by `namespace/name`.
    pub policies: BTreeMap<ObjectKey, MeshPolicySpec>,
    /// MeshSites by name (`local` is known even without an object).
    pub sites: BTreeMap<String, MeshSiteSpec>,
    /// Registered nodes by name.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Workloads running on each node: node → `namespace/name` → labels.
    pub workloads: BTreeMap<String, BTreeMap<ObjectKey, Labels>>,
    /// Workload addresses reported by the daemons (MeshNode status):
    /// node → `namespace/name` → IPv4 address in its app's range. Policies
    /// compile selectors into these; a workload without one is in no set yet.
    pub workload_addresses: BTreeMap<String, BTreeMap<ObjectKey, String>>,
    /// Public keys reported by the daemons: (node, app) → base64 key.
    pub public_keys: BTreeMap<(String, ObjectKey), String>,
    /// The MeshNode specs last written, by node (allocations stick to them).
    pub previous_specs: BTreeMap<String, MeshNodeSpec>,
    /// App ranges allocated before (from stored MeshApp status), by app.
    pub previous_ranges: BTreeMap<ObjectKey, String>,
    /// The last accepted spec of each MeshPolicy (stored status `enforced`),
    /// by policy: enforced instead of a current spec that is rejected.
    pub previous_policies: BTreeMap<ObjectKey, EnforcedPolicy>,
    /// The last accepted spec of each MeshApp (status `enforced`): in force
    /// while the current spec is rejected.
    pub previous_apps: BTreeMap<ObjectKey, EnforcedApp>,
    /// The last accepted spec of each MeshSite (status `enforced`).
    pub previous_sites: BTreeMap<String, EnforcedSite>,
    /// MeshHubs by name (checked; federation does not plan them yet).
    pub hubs: BTreeMap<String, MeshHubSpec>,
    /// Problems found before planning, by object (`MeshApp ns/name`,
    /// `MeshSite name`...): the object exists but its current spec could not
    /// be read (a manifest that does not parse, an unknown field). Its spec
    /// in `apps`/`policies`/`sites` is then a placeholder that is never used.
    pub input_errors: BTreeMap<String, Vec<PlanError>>,
    /// Nodes left out of planning because what they registered is unusable
    /// (an invalid name or site), with why.
    pub node_errors: BTreeMap<String, Vec<PlanError>>,
    /// Allocations held by apps that are not in this snapshot (see
    /// [`Reserved`]); empty for a plan of the whole cluster.
    pub reserved: Reserved,
    /// Shared apps: what the hub granted and what the other members export
    /// (see `federation::import`). An app here is federated: its range and
    /// node slices come from the hub only.
    pub federation: BTreeMap<ObjectKey, Federated>,
    /// Remote MeshSites reached through a hub: how the hub and the member
    /// behind each look from here.
    pub hub_links: BTreeMap<String, HubLink>,
}

/// A Remote site as seen through its hub.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubLink {
    /// The hub could not be read (what it said last stays in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The member has not synced for the hub's `staleAfterSeconds`.
    #[serde(default)]
    pub stale: bool,
    /// The member has not synced for `pruneAfterSeconds` (or never did):
    /// its nodes left the meshes here.
    #[serde(default)]
    pub gone: bool,
    /// When the member last synced (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<u64>,
    /// Nodes of the member in this member's shared apps.
    #[serde(default)]
    pub nodes: u32,
}

/// A shared app's federation input, checked on import.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Federated {
    /// This member's name on the hub (its Local MeshSite).
    pub member: String,
    /// Node slices per hub block.
    pub block_slices: u32,
    /// The shared range and this member's blocks, once the hub granted them.
    pub granted: Option<Granted>,
    /// The other members' nodes of the app.
    pub remote: Vec<RemoteNode>,
    /// What the hub found wrong with this member's record (field, message),
    /// and why records of other members were refused (field `hub`).
    pub problems: Vec<(String, String)>,
    /// The hub cannot be read: the imports are the last ones read.
    pub hub_error: Option<String>,
}

/// What the hub granted a member for one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    /// The app's range in every member.
    pub range: Ipv4Net,
    /// Node slice length in every member.
    pub node_prefix_len: u8,
    /// This member's blocks.
    pub blocks: Vec<Ipv4Net>,
}

/// A node of another member, as its peers here see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteNode {
    /// `member/node`: node names repeat across clusters.
    pub id: String,
    /// The node's own site.
    pub site: String,
    /// `address:port`, when known.
    pub endpoint: Option<String>,
    /// Its public key for the app, when reported.
    pub public_key: Option<String>,
    /// Its slice (inside a block the hub granted its member).
    pub slice: Ipv4Net,
    /// It stopped reporting (or its member stopped syncing).
    pub lost: bool,
    /// Its workloads of the app.
    pub workloads: Vec<RemoteWorkload>,
}

/// A workload of another member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteWorkload {
    /// `member:namespace/name`.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its address (inside its node's slice), once reported.
    pub address: Option<std::net::Ipv4Addr>,
}

/// What apps planned elsewhere hold: the incremental planner plans a few
/// apps against the rest of the cluster, whose allocations are fixed, so
/// these are never handed out here. Empty for a plan of the whole cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    /// App ranges, in app order (a range overlapping an earlier one is
    /// skipped, as the full plan skips it).
    pub ranges: Vec<(Ipv4Net, ObjectKey)>,
    /// Listen ports in use, by node.
    pub ports: BTreeMap<String, BTreeSet<u16>>,
}

impl Snapshot {
    /// Adds (or replaces) a workload on a node.
    pub fn add_workload(&mut self, node: &str, key: ObjectKey, labels: Labels) {
        self.workloads
            .entry(node.to_string())
            .or_default()
            .insert(key, labels);
    }

    /// Records the address a node reported for one of its workloads.
    pub fn add_workload_address(&mut self, node: &str, key: ObjectKey, address: impl Into<String>) {
        self.workload_addresses
            .entry(node.to_string())
            .or_default()
            .insert(key, address.into());
    }

    /// Records the public key a node reported for an app.
    pub fn add_public_key(&mut self, node: &str, app: ObjectKey, key: impl Into<String>) {
        self.public_keys.insert((node.to_string(), app), key.into());
    }
}

#[cfg(test)]
mod config_tests {
    use super::PlannerConfig;

    #[test]
    fn the_app_range_size_is_checked_against_the_pool() {
        let pool = "10.0.0.0/8".parse().unwrap();
        let c = PlannerConfig::with_pool(pool, 20).unwrap();
        assert_eq!(c.pool_capacity(), 4096);
        for bad in [7, 31] {
            let e = PlannerConfig::with_pool(pool, bad).unwrap_err();
            assert!(
                e.contains("--app-prefix-length") && e.contains("10.0.0.0/8"),
                "{e}"
            );
        }
        assert_eq!(PlannerConfig::default().pool_capacity(), 64);
    }
}

#[cfg(test)]
mod order_tests {
    use super::ObjectKey;
    use proptest::prelude::*;

    proptest! {
        /// Keys sort as the strings `namespace/name` users see.
        #[test]
        fn keys_sort_as_their_strings(a in "[a-c/-]{0,4}", b in "[a-c/-]{0,4}", x in "[a-c/-]{0,3}", y in "[a-c/-]{0,3}") {
            let (k1, k2) = (ObjectKey::new(&a, &x), ObjectKey::new(&b, &y));
            prop_assert_eq!(k1.cmp(&k2), k1.to_string().cmp(&k2.to_string()));
        }
    }
}
