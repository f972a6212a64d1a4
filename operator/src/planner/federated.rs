//! Planning a shared app: its range and this member's node slices come from
//! the hub's grant, the other members' nodes join its full mesh as peers,
//! and what this member's nodes offer is exported for them.
//!
//! Until the hub has granted anything, a shared app keeps the slices it
//! already holds and places no new node: a slice picked alone could be
//! another member's. Where this member's range or slice length differs from
//! the shared one, the app stays as it is here (nothing is renumbered) and
//! says why; it federates once they agree.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use weft_api::federation::{RecordNode, RecordWorkload, SharedAppSpec, SiteRecordSpec};

use super::error::{ErrorKind, PlanError};
use super::peers::PeerCandidate;
use super::snapshot::{Federated, Granted, ObjectKey, RemoteNode};
use super::validate::{object_name, ValidApp};

/// How a shared app is planned here.
pub enum Mode<'a> {
    /// The hub's grant applies: slices from these blocks, remote peers in.
    Granted(&'a Granted),
    /// No grant yet: slices already held are kept, nothing new is placed.
    Waiting,
    /// This member disagrees with the shared range or slice length: planned
    /// as a local app, without remote peers, until the user resolves it.
    Apart,
}

/// The mode of `key`, and the range it must use (`None`: no opinion), with
/// the errors that explain it.
pub fn mode<'a>(
    key: &ObjectKey,
    f: &'a Federated,
    v: &ValidApp,
    previous: Option<Ipv4Net>,
    errors: &mut Vec<PlanError>,
) -> (Mode<'a>, Option<Ipv4Net>) {
    let object = object_name("MeshApp", key);
    // Another member's record refused (field `hub`) leaves that member out
    // but this one's mesh whole: it is reported apart (see `refused`).
    for (field, message) in f.problems.iter().filter(|(field, _)| field != "hub") {
        errors.push(PlanError::new(
            ErrorKind::Conflict,
            &object,
            field,
            "FederationConflict",
            message.clone(),
        ));
    }
    let Some(g) = &f.granted else {
        let why = f
            .hub_error
            .as_deref()
            .map(|e| format!(": the hub cannot be read ({e})"))
            .unwrap_or_default();
        errors.push(PlanError::new(
            ErrorKind::Exhausted,
            &object,
            "spec.sites",
            "WaitingForHub",
            format!(
                "shared through a hub as site {}: no range and blocks granted yet{why}",
                f.member
            ),
        ));
        return (Mode::Waiting, None);
    };
    // The slice length first: it does not depend on what this member has
    // recorded, so the same input gives the same verdict pass after pass.
    let here = previous.or(v.explicit_range);
    if v.node_prefix_len != g.node_prefix_len {
        errors.push(PlanError::new(
            ErrorKind::Conflict,
            &object,
            "spec.nodePrefixLength",
            "SharedRangeConflict",
            format!(
                "/{} here, the app's node slices are /{} in the federation; the app is not federated until they agree",
                v.node_prefix_len, g.node_prefix_len
            ),
        ));
        return (Mode::Apart, here);
    }
    if let Some(here) = here.filter(|r| *r != g.range) {
        errors.push(PlanError::new(
            ErrorKind::Conflict,
            &object,
            "spec.addressSpace",
            "SharedRangeConflict",
            format!(
                "this site uses {here}, the range shared through the hub is {}; the app keeps {here} here and is not federated until they agree",
                g.range
            ),
        ));
        return (Mode::Apart, None);
    }
    (Mode::Granted(g), Some(g.range))
}

/// Why records of other members were refused (they are left out).
pub fn refused(f: &Federated) -> Vec<String> {
    f.problems
        .iter()
        .filter(|(field, _)| field == "hub")
        .map(|(_, message)| message.clone())
        .collect()
}

/// Node slices for a shared app: a previous slice stays while `keeps` it,
/// newcomers take the lowest free slice of the first block with room.
/// Nodes left without one are returned second.
pub fn assign_slices(
    blocks: &[Ipv4Net],
    npl: u8,
    nodes: &[String],
    previous: &BTreeMap<String, Ipv4Net>,
    keeps: &dyn Fn(&Ipv4Net) -> bool,
) -> (BTreeMap<String, Ipv4Net>, Vec<String>) {
    let mut used: BTreeSet<Ipv4Net> = BTreeSet::new();
    let mut out = BTreeMap::new();
    for node in nodes {
        if let Some(p) = previous.get(node) {
            if p.prefix_len() == npl && p.trunc() == *p && keeps(p) && used.insert(*p) {
                out.insert(node.clone(), *p);
            }
        }
    }
    let mut free = blocks
        .iter()
        .filter(|b| b.prefix_len() <= npl)
        .flat_map(|b| b.subnets(npl).into_iter().flatten());
    let mut full = Vec::new();
    for node in nodes {
        if out.contains_key(node) {
            continue;
        }
        match free.by_ref().find(|s| !used.contains(s)) {
            Some(s) => {
                used.insert(s);
                out.insert(node.clone(), s);
            }
            None => full.push(node.clone()),
        }
    }
    (out, full)
}

/// The other members' nodes in the sites the app spans here: a member the
/// app lists brings all its nodes (its edge sites too, which this member
/// may not know); other nodes count where their own site is listed.
pub fn remote_in<'a>(f: &'a Federated, v: &'a ValidApp) -> impl Iterator<Item = &'a RemoteNode> {
    f.remote.iter().filter(move |n| {
        let member = n.id.split_once('/').map_or("", |(m, _)| m);
        v.sites.iter().any(|s| s == member || *s == n.site)
    })
}

/// The other members' nodes as peer candidates, by `member/node`.
pub fn remote_candidates<'a>(
    f: &'a Federated,
    v: &'a ValidApp,
) -> impl Iterator<Item = (String, PeerCandidate)> + 'a {
    remote_in(f, v).map(|n| {
        (
            n.id.clone(),
            PeerCandidate {
                public_key: n.public_key.clone(),
                endpoint: n.endpoint.clone(),
                slice: n.slice.to_string(),
                lost: n.lost,
            },
        )
    })
}

/// One placed node of the app here, for the export.
pub struct LocalNode<'a> {
    /// Node name.
    pub name: &'a str,
    /// Its site.
    pub site: &'a str,
    /// `address:port` of the app's port there.
    pub endpoint: Option<String>,
    /// The app's public key there.
    pub public_key: Option<&'a String>,
    /// Its slice.
    pub slice: Ipv4Net,
    /// It stopped reporting.
    pub lost: bool,
    /// The app's workloads there: name, labels, reported address.
    pub workloads: Vec<(String, &'a super::Labels, Option<String>)>,
}

/// What this member exports for a shared app.
pub fn export(
    key: &ObjectKey,
    f: &Federated,
    v: &ValidApp,
    range: Option<Ipv4Net>,
    wanting: usize,
    nodes: Vec<LocalNode<'_>>,
) -> SiteRecordSpec {
    let per_block = usize::try_from(f.block_slices.max(1)).unwrap_or(1);
    let mut out = SiteRecordSpec {
        site: f.member.clone(),
        app: key.to_string(),
        app_spec: SharedAppSpec {
            address_space: v.explicit_range.or(range).map(|r| r.to_string()),
            explicit: v.explicit_range.is_some(),
            node_prefix_length: v.node_prefix_len,
        },
        want_blocks: u32::try_from(wanting.div_ceil(per_block)).unwrap_or(u32::MAX),
        ..Default::default()
    };
    for n in nodes {
        for (name, labels, address) in n.workloads {
            out.workloads.push(RecordWorkload {
                name,
                node: n.name.to_string(),
                address,
                labels: labels.clone(),
            });
        }
        out.nodes.push(RecordNode {
            name: n.name.to_string(),
            site: n.site.to_string(),
            endpoint: n.endpoint,
            public_key: n.public_key.cloned(),
            slice: n.slice.to_string(),
            lost: n.lost,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn slices_come_from_the_blocks_and_previous_ones_stay_only_inside_them() {
        let blocks = [net("10.100.2.0/25"), net("10.100.8.0/25")];
        let nodes: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let previous = BTreeMap::from([
            ("b".to_string(), net("10.100.8.64/26")),
            ("c".to_string(), net("10.100.0.0/26")),
        ]);
        let inside = |s: &Ipv4Net| blocks.iter().any(|b| b.contains(s));
        let (got, full) = assign_slices(&blocks, 26, &nodes, &previous, &inside);
        assert_eq!(got["b"], net("10.100.8.64/26"));
        assert_eq!(got["a"], net("10.100.2.0/26"));
        assert_eq!(
            got["c"],
            net("10.100.2.64/26"),
            "outside every block: moved"
        );
        assert_eq!(got["d"], net("10.100.8.0/26"));
        assert_eq!(full, ["e"]);
    }

    #[test]
    fn without_a_grant_only_held_slices_stay() {
        let range = net("10.100.0.0/16");
        let previous = BTreeMap::from([("a".to_string(), net("10.100.0.0/26"))]);
        let nodes: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let (got, full) = assign_slices(&[], 26, &nodes, &previous, &|s| range.contains(s));
        assert_eq!(got.len(), 1);
        assert_eq!(full, ["b"]);
    }
}
