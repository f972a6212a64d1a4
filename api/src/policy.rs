//! Compiled policy: what the operator's planner makes of an app's MeshPolicies
//! for one node, carried in `MeshNode.spec.apps[].policy` and enforced by the
//! node's daemon inside the app's network namespace.
//!
//! Semantics (NetworkPolicy-like): a workload address listed in neither
//! `ingressIsolated` nor `egressIsolated` is open within its app. An address
//! isolated for a direction accepts, in that direction, only new flows some
//! rule of that direction allows; replies to allowed flows always pass
//! (connection tracking). A flow between two workloads must be allowed by the
//! egress side of its source and the ingress side of its destination.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One app's compiled policy on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompiledPolicy {
    /// Addresses of this node's workloads whose incoming traffic is
    /// default-deny (some policy selects them for ingress), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_isolated: Vec<String>,
    /// Addresses of this node's workloads whose outgoing traffic is
    /// default-deny (some policy selects them for egress), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_isolated: Vec<String>,
    /// Allow rules, sorted by `id`. A new flow of an isolated workload passes
    /// in a direction when any rule of that direction matches it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<CompiledRule>,
}

/// Direction of a compiled rule, seen from the local workload.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum PolicyDirection {
    /// Traffic towards the local workload (it is the destination).
    #[default]
    Ingress,
    /// Traffic from the local workload (it is the source).
    Egress,
}

/// Layer-4 protocol of a compiled rule.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum PolicyProtocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// ICMP (every type).
    #[serde(rename = "ICMP")]
    Icmp,
}

/// One allow rule, already resolved to addresses.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct CompiledRule {
    /// Where the rule comes from: `namespace/policy:direction[rule]`, plus
    /// `.ports[i]` when the rule lists ports. Names the rule's counters.
    pub id: String,
    /// Whether the rule allows traffic to (`Ingress`) or from (`Egress`) the
    /// local workloads.
    pub direction: PolicyDirection,
    /// Addresses of this node's workloads the rule applies to (sorted).
    pub local: Vec<String>,
    /// IPv4 CIDRs of the other side (sorted); empty means the whole app range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// Protocol; unset means every protocol (and then no ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PolicyProtocol>,
    /// First destination port (TCP/UDP); unset means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Last destination port of a range; unset means just `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}
