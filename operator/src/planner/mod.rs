//! The pure planner: `plan(&Snapshot) -> Plan`. No I/O, no clock, no
//! randomness; ordered maps everywhere, so the same snapshot always gives the
//! same plan.
//!
//! ```text
//!  Snapshot ─► validate ─► app ids ─► app ranges ─► workloads→apps ─► node slices
//!                                                          │
//!        Plan { MeshNodeSpec per node, outcomes } ◄─ peers ◄┴─ listen ports
//! ```
//!
//! Every allocation (app id, app range, node slice, listen port) sticks to
//! what the previous MeshNode specs and stored statuses say, so planning again
//! with more objects never moves an existing allocation. Invalid objects get
//! a [`PlanError`] naming the field and are left out; everything else plans.

pub mod accept;
pub mod crossapp;
pub mod error;
pub mod federated;
pub mod incremental;
pub mod ipam;
pub mod membership;
pub mod naming;
pub mod peers;
pub mod policy;
pub mod snapshot;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use weft_api::labels::LOCAL_SITE;
use weft_api::{
    AppAttachment, AppSelector, EnforcedApp, EnforcedPolicy, EnforcedSite, MeshAppSpec,
    MeshNodeSpec, MeshPolicySpec, MeshSiteSpec,
};

pub use error::{ErrorKind, PlanError};
pub use snapshot::{
    Federated, Granted, Labels, NodeInfo, ObjectKey, PlannerConfig, RemoteNode, RemoteWorkload,
    Reserved, Snapshot,
};

use ipam::RangeRequest;
use peers::PeerCandidate;
use validate::ValidApp;

/// What became of one MeshApp.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppOutcome {
    /// Stable id (names of interface and netns).
    pub app_id: String,
    /// The app's range, if it has one.
    pub address_space: Option<String>,
    /// Nodes carrying the app (sorted), lost and transit ones included.
    pub nodes: Vec<String>,
    /// The subset of `nodes` that stopped reporting.
    pub lost_nodes: Vec<String>,
    /// The subset of `nodes` where the app has no workload and is placed
    /// only to carry allowed cross-app flows (see `crossapp`). They are
    /// nodes of the app like any other: a full-mesh member, with their own
    /// peers and handshakes, so Ready waits for them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transit_nodes: Vec<String>,
    /// Nodes of other federation members in the app's mesh (`member/node`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_nodes: Vec<String>,
    /// The subset of `remote_nodes` that stopped reporting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_remote_nodes: Vec<String>,
    /// Workloads of other members (`member:namespace/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_workloads: Vec<String>,
    /// Records of other members refused on import, with why: those members
    /// are left out of the mesh; this member's own part works.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_records: Vec<String>,
    /// Sites of `nodes` (sorted, unique).
    pub sites: Vec<String>,
    /// The app's workloads, `namespace/name` (sorted, unique).
    pub workloads: Vec<String>,
    /// Whether the app takes part in the data plane at all (valid, has a range).
    pub planned: bool,
    /// Problems found (sorted).
    pub errors: Vec<PlanError>,
    /// The current spec, when accepted: what the status records as enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_spec: Option<MeshAppSpec>,
    /// While the current spec is rejected: the last accepted version, which
    /// stays in force (see [`accept`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub still_enforced: Option<EnforcedApp>,
}

/// What became of one MeshPolicy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyOutcome {
    /// Valid and its references resolve.
    pub accepted: bool,
    /// Why not.
    pub errors: Vec<PlanError>,
    /// Parts of an accepted policy that are not enforced (sorted), e.g. peers
    /// in another app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The current spec, when accepted: what the status records as enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_spec: Option<MeshPolicySpec>,
    /// While the current spec is rejected: the last accepted version (from
    /// the stored status), which stays enforced so an invalid update never
    /// opens what the policy isolated. `None`: nothing of the policy is
    /// enforced (never accepted, or that version no longer applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub still_enforced: Option<EnforcedPolicy>,
}

/// What became of one MeshSite.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteOutcome {
    /// Registered nodes of the site (sorted).
    pub nodes: Vec<String>,
    /// The subset that stopped reporting.
    pub lost_nodes: Vec<String>,
    /// Problems of the current spec (sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<PlanError>,
    /// The current spec, when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_spec: Option<MeshSiteSpec>,
    /// While the current spec is rejected: the last accepted version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub still_enforced: Option<EnforcedSite>,
    /// For a Remote site reached through a hub: how it looks from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<snapshot::HubLink>,
}

/// What became of one MeshHub (checked only; federation is not planned).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubOutcome {
    /// Problems of the spec (sorted).
    pub errors: Vec<PlanError>,
    /// Member sites listed.
    pub members: u32,
}

/// The planner's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Desired MeshNode spec of every registered node.
    pub nodes: BTreeMap<String, MeshNodeSpec>,
    /// Outcome per MeshApp.
    pub apps: BTreeMap<ObjectKey, AppOutcome>,
    /// Outcome per MeshPolicy.
    pub policies: BTreeMap<ObjectKey, PolicyOutcome>,
    /// Outcome per MeshSite.
    pub sites: BTreeMap<String, SiteOutcome>,
    /// Outcome per MeshHub.
    pub hubs: BTreeMap<String, HubOutcome>,
    /// Problems with nodes themselves (e.g. an unusable address).
    pub node_errors: BTreeMap<String, Vec<PlanError>>,
    /// site → namespace → selectors of the apps of that namespace spanning
    /// that site, for every site with a node: how a daemon tells at once
    /// that a new workload belongs to no app. Kept out of the MeshNodes
    /// (one new app would rewrite every MeshNode of its site); the
    /// standalone operator writes them per namespace, Kubernetes daemons
    /// watch the MeshApps themselves.
    pub selectors: BTreeMap<String, BTreeMap<String, Vec<AppSelector>>>,
    /// What this member exports to its hub, per shared app.
    pub exports: BTreeMap<ObjectKey, weft_api::federation::SiteRecordSpec>,
}

impl Plan {
    /// Every error of the plan, in a fixed order.
    pub fn errors(&self) -> Vec<&PlanError> {
        self.apps
            .values()
            .flat_map(|a| &a.errors)
            .chain(self.policies.values().flat_map(|p| &p.errors))
            .chain(self.sites.values().flat_map(|p| &p.errors))
            .chain(self.hubs.values().flat_map(|p| &p.errors))
            .chain(self.node_errors.values().flatten())
            .collect()
    }
}

/// A node's effective site.
pub fn node_site(info: &NodeInfo) -> &str {
    if info.site.is_empty() {
        LOCAL_SITE
    } else {
        &info.site
    }
}

/// Computes the desired state of every node and the outcome of every object.
pub fn plan(s: &Snapshot) -> Plan {
    let mut out = Plan::default();
    let mut app_errors: BTreeMap<ObjectKey, Vec<PlanError>> = BTreeMap::new();

    // 1. Validation: the spec in force of every site and app (the current
    // one when valid, else the last accepted one).
    let site_decisions = accept::decide_sites(s);
    let mut app_decisions = accept::decide_apps(s, &s.sites);
    let mut valid: BTreeMap<ObjectKey, ValidApp> = BTreeMap::new();
    let mut in_force: BTreeMap<ObjectKey, MeshAppSpec> = BTreeMap::new();
    for (key, d) in &mut app_decisions {
        if let Some((spec, v)) = d.effective.clone() {
            valid.insert(key.clone(), v);
            in_force.insert(key.clone(), spec);
        }
        app_errors
            .entry(key.clone())
            .or_default()
            .append(&mut d.errors.clone());
    }

    // 2. Ids for every app (invalid ones keep theirs reserved).
    let ids = naming::assign_app_ids(s.apps.keys(), &s.previous_specs);

    // 3. App ranges. A shared app's comes from the hub; one that has
    // none yet waits rather than take one from the local pool.
    let mut fed_modes: BTreeMap<ObjectKey, federated::Mode<'_>> = BTreeMap::new();
    let requests: BTreeMap<ObjectKey, RangeRequest> = s
        .apps
        .keys()
        .filter_map(|key| {
            let v = valid.get(key);
            let previous = s
                .previous_ranges
                .get(key)
                .and_then(|p| validate::parse_cidr(p).ok());
            let mut explicit = v.and_then(|v| v.explicit_range);
            if let (Some(f), Some(v)) = (s.federation.get(key), v) {
                let errors = app_errors.entry(key.clone()).or_default();
                let (mode, range) = federated::mode(key, f, v, previous, errors);
                let waiting = matches!(mode, federated::Mode::Waiting);
                fed_modes.insert(key.clone(), mode);
                if waiting && previous.is_none() && explicit.is_none() {
                    return None;
                }
                explicit = range.or(explicit);
            }
            let req = RangeRequest {
                explicit,
                previous,
                valid: v.is_some(),
            };
            Some((key.clone(), req))
        })
        .collect();
    let (ranges, range_errors) = ipam::assign_ranges(&requests, &s.config, &s.reserved.ranges);
    for (key, err) in range_errors {
        app_errors.entry(key).or_default().push(err);
    }

    // 4. Workloads to apps (among valid apps).
    let claimants: BTreeMap<ObjectKey, &MeshAppSpec> =
        in_force.iter().map(|(k, spec)| (k.clone(), spec)).collect();
    let registered_workloads: BTreeMap<String, BTreeMap<ObjectKey, Labels>> = s
        .workloads
        .iter()
        .filter(|(node, _)| s.nodes.contains_key(*node))
        .map(|(n, w)| (n.clone(), w.clone()))
        .collect();
    let members =
        membership::assign_workloads(&claimants, &registered_workloads, &s.previous_specs);
    for (key, err) in members.errors {
        app_errors.entry(key).or_default().push(err);
    }

    // 5. Where each app has workloads (within its sites).
    let spans = |key: &ObjectKey, node: &str| -> bool {
        // No sites listed means the local site only: an app spans other
        // clusters or edge sites only when it says so.
        let Some(v) = valid.get(key) else {
            return false;
        };
        s.nodes.get(node).is_some_and(|info| {
            let site = node_site(info);
            if v.sites.is_empty() {
                site == weft_api::labels::LOCAL_SITE
            } else {
                v.sites.iter().any(|x| x == site)
            }
        })
    };
    // app → node → workloads
    let mut sited: BTreeMap<ObjectKey, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for key in ranges.keys() {
        let Some(on_nodes) = members.placements.get(key) else {
            continue;
        };
        let by_node: BTreeMap<String, Vec<String>> = on_nodes
            .iter()
            .filter(|(n, _)| spans(key, n))
            .map(|(n, w)| (n.clone(), w.iter().map(ToString::to_string).collect()))
            .collect();
        sited.insert(key.clone(), by_node);
    }

    // 6. Policies: validate. An invalid policy is never enforced half-way:
    // its last accepted version stays in force instead (fail closed), or
    // nothing when it was never accepted.
    let mut enforced_specs: BTreeMap<&ObjectKey, &MeshPolicySpec> = BTreeMap::new();
    for (key, spec) in &s.policies {
        let object = validate::object_name("MeshPolicy", key);
        let mut errors = s.input_errors.get(&object).cloned().unwrap_or_default();
        if errors.is_empty() {
            errors = validate::validate_policy(key, spec, &s.apps, &s.sites);
            errors.extend(validate::policy_range_errors(key, spec, &ranges));
        }
        errors.sort();
        let accepted = errors.is_empty();
        let still_enforced = if accepted {
            None
        } else {
            s.previous_policies
                .get(key)
                .filter(|prev| validate::still_enforceable(key, &prev.spec, &s.apps, &s.sites))
        };
        if accepted {
            enforced_specs.insert(key, spec);
        } else if let Some(prev) = still_enforced {
            enforced_specs.insert(key, &prev.spec);
        }
        out.policies.insert(
            key.clone(),
            PolicyOutcome {
                accepted,
                errors,
                notes: Vec::new(),
                accepted_spec: accepted.then(|| spec.clone()),
                still_enforced: still_enforced.cloned(),
            },
        );
    }
    let enforced_list: Vec<(&ObjectKey, &MeshPolicySpec)> =
        enforced_specs.iter().map(|(k, v)| (*k, *v)).collect();

    // 7. Transit placements: an allowed cross-app pair on two nodes crosses
    // on one of them, where both apps must be (see `crossapp`). An app is
    // placed there without workloads when it has none there; only within
    // its own sites.
    let transit: BTreeMap<ObjectKey, BTreeSet<String>> = {
        // Slices are not assigned yet: the ones of the previous specs.
        let previous_slice = |key: &ObjectKey, node: &str| {
            let app = key.to_string();
            s.previous_specs
                .get(node)?
                .apps
                .iter()
                .find(|a| a.app == app)?
                .node_slice
                .parse()
                .ok()
        };
        let pre = members_of(s, &sited, &previous_slice);
        crossapp::compile(&pre, &enforced_list, &spans)
            .needed
            .into_iter()
            .map(|(key, nodes)| {
                let own = sited.get(&key);
                let extra: BTreeSet<String> = nodes
                    .into_iter()
                    .filter(|n| !own.is_some_and(|o| o.contains_key(n)))
                    .collect();
                (key, extra)
            })
            .filter(|(_, n)| !n.is_empty())
            .collect()
    };

    // 8. Node slices, per app (nodes with workloads first, so a transit
    // placement never takes the last free slice from one).
    // (app, node) → (slice, workloads)
    let mut placed: BTreeMap<ObjectKey, BTreeMap<String, (Ipv4Net, Vec<String>)>> = BTreeMap::new();
    let mut wanting: BTreeMap<ObjectKey, usize> = BTreeMap::new();
    for (key, range) in &ranges {
        let Some(v) = valid.get(key) else { continue };
        let (own, extra) = (sited.get(key), transit.get(key));
        if own.is_none() && extra.is_none() {
            continue;
        }
        let nodes: Vec<String> = own
            .into_iter()
            .flat_map(|o| o.keys().cloned())
            .chain(extra.into_iter().flatten().cloned())
            .collect();
        let app_name = key.to_string();
        let previous: BTreeMap<String, Ipv4Net> = nodes
            .iter()
            .filter_map(|n| {
                let att = s
                    .previous_specs
                    .get(n)?
                    .apps
                    .iter()
                    .find(|a| a.app == app_name)?;
                Some((n.clone(), att.node_slice.parse().ok()?))
            })
            .collect();
        wanting.insert(key.clone(), nodes.len());
        let (slices, full) = match fed_modes.get(key) {
            Some(federated::Mode::Granted(g)) => {
                let inside = |x: &Ipv4Net| g.blocks.iter().any(|b| b.contains(x));
                federated::assign_slices(&g.blocks, v.node_prefix_len, &nodes, &previous, &inside)
            }
            Some(federated::Mode::Waiting) => {
                let inside = |x: &Ipv4Net| range.contains(x);
                federated::assign_slices(&[], v.node_prefix_len, &nodes, &previous, &inside)
            }
            _ => ipam::assign_slices(range, v.node_prefix_len, &nodes, &previous),
        };
        let shared = fed_modes.contains_key(key)
            && !matches!(fed_modes.get(key), Some(federated::Mode::Apart));
        for node in full {
            // Say why the app wanted the node when no workload of its own
            // runs there: another app's policy asked for a transit placement.
            let why = if own.is_some_and(|o| o.contains_key(&node)) {
                ""
            } else {
                " (a transit placement for allowed cross-app flows, not carried)"
            };
            let error = if shared {
                PlanError::new(
                    ErrorKind::Exhausted,
                    validate::object_name("MeshApp", key),
                    "spec.sites",
                    "WaitingForHub",
                    format!(
                        "node {node} waits for a free /{} slice in a block the hub grants this site{why}",
                        v.node_prefix_len
                    ),
                )
            } else {
                PlanError::new(
                    ErrorKind::Exhausted,
                    validate::object_name("MeshApp", key),
                    "spec.nodePrefixLength",
                    "NodeSlicesExhausted",
                    format!(
                        "no free /{} slice left in {range} for node {node}{why}",
                        v.node_prefix_len
                    ),
                )
            };
            app_errors.entry(key.clone()).or_default().push(error);
        }
        let entry = placed.entry(key.clone()).or_default();
        for (node, slice) in slices {
            let wls = own.and_then(|o| o.get(&node)).cloned().unwrap_or_default();
            entry.insert(node, (slice, wls));
        }
    }

    // 9. Listen ports, per node.
    let mut ports: BTreeMap<(String, ObjectKey), u16> = BTreeMap::new();
    let mut apps_on_node: BTreeMap<&str, Vec<&ObjectKey>> = BTreeMap::new();
    for (key, by_node) in &placed {
        for node in by_node.keys() {
            apps_on_node.entry(node.as_str()).or_default().push(key);
        }
    }
    for (node, apps) in &apps_on_node {
        let previous = s.previous_specs.get(*node);
        let mut used: BTreeSet<u16> = s.reserved.ports.get(*node).cloned().unwrap_or_default();
        for key in apps {
            let name = key.to_string();
            let prev = previous
                .and_then(|p| p.apps.iter().find(|a| a.app == name))
                .map(|a| a.listen_port)
                .filter(|p| *p != 0);
            if let Some(port) = prev {
                if used.insert(port) {
                    ports.insert((node.to_string(), (*key).clone()), port);
                }
            }
        }
        let mut next = u32::from(s.config.base_listen_port);
        for key in apps {
            let slot = (node.to_string(), (*key).clone());
            if ports.contains_key(&slot) {
                continue;
            }
            while u16::try_from(next).is_ok_and(|p| used.contains(&p)) {
                next += 1;
            }
            match u16::try_from(next) {
                Ok(port) => {
                    used.insert(port);
                    ports.insert(slot, port);
                }
                Err(_) => {
                    app_errors
                        .entry((*key).clone())
                        .or_default()
                        .push(PlanError::new(
                            ErrorKind::Exhausted,
                            validate::object_name("MeshApp", key),
                            "spec",
                            "ListenPortsExhausted",
                            format!("no free UDP listen port left on node {node}"),
                        ));
                }
            }
        }
    }
    for (key, by_node) in placed.iter_mut() {
        by_node.retain(|node, _| ports.contains_key(&(node.clone(), key.clone())));
    }

    // 10. Node errors (unusable endpoint addresses).
    for (node, info) in &s.nodes {
        if validate::parse_node_address(&info.address).is_none() {
            out.node_errors
                .entry(node.clone())
                .or_default()
                .push(PlanError::new(
                    ErrorKind::Invalid,
                    format!("MeshNode {node}"),
                    "address",
                    "InvalidAddress",
                    format!(
                        "node address {:?} is not an IPv4 address; peers cannot reach this node",
                        info.address
                    ),
                ));
        }
    }

    // 11. Policies: compile the enforced ones per app and node, over the
    // workloads that were placed.
    let placed_workloads: BTreeMap<ObjectKey, BTreeMap<String, Vec<String>>> = placed
        .iter()
        .map(|(k, b)| {
            let w = b.iter().map(|(n, (_, w))| (n.clone(), w.clone()));
            (k.clone(), w.collect())
        })
        .collect();
    let placed_slice =
        |key: &ObjectKey, node: &str| placed.get(key).and_then(|b| b.get(node)).map(|(n, _)| *n);
    let all_members = members_of(s, &placed_workloads, &placed_slice);
    // Remote workloads are selected by this member's policies as local
    // ones are; cross-app flows stay within the member.
    let mut policy_members = all_members.clone();
    for (key, mode) in &fed_modes {
        let (federated::Mode::Granted(_), Some(f), Some(v)) =
            (mode, s.federation.get(key), valid.get(key))
        else {
            continue;
        };
        let list = policy_members.entry(key.clone()).or_default();
        for n in federated::remote_in(f, v) {
            for w in &n.workloads {
                list.push(policy::Member {
                    node: &n.id,
                    site: &n.site,
                    labels: &w.labels,
                    address: w.address,
                });
            }
        }
    }
    let mut compiled: BTreeMap<ObjectKey, policy::CompiledApp> = BTreeMap::new();
    for (key, members) in &policy_members {
        let accepted: Vec<(&ObjectKey, &MeshPolicySpec)> = enforced_specs
            .iter()
            .filter(|(pk, spec)| pk.namespace == key.namespace && spec.app == key.name)
            .map(|(pk, spec)| (*pk, *spec))
            .collect();
        if accepted.is_empty() {
            continue;
        }
        let c = policy::compile_app(key, members, &accepted);
        for (pk, notes) in &c.notes {
            if let Some(o) = out.policies.get_mut(pk) {
                o.notes.extend(notes.iter().cloned());
            }
        }
        compiled.insert(key.clone(), c);
    }
    let is_placed =
        |key: &ObjectKey, node: &str| placed.get(key).is_some_and(|b| b.contains_key(node));
    let cross = crossapp::compile(&all_members, &enforced_list, &is_placed);
    for (pk, notes) in &cross.notes {
        if let Some(o) = out.policies.get_mut(pk) {
            o.notes.extend(notes.iter().cloned());
        }
    }
    // A transit placement no link needs any more (a slice or port ran out
    // elsewhere on the path) is dropped.
    for (key, by_node) in placed.iter_mut() {
        let needed = cross.needed.get(key);
        by_node.retain(|n, (_, w)| !w.is_empty() || needed.is_some_and(|x| x.contains(n)));
    }

    // 12. Attachments and peers.
    // Every app of the site, valid or not: a workload of an app that is
    // still invalid waits (and its ADD fails, so the runtime retries)
    // rather than starting unmeshed for good. The spec in force where there
    // is one; an app whose spec could not even be read has no selector.
    let selecting: BTreeMap<&ObjectKey, &MeshAppSpec> = s
        .apps
        .iter()
        .filter(|(k, _)| {
            let object = validate::object_name("MeshApp", k);
            !s.input_errors.contains_key(&object)
        })
        .chain(in_force.iter())
        .collect();
    for (node, info) in &s.nodes {
        out.nodes.insert(
            node.clone(),
            MeshNodeSpec {
                site: node_site(info).to_string(),
                apps: Vec::new(),
            },
        );
    }
    let node_sites: BTreeSet<&str> = s.nodes.values().map(node_site).collect();
    for site in node_sites {
        let by_namespace =
            membership::site_selectors(selecting.iter().map(|(k, v)| (*k, *v)), site);
        if !by_namespace.is_empty() {
            out.selectors.insert(site.to_string(), by_namespace);
        }
    }
    for (key, by_node) in &placed {
        let (Some(range), Some(v), Some(id)) = (ranges.get(key), valid.get(key), ids.get(key))
        else {
            continue;
        };
        let candidates: BTreeMap<String, PeerCandidate> = by_node
            .iter()
            .filter_map(|(node, (slice, _))| {
                let info = s.nodes.get(node)?;
                let port = *ports.get(&(node.clone(), key.clone()))?;
                Some((
                    node.clone(),
                    PeerCandidate {
                        public_key: s.public_keys.get(&(node.clone(), key.clone())).cloned(),
                        endpoint: validate::parse_node_address(&info.address)
                            .map(|a| format!("{a}:{port}")),
                        slice: slice.to_string(),
                        lost: info.lost,
                    },
                ))
            })
            .chain(
                match (fed_modes.get(key), s.federation.get(key)) {
                    (Some(federated::Mode::Granted(_)), Some(f)) => {
                        Some(federated::remote_candidates(f, v))
                    }
                    _ => None,
                }
                .into_iter()
                .flatten(),
            )
            .collect();
        let shared = peers::shared_peers(&candidates);
        let names = std::sync::Arc::new(app_names(s, key, by_node, fed_modes.get(key), v));
        for (node, (slice, workloads)) in by_node {
            let Some(spec) = out.nodes.get_mut(node) else {
                continue;
            };
            let Some(port) = ports.get(&(node.clone(), key.clone())) else {
                continue;
            };
            let here = (key.clone(), node.clone());
            let no_links = BTreeSet::new();
            let linked = cross.linked.get(&here).unwrap_or(&no_links);
            let no_rules = crossapp::NodeRules::new();
            let cross_rules = cross.rules.get(&here).unwrap_or(&no_rules);
            let rules_for = |other: &ObjectKey| cross_rules.get(other).cloned().unwrap_or_default();
            spec.apps.push(AppAttachment {
                app: key.to_string(),
                app_id: id.clone(),
                netns: naming::netns_name(node, id),
                interface: naming::interface_name(id),
                address_space: range.to_string(),
                node_slice: slice.to_string(),
                address: ipam::tunnel_address(slice, range),
                listen_port: *port,
                mtu: v.mtu,
                persistent_keepalive: v.keepalive,
                workloads: workloads.clone(),
                peers: peers::peers_of(node, &shared, cross.carried.get(&here)),
                policy: compiled.get(key).and_then(|c| c.nodes.get(node)).cloned(),
                app_links: linked
                    .iter()
                    .filter_map(|other| {
                        let other_id = ids.get(other)?;
                        Some(weft_api::AppLink {
                            app: other.to_string(),
                            netns: naming::netns_name(node, other_id),
                            interface: naming::app_link_name(other_id),
                            peer_interface: naming::app_link_name(id),
                            address_space: ranges.get(other)?.to_string(),
                            rules: rules_for(other),
                        })
                    })
                    .collect(),
                remote_apps: cross_rules
                    .keys()
                    .filter(|other| !linked.contains(*other))
                    .filter_map(|other| {
                        Some(weft_api::meshnode::RemoteApp {
                            app: other.to_string(),
                            address_space: ranges.get(other)?.to_string(),
                            rules: rules_for(other),
                        })
                    })
                    .collect(),
                names: std::sync::Arc::clone(&names),
            });
        }
    }
    for spec in out.nodes.values_mut() {
        spec.apps.sort_by(|a, b| a.app.cmp(&b.app));
    }
    for (node, dropped) in bound_meshnode_sizes(&mut out.nodes, s) {
        for (app, size) in dropped {
            let key = ObjectKey::parse(&app);
            if let Some(by_node) = placed.get_mut(&key) {
                by_node.remove(&node);
            }
            app_errors.entry(key.clone()).or_default().push(PlanError::new(
                ErrorKind::Exhausted,
                validate::object_name("MeshApp", &key),
                "spec",
                "MeshNodeTooLarge",
                format!(
                    "not placed on node {node}: its MeshNode would grow to {size} bytes, over the {} an object may hold",
                    s.config.max_meshnode_bytes
                ),
            ));
        }
    }

    // 13. Outcomes.
    for key in s.apps.keys() {
        let by_node = placed.get(key);
        let nodes: Vec<String> = by_node
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default();
        let lost_nodes = nodes
            .iter()
            .filter(|n| s.nodes.get(*n).is_some_and(|i| i.lost))
            .cloned()
            .collect();
        let mut sites: BTreeSet<String> = nodes
            .iter()
            .filter_map(|n| s.nodes.get(n).map(|i| node_site(i).to_string()))
            .collect();
        let (mut remote_nodes, mut lost_remote_nodes, mut remote_workloads) =
            (Vec::new(), Vec::new(), Vec::new());
        if let (Some(federated::Mode::Granted(_)), Some(f), Some(v)) =
            (fed_modes.get(key), s.federation.get(key), valid.get(key))
        {
            for n in federated::remote_in(f, v) {
                remote_nodes.push(n.id.clone());
                if n.lost {
                    lost_remote_nodes.push(n.id.clone());
                }
                sites.insert(n.site.clone());
                remote_workloads.extend(n.workloads.iter().map(|w| w.name.clone()));
            }
            remote_nodes.sort();
            lost_remote_nodes.sort();
            remote_workloads.sort();
        }
        if let (Some(f), Some(v)) = (s.federation.get(key), valid.get(key)) {
            let local = by_node.into_iter().flatten().map(|(node, (slice, wls))| {
                let info = s.nodes.get(node);
                let port = ports.get(&(node.clone(), key.clone()));
                let workloads = wls
                    .iter()
                    .map(|w| {
                        let wk = ObjectKey::parse(w);
                        let labels = s.workloads.get(node).and_then(|m| m.get(&wk));
                        let address = s
                            .workload_addresses
                            .get(node)
                            .and_then(|m| m.get(&wk))
                            .filter(|a| {
                                a.split('/')
                                    .next()
                                    .and_then(|x| x.trim().parse::<std::net::Ipv4Addr>().ok())
                                    .is_some_and(|x| slice.contains(&x))
                            })
                            .cloned();
                        (w.clone(), labels.unwrap_or(&NO_LABELS), address)
                    })
                    .collect();
                federated::LocalNode {
                    name: node,
                    site: info.map_or(LOCAL_SITE, node_site),
                    endpoint: info
                        .and_then(|i| validate::parse_node_address(&i.address))
                        .zip(port)
                        .map(|(a, p)| format!("{a}:{p}")),
                    public_key: s.public_keys.get(&(node.clone(), key.clone())),
                    slice: *slice,
                    lost: info.is_some_and(|i| i.lost),
                    workloads,
                }
            });
            let want = wanting.get(key).copied().unwrap_or(0);
            let record =
                federated::export(key, f, v, ranges.get(key).copied(), want, local.collect());
            out.exports.insert(key.clone(), record);
        }
        let workloads: BTreeSet<String> = by_node
            .into_iter()
            .flat_map(|b| b.values().flat_map(|(_, w)| w.iter().cloned()))
            .collect();
        let transit_nodes = by_node
            .into_iter()
            .flatten()
            .filter(|(_, (_, w))| w.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        let mut errors = app_errors.remove(key).unwrap_or_default();
        errors.sort();
        errors.dedup();
        let decision = app_decisions.remove(key).unwrap_or_default();
        let accepted = decision.accepted();
        out.apps.insert(
            key.clone(),
            AppOutcome {
                app_id: ids.get(key).cloned().unwrap_or_default(),
                address_space: ranges.get(key).map(ToString::to_string),
                nodes,
                lost_nodes,
                sites: sites.into_iter().collect(),
                workloads: workloads.into_iter().collect(),
                transit_nodes,
                remote_nodes,
                lost_remote_nodes,
                remote_workloads,
                refused_records: s
                    .federation
                    .get(key)
                    .map(federated::refused)
                    .unwrap_or_default(),
                planned: valid.contains_key(key) && ranges.contains_key(key),
                errors,
                accepted_spec: accepted.then(|| s.apps.get(key).cloned()).flatten(),
                still_enforced: decision.still_enforced,
            },
        );
    }
    for (site, decision) in site_decisions {
        let accepted = decision.errors.is_empty();
        let mut outcome = SiteOutcome {
            accepted_spec: accepted.then(|| s.sites.get(&site).cloned()).flatten(),
            errors: decision.errors,
            still_enforced: decision.still_enforced,
            hub: s.hub_links.get(&site).cloned(),
            ..Default::default()
        };
        for (node, info) in &s.nodes {
            if node_site(info) == site.as_str() {
                outcome.nodes.push(node.clone());
                if info.lost {
                    outcome.lost_nodes.push(node.clone());
                }
            }
        }
        out.sites.insert(site, outcome);
    }
    for (name, spec) in &s.hubs {
        let object = accept::cluster_object("MeshHub", name);
        let mut errors = s.input_errors.get(&object).cloned().unwrap_or_default();
        if errors.is_empty() {
            errors = accept::hub_errors(name, spec);
        }
        errors.sort();
        out.hubs.insert(
            name.clone(),
            HubOutcome {
                errors,
                members: u32::try_from(spec.members.len()).unwrap_or(u32::MAX),
            },
        );
    }
    for (node, errs) in &s.node_errors {
        out.node_errors
            .entry(node.clone())
            .or_default()
            .extend(errs.iter().cloned());
    }
    out
}

/// Bytes of `value` as compact JSON, counted as it is written rather than
/// kept: every node's spec is measured each full pass (560 MB at 2,000
/// nodes in one app).
pub fn json_size<T: serde::Serialize>(value: &T) -> serde_json::Result<usize> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value)?;
    Ok(count.0)
}

/// Keeps every node's MeshNode spec within `max_meshnode_bytes`: attachments
/// are taken out, newest first (those the previous spec did not carry, then
/// by name from the end), until the spec fits, and their peers on the other
/// nodes go too. Returns, per node, the apps taken out and the size the
/// spec would have had.
fn bound_meshnode_sizes(
    nodes: &mut BTreeMap<String, MeshNodeSpec>,
    s: &Snapshot,
) -> Vec<(String, Vec<(String, usize)>)> {
    let max = s.config.max_meshnode_bytes;
    let size = |spec: &MeshNodeSpec| json_size(spec).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for (node, spec) in nodes.iter_mut() {
        let mut dropped = Vec::new();
        let mut now = size(spec);
        while now > max && !spec.apps.is_empty() {
            let had = |app: &str| {
                s.previous_specs
                    .get(node)
                    .is_some_and(|p| p.apps.iter().any(|a| a.app == app))
            };
            let victim = (0..spec.apps.len())
                .rev()
                .find(|i| !had(&spec.apps[*i].app))
                .unwrap_or(spec.apps.len() - 1);
            let gone = spec.apps.remove(victim);
            dropped.push((gone.app, now));
            now = size(spec);
        }
        if !dropped.is_empty() {
            out.push((node.clone(), dropped));
        }
    }
    for (node, dropped) in &out {
        for spec in nodes.values_mut() {
            for att in spec.apps.iter_mut() {
                if dropped.iter().any(|(a, _)| *a == att.app) {
                    att.peers.retain(|p| p.node != *node);
                }
            }
        }
    }
    out
}

/// Every app's workloads, as the policy compilers see them: node, site,
/// labels and reported address, from `workloads` (app → node → workload
/// keys). A reported address counts only inside the app's slice on that
/// node (`slice_of`): addresses become rules and, for cross-app flows,
/// WireGuard AllowedIPs, so a node must not be able to claim another
/// node's addresses by reporting them. Slices are disjoint, so no address
/// counts twice.
static NO_LABELS: Labels = Labels::new();

/// The reported address of workload `wk` on `node`, when inside `slice`.
fn reported_address(
    s: &Snapshot,
    node: &str,
    wk: &ObjectKey,
    slice: &Ipv4Net,
) -> Option<std::net::Ipv4Addr> {
    s.workload_addresses
        .get(node)?
        .get(wk)?
        .split('/')
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|a| slice.contains(a))
}

/// An app's workloads by name with their addresses (see
/// `AppAttachment::names`), here and, when federated, at other members.
fn app_names(
    s: &Snapshot,
    key: &ObjectKey,
    by_node: &BTreeMap<String, (Ipv4Net, Vec<String>)>,
    mode: Option<&federated::Mode<'_>>,
    v: &ValidApp,
) -> Vec<weft_api::meshnode::WorkloadName> {
    let mut out = Vec::new();
    for (node, (slice, wls)) in by_node {
        for w in wls {
            let wk = ObjectKey::parse(w);
            if let Some(a) = reported_address(s, node, &wk, slice) {
                out.push(weft_api::meshnode::WorkloadName {
                    name: wk.name.clone(),
                    address: a.to_string(),
                });
            }
        }
    }
    if let (Some(federated::Mode::Granted(_)), Some(f)) = (mode, s.federation.get(key)) {
        for n in federated::remote_in(f, v) {
            for w in &n.workloads {
                let (Some(a), Some((_, name))) = (w.address, w.name.rsplit_once('/')) else {
                    continue;
                };
                out.push(weft_api::meshnode::WorkloadName {
                    name: name.to_string(),
                    address: a.to_string(),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn members_of<'a>(
    s: &'a Snapshot,
    workloads: &'a BTreeMap<ObjectKey, BTreeMap<String, Vec<String>>>,
    slice_of: &dyn Fn(&ObjectKey, &str) -> Option<Ipv4Net>,
) -> BTreeMap<ObjectKey, Vec<policy::Member<'a>>> {
    let mut out: BTreeMap<ObjectKey, Vec<policy::Member<'a>>> = BTreeMap::new();
    for (key, by_node) in workloads {
        let members = out.entry(key.clone()).or_default();
        for (node, wls) in by_node {
            let slice = slice_of(key, node);
            let site = s.nodes.get(node).map_or(LOCAL_SITE, node_site);
            for w in wls {
                let wk = ObjectKey::parse(w);
                let labels = s
                    .workloads
                    .get(node)
                    .and_then(|m| m.get(&wk))
                    .unwrap_or(&NO_LABELS);
                let address = s
                    .workload_addresses
                    .get(node)
                    .and_then(|m| m.get(&wk))
                    .and_then(|a| a.split('/').next()?.trim().parse().ok())
                    .filter(|a| slice.is_some_and(|n| n.contains(a)));
                members.push(policy::Member {
                    node,
                    site,
                    labels,
                    address,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
