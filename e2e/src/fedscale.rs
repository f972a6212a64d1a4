//! Federation at scale, planner level (`weft-bench-scale`): S member sites
//! of N nodes each share one app through a hub, every member planned by the
//! real planner and the hub by the real allocator, in memory
//! ([`weft_operator::federation::sim::Federation`]). Members are configured
//! alike (same node names n1..nN in every member, same app spec), as in
//! `operator/tests/federation_plan.rs`.
//!
//! Measured: the wall time of [`Federation::converge`] from nothing on the
//! hub, and its rounds (one round plans every member and allocates once).
//! Then every member's plan is checked against every other's: one slice per
//! node of every member, disjoint across members and inside the app range,
//! and every node peering with all S x N - 1 others (remote ones named
//! `member/node`) with that node's key and slice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ipnet::Ipv4Net;
use weft_api::federation::DEFAULT_BLOCK_SLICES;
use weft_api::meshhub::HubMember;
use weft_api::{MeshAppSpec, MeshSiteSpec, SiteKind};
use weft_operator::federation::allocate::HubSettings;
use weft_operator::federation::sim::{Federation, Member};
use weft_operator::planner::snapshot::{DEFAULT_APP_PREFIX_LEN, DEFAULT_POOL};
use weft_operator::planner::{NodeInfo, ObjectKey, Plan, Snapshot};

/// The shared app.
pub const APP: &str = "demo/web";
/// Its range: room for 4,096 node slices of /26 (50 x 20 nodes take 1,200
/// with blocks of 8).
pub const RANGE: &str = "10.96.0.0/14";
/// Sizes `weft-bench-scale` runs by default.
pub const DEFAULT_SIZES: &str = "10x20,25x20,50x20";
/// Sizes of `--quick`.
pub const QUICK_SIZES: &str = "3x5,6x5";
/// Rounds after which a federation that still changes counts as not converging.
pub const MAX_ROUNDS: usize = 20;

/// Sites x nodes per site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FedSize {
    /// Member sites.
    pub sites: usize,
    /// Nodes per site.
    pub nodes: usize,
}

impl FedSize {
    /// Nodes in the whole federation.
    pub fn total(&self) -> usize {
        self.sites * self.nodes
    }
}

impl fmt::Display for FedSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.sites, self.nodes)
    }
}

impl FromStr for FedSize {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (a, b) = s
            .trim()
            .split_once('x')
            .with_context(|| format!("{s:?}: expected SITESxNODES"))?;
        let size = FedSize {
            sites: a.parse().with_context(|| format!("{s:?}: sites"))?,
            nodes: b.parse().with_context(|| format!("{s:?}: nodes"))?,
        };
        ensure!(
            size.sites >= 2 && size.nodes >= 1 && size.sites <= 250 && size.nodes <= 250,
            "{s:?}: 2-250 sites of 1-250 nodes"
        );
        Ok(size)
    }
}

/// Parses `SITESxNODES,...`; empty gives none.
pub fn parse_sizes(s: &str) -> Result<Vec<FedSize>> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(str::parse)
        .collect()
}

fn site_name(i: usize) -> String {
    format!("site{i:03}")
}

/// A stand-in public key, distinct per member and node.
pub fn key(member: &str, node: &str) -> String {
    let seed = format!("K{member}x{node}");
    format!("{seed:A<43}=")
}

fn app_spec(sites: &[String]) -> MeshAppSpec {
    MeshAppSpec {
        sites: sites.to_vec(),
        address_space: Some(RANGE.into()),
        node_prefix_length: Some(26),
        ..Default::default()
    }
}

/// Member `index` (1-based) named `name`: nodes n1..nN at 192.0.<index>.<i>,
/// one workload of the app on each, every other site Remote through the hub.
fn member(index: usize, name: &str, nodes: usize, spec: MeshAppSpec) -> Member {
    let mut s = Snapshot::default();
    for site in &spec.sites {
        let kind = if site == name {
            SiteKind::Local
        } else {
            SiteKind::Remote
        };
        let hub = (kind == SiteKind::Remote).then(|| "hub".to_string());
        s.sites.insert(
            site.clone(),
            MeshSiteSpec {
                kind,
                hub,
                ..Default::default()
            },
        );
    }
    s.apps.insert(ObjectKey::parse(APP), spec);
    for i in 1..=nodes {
        let node = format!("n{i}");
        s.nodes.insert(
            node.clone(),
            NodeInfo {
                site: name.into(),
                address: format!("192.0.{index}.{i}"),
                lost: false,
            },
        );
        let labels = BTreeMap::from([("weft.dev/app".to_string(), "web".to_string())]);
        s.add_workload(&node, ObjectKey::new("demo", format!("web-{i}")), labels);
        s.add_public_key(&node, ObjectKey::parse(APP), key(name, &node));
    }
    Member {
        snapshot: s,
        plan: Plan::default(),
    }
}

/// The federation of `size`, nothing on the hub yet (the hub's settings are
/// the shipped defaults: pool, range size, blocks of 8 slices).
pub fn build(size: FedSize) -> Federation {
    let names: Vec<String> = (1..=size.sites).map(site_name).collect();
    let hub = HubSettings {
        members: names
            .iter()
            .map(|s| HubMember {
                site: s.clone(),
                exports: vec![APP.into()],
            })
            .collect(),
        pool: DEFAULT_POOL.parse().expect("default pool"),
        app_prefix_len: DEFAULT_APP_PREFIX_LEN,
        block_slices: DEFAULT_BLOCK_SLICES,
    };
    let mut f = Federation::new(hub);
    for (i, n) in names.iter().enumerate() {
        f.members
            .insert(n.clone(), member(i + 1, n, size.nodes, app_spec(&names)));
    }
    f
}

/// What one size measured.
#[derive(Clone, Debug)]
pub struct FedRun {
    /// The size.
    pub size: FedSize,
    /// Building the members' snapshots (not part of the figure).
    pub setup: Duration,
    /// `converge` from nothing on the hub.
    pub converge: Duration,
    /// Rounds it took (the last one changes nothing).
    pub rounds: usize,
    /// One more round once converged (plans every member again).
    pub extra_round: Duration,
    /// Peer entries checked (S x N x (S x N - 1)).
    pub peers_checked: usize,
}

/// Builds, converges and checks `size`.
pub fn run(size: FedSize) -> Result<FedRun> {
    let t = Instant::now();
    let mut f = build(size);
    let setup = t.elapsed();
    let t = Instant::now();
    let rounds = f
        .converge(MAX_ROUNDS)
        .with_context(|| format!("{size}: not converged after {MAX_ROUNDS} rounds"))?;
    let converge = t.elapsed();
    let peers_checked = check(&f, size)?;
    let before: Vec<Plan> = f.members.values().map(|m| m.plan.clone()).collect();
    let t = Instant::now();
    ensure!(
        !f.round(),
        "{size}: a round after convergence changed the hub"
    );
    let extra_round = t.elapsed();
    let after: Vec<Plan> = f.members.values().map(|m| m.plan.clone()).collect();
    ensure!(
        before == after,
        "{size}: a round after convergence changed a plan"
    );
    Ok(FedRun {
        size,
        setup,
        converge,
        rounds,
        extra_round,
        peers_checked,
    })
}

/// Checks that every member's plan agrees with every other's; returns the
/// peer entries checked.
pub fn check(f: &Federation, size: FedSize) -> Result<usize> {
    let app = ObjectKey::parse(APP);
    let range: Ipv4Net = RANGE.parse().expect("range");
    // (member, node) -> slice, from each member's own plan.
    let mut slices: BTreeMap<(String, String), Ipv4Net> = BTreeMap::new();
    for (m, member) in &f.members {
        let out = member
            .plan
            .apps
            .get(&app)
            .with_context(|| format!("{m}: no outcome for {APP}"))?;
        ensure!(out.errors.is_empty(), "{m}: {:?}", out.errors);
        ensure!(
            out.nodes.len() == size.nodes,
            "{m}: {} local nodes placed, want {}",
            out.nodes.len(),
            size.nodes
        );
        ensure!(
            out.remote_nodes.len() == size.total() - size.nodes,
            "{m}: {} remote nodes, want {}",
            out.remote_nodes.len(),
            size.total() - size.nodes
        );
        for (node, spec) in &member.plan.nodes {
            let att = spec
                .apps
                .iter()
                .find(|a| a.app == APP)
                .with_context(|| format!("{m}/{node}: not attached"))?;
            let slice: Ipv4Net = att
                .node_slice
                .parse()
                .with_context(|| format!("{m}/{node}: slice {:?}", att.node_slice))?;
            ensure!(
                range.contains(&slice),
                "{m}/{node}: {slice} outside {RANGE}"
            );
            slices.insert((m.clone(), node.clone()), slice);
        }
    }
    ensure!(
        slices.len() == size.total(),
        "{} nodes placed in all, want {}",
        slices.len(),
        size.total()
    );
    let distinct: BTreeSet<Ipv4Net> = slices.values().copied().collect();
    ensure!(
        distinct.len() == size.total(),
        "{} distinct slices for {} nodes",
        distinct.len(),
        size.total()
    );
    // Sorted, adjacent slices must not overlap (different prefix lengths too).
    let mut sorted: Vec<Ipv4Net> = distinct.into_iter().collect();
    sorted.sort_by_key(|n| (n.network(), n.prefix_len()));
    for w in sorted.windows(2) {
        ensure!(
            u32::from(w[0].broadcast()) < u32::from(w[1].network()),
            "{} and {} overlap",
            w[0],
            w[1]
        );
    }
    let mut checked = 0;
    for (m, member) in &f.members {
        for (node, spec) in &member.plan.nodes {
            let att = spec
                .apps
                .iter()
                .find(|a| a.app == APP)
                .expect("checked above");
            ensure!(
                att.peers.len() == size.total() - 1,
                "{m}/{node}: {} peers, want {}",
                att.peers.len(),
                size.total() - 1
            );
            let by_id: HashMap<&str, _> = att.peers.iter().map(|p| (p.node.as_str(), p)).collect();
            for ((om, onode), oslice) in &slices {
                if (om, onode) == (m, node) {
                    continue;
                }
                let id = if om == m {
                    onode.clone()
                } else {
                    format!("{om}/{onode}")
                };
                let Some(p) = by_id.get(id.as_str()) else {
                    bail!("{m}/{node} lacks peer {id}");
                };
                ensure!(
                    p.public_key == key(om, onode),
                    "{m}/{node}: peer {id} has key {}",
                    p.public_key
                );
                ensure!(
                    p.allowed_ips == [oslice.to_string()],
                    "{m}/{node}: peer {id} allows {:?}, its slice is {oslice}",
                    p.allowed_ips
                );
                checked += 1;
            }
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_federation_converges_and_agrees() {
        let r = run("3x4".parse().unwrap()).unwrap();
        assert_eq!(r.peers_checked, 12 * 11);
        assert!(r.rounds <= 6, "{r:?}");
    }

    #[test]
    fn a_wrong_plan_fails_the_check() {
        let size: FedSize = "2x2".parse().unwrap();
        let mut f = build(size);
        f.converge(MAX_ROUNDS).unwrap();
        let m = f.members.get_mut("site001").unwrap();
        let spec = m.plan.nodes.get_mut("n1").unwrap();
        let att = spec.apps.iter_mut().find(|a| a.app == APP).unwrap();
        att.peers.pop();
        assert!(check(&f, size).is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(
            parse_sizes("50x20, 3x5").unwrap(),
            [
                FedSize {
                    sites: 50,
                    nodes: 20
                },
                FedSize { sites: 3, nodes: 5 }
            ]
        );
        assert!(parse_sizes("1x5").is_err());
        assert!(parse_sizes("").unwrap().is_empty());
    }
}
