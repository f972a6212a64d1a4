//! The boundary between pure logic and the kernel. Everything that touches
//! netlink, WireGuard or namespaces sits behind [`Dataplane`]; the daemon's
//! logic is tested against [`fake::FakeDataplane`].

pub mod fake;
pub mod linux;

use weft_api::DataplaneKind;

use std::collections::BTreeMap;

use crate::core::ops::Op;
use crate::error::Error;

pub use crate::core::observed::{AppTraffic, Observation, PeerTraffic, TrafficSpec};

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
    /// From now on, sets `wake` whenever the data plane learns that
    /// something it owns changed behind its back (a link, a route, a table),
    /// so the loop repairs it without waiting for its timed pass. A data
    /// plane that cannot tell ignores it.
    fn wake_on_change(&mut self, wake: &crate::wake::Wake) {
        let _ = wake;
    }
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
