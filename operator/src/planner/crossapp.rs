//! Traffic between apps (pure): which pairs of apps get an app link on a
//! node, and each side's allow rules for it.
//!
//! Semantics: a new flow from workload W of app A to workload V of app B
//! passes only when some policy of A allows egress from W to app B (a peer
//! with `app: B`, narrowed by its selector/site/cidr) AND some policy of B
//! allows ingress to V from app A. Replies pass (conntrack). Anything else
//! between apps is denied: apps share no route unless a link exists, and a
//! link carries only what each side's rules allow.
//!
//! Data path, per node: a veth pair between A's and B's namespaces (the app
//! link), B's range routed into it on A's side and A's range on B's side.
//! A's table enforces A's half (egress to B, ingress from B), B's table B's
//! half, so a flow crosses both checks. App ranges never overlap (IPAM
//! guarantees it), so no address translation is needed.
//!
//! Supported subset: both workloads on the SAME node. A flow between apps on
//! different nodes would need the destination app's tunnel to carry the
//! source app's addresses; it is not planned, and the policy's `Accepted`
//! message says which peers are out of reach because of it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft_api::{CompiledRule, MeshPolicySpec, PolicyDirection};

use super::policy::{port_matches, Member, PortMatch};
use super::snapshot::ObjectKey;
use super::validate::peer_app_key;

/// One app's links on one node: other app → this app's rules for it.
pub type NodeLinks = BTreeMap<ObjectKey, Vec<CompiledRule>>;

/// What compiling every policy's cross-app peers gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrossApp {
    /// (app, node) → the app's links there.
    pub links: BTreeMap<(ObjectKey, String), NodeLinks>,
    /// Per policy: peers that cannot be reached (other nodes).
    pub notes: BTreeMap<ObjectKey, Vec<String>>,
}

type ByNode = BTreeMap<String, BTreeSet<Ipv4Addr>>;

/// One side's allow for flows with another app: a rule of a policy of
/// `app`, restricted to its peers in `other`.
struct Half {
    app: ObjectKey,
    other: ObjectKey,
    direction: PolicyDirection,
    id: String,
    ports: Vec<PortMatch>,
    /// This app's selected workloads, per node.
    local: ByNode,
    /// The other app's matching workloads, per node.
    remote: ByNode,
}

fn by_node<'m>(members: impl Iterator<Item = &'m Member<'m>>) -> ByNode {
    let mut out = ByNode::new();
    for m in members {
        if let Some(a) = m.address {
            out.entry(m.node.to_string()).or_default().insert(a);
        }
    }
    out
}

/// Compiles the cross-app peers of `policies` (the enforced spec of each,
/// keyed by policy) over every planned app's `members`.
pub fn compile(
    members: &BTreeMap<ObjectKey, Vec<Member<'_>>>,
    policies: &[(&ObjectKey, &MeshPolicySpec)],
) -> CrossApp {
    let mut out = CrossApp::default();
    let mut halves: Vec<Half> = Vec::new();
    for (key, spec) in policies {
        let app = ObjectKey::new(&key.namespace, &spec.app);
        let Some(own) = members.get(&app) else {
            continue;
        };
        let local = by_node(own.iter().filter(|m| spec.selector.matches(m.labels)));
        for (direction, name, list) in [
            (PolicyDirection::Ingress, "ingress", &spec.ingress),
            (PolicyDirection::Egress, "egress", &spec.egress),
        ] {
            for (i, rule) in list.iter().flatten().enumerate() {
                // Peers of one rule, grouped by the other app they name.
                let mut remote: BTreeMap<ObjectKey, ByNode> = BTreeMap::new();
                for (j, peer) in rule.peers.iter().enumerate() {
                    let Some(other) = peer.app.as_deref() else {
                        continue;
                    };
                    let other = peer_app_key(&key.namespace, other);
                    if other == app {
                        continue;
                    }
                    let Some(theirs) = members.get(&other) else {
                        continue;
                    };
                    let cidr: Option<ipnet::Ipv4Net> =
                        peer.cidr.as_deref().and_then(|c| c.trim().parse().ok());
                    let matched = by_node(theirs.iter().filter(|m| {
                        peer.selector.as_ref().is_none_or(|s| s.matches(m.labels))
                            && peer.site.as_deref().is_none_or(|s| s == m.site)
                            && m.address
                                .is_some_and(|a| cidr.is_none_or(|c| c.contains(&a)))
                    }));
                    let elsewhere: Vec<&str> = matched
                        .keys()
                        .filter(|n| !local.contains_key(*n))
                        .map(String::as_str)
                        .collect();
                    if !local.is_empty() && !elsewhere.is_empty() {
                        out.notes.entry((*key).clone()).or_default().push(format!(
                            "spec.{name}[{i}].peers[{j}].app: workloads of {other} on {} are out of reach (traffic between apps flows only between workloads on the same node)",
                            elsewhere.join(", ")
                        ));
                    }
                    let entry = remote.entry(other).or_default();
                    for (n, addrs) in matched {
                        entry.entry(n).or_default().extend(addrs);
                    }
                }
                for (other, remote) in remote {
                    halves.push(Half {
                        app: app.clone(),
                        other,
                        direction,
                        id: format!("{key}:{name}[{i}]"),
                        ports: port_matches(rule),
                        local: local.clone(),
                        remote,
                    });
                }
            }
        }
    }

    // Per node and ordered app pair (src, dst): src's egress halves towards
    // dst meet dst's ingress halves from src.
    let nodes: BTreeSet<&String> = halves.iter().flat_map(|h| h.local.keys()).collect();
    let pairs: BTreeSet<(&ObjectKey, &ObjectKey)> = halves
        .iter()
        .filter(|h| h.direction == PolicyDirection::Egress)
        .map(|h| (&h.app, &h.other))
        .collect();
    for node in nodes {
        for (src, dst) in &pairs {
            let egress: Vec<&Half> = halves
                .iter()
                .filter(|h| {
                    h.direction == PolicyDirection::Egress && &h.app == *src && &h.other == *dst
                })
                .collect();
            let ingress: Vec<&Half> = halves
                .iter()
                .filter(|h| {
                    h.direction == PolicyDirection::Ingress && &h.app == *dst && &h.other == *src
                })
                .collect();
            let union = |hs: &[&Half], local: bool| -> BTreeSet<Ipv4Addr> {
                hs.iter()
                    .filter_map(|h| if local { &h.local } else { &h.remote }.get(node))
                    .flatten()
                    .copied()
                    .collect()
            };
            // Sources both sides allow, destinations both sides allow.
            let sources: BTreeSet<Ipv4Addr> = union(&egress, true)
                .intersection(&union(&ingress, false))
                .copied()
                .collect();
            let dests: BTreeSet<Ipv4Addr> = union(&egress, false)
                .intersection(&union(&ingress, true))
                .copied()
                .collect();
            let src_rules = side_rules(&egress, node, &sources, &dests);
            let dst_rules = side_rules(&ingress, node, &dests, &sources);
            if src_rules.is_empty() || dst_rules.is_empty() {
                continue; // one side does not allow it: no link for this direction
            }
            for (app, other, rules) in [(*src, *dst, src_rules), (*dst, *src, dst_rules)] {
                out.links
                    .entry((app.clone(), node.clone()))
                    .or_default()
                    .entry(other.clone())
                    .or_default()
                    .extend(rules);
            }
        }
    }
    for links in out.links.values_mut() {
        for rules in links.values_mut() {
            rules.sort();
            rules.dedup();
        }
    }
    for notes in out.notes.values_mut() {
        notes.sort();
        notes.dedup();
    }
    out
}

/// One side's rules on `node`: each half narrowed to the local addresses
/// in `locals` and the remote ones in `remotes`.
fn side_rules(
    halves: &[&Half],
    node: &str,
    locals: &BTreeSet<Ipv4Addr>,
    remotes: &BTreeSet<Ipv4Addr>,
) -> Vec<CompiledRule> {
    let mut out = Vec::new();
    for h in halves {
        let local: Vec<String> = h
            .local
            .get(node)
            .into_iter()
            .flatten()
            .filter(|a| locals.contains(a))
            .map(ToString::to_string)
            .collect();
        let peers: Vec<String> = h
            .remote
            .get(node)
            .into_iter()
            .flatten()
            .filter(|a| remotes.contains(a))
            .map(|a| format!("{a}/32"))
            .collect();
        if local.is_empty() || peers.is_empty() {
            continue;
        }
        for (suffix, protocol, port, end_port) in &h.ports {
            out.push(CompiledRule {
                id: format!("{}{suffix}", h.id),
                direction: h.direction,
                local: local.clone(),
                peers: peers.clone(),
                protocol: *protocol,
                port: *port,
                end_port: *end_port,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
