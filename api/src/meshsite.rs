//! MeshSite: one location (this cluster, another cluster, an edge site).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A MeshSite is a place where nodes of Weft apps run: the cluster the operator
/// runs in, another cluster federated through a MeshHub, or a group of
/// Docker-only edge hosts. Nodes name their site with the `weft.dev/site` label.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshSite",
    plural = "meshsites",
    shortname = "msite",
    category = "weft",
    status = "MeshSiteStatus",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.kind"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes"),
    printcolumn(
        name = "Reachable",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MeshSiteSpec {
    /// What kind of location this is.
    #[serde(default)]
    pub kind: SiteKind,
    /// Human-readable description (at most 1024 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// For `Remote` sites (and only them): the MeshHub through which the
    /// site's nodes are imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub hub: Option<String>,
    /// For `Remote` sites: how to reach the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_access: Option<HubAccess>,
}

/// Where a member reaches its hub: exactly one of the two.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubAccess {
    /// A directory shared with the hub (standalone operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub directory: Option<String>,
    /// A Secret in the operator's namespace holding a kubeconfig for the
    /// hub cluster, scoped to this member (Kubernetes operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub kubeconfig_secret: Option<String>,
}

/// Kind of a [`MeshSite`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SiteKind {
    /// The cluster (or standalone host group) this operator manages.
    #[default]
    Local,
    /// Another cluster, federated through a MeshHub.
    Remote,
    /// Docker-only edge hosts whose daemons register themselves.
    Edge,
}

/// What the operator observed about a MeshSite.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshSiteStatus {
    /// `Ready`: the site's nodes report in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of nodes at the site.
    #[serde(default)]
    pub nodes: u32,
    /// When the site's nodes last reported (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
    /// The spec in force and the generation it had when accepted; while the
    /// current spec is rejected the last accepted one stays in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<EnforcedSite>,
}

/// A MeshSite spec as it was accepted, with the generation it had then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnforcedSite {
    /// `metadata.generation` of the site when this spec was accepted.
    pub generation: i64,
    /// The accepted spec.
    pub spec: MeshSiteSpec,
}
