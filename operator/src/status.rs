//! Pure status aggregation: the plan plus what each node's daemon reports
//! becomes MeshApp, MeshPolicy and MeshSite status. `now` is passed in; a
//! condition's transition time only moves when its status flips.
//!
//! ```text
//!  AppOutcome + {node → (spec generation, MeshNodeStatus)} ─► MeshAppStatus
//!  PolicyOutcome ─► MeshPolicyStatus        SiteOutcome ─► MeshSiteStatus
//! ```

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use weft_api::conditions::{self, types};
use weft_api::meshapp::TrafficSummary;
use weft_api::{
    AppStatus, EnforcedApp, EnforcedPolicy, EnforcedSite, MeshAppStatus, MeshHubStatus,
    MeshNodeStatus, MeshPolicyStatus, MeshSiteStatus,
};

use crate::planner::{
    AppOutcome, ErrorKind, HubOutcome, ObjectKey, PlanError, PolicyOutcome, SiteOutcome,
};

pub use weft_api::meshnode::HANDSHAKE_FRESH_SECONDS;

/// How many names a condition message lists before summarising.
const MAX_LISTED: usize = 5;

/// What the operator knows about one node when aggregating.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeView<'a> {
    /// Generation of the MeshNode spec last written for the node.
    pub spec_generation: Option<i64>,
    /// The node's reported status.
    pub status: Option<&'a MeshNodeStatus>,
    /// The node stopped reporting.
    pub lost: bool,
}

impl NodeView<'_> {
    fn app(&self, app: &str) -> Option<&AppStatus> {
        self.status?.apps.iter().find(|a| a.app == app)
    }

    /// The daemon applied the current spec and programmed the app.
    pub fn app_ready(&self, app: &str) -> bool {
        let Some(status) = self.status else {
            return false;
        };
        let applied = status.observed_generation.unwrap_or(0) >= self.spec_generation.unwrap_or(0);
        !self.lost && applied && self.app(app).is_some_and(|a| a.programmed)
    }

    /// The peers `node` reports a recent handshake with for `app` (none
    /// when lost).
    fn fresh_peers(&self, app: &str) -> HashSet<&str> {
        if self.lost {
            return HashSet::new();
        }
        self.app(app)
            .map(|a| {
                a.peers
                    .iter()
                    .filter(|p| {
                        p.last_handshake_seconds
                            .is_some_and(|s| s < HANDSHAKE_FRESH_SECONDS)
                    })
                    .map(|p| p.node.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn listed(items: &[String]) -> String {
    listed_of(items, items.len())
}

/// The first [`MAX_LISTED`] of `total` items (`items` holds at least those).
fn listed_of(items: &[String], total: usize) -> String {
    if total <= MAX_LISTED {
        items.join(", ")
    } else {
        format!(
            "{} and {} more",
            items[..MAX_LISTED].join(", "),
            total - MAX_LISTED
        )
    }
}

fn error_summary(errors: &[PlanError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    listed(&parts)
}

fn apply_conditions(list: &mut Vec<Condition>, new: Vec<Condition>, now: &Time) {
    list.retain(|c| new.iter().any(|n| n.type_ == c.type_));
    for c in new {
        conditions::set(list, c, now.clone());
    }
}

/// MeshApp status from its outcome and the nodes' reports.
pub fn app_status(
    app: &ObjectKey,
    outcome: &AppOutcome,
    nodes: &BTreeMap<String, NodeView<'_>>,
    generation: i64,
    previous: Option<&MeshAppStatus>,
    now: &Time,
) -> MeshAppStatus {
    app_status_with_refresh(
        app,
        outcome,
        nodes,
        generation,
        previous,
        now,
        TRAFFIC_REFRESH_SECONDS,
    )
}

/// [`app_status`] with traffic figures refreshed every `traffic_refresh`
/// seconds instead of [`TRAFFIC_REFRESH_SECONDS`].
pub fn app_status_with_refresh(
    app: &ObjectKey,
    outcome: &AppOutcome,
    nodes: &BTreeMap<String, NodeView<'_>>,
    generation: i64,
    previous: Option<&MeshAppStatus>,
    now: &Time,
    traffic_refresh: i64,
) -> MeshAppStatus {
    let name = app.to_string();
    let view = |n: &str| nodes.get(n).copied().unwrap_or_default();
    let total = outcome.nodes.len();
    let not_ready: Vec<String> = outcome
        .nodes
        .iter()
        .filter(|n| !view(n).app_ready(&name))
        .map(|n| {
            if outcome.lost_nodes.contains(n) {
                format!("{n} (lost)")
            } else {
                n.clone()
            }
        })
        .collect();
    // Each node's fresh peers once, then one lookup per pair: an app on
    // 2,000 nodes has 2 million pairs. Only the pairs a message lists are
    // named.
    let fresh: Vec<HashSet<&str>> = outcome
        .nodes
        .iter()
        .map(|n| {
            nodes
                .get(n)
                .map(|v| v.fresh_peers(&name))
                .unwrap_or_default()
        })
        .collect();
    let mut pairs_down = Vec::new();
    let mut down = 0u32;
    let mut pairs_total = 0u32;
    for (i, a) in outcome.nodes.iter().enumerate() {
        for (j, b) in outcome.nodes.iter().enumerate().skip(i + 1) {
            pairs_total += 1;
            if !(fresh[i].contains(b.as_str()) && fresh[j].contains(a.as_str())) {
                down += 1;
                if pairs_down.len() < MAX_LISTED {
                    pairs_down.push(format!("{a}<->{b}"));
                }
            }
        }
    }
    // Links to other members' nodes: only this side's view is known here
    // (the other member reports its own), so a link is up when the local
    // node has a recent handshake with the remote one.
    let remote: Vec<&str> = outcome
        .remote_nodes
        .iter()
        .filter(|n| !outcome.lost_remote_nodes.contains(n))
        .map(String::as_str)
        .collect();
    for (i, a) in outcome.nodes.iter().enumerate() {
        if outcome.lost_nodes.contains(a) {
            continue;
        }
        for r in &remote {
            pairs_total += 1;
            if !fresh[i].contains(r) {
                down += 1;
                if pairs_down.len() < MAX_LISTED {
                    pairs_down.push(format!("{a}<->{r}"));
                }
            }
        }
    }
    let nodes_ready = u32::try_from(total - not_ready.len()).unwrap_or(u32::MAX);
    let nodes_total = u32::try_from(total).unwrap_or(u32::MAX);
    let peers_up = pairs_total - down;
    let g = Some(generation);

    let (ready, degraded) = if !outcome.errors.is_empty() {
        let first = &outcome.errors[0];
        let reason = if first.kind == ErrorKind::Invalid || !outcome.planned {
            "Invalid"
        } else {
            first.reason.as_str()
        };
        let mut msg = error_summary(&outcome.errors);
        if outcome.accepted_spec.is_none() {
            match &outcome.still_enforced {
                Some(e) => msg.push_str(&format!("; still enforcing generation {}", e.generation)),
                None if !outcome.planned => msg.push_str("; nothing of it is enforced"),
                None => {}
            }
        }
        (
            conditions::new(types::READY, false, reason, msg.clone(), g),
            conditions::new(types::DEGRADED, true, &first.reason, msg, g),
        )
    } else if total == 0 {
        let msg = format!(
            "spec.selector: matches no workload on a registered node of the app's sites (workloads labelled {}={} join too)",
            weft_api::labels::APP_LABEL,
            app.name
        );
        (
            conditions::new(types::READY, false, "NoWorkloads", msg.clone(), g),
            conditions::new(types::DEGRADED, true, "NoWorkloads", msg, g),
        )
    } else if !not_ready.is_empty() {
        let msg = format!(
            "{} of {total} nodes not programmed yet: {}",
            not_ready.len(),
            listed(&not_ready)
        );
        (
            conditions::new(types::READY, false, "NodesNotReady", msg.clone(), g),
            conditions::new(types::DEGRADED, true, "NodesNotReady", msg, g),
        )
    } else if !pairs_down.is_empty() {
        let msg = format!(
            "{down} of {pairs_total} peer links without a recent handshake: {}",
            listed_of(&pairs_down, down as usize)
        );
        (
            conditions::new(types::READY, false, "PeersNotConnected", msg.clone(), g),
            conditions::new(types::DEGRADED, true, "PeersNotConnected", msg, g),
        )
    } else {
        let msg = if remote.is_empty() {
            format!("{total} nodes programmed, {pairs_total} peer links up")
        } else {
            format!(
                "{total} nodes programmed here and {} in other members, {pairs_total} peer links up",
                remote.len()
            )
        };
        // Another member's record refused: that member is out of the mesh,
        // this one's part works. Degraded, still Ready.
        let degraded = match outcome.refused_records.first() {
            Some(first) => conditions::new(
                types::DEGRADED,
                true,
                "RecordsRefused",
                format!(
                    "{} record(s) of other members refused on import (field hub), those members are left out: {first}",
                    outcome.refused_records.len()
                ),
                g,
            ),
            None => conditions::new(types::DEGRADED, false, "AsExpected", msg.clone(), g),
        };
        (
            conditions::new(types::READY, true, "Ready", msg, g),
            degraded,
        )
    };

    let mut conds = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    apply_conditions(&mut conds, vec![ready, degraded], now);
    let mut status = MeshAppStatus {
        conditions: conds,
        observed_generation: g,
        address_space: outcome.address_space.clone(),
        nodes_ready,
        nodes_total,
        peers_up,
        peers_total: pairs_total,
        // Other members' nodes in the mesh (their readiness is theirs to
        // report; the peer links to them are counted in `peers`).
        nodes: Some(if remote.is_empty() {
            format!("{nodes_ready}/{nodes_total}")
        } else {
            format!("{nodes_ready}/{nodes_total} +{} remote", remote.len())
        }),
        peers: Some(format!("{peers_up}/{pairs_total}")),
        sites: outcome.sites.clone(),
        traffic: None,
        enforced: match &outcome.accepted_spec {
            Some(spec) => Some(EnforcedApp {
                generation,
                spec: spec.clone(),
            }),
            None => outcome.still_enforced.clone(),
        },
    };
    let fresh = traffic_summary(&name, outcome, nodes);
    status.traffic = refreshed_traffic(
        previous.and_then(|p| p.traffic.as_ref()),
        fresh.clone(),
        now,
        traffic_refresh,
    );
    // Written anyway because something else changed: take fresh figures.
    if previous.is_none_or(|p| !p.same_ignoring_time(&status)) {
        status.traffic = fresh.map(|t| TrafficSummary {
            observed_at: Some(now.clone()),
            ..t
        });
    }
    status
}

/// How long summed traffic figures may age before counters alone make the
/// operator write MeshApp status again.
pub const TRAFFIC_REFRESH_SECONDS: i64 = 60;

/// The new figures stamped `now`, unless they equal the previous ones, or
/// the previous ones (from the same number of nodes) are younger than
/// `refresh_seconds`: then the previous ones stay, so a status that changed
/// only in its counters is not rewritten on every heartbeat. (When anything
/// else changed, the caller takes the new figures: the write happens anyway.)
fn refreshed_traffic(
    previous: Option<&TrafficSummary>,
    fresh: Option<TrafficSummary>,
    now: &Time,
    refresh_seconds: i64,
) -> Option<TrafficSummary> {
    let mut fresh = fresh?;
    if let Some(old) = previous {
        let young = old
            .observed_at
            .as_ref()
            .is_some_and(|t| now.0.as_second() - t.0.as_second() < refresh_seconds);
        let unchanged = TrafficSummary {
            observed_at: old.observed_at.clone(),
            ..fresh.clone()
        } == *old;
        if unchanged || (young && old.nodes == fresh.nodes) {
            return Some(old.clone());
        }
    }
    fresh.observed_at = Some(now.clone());
    Some(fresh)
}

/// The app's traffic summed over its nodes that report it (lost nodes are
/// left out: their figures are stale). `None` until one reports.
fn traffic_summary(
    app: &str,
    outcome: &AppOutcome,
    nodes: &BTreeMap<String, NodeView<'_>>,
) -> Option<TrafficSummary> {
    let mut sum = TrafficSummary::default();
    for n in &outcome.nodes {
        let Some(view) = nodes.get(n).filter(|v| !v.lost) else {
            continue;
        };
        let Some(a) = view.app(app) else { continue };
        sum.nodes += 1;
        sum.policy_drops += a.policy_drops.unwrap_or(0);
        sum.active_connections += a.active_connections.unwrap_or(0);
        for p in &a.peers {
            sum.rx_bytes += p.rx_bytes;
            sum.tx_bytes += p.tx_bytes;
            sum.rx_packets += p.rx_packets;
            sum.tx_packets += p.tx_packets;
        }
    }
    (sum.nodes > 0).then_some(sum)
}

/// MeshPolicy status: `Accepted`, naming the offending field otherwise.
pub fn policy_status(
    outcome: &PolicyOutcome,
    generation: i64,
    previous: Option<&MeshPolicyStatus>,
    now: &Time,
) -> MeshPolicyStatus {
    let g = Some(generation);
    let cond = match outcome.errors.first() {
        None if outcome.notes.is_empty() => {
            conditions::new(types::ACCEPTED, true, "Accepted", "policy is valid", g)
        }
        None => conditions::new(
            types::ACCEPTED,
            true,
            "Accepted",
            format!(
                "policy is valid; not enforced: {}",
                outcome.notes.join("; ")
            ),
            g,
        ),
        Some(first) => {
            let enforcing = match &outcome.still_enforced {
                Some(e) => format!("still enforcing generation {}", e.generation),
                None => "nothing of it is enforced".to_string(),
            };
            conditions::new(
                types::ACCEPTED,
                false,
                &first.reason,
                format!("{}; {enforcing}", error_summary(&outcome.errors)),
                g,
            )
        }
    };
    let mut conds = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    apply_conditions(&mut conds, vec![cond], now);
    // What is enforced: the current spec once accepted, else the last
    // accepted one the planner kept in force (read back on the next pass,
    // also after a restart).
    let enforced = match &outcome.accepted_spec {
        Some(spec) => Some(EnforcedPolicy {
            generation,
            spec: spec.clone(),
        }),
        None => outcome.still_enforced.clone(),
    };
    MeshPolicyStatus {
        conditions: conds,
        observed_generation: g,
        enforced,
    }
}

/// Ready of a Remote site reached through a hub.
fn hub_condition(link: &crate::planner::snapshot::HubLink, g: Option<i64>) -> Condition {
    if let Some(e) = &link.error {
        let msg = format!(
            "the hub cannot be read: {e}; the last state it gave stays in force and traffic goes on"
        );
        return conditions::new(types::READY, false, "HubUnreachable", msg, g);
    }
    if link.gone {
        let msg = "the member has not synced for the hub's pruneAfterSeconds (or never has): its nodes left this member's meshes; they come back when it syncs again".to_string();
        return conditions::new(types::READY, false, "MemberGone", msg, g);
    }
    if link.stale {
        let msg = format!(
            "the member has not synced for the hub's staleAfterSeconds; its {} nodes stay in the meshes until pruneAfterSeconds",
            link.nodes
        );
        return conditions::new(types::READY, false, "MemberStale", msg, g);
    }
    let msg = format!(
        "syncing through the hub; {} nodes in shared apps",
        link.nodes
    );
    conditions::new(types::READY, true, "Syncing", msg, g)
}

/// MeshSite status: node count; Ready when it has nodes and none is lost
/// (a Remote site behind a hub: when its member syncs).
pub fn site_status(
    outcome: &SiteOutcome,
    generation: i64,
    previous: Option<&MeshSiteStatus>,
    now: &Time,
) -> MeshSiteStatus {
    let g = Some(generation);
    let n = outcome.nodes.len();
    let cond = if let Some(first) = outcome.errors.first() {
        let enforcing = match &outcome.still_enforced {
            Some(e) => format!("still enforcing generation {}", e.generation),
            None => "nothing of it is enforced".to_string(),
        };
        conditions::new(
            types::READY,
            false,
            &first.reason,
            format!("{}; {enforcing}", error_summary(&outcome.errors)),
            g,
        )
    } else if let Some(link) = &outcome.hub {
        hub_condition(link, g)
    } else if n == 0 {
        conditions::new(
            types::READY,
            false,
            "NoNodes",
            "no node of this site registered",
            g,
        )
    } else if !outcome.lost_nodes.is_empty() {
        conditions::new(
            types::READY,
            false,
            "NodesLost",
            format!(
                "{} of {n} nodes stopped reporting: {}",
                outcome.lost_nodes.len(),
                listed(&outcome.lost_nodes)
            ),
            g,
        )
    } else {
        conditions::new(
            types::READY,
            true,
            "Ready",
            format!("{n} nodes reporting"),
            g,
        )
    };
    let mut conds = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    apply_conditions(&mut conds, vec![cond], now);
    let (nodes, last_sync) = match &outcome.hub {
        Some(link) => (
            link.nodes,
            link.last_sync
                .and_then(|t| {
                    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(t).ok()?).ok()
                })
                .map(|t| t.to_string()),
        ),
        None => (u32::try_from(n).unwrap_or(u32::MAX), None),
    };
    MeshSiteStatus {
        conditions: conds,
        observed_generation: g,
        nodes,
        last_sync,
        enforced: match &outcome.accepted_spec {
            Some(spec) => Some(EnforcedSite {
                generation,
                spec: spec.clone(),
            }),
            None => outcome.still_enforced.clone(),
        },
    }
}

/// MeshHub status: `Accepted`, naming the offending field otherwise.
/// Federation does not run yet, so no `Ready` is claimed.
pub fn hub_status(
    outcome: &HubOutcome,
    generation: i64,
    previous: Option<&MeshHubStatus>,
    now: &Time,
) -> MeshHubStatus {
    let g = Some(generation);
    let cond = match outcome.errors.first() {
        None => conditions::new(types::ACCEPTED, true, "Accepted", "hub spec is valid", g),
        Some(first) => conditions::new(
            types::ACCEPTED,
            false,
            &first.reason,
            error_summary(&outcome.errors),
            g,
        ),
    };
    let mut conds = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    apply_conditions(&mut conds, vec![cond], now);
    MeshHubStatus {
        conditions: conds,
        observed_generation: g,
        members: outcome.members,
        // The hub's own loop reports its members; a member only checks the spec.
        member_status: previous
            .map(|p| p.member_status.clone())
            .unwrap_or_default(),
        syncing: previous.and_then(|p| p.syncing.clone()),
        oldest_sync: previous.and_then(|p| p.oldest_sync.clone()),
    }
}

/// A status type with conditions, comparable without transition times.
pub trait ConditionedStatus: Clone + PartialEq {
    /// The status's conditions.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;

    /// Equal apart from condition transition times.
    fn same_ignoring_time(&self, other: &Self) -> bool {
        let mut a = self.clone();
        let mut b = other.clone();
        let ok = conditions::lists_equal_ignoring_time(a.conditions_mut(), b.conditions_mut());
        a.conditions_mut().clear();
        b.conditions_mut().clear();
        ok && a == b
    }
}

impl ConditionedStatus for MeshAppStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl ConditionedStatus for MeshPolicyStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl ConditionedStatus for MeshHubStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl ConditionedStatus for MeshSiteStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

#[cfg(test)]
mod tests;
