//! One reconcile pass: plan -> observe -> diff -> apply -> status. Holds the
//! daemon's memory between passes (last good app state, workload addresses).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weft_api::standalone::LocalWorkload;
use weft_api::{MeshNode, MeshNodeStatus};

use crate::core::diff::{diff, KeySource};
use crate::core::ipam::WorkloadIpam;
use crate::core::plan::{netns_prefix, owns_netns, plan};
use crate::core::state::{AppNet, NodeState, PolicyCounters};
use crate::core::status;
use crate::dataplane::{Dataplane, Observation};
use crate::error::Error;
use crate::keys::{KeyStore, PrivateKey};
use crate::storage;

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Data-plane writes made.
    pub writes: usize,
    /// Errors, each naming its app/field or netns.
    pub errors: Vec<String>,
    /// The status to publish.
    pub status: MeshNodeStatus,
    /// Data-plane writes made, by operation (metrics).
    pub writes_by_op: BTreeMap<&'static str, u64>,
    /// One [`Error::metric_label`] per problem of this pass (metrics).
    pub error_reasons: Vec<&'static str>,
    /// Policy counters per app (`namespace/name`) with a policy table.
    pub policy_counters: BTreeMap<String, PolicyCounters>,
}

/// Per-node reconciler.
pub struct Reconciler<D: Dataplane> {
    node: String,
    endpoint_address: String,
    dp: D,
    keys: KeyStore,
    ipam: WorkloadIpam,
    ipam_path: PathBuf,
    /// Last state that planned cleanly per netns: an app whose spec turns
    /// invalid keeps running on it instead of being torn down.
    last_good: BTreeMap<String, AppNet>,
    /// Total data-plane writes since start (metrics).
    pub writes_total: u64,
    /// When each (netns, peer) was last probed.
    last_probe: BTreeMap<(String, String), std::time::Instant>,
    /// App netns where a workload route update failed or was skipped: their
    /// workloads' routes are sent again on the next pass.
    workload_routes_unsure: BTreeSet<String>,
    /// The last traffic figures read per netns: a failed read reports these
    /// (stale) rather than zeros, which Prometheus would take for a reset.
    last_traffic: BTreeMap<String, crate::dataplane::AppTraffic>,
    /// The resolvers asked for last pass (see [`dns_wanted`]).
    dns_running: BTreeMap<String, crate::dns::ResolverSpec>,
}

/// Removes app links only one side wants (the other app's entry was
/// rejected and runs on its last good state, or left): such a link is never
/// created, so neither its routes nor the workloads' routes for it may be
/// wanted either (they would be rewritten on every pass). Pure.
pub fn drop_one_sided_links(desired: &mut NodeState) {
    let wanted: BTreeSet<(String, String)> = desired
        .apps
        .iter()
        .flat_map(|(netns, a)| a.links.keys().map(move |i| (netns.clone(), i.clone())))
        .collect();
    for app in desired.apps.values_mut() {
        app.links
            .retain(|_, l| wanted.contains(&(l.peer_netns.clone(), l.peer_interface.clone())));
    }
}

/// The per-app resolvers this node should run, by netns: one for every app
/// of `spec` whose desired state has a device (its tunnel address is on it).
/// An app whose netns failed this pass keeps last pass's resolver as it
/// was (it may be half-built; the next pass decides). Pure.
pub fn dns_wanted(
    spec: &MeshNode,
    desired: &NodeState,
    failed: &BTreeSet<String>,
    last: &BTreeMap<String, crate::dns::ResolverSpec>,
) -> BTreeMap<String, crate::dns::ResolverSpec> {
    let mut out = BTreeMap::new();
    for a in &spec.spec.apps {
        if failed.contains(&a.netns) {
            if let Some(prev) = last.get(&a.netns) {
                out.insert(a.netns.clone(), prev.clone());
            }
            continue;
        }
        let has_device = desired
            .apps
            .get(&a.netns)
            .is_some_and(|d| d.device.is_some());
        if let (true, Some(r)) = (has_device, crate::dns::ResolverSpec::of(a)) {
            out.insert(a.netns.clone(), r);
        }
    }
    out
}

/// `SetWorkloadRoutes` for every workload of the apps in `unsure` that this
/// pass's `ops` do not attach or update already. Pure.
pub fn retry_workload_routes(
    desired: &NodeState,
    ops: &[crate::core::ops::Op],
    unsure: &BTreeSet<String>,
) -> Vec<crate::core::ops::Op> {
    use crate::core::ops::Op;
    let covered: BTreeSet<(&str, &str)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::AttachWorkload {
                netns,
                host_interface,
                ..
            }
            | Op::SetWorkloadRoutes {
                netns,
                host_interface,
                ..
            } => Some((netns.as_str(), host_interface.as_str())),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for netns in unsure {
        let Some(app) = desired.apps.get(netns).filter(|a| a.device.is_some()) else {
            continue;
        };
        for (host_if, link) in &app.workloads {
            if !covered.contains(&(netns.as_str(), host_if.as_str())) {
                out.push(Op::SetWorkloadRoutes {
                    netns: netns.clone(),
                    host_interface: host_if.clone(),
                    workload_netns: link.workload_netns.clone(),
                    routes: app.workload_routes(),
                });
            }
        }
    }
    out
}

/// Handshakes older than this are refreshed by a probe, so a healthy idle
/// peer never reaches WireGuard's 180 s session expiry and reads as down.
pub const HANDSHAKE_REFRESH_SECONDS: u64 = 120;
/// Minimum time between probes of one peer.
pub const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);

struct Keys(BTreeMap<String, PrivateKey>);
impl KeySource for Keys {
    fn private_key(&self, netns: &str) -> Option<PrivateKey> {
        self.0.get(netns).cloned()
    }
}

impl<D: Dataplane> Reconciler<D> {
    /// Lets the data plane wake the loop on changes it learns of (see
    /// [`Dataplane::wake_on_change`]).
    pub fn wake_on_change(&mut self, wake: &crate::wake::Wake) {
        self.dp.wake_on_change(wake);
    }

    /// A reconciler keeping its files under `data_dir`.
    pub fn new(
        node: &str,
        endpoint_address: &str,
        dp: D,
        data_dir: &std::path::Path,
    ) -> Result<Self, Error> {
        storage::ensure_private_dir(data_dir)?;
        let keys = KeyStore::open(data_dir)?;
        let ipam_path = data_dir.join("workload-addresses.json");
        let ipam = storage::read_json(&ipam_path)?.unwrap_or_default();
        Ok(Reconciler {
            node: node.into(),
            endpoint_address: endpoint_address.into(),
            dp,
            keys,
            ipam,
            ipam_path,
            last_good: BTreeMap::new(),
            writes_total: 0,
            last_probe: BTreeMap::new(),
            last_traffic: BTreeMap::new(),
            workload_routes_unsure: BTreeSet::new(),
            dns_running: BTreeMap::new(),
        })
    }

    /// Makes (or keeps) a key for each app of `wanted` (apps that claim a
    /// workload here but are not in the spec yet), drops the keys of apps
    /// no longer wanted, and reports the public halves in status.
    pub fn prepare_keys(&mut self, wanted: &BTreeSet<String>, report: &mut PassReport) {
        if wanted.is_empty() && !self.keys.has_prepared() {
            return;
        }
        if let Err(e) = self.keys.retain_prepared(wanted) {
            report.error_reasons.push(e.metric_label());
            report.errors.push(e.to_string());
        }
        for app in wanted {
            match self.keys.prepare(app) {
                Ok(k) => report.status.prepared_keys.push(weft_api::PreparedKey {
                    app: app.clone(),
                    public_key: k.public_key(),
                }),
                Err(e) => {
                    report.error_reasons.push(e.metric_label());
                    report.errors.push(e.to_string());
                }
            }
        }
    }

    /// The data plane (tests inspect the fake through this).
    pub fn dataplane(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Runs one pass. With no spec known yet nothing is changed: an empty
    /// desired state would tear down what a restarted daemon inherited.
    pub fn pass(
        &mut self,
        spec: Option<&MeshNode>,
        local: &[LocalWorkload],
        now: Time,
    ) -> PassReport {
        let mut report = PassReport::default();
        let mut observed = match self.dp.observe(&netns_prefix(&self.node)) {
            Ok(mut o) => {
                o.state.apps.retain(|k, _| owns_netns(&self.node, k));
                o
            }
            Err(e) => {
                report.error_reasons.push(e.metric_label());
                report.errors.push(e.to_string());
                Observation::default()
            }
        };
        let Some(spec) = spec else {
            report.status = status::build(
                &self.node,
                &self.endpoint_address,
                self.dp.kind(),
                None,
                &[],
                &BTreeMap::new(),
                &observed,
                local,
                &report.errors,
                now,
            );
            return report;
        };

        // Keys first: the plan needs this node's public keys.
        let mut private = BTreeMap::new();
        let mut public = BTreeMap::new();
        let mut key_errors = BTreeMap::new();
        for a in &spec.spec.apps {
            match self.keys.get_or_create(&a.app_id, &a.app) {
                Ok(k) => {
                    public.insert(a.app_id.clone(), k.public_key());
                    private.insert(a.netns.clone(), k);
                }
                Err(e) => {
                    report.error_reasons.push(e.metric_label());
                    key_errors.insert(a.app.clone(), e.to_string());
                }
            }
        }
        let ipam_before = self.ipam.clone();
        let plans = plan(&self.node, &spec.spec, local, &public, &mut self.ipam);
        if self.ipam != ipam_before {
            if let Err(e) = storage::write_json_private(&self.ipam_path, &self.ipam) {
                report.error_reasons.push(e.metric_label());
                report.errors.push(e.to_string());
            }
        }

        let mut desired = NodeState::default();
        let mut app_errors: BTreeMap<String, String> = key_errors;
        for p in &plans {
            match &p.result {
                Ok(app) => {
                    self.last_good.insert(app.netns.clone(), app.clone());
                    desired.apps.insert(app.netns.clone(), app.clone());
                }
                Err(e) => {
                    report.error_reasons.push(e.metric_label());
                    app_errors.insert(p.app.clone(), e.to_string());
                    if let Some(prev) = spec
                        .spec
                        .apps
                        .iter()
                        .find(|a| a.app == p.app)
                        .and_then(|a| self.last_good.get(&a.netns))
                    {
                        desired.apps.insert(prev.netns.clone(), prev.clone());
                    }
                }
            }
        }
        self.last_good.retain(|k, _| desired.apps.contains_key(k));
        drop_one_sided_links(&mut desired);

        let mut ops = diff(&desired, &observed.state, &Keys(private));
        // Workload routes are not read back (they live in each workload's
        // netns): where an update failed last pass, send them again.
        let retry = std::mem::take(&mut self.workload_routes_unsure);
        ops.extend(retry_workload_routes(&desired, &ops, &retry));
        let mut failed: BTreeSet<String> = BTreeSet::new();
        for op in &ops {
            if failed.contains(op.netns()) {
                if matches!(op, crate::core::ops::Op::SetWorkloadRoutes { .. }) {
                    self.workload_routes_unsure.insert(op.netns().to_string());
                }
                continue; // later ops in a failed netns depend on the failed one
            }
            // A link reaches into the other app's netns: not while that side
            // failed this pass (its policy table may be missing).
            if let crate::core::ops::Op::CreateAppLink { peer_netns, .. } = op {
                if failed.contains(peer_netns) {
                    continue;
                }
            }
            match self.dp.apply(op) {
                Ok(()) => {
                    report.writes += 1;
                    *report.writes_by_op.entry(op.name()).or_default() += 1;
                    tracing::debug!(node = %self.node, netns = op.netns(), op = op.name(), "applied");
                }
                Err(e) => {
                    tracing::warn!(node = %self.node, netns = op.netns(), op = op.name(), error = %e, "data-plane operation failed");
                    if matches!(op, crate::core::ops::Op::SetWorkloadRoutes { .. }) {
                        // One workload's routes (its netns may be going):
                        // the others still get theirs; retried next pass.
                        self.workload_routes_unsure.insert(op.netns().to_string());
                    } else {
                        failed.insert(op.netns().to_string());
                    }
                    report.error_reasons.push(e.metric_label());
                    report.errors.push(e.to_string());
                    if let Some(a) = spec.spec.apps.iter().find(|a| a.netns == op.netns()) {
                        app_errors.insert(a.app.clone(), e.to_string());
                    }
                }
            }
        }
        self.writes_total += report.writes as u64;

        self.probe_stale_peers(&desired, &observed, &failed);
        observed.traffic = self.count_traffic(&desired, &failed, &mut report);

        // Resolvers follow the apps that have a device here; one that failed
        // this pass keeps whatever resolver it had (see `dns_wanted`).
        let resolvers = dns_wanted(spec, &desired, &failed, &self.dns_running);
        // A resolver that cannot start is reported, but does not mark the
        // app's data plane as failed: its traffic flows regardless.
        for (_, e) in self.dp.sync_dns(&resolvers) {
            report.error_reasons.push(e.metric_label());
            report.errors.push(e.to_string());
        }
        self.dns_running = resolvers;

        // Keys of apps that left this node go once their netns is gone.
        let wanted_ids: BTreeSet<&str> = spec.spec.apps.iter().map(|a| a.app_id.as_str()).collect();
        for id in self.keys.app_ids() {
            let netns = format!("{}{id}", netns_prefix(&self.node));
            if !wanted_ids.contains(id.as_str()) && !failed.contains(&netns) {
                if let Err(e) = self.keys.remove(&id) {
                    report.error_reasons.push(e.metric_label());
                    report.errors.push(e.to_string());
                }
            }
        }

        for a in &spec.spec.apps {
            if let Some(c) = observed.policy_counters.get(&a.netns) {
                report.policy_counters.insert(a.app.clone(), c.clone());
            }
        }
        report
            .errors
            .extend(app_errors.iter().map(|(app, e)| format!("{app}: {e}")));
        report.errors.sort();
        report.errors.dedup();
        report.status = status::build(
            &self.node,
            &self.endpoint_address,
            self.dp.kind(),
            Some(spec),
            &plans,
            &app_errors,
            &observed,
            local,
            &report.errors,
            now,
        );
        report
    }
}

impl<D: Dataplane> Reconciler<D> {
    /// Traffic figures of every app netns this pass programmed (the counting
    /// rules follow the peers just applied). A failure only costs the figures:
    /// it is logged and counted, never an app error.
    fn count_traffic(
        &mut self,
        desired: &NodeState,
        failed: &BTreeSet<String>,
        report: &mut PassReport,
    ) -> BTreeMap<String, crate::dataplane::AppTraffic> {
        let mut out = BTreeMap::new();
        for (netns, app) in &desired.apps {
            let Some(dev) = &app.device else { continue };
            if failed.contains(netns) {
                continue;
            }
            let want = crate::dataplane::TrafficSpec {
                interface: dev.interface.clone(),
                peers: dev
                    .peers
                    .iter()
                    .map(|(k, p)| (k.clone(), p.allowed_ips.clone()))
                    .collect(),
            };
            match self.dp.traffic(netns, &want) {
                Ok(t) => {
                    if t.wrote {
                        report.writes += 1;
                        self.writes_total += 1;
                        *report
                            .writes_by_op
                            .entry("set_traffic_counters")
                            .or_default() += 1;
                    }
                    self.last_traffic.insert(netns.clone(), t.clone());
                    out.insert(netns.clone(), t);
                }
                Err(e) => {
                    tracing::warn!(node = %self.node, netns = %netns, error = %e, "cannot count traffic");
                    report.error_reasons.push(e.metric_label());
                    if let Some(last) = self.last_traffic.get(netns) {
                        out.insert(
                            netns.clone(),
                            crate::dataplane::AppTraffic {
                                wrote: false,
                                ..last.clone()
                            },
                        );
                    }
                }
            }
        }
        out
    }

    /// Sends a probe through the tunnel to every peer without a recent
    /// handshake (rate-limited), so "peers up" reflects a proven handshake
    /// rather than configuration alone.
    fn probe_stale_peers(
        &mut self,
        desired: &NodeState,
        observed: &Observation,
        failed: &BTreeSet<String>,
    ) {
        let now = std::time::Instant::now();
        let mut live = BTreeSet::new();
        for (netns, app) in &desired.apps {
            let Some(dev) = &app.device else { continue };
            if failed.contains(netns) {
                continue;
            }
            for (pk, peer) in &dev.peers {
                let key = (netns.clone(), pk.clone());
                live.insert(key.clone());
                let age = observed
                    .stats
                    .get(&key)
                    .and_then(|s| s.last_handshake_seconds);
                if age.is_some_and(|a| a < HANDSHAKE_REFRESH_SECONDS) {
                    continue;
                }
                if self
                    .last_probe
                    .get(&key)
                    .is_some_and(|t| now.duration_since(*t) < PROBE_INTERVAL)
                {
                    continue;
                }
                // The peer's tunnel address is the first host of its slice.
                let Some(dst) = peer.allowed_ips.first().and_then(|n| n.hosts().next()) else {
                    continue;
                };
                if let Err(e) = self.dp.probe(netns, dst) {
                    tracing::debug!(netns = %netns, error = %e, "handshake probe failed");
                }
                self.last_probe.insert(key, now);
            }
        }
        self.last_probe.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ops::Op;
    use crate::dataplane::fake::FakeDataplane;
    use weft_api::{CompiledPolicy, CompiledRule, MeshNodeSpec, PolicyDirection, PolicyProtocol};

    fn t() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    #[test]
    fn a_link_only_one_side_wants_is_not_wanted_at_all() {
        use crate::core::state::{AppLinkEnd, AppNet};
        let end = |peer: &str, peer_if: &str| AppLinkEnd {
            peer_netns: peer.into(),
            peer_interface: peer_if.into(),
            routes: vec!["10.2.0.0/16".parse().unwrap()],
        };
        let mut st = NodeState::default();
        for (ns, other, ifc, peer_if) in [("a", "b", "wxb", "wxa"), ("c", "b", "wxb", "wxc")] {
            st.apps.insert(
                ns.into(),
                AppNet {
                    netns: ns.into(),
                    links: [(ifc.to_string(), end(other, peer_if))].into(),
                    ..Default::default()
                },
            );
        }
        // b wants the link with a only.
        st.apps.insert(
            "b".into(),
            AppNet {
                netns: "b".into(),
                links: [("wxa".to_string(), end("a", "wxb"))].into(),
                ..Default::default()
            },
        );
        drop_one_sided_links(&mut st);
        assert_eq!(st.apps["a"].links.len(), 1);
        assert_eq!(st.apps["b"].links.len(), 1);
        assert!(st.apps["c"].links.is_empty(), "b does not want c's link");
    }

    #[test]
    fn workload_routes_that_may_have_failed_are_sent_again() {
        use crate::core::state::{AppNet, Device, WorkloadLink};
        let link = |n: &str| WorkloadLink {
            workload: format!("d/{n}"),
            workload_netns: format!("/run/netns/{n}"),
            address: "10.1.1.2".parse().unwrap(),
            mtu: 1420,
        };
        let mut desired = NodeState::default();
        desired.apps.insert(
            "weft-n1-a".into(),
            AppNet {
                netns: "weft-n1-a".into(),
                device: Some(Device {
                    routes: vec![
                        "10.1.0.0/16".parse().unwrap(),
                        "10.2.0.7/32".parse().unwrap(),
                    ],
                    ..Default::default()
                }),
                workloads: [
                    ("wv1".to_string(), link("w1")),
                    ("wv2".to_string(), link("w2")),
                ]
                .into(),
                ..Default::default()
            },
        );
        let unsure: BTreeSet<String> = ["weft-n1-a".to_string(), "weft-n1-gone".to_string()].into();
        // wv1 is re-attached by this pass anyway; only wv2 needs a resend.
        let pass = vec![Op::AttachWorkload {
            netns: "weft-n1-a".into(),
            host_interface: "wv1".into(),
            link: link("w1"),
            routes: vec![],
        }];
        let again = retry_workload_routes(&desired, &pass, &unsure);
        assert_eq!(again.len(), 1, "{again:?}");
        match &again[0] {
            Op::SetWorkloadRoutes {
                host_interface,
                routes,
                ..
            } => {
                assert_eq!(host_interface, "wv2");
                assert_eq!(routes, &desired.apps["weft-n1-a"].workload_routes());
            }
            o => panic!("{o:?}"),
        }
        assert!(retry_workload_routes(&desired, &[], &BTreeSet::new()).is_empty());
    }

    fn node(base: &weft_api::AppAttachment, policy: Option<CompiledPolicy>) -> MeshNode {
        let mut a = base.clone();
        a.policy = policy;
        let mut mn = MeshNode::new(
            "n1",
            MeshNodeSpec {
                site: "local".into(),
                apps: vec![a],
            },
        );
        mn.metadata.generation = Some(1);
        mn
    }

    fn policy(local: &str) -> CompiledPolicy {
        CompiledPolicy {
            ingress_isolated: vec!["10.100.1.2".into()],
            egress_isolated: vec![],
            rules: vec![CompiledRule {
                id: "demo/p:ingress[0].ports[0]".into(),
                direction: PolicyDirection::Ingress,
                local: vec![local.into()],
                peers: vec!["10.100.2.0/24".into()],
                protocol: Some(PolicyProtocol::Tcp),
                port: Some(80),
                end_port: None,
            }],
        }
    }

    fn set_policy_ops(r: &mut Reconciler<FakeDataplane>) -> Vec<Option<String>> {
        r.dataplane()
            .applied
            .iter()
            .filter_map(|o| match o {
                Op::SetPolicy { policy, .. } => Some(policy.as_ref().map(|p| p.digest.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn policy_is_set_once_kept_while_invalid_and_removed_with_the_last_policy() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Reconciler::new("n1", "192.0.2.1", FakeDataplane::default(), d.path()).unwrap();
        let base = crate::core::plan::tests::attachment("n1", 1);
        assert!(r.pass(Some(&node(&base, None)), &[], t()).errors.is_empty());
        assert!(set_policy_ops(&mut r).is_empty(), "no policy, no table");

        let good = node(&base, Some(policy("10.100.1.2")));
        assert!(r.pass(Some(&good), &[], t()).errors.is_empty());
        assert_eq!(set_policy_ops(&mut r).len(), 1);
        assert_eq!(r.pass(Some(&good), &[], t()).writes, 0, "converged");

        // A bad field: the status names it, the last good table stays.
        let bad = node(&base, Some(policy("not-an-address")));
        let rep = r.pass(Some(&bad), &[], t());
        assert_eq!(rep.writes, 0);
        assert!(
            rep.errors
                .iter()
                .any(|e| e.contains("policy.rules[0].local[0]")),
            "{:?}",
            rep.errors
        );
        assert_eq!(set_policy_ops(&mut r).len(), 1);

        // No policy any more: the table goes, in one op.
        assert!(r.pass(Some(&node(&base, None)), &[], t()).errors.is_empty());
        let ops = set_policy_ops(&mut r);
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[1], None);
        assert_eq!(r.pass(Some(&node(&base, None)), &[], t()).writes, 0);
    }

    #[test]
    fn every_app_with_a_device_gets_its_resolver_with_the_current_names() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Reconciler::new("n1", "192.0.2.1", FakeDataplane::default(), d.path()).unwrap();
        let mut base = crate::core::plan::tests::attachment("n1", 1);
        base.names = std::sync::Arc::new(vec![weft_api::meshnode::WorkloadName {
            name: "w1".into(),
            address: "10.100.1.2".into(),
        }]);
        assert!(r.pass(Some(&node(&base, None)), &[], t()).errors.is_empty());
        let dns = &r.dataplane().dns;
        let want = crate::dns::ResolverSpec {
            app: "demo/web".into(),
            address: "10.100.1.1".parse().unwrap(),
            clients: "10.100.0.0/16".parse().unwrap(),
            names: base.names.clone(),
        };
        assert_eq!(dns.get(&base.netns), Some(&want));
        assert_eq!(dns.len(), 1);

        // New names reach the resolver on the next pass.
        let mut moved = base.clone();
        moved.names = std::sync::Arc::new(vec![weft_api::meshnode::WorkloadName {
            name: "w1".into(),
            address: "10.100.2.7".into(),
        }]);
        r.pass(Some(&node(&moved, None)), &[], t());
        assert_eq!(r.dataplane().dns[&base.netns].names, moved.names);

        // The app leaves the node: so does its resolver.
        let mut empty = node(&base, None);
        empty.spec.apps.clear();
        r.pass(Some(&empty), &[], t());
        assert!(r.dataplane().dns.is_empty());
    }

    #[test]
    fn an_app_that_failed_this_pass_keeps_its_resolver_as_it_was() {
        let base = crate::core::plan::tests::attachment("n1", 1);
        let spec = node(&base, None);
        let last: BTreeMap<String, crate::dns::ResolverSpec> = [(
            base.netns.clone(),
            crate::dns::ResolverSpec::of(&base).unwrap(),
        )]
        .into();
        let failed: BTreeSet<String> = [base.netns.clone()].into();
        let kept = dns_wanted(&spec, &NodeState::default(), &failed, &last);
        assert_eq!(kept, last);
        // Without a device (and not failed) there is nothing to bind to.
        assert!(dns_wanted(&spec, &NodeState::default(), &BTreeSet::new(), &last).is_empty());
    }

    /// Policy and traffic figures from the data plane into the status.
    mod status_figures {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use weft_api::{
            CompiledPolicy, CompiledRule, MeshNode, MeshNodeSpec, PolicyDirection, PolicyProtocol,
        };

        use crate::core::status::changed;
        use crate::dataplane::fake::FakeDataplane;
        use crate::run::reconcile::Reconciler;

        fn t() -> Time {
            Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
        }

        fn node(policy: bool) -> MeshNode {
            let mut a = crate::core::plan::tests::attachment("n1", 1);
            a.policy = policy.then(|| CompiledPolicy {
                ingress_isolated: vec!["10.100.1.2".into()],
                egress_isolated: vec![],
                rules: vec![CompiledRule {
                    id: "demo/p:ingress[0].ports[0]".into(),
                    direction: PolicyDirection::Ingress,
                    local: vec!["10.100.1.2".into()],
                    peers: vec!["10.100.2.0/24".into()],
                    protocol: Some(PolicyProtocol::Tcp),
                    port: Some(80),
                    end_port: None,
                }],
            });
            let mut mn = MeshNode::new(
                "n1",
                MeshNodeSpec {
                    site: "local".into(),
                    apps: vec![a],
                },
            );
            mn.metadata.generation = Some(1);
            mn
        }

        #[test]
        fn policy_drops_are_summarised_only_where_a_policy_applies() {
            let d = tempfile::tempdir().unwrap();
            let mut r =
                Reconciler::new("n1", "192.0.2.1", FakeDataplane::default(), d.path()).unwrap();
            let open = r.pass(Some(&node(false)), &[], t());
            assert_eq!(open.status.apps[0].policy_drops, None);
            assert!(open.policy_counters.is_empty());
            r.pass(Some(&node(true)), &[], t());
            let guarded = r.pass(Some(&node(true)), &[], t());
            assert_eq!(guarded.status.apps[0].policy_drops, Some(0));
            assert!(guarded.policy_counters["demo/web"]
                .rules
                .contains_key("demo/p:ingress[0].ports[0]"));
            assert_eq!(guarded.status.apps[0].peers_up, 0, "no handshake yet");
            let json = serde_json::to_value(&guarded.status).unwrap();
            assert_eq!(json["apps"][0]["policyDrops"], 0);
            assert_eq!(json["apps"][0]["peersUp"], 0);
        }

        #[test]
        fn traffic_figures_reach_the_status_and_counting_rules_are_written_once() {
            let d = tempfile::tempdir().unwrap();
            let mut r =
                Reconciler::new("n1", "192.0.2.1", FakeDataplane::default(), d.path()).unwrap();
            let spec = node(false); // one peer key for every pass
            let first = r.pass(Some(&spec), &[], t());
            assert_eq!(first.writes_by_op.get("set_traffic_counters"), Some(&1));
            let settled = r.pass(Some(&spec), &[], t());
            let netns = spec.spec.apps[0].netns.clone();
            let counted = r.dataplane().traffic_specs[&netns].clone();
            let (pk, ranges) = counted.peers.iter().next().expect("the app has a peer");
            assert!(!ranges.is_empty(), "counted by the peer's allowed IPs");
            let injected = crate::dataplane::AppTraffic {
                peers: [(
                    pk.clone(),
                    crate::dataplane::PeerTraffic {
                        rx_packets: 5,
                        tx_packets: 6,
                        active_connections: 1,
                    },
                )]
                .into_iter()
                .collect(),
                active_connections: Some(2),
                wrote: false,
            };
            r.dataplane().traffic.insert(netns, injected);
            let rep = r.pass(Some(&spec), &[], t());
            assert_eq!(rep.writes, 0, "converged: the counting rules stay");
            assert_eq!(r.dataplane().traffic_writes, 1);
            let app = &rep.status.apps[0];
            let peer = app.peers.iter().find(|p| &p.public_key == pk).unwrap();
            assert_eq!((peer.rx_packets, peer.tx_packets), (5, 6));
            assert_eq!(peer.active_connections, 1);
            assert_eq!(app.active_connections, Some(2));
            assert!(
                !changed(&settled.status, &rep.status),
                "moving figures alone are no change"
            );
            let json = serde_json::to_value(&rep.status).unwrap();
            assert_eq!(json["apps"][0]["activeConnections"], 2);
            assert_eq!(json["apps"][0]["peers"][0]["rxPackets"], 5);
        }
    }
}
