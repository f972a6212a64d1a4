//! MeshPolicy: who may talk to whom inside an app.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::Selector;

/// A MeshPolicy restricts traffic between the workloads of one MeshApp, like a
/// NetworkPolicy: a workload no policy selects is open within its app; once a
/// policy selects it for a direction, that direction is denied except what some
/// policy allows. Replies to allowed flows always pass. Traffic with another
/// app is denied unless both apps' policies allow it (`peers[].app`). An
/// invalid update keeps the last accepted version enforced.
#[derive(
    CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshPolicy",
    plural = "meshpolicies",
    shortname = "mpol",
    category = "weft",
    namespaced,
    status = "MeshPolicyStatus",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.app"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicySpec {
    /// Name of the MeshApp (in this namespace) whose workloads the policy governs.
    #[x_kube(validation = Rule::new("self != ''").message("app must name a MeshApp"))]
    pub app: String,
    /// Workloads of the app the policy applies to; empty selects all of them.
    #[serde(default)]
    pub selector: Selector,
    /// Allowed incoming traffic. Present (even empty) makes ingress default-deny
    /// for the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<PolicyRule>>,
    /// Allowed outgoing traffic. Present (even empty) makes egress default-deny
    /// for the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<PolicyRule>>,
}

/// One allow rule: traffic to/from any of `peers` on any of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// The other side of the flow; empty means any workload of the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PolicyPeer>,
    /// Protocols and ports; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// The other side of a flow. Fields set together must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPeer {
    /// Workloads by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Workloads of another MeshApp (`name` in this namespace, or
    /// `namespace/name`); `selector`, `site` and `cidr` then narrow that
    /// app's workloads. Traffic between two apps is denied unless both sides
    /// allow it: a flow from A's workload W to B's workload V needs an
    /// egress rule of A allowing W to reach app B and an ingress rule of B
    /// allowing V to be reached from app A, on a port both allow (replies
    /// pass). On one node the two apps' namespaces get a link; between
    /// nodes one of the two apps' tunnels carries the other's allowed
    /// addresses (that app is placed, without workloads, on the node where
    /// the pair crosses). Every table on the path enforces its own app's
    /// side; nothing is translated (app ranges never overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Workloads at a MeshSite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// An IPv4 range inside the app's address space (the peer `app`'s when
    /// set); a range outside it is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
}

/// A protocol and a port or port range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPort {
    /// `TCP`, `UDP` or `ICMP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// First port (1-65535); unset means every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Last port of a range, at least `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// What the operator made of a MeshPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicyStatus {
    /// `Accepted`: whether the policy is valid and references resolve; the
    /// message names the offending field otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What is enforced while the current spec is rejected: the last accepted
    /// spec and its generation. An invalid update never opens what the
    /// policy isolated; the previous version stays in force (compiled against
    /// the current workloads) until the spec is fixed or the policy deleted.
    /// While the spec is accepted this is the current spec; unset when no
    /// version was ever accepted (nothing is enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<EnforcedPolicy>,
}

/// A MeshPolicy spec as it was accepted, with the generation it had then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnforcedPolicy {
    /// `metadata.generation` of the policy when this spec was accepted.
    pub generation: i64,
    /// The accepted spec.
    pub spec: MeshPolicySpec,
}
