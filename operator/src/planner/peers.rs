//! The peer graph: a full mesh among an app's nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft_api::PeerSpec;

/// What a node offers its peers for one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCandidate {
    /// Public key the node reported, if any.
    pub public_key: Option<String>,
    /// `address:port` (None when the node's address is unusable).
    pub endpoint: Option<String>,
    /// The node's slice of the app range.
    pub slice: String,
    /// The node stopped reporting.
    pub lost: bool,
}

/// Peers of `node`: every other node of the app that is not lost and whose
/// key and endpoint are known, sorted by node name. `carried`: peer node →
/// other apps' workload addresses this node's tunnel routes to that peer
/// (cross-app flows), appended to its AllowedIPs as /32s.
pub fn peers_of(
    node: &str,
    members: &BTreeMap<String, PeerCandidate>,
    carried: Option<&BTreeMap<String, BTreeSet<Ipv4Addr>>>,
) -> Vec<PeerSpec> {
    members
        .iter()
        .filter(|(other, c)| other.as_str() != node && !c.lost)
        .filter_map(|(other, c)| {
            let foreign = carried.and_then(|m| m.get(other)).into_iter().flatten();
            Some(PeerSpec {
                node: other.clone(),
                public_key: c.public_key.clone().filter(|k| !k.is_empty())?,
                endpoint: c.endpoint.clone()?,
                allowed_ips: std::iter::once(c.slice.clone())
                    .chain(foreign.map(|a| format!("{a}/32")))
                    .collect(),
            })
        })
        .collect()
}
