//! The peer graph: a full mesh among an app's nodes.

use std::collections::BTreeMap;

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
/// key and endpoint are known, sorted by node name.
pub fn peers_of(node: &str, members: &BTreeMap<String, PeerCandidate>) -> Vec<PeerSpec> {
    members
        .iter()
        .filter(|(other, c)| other.as_str() != node && !c.lost)
        .filter_map(|(other, c)| {
            Some(PeerSpec {
                node: other.clone(),
                public_key: c.public_key.clone().filter(|k| !k.is_empty())?,
                endpoint: c.endpoint.clone()?,
                allowed_ips: vec![c.slice.clone()],
            })
        })
        .collect()
}
