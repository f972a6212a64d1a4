//! The node's data plane as plain data. The same types describe what we want
//! (planned from the MeshNode spec) and what the kernel has (observed), so the
//! diff is a comparison of two values.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
pub use weft_api::{PolicyDirection, PolicyProtocol};

/// Everything this daemon owns on the node, keyed by app netns name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// One entry per app network namespace.
    pub apps: BTreeMap<String, AppNet>,
}

/// One app's network namespace and what is in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppNet {
    /// `namespace/name` of the app (informational; not compared by the diff).
    pub app: String,
    /// Network namespace name (under /run/netns).
    pub netns: String,
    /// The app's WireGuard interface; `None` when absent (observed only).
    pub device: Option<Device>,
    /// Workload links, keyed by the app-side interface name.
    pub workloads: BTreeMap<String, WorkloadLink>,
    /// The app's policy table in the netns; `None`: no table (all open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyTable>,
    /// App links (veth ends towards other apps' netns), keyed by the
    /// interface name in this netns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, AppLinkEnd>,
}

/// This netns' end of a veth pair to another app's netns on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppLinkEnd {
    /// The other app's netns (desired only; the kernel does not report it).
    pub peer_netns: String,
    /// The other end's name (desired only).
    pub peer_interface: String,
    /// Destinations routed through the link (the other app's range).
    pub routes: Vec<Ipv4Net>,
}

impl AppLinkEnd {
    /// Of a pair, the end in the netns whose name sorts first creates (and
    /// deletes) the veth, so the two apps never race for it.
    pub fn owned_by(&self, netns: &str) -> bool {
        netns < self.peer_netns.as_str()
    }
}

impl AppNet {
    /// What each workload routes through its gateway: the app range, the
    /// range of every linked app, and the other apps' addresses the tunnel
    /// carries (cross-app flows between nodes: replies must go back in).
    pub fn workload_routes(&self) -> Vec<Ipv4Net> {
        let mut r: Vec<Ipv4Net> = self
            .device
            .iter()
            .flat_map(|d| d.routes.iter().copied())
            .chain(self.links.values().flat_map(|l| l.routes.iter().copied()))
            .collect();
        // An empty list means "mirror the tunnel's routes" (see the data
        // plane's workload attach); the resolver's route must not end that.
        if !r.is_empty() {
            r.push(Ipv4Net::new(RESOLVER_ADDRESS, 32).expect("/32 is a valid prefix"));
        }
        r.sort();
        r.dedup();
        r
    }
}

/// A policy ruleset and its digest. The diff compares digests only: the
/// kernel side reports the digest it was written with (and whether the table
/// still has every rule), not the rules themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyTable {
    /// Hex digest of `ruleset` (see [`Ruleset::digest`]).
    pub digest: String,
    /// The rules (empty when observed).
    pub ruleset: Ruleset,
}

/// The compiled policy of one app netns, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// The app's range (what a rule without peers allows).
    pub app_range: Option<Ipv4Net>,
    /// Local workload addresses whose incoming new flows are default-deny.
    pub ingress_isolated: Vec<Ipv4Addr>,
    /// Local workload addresses whose outgoing new flows are default-deny.
    pub egress_isolated: Vec<Ipv4Addr>,
    /// Allow rules, in order.
    pub rules: Vec<RulesetRule>,
    /// Ranges of the apps linked to this one. When any, every flow between
    /// the app range and outside it is dropped unless a `cross_app` rule
    /// allows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked: Vec<Ipv4Net>,
    /// This app's allow rules for flows with linked apps (`peers` are their
    /// addresses); evaluated instead of `rules` for such flows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cross_app: Vec<RulesetRule>,
}

/// One allow rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesetRule {
    /// Rule id (`namespace/policy:direction[i]...`), names its counter.
    pub id: String,
    /// Towards (ingress) or from (egress) the local addresses.
    pub direction: PolicyDirection,
    /// Local workload addresses.
    pub local: Vec<Ipv4Addr>,
    /// The other side; empty means the app range.
    pub peers: Vec<Ipv4Net>,
    /// Protocol; `None` is any.
    pub protocol: Option<PolicyProtocol>,
    /// Destination port range (inclusive), TCP/UDP only.
    pub ports: Option<(u16, u16)>,
}

impl Ruleset {
    /// Stable digest of the ruleset (16 hex digits of SHA-256 of its JSON).
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).unwrap_or_default();
        crate::keys::hex(&Sha256::digest(&json)[..8])
    }

    /// The ruleset with its digest.
    pub fn into_table(self) -> PolicyTable {
        PolicyTable {
            digest: self.digest(),
            ruleset: self,
        }
    }
}

/// Packet and byte counts of one nftables counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Counters of one app's policy table; observed only, never diffed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounters {
    /// New flows allowed, per rule id.
    pub rules: BTreeMap<String, Counter>,
    /// Packets of established/related flows (replies and later packets).
    pub established: Counter,
    /// Packets dropped because no ingress rule allowed them.
    pub dropped_ingress: Counter,
    /// Packets dropped because no egress rule allowed them.
    pub dropped_egress: Counter,
}

/// A WireGuard interface inside an app netns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Interface name.
    pub interface: String,
    /// Interface MTU.
    pub mtu: u16,
    /// Administratively up.
    pub up: bool,
    /// Addresses on the interface (a single /32 today).
    pub addresses: Vec<Ipv4Net>,
    /// Destinations routed through the interface: the app range, then
    /// other apps' workload /32s carried for cross-app flows.
    pub routes: Vec<Ipv4Net>,
    /// UDP port listened on in the node netns.
    pub listen_port: u16,
    /// Public key of the interface's private key (base64).
    pub public_key: String,
    /// Peers keyed by public key.
    pub peers: BTreeMap<String, Peer>,
}

/// A WireGuard peer's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Where the peer listens.
    pub endpoint: Option<SocketAddr>,
    /// Ranges routed to the peer, sorted.
    pub allowed_ips: Vec<Ipv4Net>,
    /// Keepalive interval in seconds (0 = off).
    pub persistent_keepalive: u16,
}

/// Live counters of a peer; observed only, never diffed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    /// Seconds since the last completed handshake.
    pub last_handshake_seconds: Option<u64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// A workload attached to the app netns by a veth pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadLink {
    /// `namespace/name` of the workload (informational; not compared).
    pub workload: String,
    /// Path of the workload's netns (informational when observed).
    pub workload_netns: String,
    /// The workload's address in the app (routed as /32 to the veth).
    pub address: Ipv4Addr,
    /// Link MTU.
    pub mtu: u16,
}

/// Interface name of the workload side of every attachment (inside the workload netns).
pub const WORKLOAD_IFNAME: &str = "weft0";
/// Gateway address the workload routes the app range through (link-local,
/// answered by a static neighbour entry, never by ARP).
pub const WORKLOAD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Where every workload finds its app's resolver, on every node: the same
/// link-local address in each app netns (on its loopback), routed by each
/// workload through [`WORKLOAD_GATEWAY`]. Fixed, so a pod's `dnsConfig` or a
/// container's `--dns` can name it before anything is attached. Not the
/// gateway itself: some primary networks (Calico) use 169.254.1.1 as theirs.
pub const RESOLVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 53);

/// `namespace/name` of a workload: how every part of the daemon names one.
pub fn workload_key(w: &weft_api::standalone::LocalWorkload) -> String {
    format!("{}/{}", w.namespace, w.name)
}
