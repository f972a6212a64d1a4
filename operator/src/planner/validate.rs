//! Checks that need no allocation: field syntax and references. An app or
//! policy with any error here is left out of the data plane.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use weft_api::labels::LOCAL_SITE;
use weft_api::meshapp::{DEFAULT_MTU, DEFAULT_NODE_PREFIX_LENGTH};
use weft_api::meshpolicy::PolicyRule;
use weft_api::{validation, MeshAppSpec, MeshPolicySpec, MeshSiteSpec, Selector};

use super::error::{ErrorKind, PlanError};
use super::snapshot::{ObjectKey, PlannerConfig};

/// Longest node prefix: a /30 still leaves two usable addresses.
pub const MAX_NODE_PREFIX_LEN: u8 = 30;

/// An app's spec after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidApp {
    /// `spec.addressSpace`, parsed.
    pub explicit_range: Option<Ipv4Net>,
    /// Effective node slice prefix length.
    pub node_prefix_len: u8,
    /// Sites the app is limited to (empty: every site).
    pub sites: Vec<String>,
    /// Effective MTU.
    pub mtu: u16,
    /// Effective keepalive.
    pub keepalive: u16,
}

/// Display name of a namespaced object for errors.
pub fn object_name(kind: &str, key: &ObjectKey) -> String {
    format!("{kind} {key}")
}

/// Parses an IPv4 CIDR whose host bits are zero.
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 CIDR such as 10.100.0.0/16"))?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set; the range starts at {}",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Whether the site is known (a MeshSite, or the implicit `local`).
pub fn site_known(site: &str, sites: &BTreeMap<String, MeshSiteSpec>) -> bool {
    site == LOCAL_SITE || sites.contains_key(site)
}

fn selector_errors(sel: &Selector, field: &str, object: &str, out: &mut Vec<PlanError>) {
    for (f, msg) in sel.validate() {
        out.push(PlanError::new(
            ErrorKind::Invalid,
            object,
            format!("{field}.{f}"),
            "InvalidSelector",
            msg,
        ));
    }
}

/// Problems of a namespaced object's key (the API server refuses such
/// names; the standalone operator reads them from files).
pub fn key_errors(key: &ObjectKey, object: &str) -> Vec<PlanError> {
    let mut errs = Vec::new();
    if let Err(e) = validation::dns_label(&key.namespace) {
        errs.push(PlanError::new(
            ErrorKind::Invalid,
            object,
            "metadata.namespace",
            "InvalidName",
            e,
        ));
    }
    if let Err(e) = validation::dns_subdomain(&key.name) {
        errs.push(PlanError::new(
            ErrorKind::Invalid,
            object,
            "metadata.name",
            "InvalidName",
            e,
        ));
    }
    errs
}

/// Ranges an app's address space must not overlap: they have a meaning of
/// their own on every host (this network, loopback, link-local, multicast,
/// reserved and broadcast).
const SPECIAL_RANGES: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast"),
];
/// Widest app range: anything wider would swallow a large part of the
/// address space of the hosts it runs on.
pub const MIN_APP_PREFIX_LEN: u8 = 8;

/// Problems of an app range that parses.
pub fn range_errors(net: Ipv4Net) -> Option<String> {
    if net.prefix_len() < MIN_APP_PREFIX_LEN || net.prefix_len() > MAX_NODE_PREFIX_LEN {
        return Some(format!(
            "{net}: the prefix must be between /{MIN_APP_PREFIX_LEN} and /{MAX_NODE_PREFIX_LEN}"
        ));
    }
    for (cidr, what) in SPECIAL_RANGES {
        let special: Ipv4Net = cidr.parse().ok()?;
        if special.contains(&net) || net.contains(&special) {
            return Some(format!(
                "{net} overlaps the {what} range {special}, which is not usable for an app"
            ));
        }
    }
    None
}

/// Validates an app; `Err` carries every problem found.
pub fn validate_app(
    key: &ObjectKey,
    spec: &MeshAppSpec,
    sites: &BTreeMap<String, MeshSiteSpec>,
    config: &PlannerConfig,
) -> Result<ValidApp, Vec<PlanError>> {
    let (valid, errs) = check_app(key, spec, sites, config);
    match valid {
        Some(v) if errs.is_empty() => Ok(v),
        _ => Err(errs),
    }
}

/// Like [`validate_app`], but a site that does not exist (any more) is no
/// error: an accepted version that named it only runs at fewer places.
pub fn validate_app_lenient(
    key: &ObjectKey,
    spec: &MeshAppSpec,
    sites: &BTreeMap<String, MeshSiteSpec>,
    config: &PlannerConfig,
) -> Option<ValidApp> {
    let (valid, errs) = check_app(key, spec, sites, config);
    errs.iter()
        .all(|e| e.reason == "UnknownSite")
        .then_some(valid)
        .flatten()
}

fn check_app(
    key: &ObjectKey,
    spec: &MeshAppSpec,
    sites: &BTreeMap<String, MeshSiteSpec>,
    config: &PlannerConfig,
) -> (Option<ValidApp>, Vec<PlanError>) {
    let object = object_name("MeshApp", key);
    let mut errs = key_errors(key, &object);
    let mut structural = !errs.is_empty();
    selector_errors(&spec.selector, "spec.selector", &object, &mut errs);
    if spec.sites.len() > super::accept::MAX_SITES {
        errs.push(PlanError::new(
            ErrorKind::Invalid,
            &object,
            "spec.sites",
            "TooManySites",
            format!(
                "{} sites; at most {}",
                spec.sites.len(),
                super::accept::MAX_SITES
            ),
        ));
    }
    for (i, site) in spec.sites.iter().enumerate() {
        let field = format!("spec.sites[{i}]");
        if let Err(e) = validation::dns_subdomain(site) {
            errs.push(PlanError::new(
                ErrorKind::Invalid,
                &object,
                field,
                "InvalidSite",
                e,
            ));
        } else if spec.sites[..i].contains(site) {
            errs.push(PlanError::new(
                ErrorKind::Invalid,
                &object,
                field,
                "DuplicateSite",
                format!("site {site:?} is listed twice"),
            ));
        } else if !site_known(site, sites) {
            errs.push(PlanError::new(
                ErrorKind::Invalid,
                &object,
                field,
                "UnknownSite",
                format!("no MeshSite named {site:?}"),
            ));
        }
    }
    let explicit_range = match &spec.address_space {
        None => None,
        Some(s) => match parse_cidr(s).and_then(|n| range_errors(n).map_or(Ok(n), Err)) {
            Ok(net) => Some(net),
            Err(msg) => {
                errs.push(PlanError::new(
                    ErrorKind::Invalid,
                    &object,
                    "spec.addressSpace",
                    "InvalidAddressSpace",
                    msg,
                ));
                structural = true;
                None
            }
        },
    };
    let node_prefix_len = spec
        .node_prefix_length
        .unwrap_or(DEFAULT_NODE_PREFIX_LENGTH);
    if spec.address_space.is_none() || explicit_range.is_some() {
        let range_prefix = explicit_range.map_or(config.app_prefix_len, |n| n.prefix_len());
        if node_prefix_len < range_prefix || node_prefix_len > MAX_NODE_PREFIX_LEN {
            let given = if spec.node_prefix_length.is_some() {
                format!("nodePrefixLength {node_prefix_len}")
            } else {
                format!("the default nodePrefixLength {node_prefix_len}")
            };
            errs.push(PlanError::new(
                ErrorKind::Invalid,
                &object,
                "spec.nodePrefixLength",
                "InvalidNodePrefixLength",
                format!(
                    "{given} must be between the app range's prefix /{range_prefix} and /{MAX_NODE_PREFIX_LEN}"
                ),
            ));
            structural = true;
        }
    }
    if let Some(mtu) = spec.mtu {
        if !(1280..=1500).contains(&mtu) {
            errs.push(PlanError::new(
                ErrorKind::Invalid,
                &object,
                "spec.mtu",
                "InvalidMtu",
                format!("mtu {mtu} must be between 1280 and 1500"),
            ));
            structural = true;
        }
    }
    if let Some(k) = spec.persistent_keepalive {
        if k > MAX_KEEPALIVE_SECONDS {
            errs.push(PlanError::new(
                ErrorKind::Invalid,
                &object,
                "spec.persistentKeepalive",
                "InvalidKeepalive",
                format!(
                    "persistentKeepalive {k} must be between 0 and {MAX_KEEPALIVE_SECONDS} seconds"
                ),
            ));
            structural = true;
        }
    }
    let structural = structural
        || errs
            .iter()
            .any(|e| e.reason != "UnknownSite" && e.reason != "DuplicateSite");
    let valid = (!structural).then(|| ValidApp {
        explicit_range,
        node_prefix_len,
        sites: spec.sites.clone(),
        mtu: spec.mtu.unwrap_or(DEFAULT_MTU),
        keepalive: spec.persistent_keepalive.unwrap_or(0),
    });
    (valid, errs)
}

/// Longest keepalive interval (documented bound).
pub const MAX_KEEPALIVE_SECONDS: u16 = 3600;

/// Validates a policy (references and syntax; rules are not compiled here).
pub fn validate_policy(
    key: &ObjectKey,
    spec: &MeshPolicySpec,
    apps: &BTreeMap<ObjectKey, weft_api::MeshAppSpec>,
    sites: &BTreeMap<String, MeshSiteSpec>,
) -> Vec<PlanError> {
    let object = object_name("MeshPolicy", key);
    let mut errs = key_errors(key, &object);
    if let Err(e) = validation::dns_subdomain(&spec.app) {
        errs.push(PlanError::new(
            ErrorKind::Invalid,
            &object,
            "spec.app",
            "InvalidName",
            e,
        ));
    } else if !apps.contains_key(&ObjectKey::new(&key.namespace, &spec.app)) {
        errs.push(PlanError::new(
            ErrorKind::Invalid,
            &object,
            "spec.app",
            "UnknownApp",
            format!(
                "no MeshApp named {:?} in namespace {:?}",
                spec.app, key.namespace
            ),
        ));
    }
    selector_errors(&spec.selector, "spec.selector", &object, &mut errs);
    for (dir, rules) in [("ingress", &spec.ingress), ("egress", &spec.egress)] {
        for (i, rule) in rules.iter().flatten().enumerate() {
            rule_errors(rule, &format!("spec.{dir}[{i}]"), &object, sites, &mut errs);
            for (j, peer) in rule.peers.iter().enumerate() {
                let Some(other) = &peer.app else { continue };
                let other_key = peer_app_key(&key.namespace, other);
                if !apps.contains_key(&other_key) {
                    errs.push(PlanError::new(
                        ErrorKind::Invalid,
                        &object,
                        format!("spec.{dir}[{i}].peers[{j}].app"),
                        "UnknownApp",
                        format!("no MeshApp named {other_key}"),
                    ));
                }
            }
        }
    }
    errs
}

/// The app a peer's `app` names: `namespace/name`, or a bare name in the
/// policy's namespace.
pub fn peer_app_key(policy_namespace: &str, app: &str) -> ObjectKey {
    match app.split_once('/') {
        Some((ns, name)) => ObjectKey::new(ns, name),
        None => ObjectKey::new(policy_namespace, app),
    }
}

/// Peer CIDRs must lie inside the range of the app they refer to (the
/// policy's app, or the peer's `app`): a range outside it can never match a
/// workload, which is always a mistake. Apps without a range yet are skipped.
pub fn policy_range_errors(
    key: &ObjectKey,
    spec: &MeshPolicySpec,
    ranges: &BTreeMap<ObjectKey, Ipv4Net>,
) -> Vec<PlanError> {
    let object = object_name("MeshPolicy", key);
    let mut errs = Vec::new();
    for (dir, rules) in [("ingress", &spec.ingress), ("egress", &spec.egress)] {
        for (i, rule) in rules.iter().flatten().enumerate() {
            for (j, peer) in rule.peers.iter().enumerate() {
                let Some(Ok(cidr)) = peer.cidr.as_deref().map(parse_cidr) else {
                    continue;
                };
                let app = peer_app_key(&key.namespace, peer.app.as_deref().unwrap_or(&spec.app));
                let Some(range) = ranges.get(&app) else {
                    continue;
                };
                if !range.contains(&cidr) {
                    errs.push(PlanError::new(
                        ErrorKind::Invalid,
                        &object,
                        format!("spec.{dir}[{i}].peers[{j}].cidr"),
                        "InvalidCidr",
                        format!("{cidr} is outside the range {range} of MeshApp {app}"),
                    ));
                }
            }
        }
    }
    errs
}

/// Whether a previously accepted spec can still be enforced: it must still
/// be valid, except for references that merely match nothing now (a deleted
/// site or peer app), which only shrink what it allows.
pub fn still_enforceable(
    key: &ObjectKey,
    spec: &MeshPolicySpec,
    apps: &BTreeMap<ObjectKey, weft_api::MeshAppSpec>,
    sites: &BTreeMap<String, MeshSiteSpec>,
) -> bool {
    validate_policy(key, spec, apps, sites)
        .iter()
        .all(|e| e.reason == "UnknownSite" || (e.reason == "UnknownApp" && e.field != "spec.app"))
}

fn rule_errors(
    rule: &PolicyRule,
    field: &str,
    object: &str,
    sites: &BTreeMap<String, MeshSiteSpec>,
    out: &mut Vec<PlanError>,
) {
    for (j, peer) in rule.peers.iter().enumerate() {
        let pf = format!("{field}.peers[{j}]");
        if let Some(sel) = &peer.selector {
            selector_errors(sel, &format!("{pf}.selector"), object, out);
        }
        if let Some(site) = &peer.site {
            if !site_known(site, sites) {
                out.push(PlanError::new(
                    ErrorKind::Invalid,
                    object,
                    format!("{pf}.site"),
                    "UnknownSite",
                    format!("no MeshSite named {site:?}"),
                ));
            }
        }
        if let Some(cidr) = &peer.cidr {
            if let Err(msg) = parse_cidr(cidr) {
                out.push(PlanError::new(
                    ErrorKind::Invalid,
                    object,
                    format!("{pf}.cidr"),
                    "InvalidCidr",
                    msg,
                ));
            }
        }
    }
    for (j, port) in rule.ports.iter().enumerate() {
        let pf = format!("{field}.ports[{j}]");
        let proto = port.protocol.as_deref().unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "ICMP") {
            out.push(PlanError::new(
                ErrorKind::Invalid,
                object,
                format!("{pf}.protocol"),
                "InvalidProtocol",
                format!("protocol {proto:?} must be TCP, UDP or ICMP"),
            ));
        }
        if proto == "ICMP" && (port.port.is_some() || port.end_port.is_some()) {
            out.push(PlanError::new(
                ErrorKind::Invalid,
                object,
                format!("{pf}.port"),
                "InvalidPort",
                "ICMP has no ports",
            ));
        }
        if port.port == Some(0) {
            out.push(PlanError::new(
                ErrorKind::Invalid,
                object,
                format!("{pf}.port"),
                "InvalidPort",
                "port must be between 1 and 65535",
            ));
        }
        match (port.port, port.end_port) {
            (None, Some(_)) => out.push(PlanError::new(
                ErrorKind::Invalid,
                object,
                format!("{pf}.endPort"),
                "InvalidPort",
                "endPort needs port",
            )),
            (Some(p), Some(e)) if e < p => out.push(PlanError::new(
                ErrorKind::Invalid,
                object,
                format!("{pf}.endPort"),
                "InvalidPort",
                format!("endPort {e} is below port {p}"),
            )),
            _ => {}
        }
    }
}

/// Parses a node's endpoint address.
pub fn parse_node_address(s: &str) -> Option<Ipv4Addr> {
    s.trim().parse().ok()
}
