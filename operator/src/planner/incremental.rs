//! Incremental planning: a change costs work in proportion to the apps it
//! touches, not to the size of the cluster. The full [`plan`] stays the
//! reference; this module only decides which apps a change can affect and
//! plans those again, with the same [`plan`], against the rest of the
//! cluster held fixed.
//!
//! A pass learns what changed from the [`Journal`] of edits made to the last
//! input in place ([`Incremental::edit`]): a change costs work in proportion
//! to its keys, with no copy of the snapshot and no diff of it. A caller that
//! hands a whole new snapshot instead gets the journal a diff would write.
//!
//! ```text
//!  edits (journal) ─► changed keys ─► dirty apps ─► closure (claims, policies)
//!                                                                │
//!  last Plan ◄─ merge (nodes of the dirty apps) ◄─ plan(sub-snapshot + Reserved)
//! ```
//!
//! Why the two agree: every allocation is sticky (ids, ranges, slices and
//! ports stay with what the previous MeshNode specs and statuses say), so
//! the apps a change cannot reach plan exactly as before, and the ones it can
//! reach see the others only through what they hold ([`Reserved`]). Where
//! that argument does not hold (cluster-wide changes: sites, hubs, config;
//! cross-app policies; exhausted pools or ports; an oversized MeshNode; the
//! previous specs not being the last plan), a pass plans the whole cluster,
//! and says why. The property test in `tests` applies random change
//! sequences and checks every incremental result against a full plan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::Ipv4Net;
use weft_api::{MeshAppSpec, MeshNodeSpec, MeshPolicySpec};

use super::snapshot::Labels;
use super::{membership, naming, plan, validate, ObjectKey, Plan, Snapshot};
use journal::{changed, in_namespace, Before, View};

mod journal;
pub use journal::{Edit, Journal};

/// Errors whose cause lies between apps (a shared pool, a node's ports or
/// size): while any app has one, a change elsewhere can resolve it, so
/// passes plan the whole cluster.
const CLUSTER_WIDE_REASONS: [&str; 4] = [
    "PoolExhausted",
    "AddressSpaceConflict",
    "ListenPortsExhausted",
    "MeshNodeTooLarge",
];

/// Above this share of the apps (and this many) a pass plans everything:
/// the sub-snapshot would cost about as much.
const MAX_DIRTY_SHARE: usize = 4;
const MIN_DIRTY_FOR_FULL: usize = 64;

/// How a pass was planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassKind {
    /// Nothing the plan depends on changed.
    Unchanged,
    /// Only these apps were planned again, on these nodes.
    Partial {
        /// Apps planned again.
        apps: usize,
        /// Nodes whose spec was rebuilt.
        nodes: usize,
    },
    /// The whole cluster, and why.
    Full(String),
}

/// Counters over the life of a planner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Passes whose input had not changed.
    pub unchanged: u64,
    /// Passes that planned only the apps a change touched.
    pub partial: u64,
    /// Passes that planned the whole cluster.
    pub full: u64,
}

/// What one pass produced.
pub struct Pass {
    /// The plan of the whole cluster.
    pub plan: Arc<Plan>,
    /// How it was made.
    pub kind: PassKind,
    /// Nodes whose spec may differ from the previous plan's (`None`: any).
    pub changed_nodes: Option<BTreeSet<String>>,
    /// Apps whose outcome may differ from the previous plan's (`None`: any).
    pub changed_apps: Option<BTreeSet<ObjectKey>>,
}

/// The last plan and what it was planned from, with the facts that decide
/// whether the next change can be planned alone.
struct Last {
    input: Snapshot,
    /// Edits to `input` since `plan` was made: what they replaced.
    journal: Journal,
    plan: Arc<Plan>,
    /// App id → app.
    ids: BTreeMap<String, ObjectKey>,
    /// Apps whose id is not their first candidate (a hash collision).
    odd_ids: BTreeSet<ObjectKey>,
    /// Apps with a [`CLUSTER_WIDE_REASONS`] error.
    trouble: BTreeSet<ObjectKey>,
    /// Apps whose range came from the pool and is not recorded as theirs
    /// yet: a full plan would allocate them again, in name order among the
    /// newcomers, so they are planned with any other newcomer.
    unsettled: BTreeSet<ObjectKey>,
}

/// The planner that keeps its last plan (see the module doc).
#[derive(Default)]
pub struct Incremental {
    last: Option<Last>,
    stats: Stats,
}

/// Where a pass finds the stored MeshNode specs.
#[derive(Clone, Copy)]
enum Stored<'a> {
    /// In the snapshot's `previous_specs`.
    InSnapshot,
    /// In the caller's store, by node; the snapshot's `previous_specs` stays
    /// empty, and the specs are copied only when the whole cluster is planned.
    /// With the nodes whose stored spec may have changed since the last
    /// pass, when the caller can tell (only those are compared).
    Store(
        &'a BTreeMap<String, &'a MeshNodeSpec>,
        Option<&'a BTreeSet<String>>,
    ),
}

impl<'a> Stored<'a> {
    fn get<'b>(&self, s: &'b Snapshot, node: &str) -> Option<&'b MeshNodeSpec>
    where
        'a: 'b,
    {
        match self {
            Stored::InSnapshot => s.previous_specs.get(node),
            Stored::Store(m, _) => m.get(node).copied(),
        }
    }

    /// Nodes whose stored spec is not `planned`'s.
    fn stale(&self, s: &Snapshot, planned: &BTreeMap<String, MeshNodeSpec>) -> BTreeSet<String> {
        match self {
            Stored::InSnapshot => diff_keys(&s.previous_specs, planned).into_iter().collect(),
            Stored::Store(m, None) => m
                .keys()
                .chain(planned.keys())
                .filter(|n| m.get(*n).copied() != planned.get(*n))
                .cloned()
                .collect(),
            Stored::Store(m, Some(hint)) => {
                let differs = |n: &&String| m.get(*n).copied() != planned.get(*n);
                let mut out: BTreeSet<String> = hint.iter().filter(differs).cloned().collect();
                if !m.keys().eq(planned.keys()) {
                    out.extend(
                        m.keys()
                            .filter(|n| !planned.contains_key(*n))
                            .chain(planned.keys().filter(|n| !m.contains_key(*n)))
                            .cloned(),
                    );
                }
                out
            }
        }
    }
}

impl Incremental {
    /// Plans `s` (whose `previous_specs` are the stored specs), reusing the
    /// last plan where the change does not reach.
    pub fn plan(&mut self, s: Snapshot) -> Pass {
        self.plan_whole(s, Stored::InSnapshot)
    }

    /// [`Incremental::plan`] for a caller that holds the stored specs
    /// itself (the Kubernetes store): `s.previous_specs` is left empty and
    /// `stored` read in place, so a pass copies no spec it does not change.
    ///
    /// `changed`, when the caller can tell, holds the nodes whose stored
    /// spec may differ from what it was at the end of the last pass (read
    /// again, written by someone else, a write that failed): only those are
    /// compared with the last plan. `None` compares every node.
    pub fn plan_stored(
        &mut self,
        s: Snapshot,
        stored: &BTreeMap<String, &MeshNodeSpec>,
        changed: Option<&BTreeSet<String>>,
    ) -> Pass {
        self.plan_whole(s, Stored::Store(stored, changed))
    }

    /// The last input, to edit in place before [`Incremental::plan_edited`];
    /// `None` before a first plan.
    pub fn edit(&mut self) -> Option<Edit<'_>> {
        let last = self.last.as_mut()?;
        Some(Edit::new(&mut last.input, &mut last.journal))
    }

    /// [`Incremental::plan_stored`] of the last input as edited since;
    /// `None` before a first plan.
    pub fn plan_edited(
        &mut self,
        stored: &BTreeMap<String, &MeshNodeSpec>,
        changed: Option<&BTreeSet<String>>,
    ) -> Option<Pass> {
        let last = self.last.take()?;
        Some(self.run(last, Stored::Store(stored, changed)))
    }

    /// A whole new input: what it changes is logged as edits would be.
    fn plan_whole(&mut self, s: Snapshot, stored: Stored<'_>) -> Pass {
        let Some(mut last) = self.last.take() else {
            return self.full(s, "first pass".into(), stored);
        };
        last.journal.record_between(&last.input, &s);
        last.input = s;
        self.run(last, stored)
    }

    fn run(&mut self, mut last: Last, stored: Stored<'_>) -> Pass {
        let journal = std::mem::take(&mut last.journal);
        let Changes {
            apps: dirty,
            nodes: nodes_changed,
            recorded,
            stale,
        } = match changes(&last, &journal, stored) {
            Ok(c) => c,
            Err(why) => return self.full(last.input, why, stored),
        };
        if dirty.is_empty() && !nodes_changed {
            self.stats.unchanged += 1;
            let plan = last.plan.clone();
            for key in &recorded {
                last.note(key);
            }
            self.last = Some(last);
            return Pass {
                plan,
                kind: PassKind::Unchanged,
                changed_nodes: Some(BTreeSet::new()),
                changed_apps: Some(BTreeSet::new()),
            };
        }
        match partial(&mut last, &journal, dirty, stale, stored) {
            Ok((apps, nodes)) => {
                for key in &recorded {
                    last.note(key);
                }
                self.stats.partial += 1;
                let plan = last.plan.clone();
                self.last = Some(last);
                Pass {
                    plan,
                    kind: PassKind::Partial {
                        apps: apps.len(),
                        nodes: nodes.len(),
                    },
                    changed_nodes: Some(nodes),
                    changed_apps: Some(apps),
                }
            }
            Err(why) => self.full(last.input, why, stored),
        }
    }

    fn full(&mut self, mut s: Snapshot, why: String, stored: Stored<'_>) -> Pass {
        self.stats.full += 1;
        // The old plan goes first: two whole plans at once would raise the
        // peak memory of every full pass.
        self.last = None;
        if let Stored::Store(m, _) = stored {
            s.previous_specs = m.iter().map(|(n, v)| (n.clone(), (*v).clone())).collect();
        }
        let plan = Arc::new(plan(&s));
        if let Stored::Store(..) = stored {
            s.previous_specs = BTreeMap::new();
        }
        let last = Last::new(s, plan.clone());
        self.last = Some(last);
        Pass {
            plan,
            kind: PassKind::Full(why),
            changed_nodes: None,
            changed_apps: None,
        }
    }

    /// The last plan as an unchanged pass, when the caller knows its input
    /// is the last one (nothing to diff); `None` before a first plan.
    pub fn unchanged(&mut self) -> Option<Pass> {
        let plan = self.last.as_ref()?.plan.clone();
        self.stats.unchanged += 1;
        Some(Pass {
            plan,
            kind: PassKind::Unchanged,
            changed_nodes: Some(BTreeSet::new()),
            changed_apps: Some(BTreeSet::new()),
        })
    }

    /// The snapshot of the last pass.
    pub fn input(&self) -> Option<&Snapshot> {
        self.last.as_ref().map(|l| &l.input)
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

impl Last {
    fn new(input: Snapshot, plan: Arc<Plan>) -> Self {
        let mut last = Last {
            input,
            journal: Journal::default(),
            plan,
            ids: BTreeMap::new(),
            odd_ids: BTreeSet::new(),
            trouble: BTreeSet::new(),
            unsettled: BTreeSet::new(),
        };
        let keys: Vec<ObjectKey> = last.plan.apps.keys().cloned().collect();
        for key in keys {
            last.note(&key);
        }
        last
    }

    /// Records the facts of one app of the current plan.
    fn note(&mut self, key: &ObjectKey) {
        self.odd_ids.remove(key);
        self.trouble.remove(key);
        self.unsettled.remove(key);
        let Some(out) = self.plan.apps.get(key) else {
            return;
        };
        self.ids.insert(out.app_id.clone(), key.clone());
        if out.app_id != naming::app_id_candidate(key, 0) {
            self.odd_ids.insert(key.clone());
        }
        if out
            .errors
            .iter()
            .any(|e| CLUSTER_WIDE_REASONS.contains(&e.reason.as_str()))
        {
            self.trouble.insert(key.clone());
        }
        if let Some(range) = &out.address_space {
            let recorded = self.input.previous_ranges.get(key) == Some(range);
            let explicit = out
                .accepted_spec
                .as_ref()
                .or(out.still_enforced.as_ref().map(|e| &e.spec))
                .and_then(|spec| spec.address_space.as_deref())
                .and_then(|a| validate::parse_cidr(a).ok())
                .is_some_and(|n| n.to_string() == *range);
            if !recorded && !explicit {
                self.unsettled.insert(key.clone());
            }
        }
    }

    fn forget(&mut self, key: &ObjectKey) {
        if let Some(out) = self.plan.apps.get(key) {
            if self.ids.get(&out.app_id) == Some(key) {
                self.ids.remove(&out.app_id);
            }
        }
        self.odd_ids.remove(key);
        self.trouble.remove(key);
        self.unsettled.remove(key);
    }
}

/// Keys present in either map whose values differ.
fn diff_keys<'a, K: Ord + Clone, V: PartialEq>(
    a: &'a BTreeMap<K, V>,
    b: &'a BTreeMap<K, V>,
) -> Vec<K> {
    if a == b {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (k, v) in a {
        if b.get(k) != Some(v) {
            out.push(k.clone());
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(k.clone());
        }
    }
    out
}

/// The registered workloads of a node (an unregistered node's do not count).
fn registered<'a, V: View>(v: &'a V, node: &str) -> Option<&'a BTreeMap<ObjectKey, Labels>> {
    v.node(node)?;
    v.workloads(node)
}

/// Apps of the workload's namespace that claim it in `v`.
fn claimants<V: View>(v: &V, wl: &ObjectKey, labels: &Labels) -> Vec<ObjectKey> {
    v.apps_in(&wl.namespace)
        .into_iter()
        .filter(|(k, spec)| {
            selecting(v, k, spec).any(|sp| membership::claims(k, sp, &wl.namespace, labels))
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// The specs an app may claim workloads with: its current one and the one
/// in force before (a rejected edit keeps the last accepted spec).
fn selecting<'a, V: View>(
    v: &'a V,
    key: &ObjectKey,
    spec: &'a MeshAppSpec,
) -> impl Iterator<Item = &'a MeshAppSpec> {
    std::iter::once(spec).chain(v.previous_app(key).map(|p| &p.spec))
}

/// Apps that a policy spec ties together: its own, and any other app a
/// peer names (a cross-app policy).
fn policy_apps(key: &ObjectKey, spec: &MeshPolicySpec) -> (ObjectKey, BTreeSet<ObjectKey>) {
    let own = ObjectKey::new(&key.namespace, &spec.app);
    let mut others = BTreeSet::new();
    for rule in spec
        .ingress
        .iter()
        .flatten()
        .chain(spec.egress.iter().flatten())
    {
        for peer in &rule.peers {
            if let Some(app) = &peer.app {
                let other = validate::peer_app_key(&key.namespace, app);
                if other != own {
                    others.insert(other);
                }
            }
        }
    }
    (own, others)
}

/// The object an input error is about: `Ok(Some(app))`, `Ok(None)` for a
/// policy (its apps come from the policy diff), `Err` for anything else.
fn error_object(object: &str) -> Result<Option<ObjectKey>, String> {
    if let Some(key) = object.strip_prefix("MeshApp ") {
        Ok(Some(ObjectKey::parse(key)))
    } else if object.starts_with("MeshPolicy ") {
        Ok(None)
    } else {
        Err(format!("{object} changed"))
    }
}

/// The apps a change from `last` to `s` can affect, or why the whole
/// cluster must be planned.
/// What changed since the last pass.
struct Changes {
    /// Apps to plan again.
    apps: BTreeSet<ObjectKey>,
    /// A node itself changed, or a hub link (sites and node errors are
    /// rebuilt even when no app is).
    nodes: bool,
    /// Apps whose status now records what the last plan gave them (range,
    /// accepted spec): nothing to plan, only their facts to update.
    recorded: Vec<ObjectKey>,
    /// Nodes whose stored spec is not the last plan's.
    stale: BTreeSet<String>,
}

fn changes(last: &Last, j: &Journal, stored: Stored<'_>) -> Result<Changes, String> {
    let s = &last.input;
    let old = Before { s, j };
    if j.config.as_ref().is_some_and(|c| *c != s.config) {
        return Err("planner settings changed".into());
    }
    if changed(&j.sites, &s.sites).next().is_some()
        || changed(&j.previous_sites, &s.previous_sites)
            .next()
            .is_some()
    {
        return Err("a MeshSite changed".into());
    }
    if changed(&j.hubs, &s.hubs).next().is_some() {
        return Err("a MeshHub changed".into());
    }
    if changed(&j.node_errors, &s.node_errors).next().is_some() {
        return Err("a node registration changed".into());
    }
    if !s.reserved.ranges.is_empty() || !s.reserved.ports.is_empty() {
        return Err("the snapshot holds reservations".into());
    }
    // Stored specs that are not the last plan (a write failed, or the
    // store has not seen it yet): every app on such a node plans again
    // from what is stored, as a full plan would.
    let mut dirty: BTreeSet<ObjectKey> = BTreeSet::new();
    let stale = stored.stale(s, &last.plan.nodes);
    if !stale.is_empty() {
        if stale.len() > MIN_DIRTY_FOR_FULL && stale.len() * MAX_DIRTY_SHARE > s.nodes.len() {
            return Err(format!(
                "{} stored MeshNode specs are not the last plan",
                stale.len()
            ));
        }
        for node in &stale {
            for spec in [stored.get(s, node), last.plan.nodes.get(node)]
                .into_iter()
                .flatten()
            {
                dirty.extend(spec.apps.iter().map(|a| ObjectKey::parse(&a.app)));
            }
        }
    }
    let error_objects: Vec<&String> = changed(&j.input_errors, &s.input_errors).collect();
    for object in &error_objects {
        if let Some(app) = error_object(object)? {
            dirty.insert(app);
        }
    }
    dirty.extend(changed(&j.apps, &s.apps).cloned());
    // A shared app's imports reach only that app: remote peers and
    // workloads are its own, and cross-app flows stay within the member.
    dirty.extend(changed(&j.federation, &s.federation).cloned());
    // A status that now records what the plan gave (an accepted spec, a
    // range) changes nothing a full plan would do: the app becomes an
    // incumbent of what it already has.
    let mut recorded = Vec::new();
    for key in changed(&j.previous_apps, &s.previous_apps) {
        let accepted = last
            .plan
            .apps
            .get(key)
            .and_then(|o| o.accepted_spec.as_ref());
        if accepted.is_some() && s.previous_apps.get(key).map(|p| &p.spec) == accepted {
            recorded.push(key.clone());
        } else {
            dirty.insert(key.clone());
        }
    }
    for key in changed(&j.previous_ranges, &s.previous_ranges) {
        let planned = last
            .plan
            .apps
            .get(key)
            .and_then(|o| o.address_space.as_ref());
        if planned.is_some() && s.previous_ranges.get(key) == planned {
            recorded.push(key.clone());
        } else {
            dirty.insert(key.clone());
        }
    }

    // Policies: the apps they apply to. Cross-app ones tie apps together
    // through transit placements and links: planned whole.
    let mut policies: Vec<ObjectKey> = changed(&j.policies, &s.policies).cloned().collect();
    for key in changed(&j.previous_policies, &s.previous_policies) {
        let accepted = last
            .plan
            .policies
            .get(key)
            .and_then(|o| o.accepted_spec.as_ref());
        if accepted.is_none() || s.previous_policies.get(key).map(|p| &p.spec) != accepted {
            policies.push(key.clone());
        }
    }
    for object in &error_objects {
        if let Some(key) = object.strip_prefix("MeshPolicy ") {
            policies.push(ObjectKey::parse(key));
        }
    }
    for key in &policies {
        let specs = [
            old.policy(key),
            s.policies.get(key),
            old.previous_policy(key).map(|p| &p.spec),
            s.previous_policies.get(key).map(|p| &p.spec),
        ];
        for spec in specs.into_iter().flatten() {
            let (own, others) = policy_apps(key, spec);
            if !others.is_empty() {
                return Err(format!("cross-app MeshPolicy {key} changed"));
            }
            dirty.insert(own);
        }
    }

    // Nodes: the apps on a node whose address or state changed.
    let changed_nodes: Vec<&String> = changed(&j.nodes, &s.nodes).collect();
    if changed_nodes.iter().any(|n| {
        let (a, b) = (old.node(n), s.nodes.get(*n));
        a.is_none() || b.is_none() || a.map(super::node_site) != b.map(super::node_site)
    }) {
        // A node came, left or moved: the set of sites with nodes may differ.
        let old_sites: BTreeSet<&str> = old
            .node_names()
            .into_iter()
            .filter_map(|n| old.node(n))
            .map(super::node_site)
            .collect();
        let new_sites: BTreeSet<&str> = s.nodes.values().map(super::node_site).collect();
        if old_sites != new_sites {
            return Err("the set of sites with nodes changed".into());
        }
    }
    for node in &changed_nodes {
        if let (Some(a), Some(b)) = (old.node(node), s.nodes.get(*node)) {
            if super::node_site(a) != super::node_site(b) {
                return Err(format!("node {node} moved to another site"));
            }
        }
        if let Some(spec) = last.plan.nodes.get(*node) {
            dirty.extend(spec.apps.iter().map(|a| ObjectKey::parse(&a.app)));
        }
        // A node that registers or leaves brings or takes its workloads:
        // the workload diff below sees them through `registered`.
    }

    // Workloads: every app that claims one that changed, before or now.
    let nodes: BTreeSet<&String> = j.workloads.keys().chain(j.nodes.keys()).collect();
    static NONE: BTreeMap<ObjectKey, Labels> = BTreeMap::new();
    for node in nodes {
        let (a, b) = (
            registered(&old, node).unwrap_or(&NONE),
            registered(s, node).unwrap_or(&NONE),
        );
        for wl in diff_keys(a, b) {
            if let Some(labels) = a.get(&wl) {
                dirty.extend(claimants(&old, &wl, labels));
            }
            if let Some(labels) = b.get(&wl) {
                dirty.extend(claimants(s, &wl, labels));
            }
        }
    }
    let none = BTreeMap::new();
    for node in changed(&j.workload_addresses, &s.workload_addresses) {
        let a = j
            .workload_addresses
            .get(node)
            .and_then(Option::as_ref)
            .unwrap_or(&none);
        let b = s.workload_addresses.get(node).unwrap_or(&none);
        for wl in diff_keys(a, b) {
            if let Some(labels) = registered(s, node).and_then(|w| w.get(&wl)) {
                dirty.extend(claimants(s, &wl, labels));
            }
        }
    }

    // Keys.
    for (_, app) in changed(&j.public_keys, &s.public_keys) {
        dirty.insert(app.clone());
    }
    let hub_links = changed(&j.hub_links, &s.hub_links).next().is_some();
    Ok(Changes {
        apps: dirty,
        // How a hub and its members look (a heartbeat every few seconds)
        // shows only in site outcomes, which every partial pass rebuilds.
        nodes: !changed_nodes.is_empty() || !stale.is_empty() || hub_links,
        recorded,
        stale,
    })
}

/// The sub-snapshot of the dirty apps (closed over shared workloads and
/// policies), the nodes it touches, and what the rest of the cluster holds.
struct Sub {
    snapshot: Snapshot,
    apps: BTreeSet<ObjectKey>,
    nodes: BTreeSet<String>,
}

/// Grows `dirty` until every app it holds competes only with apps it holds
/// (for a workload, or through a policy), and gathers what they need.
fn sub_snapshot(
    last: &Last,
    journal: &Journal,
    mut dirty: BTreeSet<ObjectKey>,
    stale: BTreeSet<String>,
    stored: Stored<'_>,
) -> Result<Sub, String> {
    let s = &last.input;
    let old = Before { s, j: journal };
    // Cross-app policies (current or in force) tie apps together.
    let mut crossing: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut policies_of: BTreeMap<ObjectKey, BTreeSet<ObjectKey>> = BTreeMap::new();
    for (key, spec) in s
        .policies
        .iter()
        .chain(s.previous_policies.iter().map(|(k, p)| (k, &p.spec)))
    {
        let (own, others) = policy_apps(key, spec);
        if !others.is_empty() {
            crossing.insert(own.clone());
            crossing.extend(others);
        }
        policies_of.entry(own).or_default().insert(key.clone());
    }

    // Closure: the claimants of every workload a dirty app claims (now or
    // before), and the apps of every policy of a dirty app.
    let mut queue: Vec<ObjectKey> = dirty.iter().cloned().collect();
    let mut policies: BTreeSet<ObjectKey> = BTreeSet::new();
    let mut claimed: BTreeMap<ObjectKey, Vec<(String, ObjectKey)>> = BTreeMap::new();
    let mut newcomer = false;
    loop {
        let Some(app) = queue.pop() else {
            // Newcomers to the pool are allocated in name order with every
            // app whose pool range is not recorded yet: those join.
            newcomer = newcomer || dirty.iter().any(|k| is_newcomer(last, s, k));
            if newcomer && !last.unsettled.is_subset(&dirty) {
                for k in &last.unsettled {
                    if dirty.insert(k.clone()) {
                        queue.push(k.clone());
                    }
                }
                continue;
            }
            break;
        };
        if crossing.contains(&app) {
            return Err(format!("MeshApp {app} is in a cross-app policy"));
        }
        claimed_in(&old, &app, &mut dirty, &mut queue);
        let found = claimed_in(s, &app, &mut dirty, &mut queue);
        claimed.insert(app.clone(), found);
        for policy in policies_of.get(&app).into_iter().flatten() {
            policies.insert(policy.clone());
            for spec in [
                s.policies.get(policy),
                s.previous_policies.get(policy).map(|p| &p.spec),
            ]
            .into_iter()
            .flatten()
            {
                let (own, _) = policy_apps(policy, spec);
                if dirty.insert(own.clone()) {
                    queue.push(own);
                }
            }
        }
        if dirty.len() > MIN_DIRTY_FOR_FULL
            && dirty.len() * MAX_DIRTY_SHARE > s.apps.len().max(old.app_count())
        {
            return Err(format!("{} apps changed", dirty.len()));
        }
    }
    // Nodes: where the apps were and where their workloads are.
    let mut nodes: BTreeSet<String> = stale;
    for app in &dirty {
        if let Some(out) = last.plan.apps.get(app) {
            nodes.extend(out.nodes.iter().cloned());
        }
        for (node, _) in claimed.get(app).into_iter().flatten() {
            nodes.insert(node.clone());
        }
    }
    nodes.retain(|n| s.nodes.contains_key(n) || last.plan.nodes.contains_key(n));
    // A change that reaches most nodes (an app on every node) is planned
    // whole: the old plan is dropped first then, where merging would hold
    // the old plan, the sub-plan and the merged specs at once.
    if nodes.len() > MIN_DIRTY_FOR_FULL && nodes.len() * MAX_DIRTY_SHARE > s.nodes.len() {
        return Err(format!(
            "the change reaches {} of {} nodes",
            nodes.len(),
            s.nodes.len()
        ));
    }

    let names: BTreeSet<String> = dirty.iter().map(ToString::to_string).collect();
    let mut sub = Snapshot {
        config: s.config.clone(),
        sites: s.sites.clone(),
        previous_sites: s.previous_sites.clone(),
        hub_links: s.hub_links.clone(),
        nodes: s.nodes.clone(),
        node_errors: s.node_errors.clone(),
        ..Default::default()
    };
    for app in &dirty {
        if let Some(spec) = s.apps.get(app) {
            sub.apps.insert(app.clone(), spec.clone());
        }
        if let Some(p) = s.previous_apps.get(app) {
            sub.previous_apps.insert(app.clone(), p.clone());
        }
        if let Some(r) = s.previous_ranges.get(app) {
            sub.previous_ranges.insert(app.clone(), r.clone());
        }
        if let Some(f) = s.federation.get(app) {
            sub.federation.insert(app.clone(), f.clone());
        }
        let object = validate::object_name("MeshApp", app);
        if let Some(e) = s.input_errors.get(&object) {
            sub.input_errors.insert(object, e.clone());
        }
        for (node, wl) in claimed.get(app).into_iter().flatten() {
            if let Some(labels) = s.workloads.get(node).and_then(|w| w.get(wl)) {
                sub.add_workload(node, wl.clone(), labels.clone());
            }
            if let Some(a) = s.workload_addresses.get(node).and_then(|w| w.get(wl)) {
                sub.add_workload_address(node, wl.clone(), a.clone());
            }
        }
        for node in &nodes {
            let slot = (node.clone(), app.clone());
            if let Some(k) = s.public_keys.get(&slot) {
                sub.public_keys.insert(slot, k.clone());
            }
        }
    }
    for policy in &policies {
        if let Some(spec) = s.policies.get(policy) {
            sub.policies.insert(policy.clone(), spec.clone());
        }
        if let Some(p) = s.previous_policies.get(policy) {
            sub.previous_policies.insert(policy.clone(), p.clone());
        }
        let object = validate::object_name("MeshPolicy", policy);
        if let Some(e) = s.input_errors.get(&object) {
            sub.input_errors.insert(object, e.clone());
        }
    }
    for node in &nodes {
        let Some(prev) = stored.get(s, node) else {
            continue;
        };
        let (mine, theirs): (Vec<_>, Vec<_>) =
            prev.apps.iter().partition(|a| names.contains(&a.app));
        sub.previous_specs.insert(
            node.clone(),
            MeshNodeSpec {
                site: prev.site.clone(),
                apps: mine.into_iter().cloned().collect(),
            },
        );
        let ports: BTreeSet<u16> = theirs.iter().map(|a| a.listen_port).collect();
        if !ports.is_empty() {
            sub.reserved.ports.insert(node.clone(), ports);
        }
    }
    if newcomer || dirty.iter().any(|k| last.unsettled.contains(k)) {
        sub.reserved.ranges = held_ranges(last, s, &dirty);
    }
    Ok(Sub {
        snapshot: sub,
        apps: dirty,
        nodes,
    })
}

/// The workloads `app` claims in `v` (on registered nodes); every other
/// app that claims one of them joins `dirty` (and `queue`).
fn claimed_in<V: View>(
    v: &V,
    app: &ObjectKey,
    dirty: &mut BTreeSet<ObjectKey>,
    queue: &mut Vec<ObjectKey>,
) -> Vec<(String, ObjectKey)> {
    let mut found = Vec::new();
    let Some(spec) = v.app(app) else {
        return found;
    };
    for node in v.workload_nodes() {
        let Some(on_node) = registered(v, node) else {
            continue;
        };
        for (wl, labels) in in_namespace(on_node, &app.namespace) {
            if selecting(v, app, spec).any(|sp| membership::claims(app, sp, &wl.namespace, labels))
            {
                for other in claimants(v, wl, labels) {
                    if dirty.insert(other.clone()) {
                        queue.push(other);
                    }
                }
                found.push((node.clone(), wl.clone()));
            }
        }
    }
    found
}

/// Whether a full plan would allocate the app's range now (it has none
/// recorded as its own).
fn is_newcomer(last: &Last, s: &Snapshot, key: &ObjectKey) -> bool {
    s.apps.contains_key(key) && {
        let had = last
            .plan
            .apps
            .get(key)
            .and_then(|o| o.address_space.as_ref());
        had.is_none() || s.previous_ranges.get(key) != had
    }
}

/// The ranges the apps outside `dirty` hold, in app order: their planned
/// range, or for an invalid app the previous one it keeps reserved.
fn held_ranges(
    last: &Last,
    s: &Snapshot,
    dirty: &BTreeSet<ObjectKey>,
) -> Vec<(Ipv4Net, ObjectKey)> {
    let mut out = Vec::new();
    for (key, outcome) in &last.plan.apps {
        if dirty.contains(key) {
            continue;
        }
        let range = outcome
            .address_space
            .as_ref()
            .or_else(|| s.previous_ranges.get(key))
            .and_then(|r| validate::parse_cidr(r).ok());
        if let Some(net) = range {
            out.push((net, key.clone()));
        }
    }
    out
}

/// The next state, the apps planned again, the nodes rebuilt.
type Merged = (BTreeSet<ObjectKey>, BTreeSet<String>);

/// Plans the dirty apps alone and merges them into the last plan (whose
/// input is already this pass's); on any doubt, leaves `last` as it was and
/// says why, for a full plan.
fn partial(
    last: &mut Last,
    journal: &Journal,
    dirty: BTreeSet<ObjectKey>,
    stale: BTreeSet<String>,
    stored: Stored<'_>,
) -> Result<Merged, String> {
    if !last.odd_ids.is_empty() {
        return Err("an app id is not its first candidate".into());
    }
    if let Some(app) = last.trouble.first() {
        return Err(format!("MeshApp {app} has an error between apps"));
    }
    let sub = sub_snapshot(last, journal, dirty, stale, stored)?;
    let fresh = plan(&sub.snapshot);
    drop(sub.snapshot);
    check(last, &fresh, &sub.apps)?;
    let s = &last.input;

    let names: BTreeSet<String> = sub.apps.iter().map(ToString::to_string).collect();
    let mut merged: BTreeMap<String, MeshNodeSpec> = BTreeMap::new();
    for node in &sub.nodes {
        let Some(spec) = fresh.nodes.get(node) else {
            continue; // the node left
        };
        let mut apps: Vec<_> = last
            .plan
            .nodes
            .get(node)
            .map(|p| {
                p.apps
                    .iter()
                    .filter(|a| !names.contains(&a.app))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        apps.extend(spec.apps.iter().cloned());
        apps.sort_by(|a, b| a.app.cmp(&b.app));
        let spec = MeshNodeSpec {
            site: spec.site.clone(),
            apps,
        };
        let size = super::json_size(&spec).unwrap_or(usize::MAX);
        if size > s.config.max_meshnode_bytes {
            return Err(format!("node {node} reached the MeshNode size bound"));
        }
        merged.insert(node.clone(), spec);
    }

    for key in &sub.apps {
        last.forget(key);
    }
    let s = &last.input;
    let p = Arc::make_mut(&mut last.plan);
    // Nodes: registered ones get a spec (a new node's comes from the
    // sub-plan, which sees every node), gone ones lose theirs.
    p.nodes.retain(|n, _| s.nodes.contains_key(n));
    let mut changed = sub.nodes.clone();
    for (node, spec) in &fresh.nodes {
        if !p.nodes.contains_key(node) {
            p.nodes.insert(node.clone(), spec.clone());
            changed.insert(node.clone());
        }
    }
    for (node, spec) in merged {
        p.nodes.insert(node, spec);
    }
    changed.retain(|n| p.nodes.contains_key(n));
    for key in &sub.apps {
        p.apps.remove(key);
        p.exports.remove(key);
    }
    p.exports
        .extend(fresh.exports.iter().map(|(k, v)| (k.clone(), v.clone())));
    p.apps
        .extend(fresh.apps.iter().map(|(k, v)| (k.clone(), v.clone())));
    let policy_keys: Vec<ObjectKey> = p
        .policies
        .keys()
        .filter(|k| !s.policies.contains_key(*k))
        .cloned()
        .collect();
    for k in policy_keys {
        p.policies.remove(&k);
    }
    p.policies
        .extend(fresh.policies.iter().map(|(k, v)| (k.clone(), v.clone())));
    p.sites = fresh.sites.clone();
    p.node_errors = fresh.node_errors.clone();
    merge_selectors(&mut p.selectors, &fresh.selectors, &names);
    for key in &sub.apps {
        last.note(key);
    }
    Ok((sub.apps, changed))
}

/// Whether the sub-plan is what a full plan would give: the conditions the
/// module doc's argument needs, checked on the result.
fn check(last: &Last, fresh: &Plan, apps: &BTreeSet<ObjectKey>) -> Result<(), String> {
    for (key, out) in &fresh.apps {
        if out
            .errors
            .iter()
            .any(|e| CLUSTER_WIDE_REASONS.contains(&e.reason.as_str()))
        {
            return Err(format!("MeshApp {key} has an error between apps"));
        }
        if out.app_id != naming::app_id_candidate(key, 0) {
            return Err(format!("the id of MeshApp {key} collides"));
        }
        if let Some(owner) = last.ids.get(&out.app_id) {
            if owner != key && !apps.contains(owner) {
                return Err(format!("the id of MeshApp {key} collides"));
            }
        }
        if !out.transit_nodes.is_empty() {
            return Err(format!("MeshApp {key} has transit nodes"));
        }
    }
    Ok(())
}

/// Replaces the selectors of `apps` with the sub-plan's.
fn merge_selectors(
    all: &mut BTreeMap<String, BTreeMap<String, Vec<weft_api::AppSelector>>>,
    fresh: &BTreeMap<String, BTreeMap<String, Vec<weft_api::AppSelector>>>,
    apps: &BTreeSet<String>,
) {
    let namespaces: BTreeSet<&str> = apps
        .iter()
        .filter_map(|a| a.split_once('/').map(|(ns, _)| ns))
        .collect();
    let sites: BTreeSet<String> = all.keys().chain(fresh.keys()).cloned().collect();
    for site in sites {
        let by_ns = all.entry(site.clone()).or_default();
        for ns in &namespaces {
            let mut list: Vec<weft_api::AppSelector> = by_ns
                .remove(*ns)
                .unwrap_or_default()
                .into_iter()
                .filter(|a| !apps.contains(&a.app))
                .collect();
            if let Some(new) = fresh.get(&site).and_then(|m| m.get(*ns)) {
                list.extend(new.iter().cloned());
            }
            list.sort_by(|a, b| a.app.cmp(&b.app));
            if !list.is_empty() {
                by_ns.insert((*ns).to_string(), list);
            }
        }
        if by_ns.is_empty() {
            all.remove(&site);
        }
    }
}

#[cfg(test)]
mod tests;
