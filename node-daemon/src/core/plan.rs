//! Daemon-side planning (pure): MeshNode spec + local workloads + public keys +
//! workload addresses -> the [`NodeState`] this node should have. Each app is
//! planned on its own; an invalid app yields an error naming the field and
//! does not affect the others.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};
use weft_api::standalone::LocalWorkload;
use weft_api::{AppAttachment, CompiledPolicy, CompiledRule, MeshNodeSpec, PolicyProtocol};

use super::state::workload_key;
use crate::core::ipam::WorkloadIpam;
use crate::core::state::{AppLinkEnd, AppNet, Device, Peer, Ruleset, RulesetRule, WorkloadLink};
use crate::error::Error;

/// Prefix of every netns this node's daemon owns (`weft-<node>-`).
pub fn netns_prefix(node: &str) -> String {
    format!("weft-{node}-")
}

/// Whether `netns` is one this node's daemon owns: the prefix followed by an
/// app id (10 base32 characters) and nothing else, so `weft-n1-` never claims
/// the namespaces of a node called `n1-x`.
pub fn owns_netns(node: &str, netns: &str) -> bool {
    netns.strip_prefix(&netns_prefix(node)).is_some_and(|id| {
        id.len() == 10
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    })
}

/// App-side interface name of a workload's veth: `wv` + 10 hex of its key's hash.
pub fn workload_ifname(workload_key: &str) -> String {
    let h = Sha256::digest(workload_key.as_bytes());
    format!("wv{}", &crate::keys::hex(&h[..5]))
}

/// The outcome of planning one app.
#[derive(Debug)]
pub struct AppPlan {
    /// `namespace/name`.
    pub app: String,
    /// App id (names the key file).
    pub app_id: String,
    /// The desired netns content, or why it could not be planned.
    pub result: Result<AppNet, Error>,
    /// Peer public key -> peer node name (for status).
    pub peer_nodes: BTreeMap<String, String>,
    /// Workload key -> address given.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// Non-fatal problems (e.g. a workload that got no address).
    pub warnings: Vec<String>,
}

/// Plans every app of `spec`. `public_keys` maps app id -> this node's public key.
pub fn plan(
    node: &str,
    spec: &MeshNodeSpec,
    local: &[LocalWorkload],
    public_keys: &BTreeMap<String, String>,
    ipam: &mut WorkloadIpam,
) -> Vec<AppPlan> {
    let by_key: BTreeMap<String, &LocalWorkload> =
        local.iter().map(|w| (workload_key(w), w)).collect();
    let plans: Vec<AppPlan> = spec
        .apps
        .iter()
        .map(|a| plan_app(node, a, &by_key, public_keys, ipam))
        .collect();
    let keep: Vec<String> = spec.apps.iter().map(|a| a.app_id.clone()).collect();
    ipam.retain_apps(&keep);
    plans
}

fn plan_app(
    node: &str,
    a: &AppAttachment,
    local: &BTreeMap<String, &LocalWorkload>,
    public_keys: &BTreeMap<String, String>,
    ipam: &mut WorkloadIpam,
) -> AppPlan {
    let mut out = AppPlan {
        app: a.app.clone(),
        app_id: a.app_id.clone(),
        result: Err(spec_err(node, a, "app", "not planned")),
        peer_nodes: a
            .peers
            .iter()
            .map(|p| (p.public_key.clone(), p.node.clone()))
            .collect(),
        addresses: BTreeMap::new(),
        warnings: Vec::new(),
    };
    out.result = (|| {
        if !owns_netns(node, &a.netns) {
            return Err(spec_err(
                node,
                a,
                "netns",
                format!(
                    "{:?} is not a namespace this node owns (want {}<appId>)",
                    a.netns,
                    netns_prefix(node)
                ),
            ));
        }
        if a.interface.is_empty()
            || a.interface.len() > 15
            || !a
                .interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(spec_err(
                node,
                a,
                "interface",
                format!(
                    "{:?} is not a valid interface name (1-15 bytes of [A-Za-z0-9_-])",
                    a.interface
                ),
            ));
        }
        if !(576..=9000).contains(&a.mtu) {
            return Err(spec_err(
                node,
                a,
                "mtu",
                format!("{} is outside 576-9000", a.mtu),
            ));
        }
        if a.listen_port == 0 {
            return Err(spec_err(node, a, "listenPort", "must not be 0"));
        }
        let space: Ipv4Net = parse_net(node, a, "addressSpace", &a.address_space)?;
        let slice: Ipv4Net = parse_net(node, a, "nodeSlice", &a.node_slice)?;
        if !space.contains(&slice) {
            return Err(spec_err(
                node,
                a,
                "nodeSlice",
                format!("{slice} is not inside addressSpace {space}"),
            ));
        }
        let addr: Ipv4Addr = a
            .address
            .split('/')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                spec_err(
                    node,
                    a,
                    "address",
                    format!("{:?} is not an IPv4 address", a.address),
                )
            })?;
        if !slice.contains(&addr) {
            return Err(spec_err(
                node,
                a,
                "address",
                format!("{addr} is not inside nodeSlice {slice}"),
            ));
        }
        let public_key = public_keys.get(&a.app_id).cloned().unwrap_or_default();
        let (links, others, cross_app) = parse_app_links(node, a)?;
        // Prefixes outside the app's range that peers carry for cross-app
        // flows: each must lie in the range of an app this one has flows
        // with here, so a bad spec can never pull other traffic into the tunnel.
        let mut foreign: Vec<Ipv4Net> = Vec::new();
        let mut peers = BTreeMap::new();
        for (i, p) in a.peers.iter().enumerate() {
            if crate::keys::public_b64_to_hex(&p.public_key).is_none() {
                return Err(spec_err(
                    node,
                    a,
                    &format!("peers[{i}].publicKey"),
                    "not a base64 WireGuard key",
                ));
            }
            let endpoint: SocketAddr = p.endpoint.parse().map_err(|_| {
                spec_err(
                    node,
                    a,
                    &format!("peers[{i}].endpoint"),
                    format!("{:?} is not address:port", p.endpoint),
                )
            })?;
            let mut allowed = Vec::new();
            for (j, ip) in p.allowed_ips.iter().enumerate() {
                let n: Ipv4Net = ip.parse().map_err(|_| {
                    spec_err(
                        node,
                        a,
                        &format!("peers[{i}].allowedIps[{j}]"),
                        format!("{ip:?} is not an IPv4 CIDR"),
                    )
                })?;
                let n = n.trunc();
                if !space.contains(&n) {
                    if !others.iter().any(|o| o.contains(&n)) {
                        return Err(spec_err(
                            node,
                            a,
                            &format!("peers[{i}].allowedIps[{j}]"),
                            format!("{n} is neither inside addressSpace {space} nor inside the range of an app in appLinks or remoteApps"),
                        ));
                    }
                    // Only single workloads of another app are carried:
                    // anything wider would pull that app's traffic (or a
                    // link's route) into this tunnel.
                    if n.prefix_len() != 32 {
                        return Err(spec_err(
                            node,
                            a,
                            &format!("peers[{i}].allowedIps[{j}]"),
                            format!(
                                "{n} is another app's range, not a single workload address (/32)"
                            ),
                        ));
                    }
                    if let Some((k, _)) = peers
                        .iter()
                        .find(|(_, q): &(&String, &Peer)| q.allowed_ips.contains(&n))
                    {
                        return Err(spec_err(
                            node,
                            a,
                            &format!("peers[{i}].allowedIps[{j}]"),
                            format!("{n} is already carried to the peer with key {k}"),
                        ));
                    }
                    foreign.push(n);
                }
                allowed.push(n);
            }
            allowed.sort();
            allowed.dedup();
            peers.insert(
                p.public_key.clone(),
                Peer {
                    endpoint: Some(endpoint),
                    allowed_ips: allowed,
                    persistent_keepalive: a.persistent_keepalive,
                },
            );
        }
        let wanted: Vec<String> = a
            .workloads
            .iter()
            .filter(|k| local.contains_key(*k))
            .cloned()
            .collect();
        let (addresses, exhausted) = ipam.assign(&a.app_id, slice, &wanted);
        out.warnings.extend(exhausted.iter().map(|e| e.to_string()));
        let mut wl = BTreeMap::new();
        for (k, ip) in &addresses {
            let w = local[k];
            wl.insert(
                workload_ifname(k),
                WorkloadLink {
                    workload: k.clone(),
                    workload_netns: w.netns.clone(),
                    address: *ip,
                    mtu: a.mtu,
                },
            );
        }
        out.addresses = addresses;
        let linked: Vec<Ipv4Net> = {
            let mut l: Vec<Ipv4Net> = links.values().flat_map(|l| l.routes.clone()).collect();
            l.sort();
            l.dedup();
            l
        };
        // A link (or a tunnel carrying another app's addresses) without a
        // table would pass everything between the two apps, so such an app
        // always gets one, even with no own policy.
        let policy = match (&a.policy, links.is_empty() && cross_app.is_empty()) {
            (None, true) => None,
            (p, _) => {
                let mut r = match p {
                    Some(p) => parse_policy(node, a, space, p)?,
                    None => Ruleset {
                        app_range: Some(space),
                        ..Default::default()
                    },
                };
                r.linked = linked;
                r.cross_app = cross_app;
                Some(r.into_table())
            }
        };
        Ok(AppNet {
            app: a.app.clone(),
            netns: a.netns.clone(),
            device: Some(Device {
                interface: a.interface.clone(),
                mtu: a.mtu,
                up: true,
                addresses: vec![Ipv4Net::new(addr, 32).expect("/32 is valid")],
                // The app's range, then the foreign /32s its peers carry
                // (longest prefix: they win over a link's route for the
                // other app's whole range, so a carried pair always takes
                // the tunnel, both ways).
                routes: {
                    foreign.sort();
                    foreign.dedup();
                    std::iter::once(space).chain(foreign).collect()
                },
                listen_port: a.listen_port,
                public_key,
                peers,
            }),
            workloads: wl,
            policy,
            links,
        })
    })();
    out
}

type ParsedLinks = (BTreeMap<String, AppLinkEnd>, Vec<Ipv4Net>, Vec<RulesetRule>);

/// The attachment's app links and remote apps: link ends, the ranges of
/// every app this one has flows with here, and this app's rules for those
/// flows. Any bad field rejects the app (it keeps its last good state).
fn parse_app_links(node: &str, a: &AppAttachment) -> Result<ParsedLinks, Error> {
    let mut links = BTreeMap::new();
    let mut others = Vec::new();
    let mut rules = Vec::new();
    for (i, l) in a.app_links.iter().enumerate() {
        let f = format!("appLinks[{i}]");
        for (field, name) in [
            ("interface", &l.interface),
            ("peerInterface", &l.peer_interface),
        ] {
            if !valid_ifname(name) {
                return Err(spec_err(
                    node,
                    a,
                    &format!("{f}.{field}"),
                    format!("{name:?} is not a valid interface name (1-15 bytes of [A-Za-z0-9_-])"),
                ));
            }
        }
        if !owns_netns(node, &l.netns) || l.netns == a.netns {
            return Err(spec_err(
                node,
                a,
                &format!("{f}.netns"),
                format!(
                    "{:?} is not another app's namespace on this node (want {}<appId>)",
                    l.netns,
                    netns_prefix(node)
                ),
            ));
        }
        let range = parse_other_rules(node, a, &f, &l.address_space, &l.rules, &mut rules)?;
        others.push(range);
        if links
            .insert(
                l.interface.clone(),
                AppLinkEnd {
                    peer_netns: l.netns.clone(),
                    peer_interface: l.peer_interface.clone(),
                    routes: vec![range],
                },
            )
            .is_some()
        {
            return Err(spec_err(
                node,
                a,
                &format!("{f}.interface"),
                format!("{:?} is used by two links", l.interface),
            ));
        }
    }
    for (i, r) in a.remote_apps.iter().enumerate() {
        let f = format!("remoteApps[{i}]");
        let range = parse_other_rules(node, a, &f, &r.address_space, &r.rules, &mut rules)?;
        others.push(range);
    }
    others.sort();
    others.dedup();
    Ok((links, others, rules))
}

/// Another app's range (`<f>.addressSpace`, disjoint from this app's) and
/// this app's rules for flows with it (`<f>.rules`, peers inside that
/// range), appended to `out`.
fn parse_other_rules(
    node: &str,
    a: &AppAttachment,
    f: &str,
    address_space: &str,
    rules: &[CompiledRule],
    out: &mut Vec<RulesetRule>,
) -> Result<Ipv4Net, Error> {
    let range = parse_net(node, a, &format!("{f}.addressSpace"), address_space)?;
    if let Ok(own) = a.address_space.parse::<Ipv4Net>() {
        if own.contains(&range) || range.contains(&own) {
            return Err(spec_err(
                node,
                a,
                &format!("{f}.addressSpace"),
                format!("{range} overlaps this app's range {own}"),
            ));
        }
    }
    let parsed = parse_rules(node, a, &format!("{f}.rules"), rules)?;
    if let Some(r) = parsed
        .iter()
        .find(|r| r.peers.iter().any(|p| !range.contains(p)))
    {
        return Err(spec_err(
            node,
            a,
            &format!("{f}.rules"),
            format!("rule {} has peers outside {range}", r.id),
        ));
    }
    out.extend(parsed);
    Ok(range)
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_net(node: &str, a: &AppAttachment, field: &str, v: &str) -> Result<Ipv4Net, Error> {
    let n: Ipv4Net = v
        .parse()
        .map_err(|_| spec_err(node, a, field, format!("{v:?} is not an IPv4 CIDR")))?;
    if n.trunc() != n {
        return Err(spec_err(
            node,
            a,
            field,
            format!("{v} has host bits set (did you mean {}?)", n.trunc()),
        ));
    }
    Ok(n)
}

/// Parses the compiled policy of an attachment; any bad field rejects the
/// whole policy (the app then keeps its last good state: never half a policy).
fn parse_policy(
    node: &str,
    a: &AppAttachment,
    space: Ipv4Net,
    p: &CompiledPolicy,
) -> Result<Ruleset, Error> {
    let addr = |field: String, s: &str| -> Result<Ipv4Addr, Error> {
        s.trim()
            .parse()
            .map_err(|_| spec_err(node, a, &field, format!("{s:?} is not an IPv4 address")))
    };
    let mut out = Ruleset {
        app_range: Some(space),
        ..Default::default()
    };
    for (i, s) in p.ingress_isolated.iter().enumerate() {
        out.ingress_isolated
            .push(addr(format!("policy.ingressIsolated[{i}]"), s)?);
    }
    for (i, s) in p.egress_isolated.iter().enumerate() {
        out.egress_isolated
            .push(addr(format!("policy.egressIsolated[{i}]"), s)?);
    }
    out.rules = parse_rules(node, a, "policy.rules", &p.rules)?;
    Ok(out)
}

/// Parses compiled rules; `field` names the list in errors.
fn parse_rules(
    node: &str,
    a: &AppAttachment,
    field: &str,
    rules: &[CompiledRule],
) -> Result<Vec<RulesetRule>, Error> {
    let addr = |field: String, s: &str| -> Result<Ipv4Addr, Error> {
        s.trim()
            .parse()
            .map_err(|_| spec_err(node, a, &field, format!("{s:?} is not an IPv4 address")))
    };
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let mut local = Vec::new();
        for (j, s) in r.local.iter().enumerate() {
            local.push(addr(format!("{f}.local[{j}]"), s)?);
        }
        let mut peers = Vec::new();
        for (j, s) in r.peers.iter().enumerate() {
            let n: Ipv4Net = s.trim().parse().map_err(|_| {
                spec_err(
                    node,
                    a,
                    &format!("{f}.peers[{j}]"),
                    format!("{s:?} is not an IPv4 CIDR"),
                )
            })?;
            peers.push(n.trunc());
        }
        let ports = match (r.port, r.end_port) {
            (None, None) => None,
            (Some(p), e) => {
                let e = e.unwrap_or(p);
                if p == 0 || e < p || matches!(r.protocol, None | Some(PolicyProtocol::Icmp)) {
                    return Err(spec_err(
                        node,
                        a,
                        &format!("{f}.port"),
                        format!("ports {p}-{e} need TCP or UDP and 1 <= port <= endPort"),
                    ));
                }
                Some((p, e))
            }
            (None, Some(_)) => {
                return Err(spec_err(
                    node,
                    a,
                    &format!("{f}.endPort"),
                    "endPort needs port",
                ))
            }
        };
        if r.id.is_empty() {
            return Err(spec_err(node, a, &format!("{f}.id"), "must not be empty"));
        }
        out.push(RulesetRule {
            id: r.id.clone(),
            direction: r.direction,
            local,
            peers,
            protocol: r.protocol,
            ports,
        });
    }
    Ok(out)
}

fn spec_err(node: &str, a: &AppAttachment, field: &str, message: impl Into<String>) -> Error {
    Error::Spec {
        node: node.into(),
        app: a.app.clone(),
        field: field.into(),
        message: message.into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use weft_api::PeerSpec;

    pub(crate) fn attachment(node: &str, slice_octet: u8) -> AppAttachment {
        AppAttachment {
            app: "demo/web".into(),
            app_id: "abcdefghij".into(),
            netns: format!("weft-{node}-abcdefghij"),
            interface: "wfabcdefghij".into(),
            address_space: "10.100.0.0/16".into(),
            node_slice: format!("10.100.{slice_octet}.0/24"),
            address: format!("10.100.{slice_octet}.1/16"),
            listen_port: 51820,
            mtu: 1420,
            persistent_keepalive: 0,
            workloads: vec!["demo/w1".into()],
            peers: vec![std::sync::Arc::new(PeerSpec {
                node: "n2".into(),
                public_key: crate::keys::PrivateKey::generate().public_key(),
                endpoint: "192.0.2.2:51820".into(),
                allowed_ips: vec!["10.100.2.0/24".into()],
            })],
            policy: None,
            app_links: Vec::new(),
            remote_apps: Vec::new(),
            names: Default::default(),
        }
    }

    fn wl(name: &str) -> LocalWorkload {
        LocalWorkload {
            name: name.into(),
            namespace: "demo".into(),
            labels: Default::default(),
            netns: format!("/run/netns/{name}"),
        }
    }

    #[test]
    fn plans_device_routes_peers_and_workload_addresses() {
        let spec = MeshNodeSpec {
            site: "local".into(),
            apps: vec![attachment("n1", 1)],
        };
        let mut ipam = WorkloadIpam::default();
        let p = plan(
            "n1",
            &spec,
            &[wl("w1"), wl("stray")],
            &Default::default(),
            &mut ipam,
        );
        let app = p[0].result.as_ref().unwrap();
        let d = app.device.as_ref().unwrap();
        assert_eq!(
            d.addresses,
            vec!["10.100.1.1/32".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(d.routes, vec!["10.100.0.0/16".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(d.peers.len(), 1);
        assert_eq!(
            app.workloads.len(),
            1,
            "only workloads the spec names are attached"
        );
        assert_eq!(
            app.workloads.values().next().unwrap().address,
            "10.100.1.2".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn bad_fields_are_named_and_other_apps_still_plan() {
        type Breaker = Box<dyn Fn(&mut AppAttachment)>;
        let cases: Vec<(&str, Breaker)> = vec![
            (
                "addressSpace",
                Box::new(|a| a.address_space = "10.100.0.0/33".into()),
            ),
            (
                "nodeSlice",
                Box::new(|a| a.node_slice = "10.200.1.0/24".into()),
            ),
            ("address", Box::new(|a| a.address = "10.100.9.1/16".into())),
            (
                "interface",
                Box::new(|a| a.interface = "way-too-long-interface".into()),
            ),
            ("netns", Box::new(|a| a.netns = "some-other-netns".into())),
            (
                "peers[0].publicKey",
                Box::new(|a| std::sync::Arc::make_mut(&mut a.peers[0]).public_key = "nope".into()),
            ),
            (
                "peers[0].endpoint",
                Box::new(|a| {
                    std::sync::Arc::make_mut(&mut a.peers[0]).endpoint = "192.0.2.2".into()
                }),
            ),
            (
                "peers[0].allowedIps[0]",
                Box::new(|a| std::sync::Arc::make_mut(&mut a.peers[0]).allowed_ips[0] = "x".into()),
            ),
            ("mtu", Box::new(|a| a.mtu = 100)),
        ];
        for (field, breaker) in cases {
            let mut bad = attachment("n1", 1);
            bad.app = "demo/bad".into();
            bad.app_id = "bbbbbbbbbb".into();
            bad.netns = "weft-n1-bbbbbbbbbb".into();
            breaker(&mut bad);
            let p = plan_on_n1(vec![attachment("n1", 1), bad], &[]);
            assert!(
                p[0].result.is_ok(),
                "good app must still plan when {field} is bad"
            );
            let err = p[1].result.as_ref().unwrap_err().to_string();
            assert!(
                err.contains(&format!("spec.apps[demo/bad].{field}")),
                "{field}: {err}"
            );
        }
    }

    fn linked(node: &str) -> AppAttachment {
        let mut a = attachment(node, 1);
        a.app_links = vec![weft_api::AppLink {
            app: "demo/db".into(),
            netns: format!("weft-{node}-dddddddddd"),
            interface: "wxdddddddddd".into(),
            peer_interface: "wxabcdefghij".into(),
            address_space: "10.200.0.0/16".into(),
            rules: vec![CompiledRule {
                id: "demo/p:egress[0]".into(),
                direction: weft_api::PolicyDirection::Egress,
                local: vec!["10.100.1.2".into()],
                peers: vec!["10.200.1.2/32".into()],
                protocol: None,
                port: None,
                end_port: None,
            }],
        }];
        a
    }

    /// Plans `apps` on node n1 with `local` workloads and a fresh IPAM.
    fn plan_on_n1(apps: Vec<AppAttachment>, local: &[LocalWorkload]) -> Vec<AppPlan> {
        let spec = MeshNodeSpec {
            site: "local".into(),
            apps,
        };
        plan(
            "n1",
            &spec,
            local,
            &Default::default(),
            &mut WorkloadIpam::default(),
        )
    }

    #[test]
    fn an_app_link_gives_a_link_end_workload_routes_and_a_table() {
        let p = plan_on_n1(vec![linked("n1")], &[wl("w1")]);
        let app = p[0].result.as_ref().unwrap();
        let end = &app.links["wxdddddddddd"];
        assert_eq!(end.peer_netns, "weft-n1-dddddddddd");
        assert_eq!(end.peer_interface, "wxabcdefghij");
        assert_eq!(
            end.routes,
            vec!["10.200.0.0/16".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(
            app.workload_routes(),
            vec![
                "10.100.0.0/16".parse::<Ipv4Net>().unwrap(),
                "10.200.0.0/16".parse().unwrap(),
                "169.254.1.53/32".parse().unwrap()
            ]
        );
        // No own policy, yet a table: a link is never left unfiltered.
        let t = &app.policy.as_ref().expect("table").ruleset;
        assert!(t.rules.is_empty() && t.ingress_isolated.is_empty());
        assert_eq!(t.linked, vec!["10.200.0.0/16".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(t.cross_app.len(), 1);
        assert_eq!(t.cross_app[0].id, "demo/p:egress[0]");
    }

    #[test]
    fn a_bad_app_link_is_named_and_rejects_only_its_app() {
        type Breaker = Box<dyn Fn(&mut weft_api::AppLink)>;
        let cases: Vec<(&str, Breaker)> = vec![
            (
                "appLinks[0].netns",
                Box::new(|l| l.netns = "weft-n2-dddddddddd".into()),
            ),
            (
                "appLinks[0].interface",
                Box::new(|l| l.interface = "way-too-long-link-name".into()),
            ),
            (
                "appLinks[0].addressSpace",
                Box::new(|l| l.address_space = "10.200.0.1/16".into()),
            ),
            (
                "appLinks[0].rules",
                Box::new(|l| l.rules[0].peers = vec!["10.9.9.9/32".into()]),
            ),
            (
                "appLinks[0].rules[0].local[0]",
                Box::new(|l| l.rules[0].local = vec!["x".into()]),
            ),
        ];
        for (field, breaker) in cases {
            let mut bad = linked("n1");
            breaker(&mut bad.app_links[0]);
            let mut other = attachment("n1", 1);
            other.app = "demo/other".into();
            other.app_id = "oooooooooo".into();
            other.netns = "weft-n1-oooooooooo".into();
            let p = plan_on_n1(vec![bad, other], &[]);
            let err = p[0].result.as_ref().unwrap_err().to_string();
            assert!(
                err.contains(&format!("spec.apps[demo/web].{field}")),
                "{field}: {err}"
            );
            assert!(p[1].result.is_ok(), "{field}: the other app still plans");
        }
    }

    /// web on n1 reaching db's 10.200.2.2 (on n2) through its own tunnel:
    /// no link here, the peer n2 carries the /32.
    fn carrying(node: &str) -> AppAttachment {
        let mut a = attachment(node, 1);
        std::sync::Arc::make_mut(&mut a.peers[0])
            .allowed_ips
            .push("10.200.2.2/32".into());
        a.remote_apps = vec![weft_api::meshnode::RemoteApp {
            app: "demo/db".into(),
            address_space: "10.200.0.0/16".into(),
            rules: linked(node).app_links[0].rules.clone(),
        }];
        a
    }

    #[test]
    fn carried_addresses_are_routed_through_the_tunnel_and_filtered() {
        let p = plan_on_n1(vec![carrying("n1")], &[wl("w1")]);
        let app = p[0].result.as_ref().unwrap();
        let d = app.device.as_ref().unwrap();
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert_eq!(d.routes, vec![net("10.100.0.0/16"), net("10.200.2.2/32")]);
        assert_eq!(
            d.peers.values().next().unwrap().allowed_ips,
            vec![net("10.100.2.0/24"), net("10.200.2.2/32")]
        );
        // Workloads route the carried address back through the app (and
        // the resolver's fixed address into it).
        let mut want = d.routes.clone();
        want.push(net("169.254.1.53/32"));
        assert_eq!(app.workload_routes(), want);
        assert!(app.links.is_empty());
        let t = &app
            .policy
            .as_ref()
            .expect("a table guards the carried flows")
            .ruleset;
        assert!(t.linked.is_empty());
        assert_eq!(t.cross_app.len(), 1);
    }

    #[test]
    fn a_foreign_prefix_without_its_app_or_a_bad_remote_app_is_named() {
        type Breaker = Box<dyn Fn(&mut AppAttachment)>;
        let cases: Vec<(&str, Breaker)> = vec![
            (
                "peers[0].allowedIps[1]",
                Box::new(|a| {
                    std::sync::Arc::make_mut(&mut a.peers[0]).allowed_ips[1] = "10.9.9.9/32".into()
                }),
            ),
            (
                "peers[0].allowedIps[1]",
                Box::new(|a| a.remote_apps.clear()),
            ),
            (
                "peers[0].allowedIps[1]",
                // The other app's whole range: would pull all of it here.
                Box::new(|a| {
                    std::sync::Arc::make_mut(&mut a.peers[0]).allowed_ips[1] =
                        "10.200.0.0/16".into()
                }),
            ),
            (
                "peers[1].allowedIps[1]",
                // The same carried address on a second peer.
                Box::new(|a| {
                    let mut second = weft_api::PeerSpec::clone(&a.peers[0]);
                    second.node = "n3".into();
                    second.public_key = crate::keys::PrivateKey::generate().public_key();
                    second.allowed_ips[0] = "10.100.3.0/24".into();
                    a.peers.push(second.into());
                }),
            ),
            (
                "remoteApps[0].addressSpace",
                Box::new(|a| a.remote_apps[0].address_space = "10.100.0.0/8".into()),
            ),
            (
                "remoteApps[0].rules",
                Box::new(|a| a.remote_apps[0].rules[0].peers = vec!["10.9.9.9/32".into()]),
            ),
        ];
        for (field, breaker) in cases {
            let mut bad = carrying("n1");
            breaker(&mut bad);
            let p = plan_on_n1(vec![bad], &[]);
            let err = p[0].result.as_ref().unwrap_err().to_string();
            assert!(
                err.contains(&format!("spec.apps[demo/web].{field}")),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn netns_ownership_is_exact() {
        assert!(owns_netns("n1", "weft-n1-abcdefgh23"));
        assert!(!owns_netns("n1", "weft-n1-x-abcdefgh23"));
        assert!(!owns_netns("n1", "weft-n1-ABCDEFGH23"));
        assert!(!owns_netns("n1", "weft-n2-abcdefgh23"));
    }

    #[test]
    fn workload_ifnames_fit_and_differ() {
        let a = workload_ifname("demo/a");
        assert!(a.len() <= 15 && a.starts_with("wv"));
        assert_ne!(a, workload_ifname("demo/b"));
    }
}
