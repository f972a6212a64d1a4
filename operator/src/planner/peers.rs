//! The peer graph: a full mesh among an app's nodes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use weft_api::{MeshNodeSpec, PeerSpec};

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

/// Every member's entry as its peers see it when no cross-app address
/// rides on it, built once per app and shared (`Arc`) by all the app's
/// nodes: an app on 2,000 nodes has 4 million peer entries, one allocation
/// each otherwise. Members that are lost or whose key or endpoint is not
/// known yet have none.
pub fn shared_peers(members: &BTreeMap<String, PeerCandidate>) -> BTreeMap<&str, Arc<PeerSpec>> {
    members
        .iter()
        .filter(|(_, c)| !c.lost)
        .filter_map(|(node, c)| {
            Some((
                node.as_str(),
                Arc::new(PeerSpec {
                    node: node.clone(),
                    public_key: c.public_key.clone().filter(|k| !k.is_empty())?,
                    endpoint: c.endpoint.clone()?,
                    allowed_ips: vec![c.slice.clone()],
                }),
            ))
        })
        .collect()
}

/// Peers of `node`: every other entry of `shared`, sorted by node name.
/// `carried`: peer node → other apps' workload addresses this node's
/// tunnel routes to that peer (cross-app flows), appended to its
/// AllowedIPs as /32s (that peer's entry is then this node's own).
pub fn peers_of(
    node: &str,
    shared: &BTreeMap<&str, Arc<PeerSpec>>,
    carried: Option<&BTreeMap<String, BTreeSet<Ipv4Addr>>>,
) -> Vec<Arc<PeerSpec>> {
    shared
        .iter()
        .filter(|(other, _)| **other != node)
        .map(|(other, peer)| match carried.and_then(|m| m.get(*other)) {
            Some(foreign) if !foreign.is_empty() => {
                let mut own = PeerSpec::clone(peer);
                own.allowed_ips
                    .extend(foreign.iter().map(|a| format!("{a}/32")));
                Arc::new(own)
            }
            _ => Arc::clone(peer),
        })
        .collect()
}

/// Makes equal peer entries of specs read from storage share one
/// allocation, as the planner's own specs do: 2,000 MeshNodes of one app
/// parsed from disk hold 4 million entries, 2,000 distinct ones. A pool
/// kept for long (a watch's) forgets entries nothing else holds any more
/// whenever it has doubled since it last did, so it stays proportional to
/// the entries in use.
#[derive(Default)]
pub struct PeerPool {
    entries: HashSet<Arc<PeerSpec>>,
    /// Entries after the last pruning.
    kept: usize,
}

/// A pool this small is never pruned.
const POOL_PRUNE_FLOOR: usize = 1024;

impl PeerPool {
    /// Replaces every peer entry of `spec` by the pool's equal one, adding
    /// the entries the pool does not hold yet.
    pub fn share(&mut self, spec: &mut MeshNodeSpec) {
        for att in &mut spec.apps {
            for peer in &mut att.peers {
                match self.entries.get(peer) {
                    Some(known) => *peer = Arc::clone(known),
                    None => {
                        self.entries.insert(Arc::clone(peer));
                    }
                }
            }
        }
        if self.entries.len() > 2 * self.kept.max(POOL_PRUNE_FLOOR) {
            self.entries.retain(|p| Arc::strong_count(p) > 1);
            self.kept = self.entries.len();
        }
    }

    /// Distinct entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the pool holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::AppAttachment;

    fn candidate(n: u8, key: Option<&str>) -> PeerCandidate {
        PeerCandidate {
            public_key: key.map(String::from),
            endpoint: Some(format!("192.0.2.{n}:51820")),
            slice: format!("10.1.{n}.0/24"),
            lost: false,
        }
    }

    #[test]
    fn nodes_share_entries_except_where_cross_app_addresses_ride() {
        let members: BTreeMap<String, PeerCandidate> = [
            ("a".to_string(), candidate(1, Some("ka"))),
            ("b".to_string(), candidate(2, Some("kb"))),
            ("c".to_string(), candidate(3, Some("kc"))),
            ("d".to_string(), candidate(4, None)),
        ]
        .into();
        let shared = shared_peers(&members);
        assert_eq!(shared.keys().copied().collect::<Vec<_>>(), ["a", "b", "c"]);
        let of_a = peers_of("a", &shared, None);
        let of_b = peers_of("b", &shared, None);
        let names = |p: &[Arc<PeerSpec>]| p.iter().map(|p| p.node.clone()).collect::<Vec<_>>();
        assert_eq!(
            (names(&of_a), names(&of_b)),
            (vec!["b".into(), "c".into()], vec!["a".into(), "c".into()])
        );
        assert!(
            Arc::ptr_eq(&of_a[1], &of_b[1]),
            "c's entry is one allocation"
        );

        let carried: BTreeMap<String, BTreeSet<Ipv4Addr>> =
            [("c".to_string(), [Ipv4Addr::new(10, 9, 0, 5)].into())].into();
        let own = peers_of("a", &shared, Some(&carried));
        assert_eq!(own[1].allowed_ips, ["10.1.3.0/24", "10.9.0.5/32"]);
        assert!(Arc::ptr_eq(&own[0], &of_a[0]));
        assert_eq!(
            shared["c"].allowed_ips,
            ["10.1.3.0/24"],
            "the shared entry is untouched"
        );
    }

    #[test]
    fn a_pool_makes_equal_entries_of_parsed_specs_one() {
        let members: BTreeMap<String, PeerCandidate> = (1..=3)
            .map(|n| (format!("n{n}"), candidate(n, Some(&format!("k{n}")))))
            .collect();
        let shared = shared_peers(&members);
        let spec_of = |node: &str| MeshNodeSpec {
            site: "local".into(),
            apps: vec![AppAttachment {
                app: "demo/web".into(),
                peers: peers_of(node, &shared, None),
                ..Default::default()
            }],
        };
        // Parsed back, as from disk: every entry its own allocation.
        let parse = |node: &str| -> MeshNodeSpec {
            serde_json::from_slice(&serde_json::to_vec(&spec_of(node)).unwrap()).unwrap()
        };
        let (mut one, mut two) = (parse("n1"), parse("n2"));
        let before = (one.clone(), two.clone());
        let mut pool = PeerPool::default();
        pool.share(&mut one);
        pool.share(&mut two);
        assert_eq!(
            (one.clone(), two.clone()),
            before,
            "sharing changes no value"
        );
        // n3 is a peer of both: one allocation now.
        assert!(Arc::ptr_eq(&one.apps[0].peers[1], &two.apps[0].peers[1]));
    }

    #[test]
    fn a_long_lived_pool_forgets_entries_no_spec_holds() {
        let mut pool = PeerPool::default();
        // 3,000 generations of one node's single peer (a key that keeps
        // changing): only the latest is held by a spec.
        let mut spec = MeshNodeSpec::default();
        for i in 0..3000 {
            spec = MeshNodeSpec {
                site: "local".into(),
                apps: vec![AppAttachment {
                    app: "demo/web".into(),
                    peers: vec![Arc::new(PeerSpec {
                        node: "n2".into(),
                        public_key: format!("key-{i}"),
                        ..Default::default()
                    })],
                    ..Default::default()
                }],
            };
            pool.share(&mut spec);
        }
        assert!(
            pool.len() <= 2 * POOL_PRUNE_FLOOR,
            "{} entries held",
            pool.len()
        );
        assert_eq!(spec.apps[0].peers[0].public_key, "key-2999");
    }
}
