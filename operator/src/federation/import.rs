//! What a member takes from its hub for one shared app, checked: the hub's
//! grant for this member, and the other members' nodes and workloads. A
//! record is believed only as far as the hub's allocation backs it: a node
//! slice outside the blocks granted to its member, or an address outside
//! its node's slice, is refused and said so, so a member (or whoever writes
//! in its place) cannot take over another member's addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use weft_api::federation::{HubAllocationSpec, HubState, SiteRecordSpec};

use crate::planner::{Federated, Granted, ObjectKey, RemoteNode, RemoteWorkload};

/// Everything a member read from its hub.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HubView {
    /// The hub's published state (members, exports, timings).
    pub state: Option<HubState>,
    /// Allocations by app.
    pub allocations: BTreeMap<String, HubAllocationSpec>,
    /// Records by (member, app), as found under each member's own place.
    pub records: BTreeMap<(String, String), SiteRecordSpec>,
    /// Last heartbeat of each member (seconds since the epoch).
    pub heartbeats: BTreeMap<String, u64>,
    /// Why the hub could not be read this time (the view is the last good one).
    pub error: Option<String>,
    /// When the view was read (seconds since the epoch). While the hub
    /// cannot be read, members age from then, not from now: an unreadable
    /// hub must not prune anyone.
    pub read_at: u64,
}

/// A member's liveness as seen from the heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Synced within `staleAfterSeconds`.
    Fresh,
    /// Not synced for a while: its nodes stay (its data plane may well be
    /// running), and status says so.
    Stale,
    /// Not synced for `pruneAfterSeconds`: its nodes leave the mesh.
    Pruned,
}

impl HubView {
    /// Liveness of `site` at `now`.
    pub fn liveness(&self, site: &str, now: u64) -> Liveness {
        let Some(state) = &self.state else {
            return Liveness::Fresh;
        };
        let Some(beat) = self.heartbeats.get(site) else {
            return Liveness::Pruned;
        };
        let age = now.saturating_sub(*beat);
        if age >= u64::from(state.prune_after_seconds) {
            Liveness::Pruned
        } else if age >= u64::from(state.stale_after_seconds) {
            Liveness::Stale
        } else {
            Liveness::Fresh
        }
    }

    /// Whether `site` exports `app` according to the hub.
    pub fn exports(&self, site: &str, app: &str) -> bool {
        self.state.as_ref().is_some_and(|s| {
            s.members
                .iter()
                .any(|m| m.site == site && m.exports.iter().any(|x| x == app))
        })
    }
}

fn valid_key(k: &str) -> bool {
    k.len() == 44
        && k.ends_with('=')
        && k[..43]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The federation input of `app` for `member`, at `now`.
pub fn federated(
    member: &str,
    block_slices: u32,
    app: &ObjectKey,
    view: &HubView,
    now: u64,
) -> Federated {
    let name = app.to_string();
    let mut out = Federated {
        member: member.to_string(),
        block_slices,
        hub_error: view.error.clone(),
        ..Default::default()
    };
    if view.state.is_some() && !view.exports(member, &name) {
        out.problems.push((
            "spec.sites".into(),
            format!("the hub does not list {name} among the exports of site {member}"),
        ));
    }
    let Some(alloc) = view.allocations.get(&name) else {
        return out;
    };
    for c in alloc.conflicts.iter().filter(|c| c.site == member) {
        out.problems.push((c.field.clone(), c.message.clone()));
    }
    let Some(range) = alloc
        .address_space
        .as_deref()
        .and_then(|r| r.parse::<Ipv4Net>().ok())
    else {
        return out;
    };
    let npl = alloc.node_prefix_length;
    let blocks_of = |site: &str| -> Vec<Ipv4Net> {
        alloc
            .blocks
            .iter()
            .filter(|b| b.site == site)
            .filter_map(|b| b.cidr.parse::<Ipv4Net>().ok())
            .filter(|b| range.contains(b))
            .collect()
    };
    out.granted = Some(Granted {
        range,
        node_prefix_len: npl,
        blocks: blocks_of(member),
    });
    let mut seen: BTreeSet<Ipv4Net> = BTreeSet::new();
    for ((site, rec_app), rec) in &view.records {
        if site == member || *rec_app != name {
            continue;
        }
        let mut refuse = |why: String| {
            out.problems.push((
                "hub".into(),
                format!("record of site {site} refused: {why}"),
            ));
        };
        if rec.site != *site || rec.app != name {
            refuse(format!("it says site {:?} and app {:?}", rec.site, rec.app));
            continue;
        }
        if !view.exports(site, &name) {
            refuse(format!("the hub does not list {name} among its exports"));
            continue;
        }
        let liveness = view.liveness(site, now);
        if liveness == Liveness::Pruned {
            continue;
        }
        let blocks = blocks_of(site);
        let mut nodes: BTreeMap<&str, RemoteNode> = BTreeMap::new();
        for n in &rec.nodes {
            let slice = match n.slice.parse::<Ipv4Net>() {
                Ok(s) if s.prefix_len() == npl && blocks.iter().any(|b| b.contains(&s)) => s,
                _ => {
                    refuse(format!(
                        "node {} claims slice {:?}, outside the blocks the hub granted it",
                        n.name, n.slice
                    ));
                    continue;
                }
            };
            if !seen.insert(slice) {
                refuse(format!("node {} claims slice {slice} twice", n.name));
                continue;
            }
            let endpoint = n
                .endpoint
                .as_deref()
                .filter(|e| e.parse::<SocketAddrV4>().is_ok())
                .map(String::from);
            let public_key = n
                .public_key
                .as_deref()
                .filter(|k| valid_key(k))
                .map(String::from);
            nodes.insert(
                &n.name,
                RemoteNode {
                    id: format!("{site}/{}", n.name),
                    site: n.site.clone(),
                    endpoint,
                    public_key,
                    slice,
                    lost: n.lost,
                    workloads: Vec::new(),
                },
            );
        }
        for w in &rec.workloads {
            let Some(node) = nodes.get_mut(w.node.as_str()) else {
                continue;
            };
            let address = w
                .address
                .as_deref()
                .and_then(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
                .filter(|a| node.slice.contains(a));
            node.workloads.push(RemoteWorkload {
                name: format!("{site}:{}", w.name),
                labels: w.labels.clone(),
                address,
            });
        }
        out.remote.extend(nodes.into_values());
    }
    out.remote.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Members that are stale (not pruned) at `now`, among those with records.
pub fn stale_members(view: &HubView, now: u64) -> Vec<String> {
    let sites: BTreeSet<&String> = view.records.keys().map(|(s, _)| s).collect();
    sites
        .into_iter()
        .filter(|s| view.liveness(s, now) == Liveness::Stale)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
