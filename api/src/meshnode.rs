//! MeshNode: the whole desired data plane of one node (spec, written by the
//! operator) and what the node's daemon made of it (status).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{CompiledPolicy, CompiledRule};
use crate::selector::Selector;

/// A peer link counts as up when its last handshake is younger than this
/// (WireGuard rejects sessions older than 180 s). The operator and the daemon
/// both judge "peer up" by it.
pub const HANDSHAKE_FRESH_SECONDS: u64 = 180;

/// Desired state of one node, computed by the operator's planner. Users never
/// write it; the node's daemon makes the kernel match it.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshNode",
    plural = "meshnodes",
    shortname = "mnode",
    category = "weft",
    status = "MeshNodeStatus",
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.site"),
    printcolumn(name = "Apps", type_ = "integer", json_path = ".status.appsReady"),
    printcolumn(name = "Dataplane", type_ = "string", json_path = ".status.dataplane"),
    printcolumn(
        name = "Ready",
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
pub struct MeshNodeSpec {
    /// MeshSite the node belongs to.
    pub site: String,
    /// One entry per app with a workload on this node (or that carries
    /// cross-app flows crossing here, see `AppLink`), sorted by `app`.
    #[serde(default)]
    pub apps: Vec<AppAttachment>,
}

/// Which workloads an app claims (see [`AppSelector::claims`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppSelector {
    /// The app, as `namespace/name`.
    pub app: String,
    /// The app's `spec.selector`.
    #[serde(default)]
    pub selector: Selector,
}

impl AppSelector {
    /// Whether the app claims a workload of `namespace` with `labels`: it
    /// must be in the app's namespace and either carry `weft.dev/app: <name>`
    /// or match a non-empty selector (an empty selector claims only the
    /// labelled workloads, never a whole namespace). The planner and the
    /// daemon both decide membership with this one function.
    pub fn claims(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        let (app_ns, app_name) = self.app.split_once('/').unwrap_or(("", &self.app));
        claims(app_ns, app_name, &self.selector, namespace, labels)
    }
}

/// The selectors of the apps that span `site` (an app with no `sites` spans
/// the local site only), sorted by app: what a daemon of that site needs to
/// tell whether a new workload belongs to some app. (Not part of the
/// MeshNode, which would then grow with every app of the site: the daemon
/// watches the apps itself, or reads the standalone operator's
/// [`crate::standalone::StateDir::selectors_file`].)
pub fn selectors_for_site<'a>(
    apps: impl IntoIterator<Item = (String, &'a crate::MeshAppSpec)>,
    site: &str,
) -> Vec<AppSelector> {
    let mut out: Vec<AppSelector> = apps
        .into_iter()
        .filter(|(_, spec)| {
            if spec.sites.is_empty() {
                site == crate::labels::LOCAL_SITE
            } else {
                spec.sites.iter().any(|s| s == site)
            }
        })
        .map(|(app, spec)| AppSelector {
            app,
            selector: spec.selector.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.app.cmp(&b.app));
    out
}

/// [`AppSelector::claims`] on borrowed parts (the planner's form).
pub fn claims(
    app_namespace: &str,
    app_name: &str,
    selector: &Selector,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    if app_namespace != namespace {
        return false;
    }
    let selector_empty = selector.match_labels.is_empty() && selector.match_expressions.is_empty();
    labels.get(crate::labels::APP_LABEL).map(String::as_str) == Some(app_name)
        || (!selector_empty && selector.matches(labels))
}

/// One app's data plane on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppAttachment {
    /// The app, as `namespace/name`.
    pub app: String,
    /// Stable identifier of the app (hash of `namespace/name`), used in names.
    pub app_id: String,
    /// Network namespace that holds the app's interfaces on this node.
    pub netns: String,
    /// WireGuard interface name (at most 15 bytes, unique on the host).
    pub interface: String,
    /// The app's whole address range (routed through the interface).
    pub address_space: String,
    /// This node's slice of the range; its workloads get addresses from it.
    pub node_slice: String,
    /// This node's tunnel address (first usable address of `nodeSlice`).
    pub address: String,
    /// UDP port the interface listens on in the node's network namespace.
    pub listen_port: u16,
    /// Interface MTU.
    pub mtu: u16,
    /// Keepalive interval towards each peer in seconds (0 = off).
    #[serde(default)]
    pub persistent_keepalive: u16,
    /// Workloads on this node that belong to the app (`namespace/name`, sorted);
    /// the daemon attaches each to the app's netns with an address from `nodeSlice`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<String>,
    /// The app's other nodes (full mesh). Peers whose key or endpoint is not
    /// known yet are left out until their daemon reports them.
    // Shared: the planner gives every node of an app the same entry for a
    // peer, so an app on thousands of nodes holds each entry once.
    #[serde(default)]
    pub peers: Vec<Arc<PeerSpec>>,
    /// The app's MeshPolicies compiled for this node's workloads; unset when
    /// no policy isolates any of them (everything within the app is open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<CompiledPolicy>,
    /// Links to other apps on this node, sorted by `app`: one per app that
    /// this app's and that app's MeshPolicies both allow traffic with (peers
    /// with `app`). Apps share nothing else; without a link no packet can
    /// pass between them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_links: Vec<AppLink>,
    /// Other apps this app exchanges allowed flows with through its own
    /// tunnel, on this node, where it has no app link to them, sorted by
    /// `app`: this app's rules for those flows (enforced like a link's
    /// rules). The other app's workload addresses involved are listed in
    /// the `allowedIps` of the peer they are reached through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_apps: Vec<RemoteApp>,
    /// The app's workloads by name, on every node of the app here and at
    /// other federation members, for the app's own DNS
    /// (`<name>.<app>.<namespace>.weft`): those with a reported address,
    /// sorted by name. One list shared by all the app's attachments.
    #[serde(default, skip_serializing_if = "no_names")]
    pub names: Arc<Vec<WorkloadName>>,
}

fn no_names(names: &Arc<Vec<WorkloadName>>) -> bool {
    names.is_empty()
}

/// A workload's name and address in its app.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadName {
    /// The workload's name (a DNS label; the same wherever it runs).
    pub name: String,
    /// Its address in the app range.
    pub address: String,
}

/// Flows with another app that reach this node through this app's tunnel
/// (the two workloads are on different nodes; the pair crosses between the
/// apps on the other node, over an app link there). Both apps' tables on
/// the path enforce their own side; this is this app's side on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteApp {
    /// The other app, as `namespace/name`.
    pub app: String,
    /// The other app's range (every rule peer lies inside it).
    pub address_space: String,
    /// This app's allow rules for flows with the other app (`peers` are
    /// addresses of the other app), sorted by `id`. Replies always pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<CompiledRule>,
}

/// A veth pair between this app's namespace and another app's namespace on
/// the same node. Each side routes the other app's range through it, and
/// each side's policy table passes only the flows its own policies allow
/// (this app's egress towards the other app, its ingress from it); every
/// other packet between the two apps is dropped. Both apps carry the link,
/// each with its own end and its own rules. A link also carries pairs whose
/// other workload lives on another node: the pair crosses here, and one of
/// the two apps' tunnels carries it on (see `RemoteApp`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppLink {
    /// The other app, as `namespace/name`.
    pub app: String,
    /// The other app's network namespace on this node.
    pub netns: String,
    /// This end of the pair (in this app's namespace; at most 15 bytes).
    pub interface: String,
    /// The other end (in the other app's namespace).
    pub peer_interface: String,
    /// The other app's range, routed through the link (this app's workloads
    /// get a route for it too).
    pub address_space: String,
    /// This app's allow rules for flows with the other app (`peers` are
    /// addresses of the other app; `local` are this app's, possibly of
    /// workloads on other nodes whose flows cross here), sorted by `id`.
    /// Replies always pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<CompiledRule>,
}

/// A WireGuard peer: another node of the same app.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    /// Name of the peer's MeshNode.
    pub node: String,
    /// The peer's WireGuard public key (base64).
    pub public_key: String,
    /// `address:port` where the peer listens.
    pub endpoint: String,
    /// Ranges routed to the peer: its slice of the app range, then (as
    /// /32s) workloads of other apps that this app's tunnel carries to the
    /// peer for allowed cross-app flows. The daemon routes those foreign
    /// prefixes through the tunnel, and WireGuard accepts packets from the
    /// peer with them as source.
    pub allowed_ips: Vec<String>,
}

/// Which WireGuard implementation a node uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DataplaneKind {
    /// The kernel's WireGuard module.
    #[default]
    Kernel,
    /// Userspace WireGuard (GotaTun), in the daemon's process (no kernel module available).
    Userspace,
}

/// What the node's daemon reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshNodeStatus {
    /// `Ready`: every app of the spec is programmed; otherwise the message says
    /// which app failed and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation the daemon last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// WireGuard implementation in use on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<DataplaneKind>,
    /// Address other nodes reach this node at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_address: Option<String>,
    /// Apps programmed on this node.
    #[serde(default)]
    pub apps_ready: u32,
    /// Per-app state, sorted by `app`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<AppStatus>,
    /// Workloads running on this node (labels, and app address once attached).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadStatus>,
    /// When the daemon last reported (RFC 3339); lets the operator spot lost nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// Keys the daemon made for apps that claim workloads of this node but
    /// are not in its spec yet, sorted by `app`: the operator hands them to
    /// the node's peers in the same pass that plans the app here, instead
    /// of waiting for the app to be programmed and its key reported (one
    /// round through the API server less before the first packet). The
    /// daemon uses exactly this key once the app arrives. Public keys only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prepared_keys: Vec<PreparedKey>,
}

/// A key made ahead of an app's arrival on a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreparedKey {
    /// The app, as `namespace/name`.
    pub app: String,
    /// The public key the node will use for it (base64).
    pub public_key: String,
}

impl MeshNodeStatus {
    /// The public key of each app on this node, as peers should see it:
    /// the key of the programmed app where there is one, else the key
    /// prepared for it.
    pub fn app_public_keys(&self) -> BTreeMap<&str, &str> {
        let mut out: BTreeMap<&str, &str> = self
            .prepared_keys
            .iter()
            .filter(|k| !k.public_key.is_empty())
            .map(|k| (k.app.as_str(), k.public_key.as_str()))
            .collect();
        for a in self.apps.iter().filter(|a| !a.public_key.is_empty()) {
            out.insert(a.app.as_str(), a.public_key.as_str());
        }
        out
    }
}

/// One app's state on a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    /// The app, as `namespace/name`.
    pub app: String,
    /// Public key of this node's interface for the app (base64). The private
    /// key never leaves the node.
    pub public_key: String,
    /// UDP port actually listened on.
    pub listen_port: u16,
    /// Interface name.
    pub interface: String,
    /// Whether the interface, addresses, routes and peers are all programmed.
    pub programmed: bool,
    /// Last error while programming, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per-peer WireGuard state, sorted by `node`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerStatus>,
    /// Peers with a completed WireGuard handshake in the last 180 seconds
    /// (the daemon probes idle peers, so a healthy peer stays up).
    #[serde(default)]
    pub peers_up: u32,
    /// Packets this node dropped for the app because no policy rule allowed
    /// them (ingress and egress together), counted since the app's policy on
    /// this node was last updated; unset when no policy applies here. Like
    /// the byte counters it is refreshed with the heartbeat, not on every
    /// change. Per-rule and per-direction figures are daemon metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_drops: Option<u64>,
    /// Connections of the app open on this node right now: entries of the
    /// app network namespace's connection tracking that have seen a reply
    /// and, for TCP, are ESTABLISHED (not opening or closing); ICMP (pings)
    /// never counts. Unset where the node cannot read connection tracking.
    /// Refreshed with the heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_connections: Option<u64>,
}

/// WireGuard state of one peer as seen from this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// The peer's MeshNode name.
    pub node: String,
    /// The peer's public key (base64).
    pub public_key: String,
    /// Seconds since the last completed handshake; unset if none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake_seconds: Option<u64>,
    /// Bytes received from the peer.
    #[serde(default)]
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    #[serde(default)]
    pub tx_bytes: u64,
    /// IP packets received from the peer through the tunnel (inner packets,
    /// counted as they leave the app's interface; WireGuard's own handshakes
    /// and keepalives are not packets here). `rxBytes`/`txBytes` are
    /// WireGuard's figures: encrypted bytes, overhead included.
    #[serde(default)]
    pub rx_packets: u64,
    /// IP packets sent to the peer through the tunnel (after policy).
    #[serde(default)]
    pub tx_packets: u64,
    /// Open connections with the peer: the app's `activeConnections` whose
    /// other end is in the peer's ranges.
    #[serde(default)]
    pub active_connections: u64,
}

/// A workload on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Workload name (pod or container name).
    pub name: String,
    /// Namespace the workload lives in (apps select workloads of their own namespace).
    pub namespace: String,
    /// The workload's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The app it is attached to (`namespace/name`), once attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Its address in the app's network, once attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_programmed_apps_key_wins_over_a_prepared_one() {
        let st = MeshNodeStatus {
            apps: vec![
                AppStatus {
                    app: "demo/web".into(),
                    public_key: "WEB".into(),
                    ..Default::default()
                },
                AppStatus {
                    app: "demo/new".into(),
                    ..Default::default()
                },
            ],
            prepared_keys: vec![
                PreparedKey {
                    app: "demo/new".into(),
                    public_key: "NEW".into(),
                },
                PreparedKey {
                    app: "demo/web".into(),
                    public_key: "STALE".into(),
                },
            ],
            ..Default::default()
        };
        let keys: Vec<(&str, &str)> = st.app_public_keys().into_iter().collect();
        assert_eq!(keys, [("demo/new", "NEW"), ("demo/web", "WEB")]);
    }
}
