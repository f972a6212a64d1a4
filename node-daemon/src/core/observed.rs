//! What the data plane reports back (plain data): the observed state with
//! its live counters, and the traffic figures of each app netns. Defined
//! here, not beside the [`crate::dataplane::Dataplane`] trait, so the pure
//! status code reads them without depending on the data plane.

use std::collections::BTreeMap;

use super::state::{NodeState, PeerStats, PolicyCounters};

/// What an observation returns: the state plus live peer counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// The data plane as it is.
    pub state: NodeState,
    /// Counters per (netns, peer public key).
    pub stats: BTreeMap<(String, String), PeerStats>,
    /// Policy counters per netns (only netns with a policy table).
    pub policy_counters: BTreeMap<String, PolicyCounters>,
    /// Traffic per netns. `observe` leaves it empty: the reconciler fills it
    /// from [`Dataplane::traffic`] once the pass has applied its ops.
    pub traffic: BTreeMap<String, AppTraffic>,
}

/// What to count in one app netns: its WireGuard interface and each peer's
/// ranges (the allowed IPs WireGuard routes by and checks sources against).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficSpec {
    /// The app's WireGuard interface.
    pub interface: String,
    /// Peer public key -> its ranges.
    pub peers: BTreeMap<String, Vec<ipnet::Ipv4Net>>,
}

/// Traffic figures of one app netns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppTraffic {
    /// Per peer public key.
    pub peers: BTreeMap<String, PeerTraffic>,
    /// Open connections in the netns; `None` when they cannot be read.
    pub active_connections: Option<u64>,
    /// Whether this call had to (re)write the counting rules.
    pub wrote: bool,
}

/// Traffic with one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    /// IP packets received from the peer through the tunnel.
    pub rx_packets: u64,
    /// IP packets sent to the peer through the tunnel.
    pub tx_packets: u64,
    /// Open connections whose other end is in the peer's ranges.
    pub active_connections: u64,
}
