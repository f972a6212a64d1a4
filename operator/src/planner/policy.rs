//! Policy compilation (pure): the accepted MeshPolicies of one app, plus the
//! app's workloads with their reported addresses, become one
//! [`CompiledPolicy`] per node, which that node's daemon enforces in the app's
//! network namespace.
//!
//! Semantics, as NetworkPolicy:
//! - a workload no policy selects is open within its app;
//! - a workload selected by a policy that has `ingress` (resp. `egress`) set,
//!   even empty, is isolated for that direction: only new flows some rule of
//!   that direction allows pass; replies always pass (conntrack, daemon side);
//! - policies only add allows: the allowed set is the union of every rule.
//!
//! Peers resolve to address sets: a `selector` and/or `site` to the /32 of
//! every workload of the app that matches (and reported an address), a `cidr`
//! to itself (or, together with a selector/site, to the matching addresses
//! inside it); a peer with nothing set, or a rule with no peers, means the
//! whole app. A rule whose peers resolve to nothing allows nothing and is left
//! out. Peers in another app (`peers[].app`) match nothing here: flows
//! between apps are compiled separately, into app links (see `crossapp`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_api::meshpolicy::PolicyRule;
use weft_api::{CompiledPolicy, CompiledRule, MeshPolicySpec, PolicyDirection, PolicyProtocol};

use super::snapshot::{Labels, ObjectKey};

/// One workload of the app, as the compiler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    /// Node it runs on.
    pub node: &'a str,
    /// Site of that node.
    pub site: &'a str,
    /// Its labels.
    pub labels: &'a Labels,
    /// Its address in the app, once reported.
    pub address: Option<Ipv4Addr>,
}

/// What compiling one app's policies gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledApp {
    /// Per node: the policy to enforce there (only nodes where some local
    /// workload is isolated).
    pub nodes: BTreeMap<String, CompiledPolicy>,
    /// Per policy: things the user should know (parts not enforced).
    pub notes: BTreeMap<ObjectKey, Vec<String>>,
}

/// (id suffix, protocol, first port, last port) of one compiled rule.
pub(crate) type PortMatch = (String, Option<PolicyProtocol>, Option<u16>, Option<u16>);

/// Resolved other side of a rule.
enum Peers {
    /// The whole app.
    Any,
    /// These ranges (never empty when used).
    Set(BTreeSet<Ipv4Net>),
}

fn host(a: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(a, 32).expect("/32 is valid")
}

/// Compiles `policies` (accepted ones, all naming `app`) for the app's `members`.
pub fn compile_app(
    app: &ObjectKey,
    members: &[Member<'_>],
    policies: &[(&ObjectKey, &MeshPolicySpec)],
) -> CompiledApp {
    let mut out = CompiledApp::default();
    // node → (ingress isolated, egress isolated)
    let mut isolated: BTreeMap<&str, [BTreeSet<Ipv4Addr>; 2]> = BTreeMap::new();
    let mut rules: BTreeMap<&str, Vec<CompiledRule>> = BTreeMap::new();
    for (key, spec) in policies {
        let selected: Vec<&Member<'_>> = members
            .iter()
            .filter(|m| spec.selector.matches(m.labels))
            .collect();
        for (d, (dir, name, list)) in [
            (PolicyDirection::Ingress, "ingress", &spec.ingress),
            (PolicyDirection::Egress, "egress", &spec.egress),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(list) = list else { continue };
            // Local addresses per node.
            let mut local: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
            for m in &selected {
                if let Some(a) = m.address {
                    local.entry(m.node).or_default().insert(a);
                    isolated.entry(m.node).or_default()[d].insert(a);
                }
            }
            for (i, rule) in list.iter().enumerate() {
                let peers = resolve_peers(app, rule, members);
                let peers: Vec<String> = match peers {
                    Peers::Any => Vec::new(),
                    Peers::Set(s) if s.is_empty() => continue,
                    Peers::Set(s) => s.iter().map(ToString::to_string).collect(),
                };
                let ports = port_matches(rule);
                for (node, addrs) in &local {
                    for (suffix, protocol, port, end_port) in &ports {
                        rules.entry(node).or_default().push(CompiledRule {
                            id: format!("{key}:{name}[{i}]{suffix}"),
                            direction: dir,
                            local: addrs.iter().map(ToString::to_string).collect(),
                            peers: peers.clone(),
                            protocol: *protocol,
                            port: *port,
                            end_port: *end_port,
                        });
                    }
                }
            }
        }
    }
    for (node, [ing, eg]) in isolated {
        if ing.is_empty() && eg.is_empty() {
            continue;
        }
        let mut r = rules.remove(node).unwrap_or_default();
        r.sort();
        out.nodes.insert(
            node.to_string(),
            CompiledPolicy {
                ingress_isolated: ing.iter().map(ToString::to_string).collect(),
                egress_isolated: eg.iter().map(ToString::to_string).collect(),
                rules: r,
            },
        );
    }
    for notes in out.notes.values_mut() {
        notes.sort();
        notes.dedup();
    }
    out
}

/// The port matches of a rule (one with no ports: everything).
pub(crate) fn port_matches(rule: &PolicyRule) -> Vec<PortMatch> {
    if rule.ports.is_empty() {
        return vec![(String::new(), None, None, None)];
    }
    rule.ports
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => PolicyProtocol::Udp,
                "ICMP" => PolicyProtocol::Icmp,
                _ => PolicyProtocol::Tcp,
            };
            let (port, end) = if proto == PolicyProtocol::Icmp {
                (None, None)
            } else {
                (p.port, p.end_port.filter(|e| Some(*e) != p.port))
            };
            (format!(".ports[{j}]"), Some(proto), port, end)
        })
        .collect()
}

fn resolve_peers(app: &ObjectKey, rule: &PolicyRule, members: &[Member<'_>]) -> Peers {
    if rule.peers.is_empty() {
        return Peers::Any;
    }
    let mut set = BTreeSet::new();
    for peer in &rule.peers {
        if let Some(other) = &peer.app {
            // Peers in another app are compiled into app links
            // (`crossapp`); inside this app they match nothing.
            if &super::validate::peer_app_key(&app.namespace, other) != app {
                continue;
            }
        }
        let cidr: Option<Ipv4Net> = peer.cidr.as_deref().and_then(|c| c.trim().parse().ok());
        if peer.selector.is_none() && peer.site.is_none() {
            match cidr {
                Some(c) => {
                    set.insert(c);
                }
                None => return Peers::Any,
            }
            continue;
        }
        for m in members {
            let Some(a) = m.address else { continue };
            if peer.selector.as_ref().is_some_and(|s| !s.matches(m.labels))
                || peer.site.as_deref().is_some_and(|s| s != m.site)
                || cidr.is_some_and(|c| !c.contains(&a))
            {
                continue;
            }
            set.insert(host(a));
        }
    }
    Peers::Set(set)
}

/// Whether a new flow passes the compiled policies (the daemon's semantics,
/// for tests): egress of `src` on its node, then ingress of `dst` on its node.
/// `range` is the app's range (what empty peers mean).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn flow_allowed(
    nodes: &BTreeMap<String, CompiledPolicy>,
    range: Ipv4Net,
    src_node: &str,
    src: Ipv4Addr,
    dst_node: &str,
    dst: Ipv4Addr,
    proto: PolicyProtocol,
    port: u16,
) -> bool {
    let passes = |node: &str, dir: PolicyDirection, local: Ipv4Addr, remote: Ipv4Addr| {
        let Some(p) = nodes.get(node) else {
            return true;
        };
        let iso = match dir {
            PolicyDirection::Ingress => &p.ingress_isolated,
            PolicyDirection::Egress => &p.egress_isolated,
        };
        if !iso.contains(&local.to_string()) {
            return true;
        }
        p.rules.iter().any(|r| {
            r.direction == dir
                && r.local.contains(&local.to_string())
                && (if r.peers.is_empty() {
                    range.contains(&remote)
                } else {
                    r.peers
                        .iter()
                        .any(|c| c.parse::<Ipv4Net>().is_ok_and(|c| c.contains(&remote)))
                })
                && r.protocol.is_none_or(|p| p == proto)
                && r.port.is_none_or(|lo| {
                    let hi = r.end_port.unwrap_or(lo);
                    (lo..=hi).contains(&port)
                })
        })
    };
    passes(src_node, PolicyDirection::Egress, src, dst)
        && passes(dst_node, PolicyDirection::Ingress, dst, src)
}

#[cfg(test)]
mod tests;
