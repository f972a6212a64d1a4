//! What federated sites exchange through a hub: each member's record of a
//! shared app (written only by that member) and the hub's allocation of the
//! app's address space (written only by the hub). Public data only: node
//! endpoints, public keys, address slices, workload addresses and labels;
//! never a private key.
//!
//! ```text
//!  member A ──SiteRecord(A, app)──► hub ──HubAllocation(app)──► members
//!  member B ──SiteRecord(B, app)──►  │  (range, blocks per site, conflicts)
//!        ▲                           │
//!        └──── the other members' SiteRecords, read by every member
//! ```
//!
//! Standalone, a hub is a directory ([`HubLayout`]); in Kubernetes these
//! specs are the bodies of hub-side objects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Node slices per hub block unless the MeshHub says otherwise.
pub const DEFAULT_BLOCK_SLICES: u32 = 8;
/// Seconds without a heartbeat after which a member is stale.
pub const DEFAULT_STALE_AFTER_SECONDS: u32 = 30;
/// Seconds without a heartbeat after which a member's peers are pruned.
pub const DEFAULT_PRUNE_AFTER_SECONDS: u32 = 300;

/// One member's view of one shared app, as its peers elsewhere need it. On
/// a hub cluster: a MeshSiteRecord named `<app-namespace>.<app-name>` in
/// the member's namespace `weft-hub-<site>`, written only by that member.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshSiteRecord",
    plural = "meshsiterecords",
    shortname = "msrec",
    category = "weft",
    namespaced,
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.site"),
    printcolumn(name = "App", type_ = "string", json_path = ".spec.app"),
    printcolumn(name = "Blocks", type_ = "integer", json_path = ".spec.wantBlocks"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SiteRecordSpec {
    /// The member that wrote the record (its Local MeshSite's name).
    #[schemars(length(min = 1, max = 253))]
    pub site: String,
    /// The app, `namespace/name`: the same in every member.
    #[schemars(length(min = 3, max = 317))]
    pub app: String,
    /// The parts of the app's spec every member must agree on.
    pub app_spec: SharedAppSpec,
    /// Blocks of node slices the member needs now.
    pub want_blocks: u32,
    /// The member's nodes carrying the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4096))]
    pub nodes: Vec<RecordNode>,
    /// The app's workloads on those nodes (what remote policies select on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16384))]
    pub workloads: Vec<RecordWorkload>,
}

/// What a member's MeshApp says about the app's addressing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedAppSpec {
    /// `spec.addressSpace` when set; otherwise the range the member already
    /// uses (so an app that was local keeps its addresses), or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space: Option<String>,
    /// Whether `address_space` is the user's (`spec.addressSpace`) rather
    /// than a proposal.
    #[serde(default)]
    pub explicit: bool,
    /// `spec.nodePrefixLength` in force.
    pub node_prefix_length: u8,
}

/// One node of a member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordNode {
    /// The node's name in its member.
    pub name: String,
    /// The node's own site (the member itself or one of its edge sites).
    pub site: String,
    /// `address:port` of its WireGuard port for the app, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Its WireGuard public key for the app (base64), when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Its slice of the app range.
    pub slice: String,
    /// The node stopped reporting.
    #[serde(default)]
    pub lost: bool,
}

/// One workload of a member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordWorkload {
    /// `namespace/name` in its member.
    pub name: String,
    /// The node it runs on ([`RecordNode::name`]).
    pub node: String,
    /// Its address in the app range, once the node reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The hub's decision for one shared app. On a hub cluster: a
/// MeshHubAllocation named `<app-namespace>.<app-name>` in the hub's own
/// namespace, written only by the hub operator.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshHubAllocation",
    plural = "meshhuballocations",
    shortname = "mhalloc",
    category = "weft",
    namespaced,
    printcolumn(name = "App", type_ = "string", json_path = ".spec.app"),
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.addressSpace"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HubAllocationSpec {
    /// The app, `namespace/name`.
    pub app: String,
    /// The app's range in every member (none while the pool is exhausted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space: Option<String>,
    /// Node slice length every member uses.
    pub node_prefix_length: u8,
    /// Blocks of the range, each granted to one member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<HubBlock>,
    /// Where members disagree, or what could not be granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<HubConflict>,
}

/// A block of an app's range granted to a member.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct HubBlock {
    /// The member.
    pub site: String,
    /// The block (a CIDR inside the app range).
    pub cidr: String,
}

/// A disagreement the hub found, reported to the member it concerns.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct HubConflict {
    /// The member whose record disagrees.
    pub site: String,
    /// The field of its MeshApp, e.g. `spec.addressSpace`.
    pub field: String,
    /// What disagrees, naming the other member.
    pub message: String,
}

/// A member's sign of life on the hub.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberHeartbeat {
    /// The member.
    pub site: String,
    /// When it last synced (seconds since the Unix epoch).
    pub time: u64,
}

/// The hub's view of its members, published for them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubState {
    /// The MeshHub's name.
    pub hub: String,
    /// Members and the apps each exports.
    pub members: Vec<crate::meshhub::HubMember>,
    /// Seconds without a heartbeat before a member is stale.
    pub stale_after_seconds: u32,
    /// Seconds without a heartbeat before a member's peers are pruned.
    pub prune_after_seconds: u32,
    /// Node slices per block.
    #[serde(default = "default_block_slices")]
    pub block_slices: u32,
}

fn default_block_slices() -> u32 {
    DEFAULT_BLOCK_SLICES
}

/// Where things live in a directory hub (the standalone hub's "API").
/// Members write only under `members/<site>/`; the hub only `hub.json` and
/// `allocations/`.
#[derive(Clone, Debug)]
pub struct HubLayout {
    root: PathBuf,
}

impl HubLayout {
    /// A hub rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HubLayout { root: root.into() }
    }

    /// The hub's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `hub.json`: the hub's [`HubState`].
    pub fn state(&self) -> PathBuf {
        self.root.join("hub.json")
    }

    /// Where the hub writes allocations.
    pub fn allocations(&self) -> PathBuf {
        self.root.join("allocations")
    }

    /// The allocation of one app.
    pub fn allocation(&self, app: &str) -> PathBuf {
        self.allocations().join(format!("{}.json", file_stem(app)))
    }

    /// Every member's directory.
    pub fn members(&self) -> PathBuf {
        self.root.join("members")
    }

    /// A member's directory.
    pub fn member(&self, site: &str) -> PathBuf {
        self.members().join(site)
    }

    /// A member's heartbeat.
    pub fn heartbeat(&self, site: &str) -> PathBuf {
        self.member(site).join("heartbeat.json")
    }

    /// A member's records.
    pub fn records(&self, site: &str) -> PathBuf {
        self.member(site).join("records")
    }

    /// A member's record of one app.
    pub fn record(&self, site: &str, app: &str) -> PathBuf {
        self.records(site).join(format!("{}.json", file_stem(app)))
    }
}

/// `namespace/name` as a file stem (`namespace.name`: neither part may hold
/// a dot in the namespace, and names are DNS subdomains).
pub fn file_stem(app: &str) -> String {
    app.replacen('/', ".", 1)
}

/// The app of a file stem written by [`file_stem`].
pub fn app_of_stem(stem: &str) -> Option<String> {
    let (ns, name) = stem.split_once('.')?;
    (!ns.is_empty() && !name.is_empty()).then(|| format!("{ns}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_round_trip_with_dotted_names() {
        for app in ["demo/web", "a/b.c.d", "kube-system/x"] {
            assert_eq!(app_of_stem(&file_stem(app)).as_deref(), Some(app));
        }
        assert_eq!(app_of_stem("nodot"), None);
        let l = HubLayout::new("/h");
        assert_eq!(
            l.record("a", "demo/web"),
            PathBuf::from("/h/members/a/records/demo.web.json")
        );
    }
}
