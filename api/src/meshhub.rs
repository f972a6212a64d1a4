//! MeshHub: the federation rendezvous between sites.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A MeshHub (in the hub cluster) lists the member sites of a federation and the
/// apps each exports; sites exchange nodes, public keys, endpoints and address
/// slices through it so an app's one-hop mesh spans clusters.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshHub",
    plural = "meshhubs",
    shortname = "mhub",
    category = "weft",
    status = "MeshHubStatus",
    printcolumn(name = "Members", type_ = "integer", json_path = ".status.members"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Syncing", type_ = "string", json_path = ".status.syncing"),
    printcolumn(name = "Oldest Sync", type_ = "date", json_path = ".status.oldestSync"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MeshHubSpec {
    /// Member sites of the federation (at most 64, each once).
    #[serde(default)]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["site"]))]
    pub members: Vec<HubMember>,
    /// Pool the hub allocates shared apps' ranges from when no member names
    /// one (default `100.64.0.0/10`, as the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 18))]
    pub pool: Option<String>,
    /// Node slices per block handed to a member (a power of two, default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub block_slices: Option<u32>,
    /// Seconds without a sync after which a member is stale (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5, max = 86400))]
    pub stale_after_seconds: Option<u32>,
    /// Seconds without a sync after which a member's nodes are pruned from
    /// the other members' meshes (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 2592000))]
    pub prune_after_seconds: Option<u32>,
}

/// One member site of a [`MeshHub`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubMember {
    /// MeshSite name of the member.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub site: String,
    /// Apps (`namespace/name`) the member shares with the federation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(max = 317), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")), extend("x-kubernetes-list-type" = "set"))]
    pub exports: Vec<String>,
}

/// What the hub-side operator observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshHubStatus {
    /// `Ready`: every member has synced recently.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members currently syncing.
    #[serde(default)]
    pub members: u32,
    /// The members syncing, comma-separated (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syncing: Option<String>,
    /// The last sync of the member that synced longest ago (RFC 3339): how
    /// fresh the least fresh member is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_sync: Option<String>,
    /// Each member as the hub sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["site"]))]
    pub member_status: Vec<HubMemberStatus>,
}

/// One member of a [`MeshHub`], as the hub sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubMemberStatus {
    /// The member.
    pub site: String,
    /// `Syncing`, `Stale` (no sync for staleAfterSeconds) or `Gone` (none
    /// for pruneAfterSeconds, or never).
    pub state: String,
    /// When it last synced (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
    /// Apps it has a record of.
    #[serde(default)]
    pub records: u32,
}
