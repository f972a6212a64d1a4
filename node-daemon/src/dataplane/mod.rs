//! The boundary between pure logic and the kernel. Everything that touches
//! netlink, WireGuard or namespaces sits behind [`Dataplane`]; the daemon's
//! logic is tested against [`fake::FakeDataplane`].

pub mod fake;
pub mod linux;
pub mod sockbuf;

use weft_api::DataplaneKind;

use crate::error::Error;
use crate::ops::Op;
use crate::state::{NodeState, PeerStats, PolicyCounters};
use std::collections::BTreeMap;

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

/// A node's data plane. Calls are blocking and must come from a plain OS
/// thread (never a tokio worker): the real implementation switches network
/// namespaces on the calling thread.
pub trait Dataplane: Send {
    /// Which WireGuard implementation this data plane uses.
    fn kind(&self) -> DataplaneKind;
    /// Reads back every app netns whose name starts with `netns_prefix`
    /// (this daemon owns those and nothing else).
    fn observe(&mut self, netns_prefix: &str) -> Result<Observation, Error>;
    /// Applies one operation.
    fn apply(&mut self, op: &Op) -> Result<(), Error>;
    /// Sends one datagram from inside `netns` to `destination` (a peer's
    /// tunnel address), which makes WireGuard handshake with that peer. This
    /// is traffic, not configuration: it never changes the data plane.
    fn probe(&mut self, netns: &str, destination: std::net::Ipv4Addr) -> Result<(), Error>;
    /// Makes `netns` count its traffic per peer as `want` says (writing only
    /// when that differs from what it counts already) and returns the
    /// figures. Counting never changes how packets flow.
    fn traffic(&mut self, netns: &str, want: &TrafficSpec) -> Result<AppTraffic, Error>;
    /// Runs exactly the per-app DNS resolvers in `want` (keyed by app netns;
    /// see [`crate::dns`]): starts missing ones inside their netns, swaps in
    /// new names, stops the others. Returns the netns whose resolver could
    /// not start, each with its error. A data plane without resolvers
    /// ignores it.
    fn sync_dns(
        &mut self,
        want: &BTreeMap<String, crate::dns::ResolverSpec>,
    ) -> Vec<(String, Error)> {
        let _ = want;
        Vec::new()
    }
}
