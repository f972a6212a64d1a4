//! Traffic between apps (pure): where two apps get an app link, which
//! tunnel carries the other app's addresses, and each side's allow rules.
//!
//! Semantics: a new flow from workload W of app A to workload V of app B
//! passes only when some policy of A allows egress from W to app B (a peer
//! with `app: B`, narrowed by its selector/site/cidr) AND some policy of B
//! allows ingress to V from app A, on a port both allow. Replies pass
//! (conntrack). Anything else between apps is denied: apps share no route
//! unless a link exists, and every table on the path passes only what its
//! own app's rules allow.
//!
//! Data path of an allowed pair (w of P, v of T, where P's key sorts before
//! T's; P/T say nothing about who initiates):
//! - same node X: a veth pair between P's and T's namespaces on X (the app
//!   link), each app's range routed into it on the other side.
//! - w on X, v on Y, X != Y: the pair crosses between the apps on X, and
//!   T's tunnel carries it between X and Y. T is placed on X if it has no
//!   workload there (a transit placement: an ordinary attachment without
//!   workloads, with its own slice, port, keys and full mesh), P and T are
//!   linked on X, and on Y T's peer entry for X lists w/32 in its
//!   AllowedIPs (the daemon routes such foreign prefixes through the
//!   tunnel, and gives T's workloads a route for them). WireGuard's
//!   cryptokey routing then accepts packets from X whose source is w.
//!   Checks: P's table on X, T's table on X and on Y (T's rules name v as
//!   local even on X, where v does not live).
//!
//! Why one tunnel per pair, chosen by app order and not by who initiates:
//! a pair allowed in both directions would otherwise have w/32 in T's
//! tunnel AND v/32 in P's, and each end's longest-prefix route would send
//! a reply back through the other tunnel than its request: conntrack on the
//! way back never saw the flow and the reply dies. With one carrier per
//! pair both directions take the same path, and every namespace on it sees
//! both halves of each connection.
//!
//! App ranges never overlap (IPAM and validation guarantee it), so nothing
//! is translated: addresses are the same everywhere on the path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft_api::{CompiledRule, MeshPolicySpec, PolicyDirection, PolicyProtocol};

use super::policy::{port_matches, Member, PortMatch};
use super::snapshot::ObjectKey;
use super::validate::peer_app_key;

/// One app's cross-app rules on one node: other app → this app's rules.
pub type NodeRules = BTreeMap<ObjectKey, Vec<CompiledRule>>;

/// What compiling every policy's cross-app peers gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrossApp {
    /// (app, node) → this app's rules there, per other app: in the app
    /// link when `linked` has the pair, otherwise for flows that reach the
    /// node through this app's own tunnel.
    pub rules: BTreeMap<(ObjectKey, String), NodeRules>,
    /// (app, node) → the other apps it has an app link with there (both
    /// apps carry the pair).
    pub linked: BTreeMap<(ObjectKey, String), BTreeSet<ObjectKey>>,
    /// (app, node) → peer node → other apps' workload addresses that this
    /// app's tunnel carries to that peer (its extra AllowedIPs).
    pub carried: BTreeMap<(ObjectKey, String), BTreeMap<String, BTreeSet<Ipv4Addr>>>,
    /// app → nodes where a link needs the app (with or without workloads
    /// of its own there).
    pub needed: BTreeMap<ObjectKey, BTreeSet<String>>,
    /// Per policy: allowed flows that cannot be carried, and why.
    pub notes: BTreeMap<ObjectKey, Vec<String>>,
}

type ByNode = BTreeMap<String, BTreeSet<Ipv4Addr>>;

/// One side's allow for flows with another app: a rule of a policy of
/// `app`, restricted to its peers in `other`.
struct Half {
    app: ObjectKey,
    other: ObjectKey,
    direction: PolicyDirection,
    policy: ObjectKey,
    /// `spec.<direction>[i]`, for notes.
    field: String,
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

fn intersect(a: &ByNode, b: &ByNode) -> Vec<(String, Ipv4Addr)> {
    a.iter()
        .filter_map(|(n, xs)| Some((n, xs, b.get(n)?)))
        .flat_map(|(n, xs, ys)| xs.intersection(ys).map(move |x| (n.clone(), *x)))
        .collect()
}

/// Whether some packet matches a port entry of both lists.
fn ports_overlap(a: &[PortMatch], b: &[PortMatch]) -> bool {
    let one = |x: &PortMatch, y: &PortMatch| -> bool {
        let (px, py) = (x.1, y.1);
        if px.is_some() && py.is_some() && px != py {
            return false;
        }
        if px == Some(PolicyProtocol::Icmp) || py == Some(PolicyProtocol::Icmp) {
            return true;
        }
        match (x.2, y.2) {
            (Some(lx), Some(ly)) => {
                let hx = x.3.unwrap_or(lx);
                let hy = y.3.unwrap_or(ly);
                lx.max(ly) <= hx.min(hy)
            }
            _ => true,
        }
    };
    a.iter().any(|x| b.iter().any(|y| one(x, y)))
}

/// Where one half's rule applies: (app, node, other app, half index) →
/// (local addresses, peer addresses).
type Uses =
    BTreeMap<(ObjectKey, String, ObjectKey, usize), (BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>)>;

/// Compiles the cross-app peers of `policies` (the enforced spec of each,
/// keyed by policy) over every planned app's `members`. `can_host(app,
/// node)`: whether `app` is, or may be placed, on `node` (a pair whose
/// carrier app cannot be on the crossing node is not carried, and noted).
pub fn compile(
    members: &BTreeMap<ObjectKey, Vec<Member<'_>>>,
    policies: &[(&ObjectKey, &MeshPolicySpec)],
    can_host: &dyn Fn(&ObjectKey, &str) -> bool,
) -> CrossApp {
    let mut out = CrossApp::default();
    let halves = halves(members, policies);
    let mut uses: Uses = BTreeMap::new();
    let mut use_half = |h: usize, node: &str, local: Ipv4Addr, peer: Ipv4Addr| {
        let half: &Half = &halves[h];
        let e = uses
            .entry((half.app.clone(), node.to_string(), half.other.clone(), h))
            .or_default();
        e.0.insert(local);
        e.1.insert(peer);
    };
    // Every (egress half of S towards D, ingress half of D from S) pair:
    // the flows both allow are its sources × destinations.
    for (ei, e) in halves.iter().enumerate() {
        if e.direction != PolicyDirection::Egress {
            continue;
        }
        for (ii, i) in halves.iter().enumerate() {
            if i.direction != PolicyDirection::Ingress
                || i.app != e.other
                || i.other != e.app
                || !ports_overlap(&e.ports, &i.ports)
            {
                continue;
            }
            let sources = intersect(&e.local, &i.remote);
            let dests = intersect(&e.remote, &i.local);
            for (sn, s) in &sources {
                for (dn, d) in &dests {
                    if sn == dn {
                        link(&mut out, &e.app, &i.app, sn);
                        use_half(ei, sn, *s, *d);
                        use_half(ii, sn, *d, *s);
                        continue;
                    }
                    // P: the app whose key sorts first; the pair crosses
                    // on P's workload's node, in T's tunnel.
                    let src_is_p = e.app < i.app;
                    let (p_half, t_half) = if src_is_p { (ei, ii) } else { (ii, ei) };
                    let ((pn, p), (tn, t)) = if src_is_p {
                        ((sn, *s), (dn, *d))
                    } else {
                        ((dn, *d), (sn, *s))
                    };
                    let t_app = &halves[t_half].app;
                    if !can_host(t_app, pn) {
                        let p_app = &halves[p_half].app;
                        for h in [e, i] {
                            out.notes.entry(h.policy.clone()).or_default().push(format!(
                                "{}: flows between {p_app} on {pn} and {t_app} on {tn} are not carried ({t_app} cannot be placed on {pn}: its sites do not include that node's)",
                                h.field
                            ));
                        }
                        continue;
                    }
                    link(&mut out, &e.app, &i.app, pn);
                    use_half(p_half, pn, p, t);
                    use_half(t_half, pn, t, p);
                    use_half(t_half, tn, t, p);
                    out.carried
                        .entry((t_app.clone(), tn.clone()))
                        .or_default()
                        .entry(pn.clone())
                        .or_default()
                        .insert(p);
                }
            }
        }
    }
    for ((app, node, other, h), (locals, peers)) in uses {
        let half = &halves[h];
        let local: Vec<String> = locals.iter().map(ToString::to_string).collect();
        let peers: Vec<String> = peers.iter().map(|a| format!("{a}/32")).collect();
        let rules = out
            .rules
            .entry((app, node))
            .or_default()
            .entry(other)
            .or_default();
        for (suffix, protocol, port, end_port) in &half.ports {
            rules.push(CompiledRule {
                id: format!("{}{suffix}", half.id),
                direction: half.direction,
                local: local.clone(),
                peers: peers.clone(),
                protocol: *protocol,
                port: *port,
                end_port: *end_port,
            });
        }
    }
    for rules in out.rules.values_mut().flat_map(|r| r.values_mut()) {
        rules.sort();
        rules.dedup();
    }
    for notes in out.notes.values_mut() {
        notes.sort();
        notes.dedup();
    }
    out
}

/// Records an app link between `a` and `b` on `node` (both carry it).
fn link(out: &mut CrossApp, a: &ObjectKey, b: &ObjectKey, node: &str) {
    for (x, y) in [(a, b), (b, a)] {
        out.linked
            .entry((x.clone(), node.to_string()))
            .or_default()
            .insert(y.clone());
        out.needed
            .entry(x.clone())
            .or_default()
            .insert(node.to_string());
    }
}

/// Every rule of every policy that names another app, split per other app.
fn halves(
    members: &BTreeMap<ObjectKey, Vec<Member<'_>>>,
    policies: &[(&ObjectKey, &MeshPolicySpec)],
) -> Vec<Half> {
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
                for peer in &rule.peers {
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
                        policy: (*key).clone(),
                        field: format!("spec.{name}[{i}]"),
                        id: format!("{key}:{name}[{i}]"),
                        ports: port_matches(rule),
                        local: local.clone(),
                        remote,
                    });
                }
            }
        }
    }
    halves
}

#[cfg(test)]
mod tests;
