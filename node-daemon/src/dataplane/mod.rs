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
}
