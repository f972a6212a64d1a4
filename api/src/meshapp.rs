//! MeshApp: one application's private network.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::Selector;

/// Default MTU of an app's WireGuard interface (1500 minus WireGuard's IPv4 overhead).
pub const DEFAULT_MTU: u16 = 1420;
/// Default prefix length of the slice of the app's range each node gets.
pub const DEFAULT_NODE_PREFIX_LENGTH: u8 = 24;

/// A MeshApp gives the workloads it selects their own encrypted network: on every
/// node where such a workload runs, Weft creates a network namespace with a
/// WireGuard interface, and those interfaces form a one-hop full mesh.
#[derive(
    CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize,
)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshApp",
    plural = "meshapps",
    shortname = "mapp",
    category = "weft",
    namespaced,
    status = "MeshAppStatus",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether every node is programmed and every peer pair has handshaken"),
    printcolumn(name = "Nodes", type_ = "string", json_path = ".status.nodes", description = "Nodes programmed / nodes that should run the app"),
    printcolumn(name = "Peers", type_ = "string", json_path = ".status.peers", description = "Peer links with a recent handshake / peer links planned"),
    printcolumn(name = "CIDR", type_ = "string", json_path = ".status.addressSpace", description = "Address range of the app"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Sites", type_ = "string", json_path = ".status.sites", priority = 1, description = "Sites where the app has nodes"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1, description = "Why the app is (not) Ready"),
    validation = Rule::new("!has(oldSelf.spec.addressSpace) || (has(self.spec.addressSpace) && self.spec.addressSpace == oldSelf.spec.addressSpace)").message("spec.addressSpace is immutable once set: renumbering would cut every live connection; create a new MeshApp instead").field_path(".spec.addressSpace")
)]
#[serde(rename_all = "camelCase")]
pub struct MeshAppSpec {
    /// Selects the workloads (pods, containers) that belong to this app by their
    /// labels, within the MeshApp's namespace. Workloads labelled
    /// `weft.dev/app: <name>` are selected too.
    #[serde(default)]
    pub selector: Selector,

    /// Names of the MeshSites the app spans (at most 64). Empty means the
    /// local site only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")), extend("x-kubernetes-list-type" = "set"))]
    pub sites: Vec<String>,

    /// IPv4 range of the app's private network, e.g. `10.100.0.0/16`. When unset,
    /// the operator allocates one from its pool and reports it in
    /// `status.addressSpace`. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])$"))]
    #[schemars(length(max = 18))]
    #[x_kube(
        validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 4").message("addressSpace must be an IPv4 CIDR such as 10.100.0.0/16"),
        validation = Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()").message("addressSpace has host bits set: give the network address (e.g. 10.120.0.0/16, not 10.120.0.1/16)"),
        validation = Rule::new("!isCIDR(self) || (cidr(self).ip().isGlobalUnicast() && cidr(self).prefixLength() >= 8 && cidr(self).prefixLength() <= 30)").message("addressSpace must be a unicast range between /8 and /30 (not loopback, link-local, multicast or broadcast)")
    )]
    pub address_space: Option<String>,

    /// Prefix length of the slice of `addressSpace` each node gets; the node's
    /// tunnel address and its workloads' addresses come from that slice.
    /// Defaults to 24 (254 addresses per node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 30))]
    pub node_prefix_length: Option<u8>,

    /// MTU of the app's WireGuard interface and workload links, 1280-1500
    /// (default 1420, which leaves room for WireGuard's overhead on a 1500 path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1280, max = 1500))]
    pub mtu: Option<u16>,

    /// Seconds between keepalive packets sent to each peer, so NAT mappings stay
    /// open (0 or unset disables them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub persistent_keepalive: Option<u16>,
}

/// What the operator observed about a MeshApp.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshAppStatus {
    /// `Ready` (every node programmed, every peer pair handshaken) and `Degraded`
    /// (what is missing, or which field is invalid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The app's address range (as given, or as allocated by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space: Option<String>,
    /// Nodes whose data plane for this app is programmed.
    #[serde(default)]
    pub nodes_ready: u32,
    /// Nodes that should run this app.
    #[serde(default)]
    pub nodes_total: u32,
    /// Peer links (unordered node pairs) with a completed handshake.
    #[serde(default)]
    pub peers_up: u32,
    /// Peer links planned (n·(n−1)/2 for n nodes).
    #[serde(default)]
    pub peers_total: u32,
    /// `nodesReady/nodesTotal`, for printing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
    /// `peersUp/peersTotal`, for printing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<String>,
    /// Sites where the app currently has nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    /// The app's traffic, summed over the nodes that report it; unset until
    /// one does. Refreshed with the nodes' heartbeats, not per packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSummary>,
    /// The spec in force and the generation it had when accepted. While the
    /// current spec is rejected (invalid, or it changes `addressSpace`) the
    /// last accepted one stays in force, so a bad edit never tears down or
    /// renumbers a working app; unset while no version was ever accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<EnforcedApp>,
}

/// A MeshApp spec as it was accepted, with the generation it had then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnforcedApp {
    /// `metadata.generation` of the app when this spec was accepted.
    pub generation: i64,
    /// The accepted spec.
    pub spec: MeshAppSpec,
}

/// An app's traffic summed over its nodes. A packet between two nodes counts
/// in `txPackets` at its sender and in `rxPackets` at its receiver; each
/// node's counters start when its daemon starts counting and restart when
/// the app's peer set there changes, so the two sums need not be equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSummary {
    /// WireGuard bytes received from peers (encrypted, overhead included).
    pub rx_bytes: u64,
    /// WireGuard bytes sent to peers.
    pub tx_bytes: u64,
    /// IP packets received from peers through the tunnels.
    pub rx_packets: u64,
    /// IP packets sent to peers through the tunnels.
    pub tx_packets: u64,
    /// Packets dropped by policy on the app's nodes.
    pub policy_drops: u64,
    /// Connections open now on the app's nodes (a connection between two
    /// nodes counts on each of them).
    pub active_connections: u64,
    /// Nodes whose figures are included.
    pub nodes: u32,
    /// When these figures were summed. They are refreshed at most once a
    /// minute (or with any other change of the status), so moving counters
    /// alone do not rewrite the status on every node heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
}
