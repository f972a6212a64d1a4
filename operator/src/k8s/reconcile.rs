//! One reconcile pass over everything: the planner is global (IPAM and peers
//! span all apps), so a pass plans the whole snapshot and then writes only
//! the differences. Level-triggered and idempotent: a pass over stores that
//! already reflect the plan sends no request at all.
//!
//! Requests a pass may send, in this order:
//! 1. MeshApp `metadata.finalizers` (merge patch guarded by resourceVersion):
//!    add `weft.dev/cleanup` to live apps; release it from deleted apps once
//!    no MeshNode spec or (non-lost) status lists them any more;
//! 2. MeshNode server-side apply (manager `weft-operator`) where the planned
//!    spec differs from the stored one;
//! 3. status subresource server-side apply of MeshApp, MeshPolicy, MeshSite
//!    where the status changed ignoring condition times, each followed by a
//!    Warning Event (events.k8s.io) when bad input newly fails the object, so
//!    `kubectl describe` shows what the user must fix. Events are best-effort:
//!    a failure to publish one is logged, never retried as a failed pass.
//!
//! Spec and every other metadata field of user-owned objects are never sent.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use weft_api::conditions::{self, types};
use weft_api::labels::{APP_FINALIZER, OPERATOR_MANAGER, SITE_LABEL};
use weft_api::{MeshApp, MeshNode, MeshNodeSpec, MeshPolicy, MeshSite};

use super::error::Error;
use super::pass_state::PassState;
use super::snapshot::{input_fingerprint, is_deleting, key_of, Observed};
use crate::planner::incremental::{Edit, Journal, PassKind};
use crate::planner::{PlanError, PlannerConfig, Snapshot};
use crate::status::{self, ConditionedStatus, NodeView};

/// What one pass wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReconcileReport {
    /// MeshNodes whose spec was applied.
    pub meshnode_writes: Vec<String>,
    /// Status patches, as `Kind namespace/name`.
    pub status_writes: Vec<String>,
    /// MeshApps that got the finalizer.
    pub finalizers_added: Vec<String>,
    /// MeshApps whose finalizer was released.
    pub finalizers_released: Vec<String>,
    /// MeshApps being deleted that nodes still carry.
    pub waiting_for_cleanup: Vec<String>,
    /// Every plan error (bad input), for events and logs.
    pub errors: Vec<PlanError>,
    /// Peer links with a recent handshake, over all apps (for metrics).
    pub peers_up: u32,
    /// Peer links planned, over all apps.
    pub peers_total: u32,
    /// Status writes left for the next pass (over the pass's budget).
    pub statuses_deferred: usize,
    /// How the pass planned (unchanged, only some apps, or all and why).
    pub planned: Option<PassKind>,
    /// Where the pass's time went, in order.
    pub phases: Vec<(&'static str, std::time::Duration)>,
}

/// How many status patches one pass may send. At start-up (or after a
/// planner change) every object's status may differ at once: thousands of
/// patches in one burst would hammer the API server, so each pass sends at
/// most this many, in key order, and the rest follow in the next passes
/// (the run loop paces them, see `run`). MeshNode specs are never held
/// back: they are the data plane.
pub const STATUS_WRITES_PER_PASS: usize = 200;

impl ReconcileReport {
    fn phase(&mut self, name: &'static str, since: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        self.phases.push((name, now - *since));
        *since = now;
    }

    /// Whether the pass sent any write.
    pub fn wrote_anything(&self) -> bool {
        !(self.meshnode_writes.is_empty()
            && self.status_writes.is_empty()
            && self.finalizers_added.is_empty()
            && self.finalizers_released.is_empty())
    }
}

fn has_finalizer(app: &MeshApp) -> bool {
    app.finalizers().iter().any(|f| f == APP_FINALIZER)
}

async fn set_finalizers(
    client: &Client,
    app: &MeshApp,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let key = key_of(app);
    let api: Api<MeshApp> = Api::namespaced(client.clone(), &key.namespace);
    // resourceVersion makes this fail (409) instead of clobbering a
    // finalizer list someone else changed meanwhile; the retry sees the new one.
    let patch = json!({
        "metadata": {
            "resourceVersion": app.resource_version(),
            "finalizers": finalizers,
        }
    });
    let pp = PatchParams {
        field_manager: Some(OPERATOR_MANAGER.into()),
        ..Default::default()
    };
    api.patch(&key.name, &pp, &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Finalizer {
            object: key.to_string(),
            source,
        })?;
    Ok(())
}

/// MeshNode applies in flight at once: a change to an app on every node
/// rewrites them all (2,000 applies of ~280 KB one by one took 20 s).
const MESHNODE_APPLIES_IN_FLIGHT: usize = 8;

/// The body of a MeshNode server-side apply: identity, site label and spec
/// only. Serialised straight from the plan's spec (no JSON value tree of a
/// 280 KB spec per apply).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshNodeApply<'a> {
    api_version: std::borrow::Cow<'static, str>,
    kind: std::borrow::Cow<'static, str>,
    metadata: ApplyMeta<'a>,
    spec: &'a MeshNodeSpec,
}

#[derive(Debug, Serialize)]
struct ApplyMeta<'a> {
    name: &'a str,
    labels: BTreeMap<&'static str, &'a str>,
}

impl std::fmt::Debug for MeshNodeApply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshNodeApply")
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

/// The apply body of MeshNode `name` with `spec`.
pub fn meshnode_apply_body<'a>(name: &'a str, spec: &'a MeshNodeSpec) -> MeshNodeApply<'a> {
    MeshNodeApply {
        api_version: MeshNode::api_version(&()),
        kind: MeshNode::kind(&()),
        metadata: ApplyMeta {
            name,
            labels: BTreeMap::from([(SITE_LABEL, spec.site.as_str())]),
        },
        spec,
    }
}

/// What the operator reads of an applied MeshNode: its metadata. The rest
/// of the answer (the whole spec back) is skipped unparsed.
#[derive(serde::Deserialize)]
struct Applied {
    metadata: kube::api::ObjectMeta,
}

/// Applies one MeshNode spec; the generation the API server gave it.
async fn apply_meshnode(
    client: &Client,
    url: &str,
    name: &str,
    spec: &MeshNodeSpec,
) -> Result<Option<i64>, Error> {
    let failed = |source| Error::MeshNodeApply {
        node: name.to_string(),
        source,
    };
    let mut req = kube::core::Request::new(url)
        .patch(
            name,
            &PatchParams::apply(OPERATOR_MANAGER).force(),
            &Patch::Apply(meshnode_apply_body(name, spec)),
        )
        .map_err(|e| failed(kube::Error::BuildRequest(e)))?;
    req.extensions_mut().insert("patch");
    let applied: Applied = client.request(req).await.map_err(failed)?;
    Ok(applied.metadata.generation)
}

async fn apply_status<K, S>(
    api: Api<K>,
    name: &str,
    object: String,
    status: &S,
    old: Option<&S>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let err = |source| Error::StatusPatch {
        kind: kind_name::<K>(),
        object: object.clone(),
        source,
    };
    // A top-level status field that goes away (`enforced` once nothing is
    // enforced) is removed with an explicit null first: server-side apply
    // alone prunes only the leaves this manager owned, and API servers
    // before 1.22 then keep the emptied parents and refuse the whole status
    // as invalid (found against a real 1.20 server).
    if let Some(gone) = removed_top_level_fields(old, status) {
        let pp = PatchParams {
            field_manager: Some(OPERATOR_MANAGER.into()),
            ..Default::default()
        };
        api.patch_status(name, &pp, &Patch::Merge(&json!({ "status": gone })))
            .await
            .map_err(err)?;
    }
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(OPERATOR_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(err)?;
    Ok(())
}

/// `{field: null}` for every top-level field `old` has and `new` lacks.
fn removed_top_level_fields<S: Serialize>(
    old: Option<&S>,
    new: &S,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let old = serde_json::to_value(old?).ok()?;
    let new = serde_json::to_value(new).ok()?;
    let gone: serde_json::Map<_, _> = old
        .as_object()?
        .keys()
        .filter(|k| new.get(k.as_str()).is_none_or(serde_json::Value::is_null))
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    (!gone.is_empty()).then_some(gone)
}

fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "MeshApp" => "MeshApp",
        "MeshPolicy" => "MeshPolicy",
        "MeshSite" => "MeshSite",
        _ => "object",
    }
}

/// The condition of `type_` in `new` when it reports a failure (`failing`
/// is the status meaning failure) that `old` did not already report.
fn newly_failing<'a>(
    old: Option<&[Condition]>,
    new: &'a [Condition],
    type_: &str,
    failing: &str,
) -> Option<&'a Condition> {
    let cond = conditions::get(new, type_).filter(|c| c.status == failing)?;
    let before = old.and_then(|o| conditions::get(o, type_));
    if before.is_some_and(|b| conditions::same_ignoring_time(b, cond)) {
        return None;
    }
    Some(cond)
}

/// Publishes a Warning Event about `obj`; failures are only logged.
async fn warn_event<K: Resource<DynamicType = ()>>(recorder: &Recorder, obj: &K, cond: &Condition) {
    let ev = Event {
        type_: EventType::Warning,
        reason: cond.reason.chars().take(128).collect(),
        note: Some(cond.message.chars().take(1000).collect()),
        action: "Plan".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason = %cond.reason, "cannot publish event");
    }
}

/// Runs one pass: plan the stores' contents, write the differences (at most
/// [`STATUS_WRITES_PER_PASS`] status patches).
/// `state` keeps the last plan and what the statuses came from, so a pass
/// plans and computes only what changed.
pub async fn reconcile_all(
    client: &Client,
    obs: &Observed,
    config: &PlannerConfig,
    now: Timestamp,
    instance: Option<&str>,
    state: &mut PassState,
) -> Result<ReconcileReport, Error> {
    reconcile_all_limited(
        client,
        obs,
        config,
        now,
        instance,
        state,
        STATUS_WRITES_PER_PASS,
    )
    .await
}

/// [`reconcile_all`] with a given status-write budget.
#[tracing::instrument(skip_all, fields(apps = obs.apps.len(), nodes = obs.nodes.len()))]
pub async fn reconcile_all_limited(
    client: &Client,
    obs: &Observed,
    config: &PlannerConfig,
    now: Timestamp,
    instance: Option<&str>,
    state: &mut PassState,
    status_budget: usize,
) -> Result<ReconcileReport, Error> {
    let mut report = ReconcileReport::default();
    let mut phase = std::time::Instant::now();
    let mut budget = status_budget;
    // One object's failed write must not hold up the others (a status the
    // server refuses would otherwise block every finalizer release): the
    // pass goes on and reports the first failure at its end, so it is retried.
    let mut failed: Option<Error> = None;
    let defer = |e: Error, failed: &mut Option<Error>| {
        tracing::warn!(error = %e, "write failed; the rest of the pass goes on");
        failed.get_or_insert(e);
    };
    let now_time = Time(now);
    // The instance (this replica's pod name) tells which replica, the
    // leader at the time, reported an Event.
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: OPERATOR_MANAGER.into(),
            instance: instance.map(str::to_string),
        },
    );
    // Stores iterate in hash order; requests go out in key order.
    let mut apps: Vec<&MeshApp> = obs.apps.iter().map(AsRef::as_ref).collect();
    apps.sort_by_key(|a| key_of(*a));
    let mut policies: Vec<&MeshPolicy> = obs.policies.iter().map(AsRef::as_ref).collect();
    policies.sort_by_key(|p| key_of(*p));
    let mut sites: Vec<&MeshSite> = obs.sites.iter().map(AsRef::as_ref).collect();
    sites.sort_by_key(|s| s.name_any());

    // 1a. Live apps carry the finalizer before their data plane exists.
    for app in apps.iter().copied().filter(|a| !is_deleting(*a)) {
        if !has_finalizer(app) {
            let mut fins = app.finalizers().to_vec();
            fins.push(APP_FINALIZER.to_string());
            if let Err(e) = set_finalizers(client, app, fins).await {
                defer(e, &mut failed);
                continue;
            }
            tracing::info!(app = %key_of(app), "added finalizer");
            report.finalizers_added.push(key_of(app).to_string());
        }
    }

    report.phase("finalizers", &mut phase);
    // 2. Plan.
    let stored: BTreeMap<String, &MeshNode> = obs
        .meshnodes
        .iter()
        .map(|m| (m.name_any(), m.as_ref()))
        .collect();
    let stored_specs: BTreeMap<String, &MeshNodeSpec> =
        stored.iter().map(|(n, m)| (n.clone(), &m.spec)).collect();
    let hint = state.meshnodes_changed(&stored);
    // Caches as they were for the last plan and every MeshNode written as
    // planned: the snapshot would be the last one, so it is not built.
    let fed_version = state.federation.as_ref().map_or(0, |f| f.version);
    let input =
        input_fingerprint(obs, now).map(|f| (f ^ fed_version.rotate_left(17), config.clone()));
    let same = input.is_some() && input == state.input && hint.is_empty();
    let reused = if same {
        state.planner.unchanged()
    } else {
        None
    };
    // A partial pass updates the last plan in place only while the planner
    // holds the sole reference: another one here made it copy the whole
    // plan (and this pass drop the old one), ~30 ms at 10,000 apps.
    state.last_plan = None;
    let pass = match reused {
        Some(pass) => pass,
        None => {
            // The planner's last input, edited where objects moved (the
            // edits tell it what changed); built from nothing the first time.
            let fed = state.federation.as_ref().map(|f| (&f.imports, &f.links));
            let edited = match state.planner.edit() {
                Some(mut e) if state.sync.primed() => {
                    state.sync.apply(obs, config, now, fed, &mut e);
                    report.phase("snapshot", &mut phase);
                    state.planner.plan_edited(&stored_specs, Some(&hint))
                }
                _ => None,
            };
            match edited {
                Some(pass) => pass,
                None => {
                    state.sync.forget();
                    let mut snapshot = Snapshot::default();
                    let mut scratch = Journal::default();
                    let mut e = Edit::new(&mut snapshot, &mut scratch);
                    state.sync.apply(obs, config, now, fed, &mut e);
                    report.phase("snapshot", &mut phase);
                    state
                        .planner
                        .plan_stored(snapshot, &stored_specs, Some(&hint))
                }
            }
        }
    };
    state.input = input;
    state.planned(&stored, &pass);
    state.last_plan = Some(pass.plan.clone());
    drop(stored_specs);
    tracing::debug!(kind = ?pass.kind, "planned");
    report.planned = Some(pass.kind.clone());
    let plan = pass.plan.clone();
    let Some(snapshot) = state.planner.input() else {
        unreachable!("the planner keeps the snapshot it planned")
    };
    report.errors = plan.errors().into_iter().cloned().collect();

    report.phase("plan", &mut phase);
    // 3. MeshNode specs that differ from the store.
    let mut generations: BTreeMap<String, Option<i64>> = stored
        .iter()
        .map(|(n, m)| (n.clone(), m.metadata.generation))
        .collect();
    let nodes_api: Api<MeshNode> = Api::all(client.clone());
    // Only nodes the pass may have changed: the planner checked that the
    // stored specs of the others are its last plan.
    let candidates: Vec<(&String, &MeshNodeSpec)> = match &pass.changed_nodes {
        Some(changed) => changed
            .iter()
            .filter_map(|n| plan.nodes.get_key_value(n))
            .collect(),
        None => plan.nodes.iter().collect(),
    };
    let mut changed = candidates;
    changed.retain(|(name, spec)| !stored.get(*name).is_some_and(|m| &m.spec == *spec));
    let url = nodes_api.resource_url();
    // A few in flight, answers taken in order (the report lists the
    // writes in node order).
    // Boxed futures: with a closure or function mapping the stream, the
    // pass's future is not provably Send (a higher-ranked lifetime bound).
    type Apply<'a> = std::pin::Pin<
        Box<dyn std::future::Future<Output = (&'a String, Result<Option<i64>, Error>)> + Send + 'a>,
    >;
    let mut jobs: Vec<Apply<'_>> = Vec::with_capacity(changed.len());
    for (name, spec) in changed {
        jobs.push(Box::pin(async move {
            (name, apply_meshnode(client, url, name, spec).await)
        }));
    }
    let applied: Vec<(&String, Result<Option<i64>, Error>)> = futures::stream::iter(jobs)
        .buffered(MESHNODE_APPLIES_IN_FLIGHT)
        .collect()
        .await;
    for (name, result) in applied {
        match result {
            Ok(generation) => {
                let apps = plan.nodes.get(name).map_or(0, |s| s.apps.len());
                tracing::info!(node = %name, generation = ?generation, apps, "applied MeshNode spec");
                generations.insert(name.clone(), generation);
                report.meshnode_writes.push(name.clone());
            }
            Err(e) => defer(e, &mut failed),
        }
    }

    report.phase("meshnodes", &mut phase);
    // 4. Statuses, only when they changed ignoring condition times.
    let views: BTreeMap<String, NodeView<'_>> = snapshot
        .nodes
        .iter()
        .map(|(name, info)| {
            (
                name.clone(),
                NodeView {
                    spec_generation: generations.get(name).copied().flatten(),
                    status: stored.get(name).and_then(|m| m.status.as_ref()),
                    lost: info.lost,
                },
            )
        })
        .collect();
    let scope = state
        .statuses
        .scope(now, &pass.changed_apps, &apps, &stored, &plan);
    let mut pending = BTreeSet::new();
    let mut peers = std::mem::take(&mut state.statuses.peers);
    if scope.is_none() {
        peers.clear();
    }
    for app in apps.iter().copied().filter(|a| !is_deleting(*a)) {
        let key = key_of(app);
        if scope.as_ref().is_some_and(|s| !s.contains(&key)) {
            continue;
        }
        let Some(outcome) = plan.apps.get(&key) else {
            continue;
        };
        let generation = app.metadata.generation.unwrap_or(0);
        let new = status::app_status(
            &key,
            outcome,
            &views,
            generation,
            app.status.as_ref(),
            &now_time,
        );
        peers.insert(key.clone(), (new.peers_up, new.peers_total));
        if app
            .status
            .as_ref()
            .is_some_and(|old| old.same_ignoring_time(&new))
        {
            continue;
        }
        if budget == 0 {
            report.statuses_deferred += 1;
            pending.insert(key);
            continue;
        }
        budget -= 1;
        let api: Api<MeshApp> = Api::namespaced(client.clone(), &key.namespace);
        if let Err(e) =
            apply_status(api, &key.name, key.to_string(), &new, app.status.as_ref()).await
        {
            defer(e, &mut failed);
            pending.insert(key);
            continue;
        }
        report.status_writes.push(format!("MeshApp {key}"));
        if !outcome.errors.is_empty() {
            let old = app.status.as_ref().map(|s| s.conditions.as_slice());
            if let Some(c) = newly_failing(old, &new.conditions, types::DEGRADED, "True") {
                warn_event(&recorder, app, c).await;
            }
        }
    }
    // Link figures of every app, computed now or kept from before.
    peers.retain(|k, _| plan.apps.contains_key(k));
    report.peers_up = peers.values().map(|p| p.0).sum();
    report.peers_total = peers.values().map(|p| p.1).sum();
    state
        .statuses
        .computed(now, scope.is_none(), &apps, &stored, pending, peers);
    for pol in policies.iter().copied().filter(|p| !is_deleting(*p)) {
        let key = key_of(pol);
        let Some(outcome) = plan.policies.get(&key) else {
            continue;
        };
        let generation = pol.metadata.generation.unwrap_or(0);
        let new = status::policy_status(outcome, generation, pol.status.as_ref(), &now_time);
        if pol
            .status
            .as_ref()
            .is_some_and(|old| old.same_ignoring_time(&new))
        {
            continue;
        }
        if budget == 0 {
            report.statuses_deferred += 1;
            continue;
        }
        budget -= 1;
        let api: Api<MeshPolicy> = Api::namespaced(client.clone(), &key.namespace);
        if let Err(e) =
            apply_status(api, &key.name, key.to_string(), &new, pol.status.as_ref()).await
        {
            defer(e, &mut failed);
            continue;
        }
        report.status_writes.push(format!("MeshPolicy {key}"));
        let old = pol.status.as_ref().map(|s| s.conditions.as_slice());
        if let Some(c) = newly_failing(old, &new.conditions, types::ACCEPTED, "False") {
            warn_event(&recorder, pol, c).await;
        }
    }
    for site in sites.iter().copied().filter(|s| !is_deleting(*s)) {
        let name = site.name_any();
        let Some(outcome) = plan.sites.get(&name) else {
            continue;
        };
        let generation = site.metadata.generation.unwrap_or(0);
        let new = status::site_status(outcome, generation, site.status.as_ref(), &now_time);
        if site
            .status
            .as_ref()
            .is_some_and(|old| old.same_ignoring_time(&new))
        {
            continue;
        }
        if budget == 0 {
            report.statuses_deferred += 1;
            continue;
        }
        budget -= 1;
        let api: Api<MeshSite> = Api::all(client.clone());
        if let Err(e) = apply_status(api, &name, name.clone(), &new, site.status.as_ref()).await {
            defer(e, &mut failed);
            continue;
        }
        report.status_writes.push(format!("MeshSite {name}"));
    }

    report.phase("statuses", &mut phase);
    // 1b. Deleted apps: release the finalizer once no node carries them.
    for app in apps
        .iter()
        .copied()
        .filter(|a| is_deleting(*a) && has_finalizer(a))
    {
        let key = key_of(app).to_string();
        let in_spec: Vec<&String> = plan
            .nodes
            .iter()
            .filter(|(_, spec)| spec.apps.iter().any(|a| a.app == key))
            .map(|(n, _)| n)
            .collect();
        let in_status: Vec<String> = obs
            .meshnodes
            .iter()
            .filter(|m| !snapshot.nodes.get(&m.name_any()).is_some_and(|n| n.lost))
            .filter(|m| m.status.iter().flat_map(|s| &s.apps).any(|a| a.app == key))
            .map(|m| m.name_any())
            .collect();
        if !in_spec.is_empty() || !in_status.is_empty() {
            tracing::info!(app = %key, nodes = ?in_status, "waiting for nodes to remove the app");
            report.waiting_for_cleanup.push(key);
            continue;
        }
        let fins: Vec<String> = app
            .finalizers()
            .iter()
            .filter(|f| *f != APP_FINALIZER)
            .cloned()
            .collect();
        if let Err(e) = set_finalizers(client, app, fins).await {
            defer(e, &mut failed);
            continue;
        }
        tracing::info!(app = %key, "every node removed the app; released finalizer");
        report.finalizers_released.push(key);
    }
    report.phase("cleanup", &mut phase);
    match failed {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::removed_top_level_fields;
    use serde_json::json;

    #[test]
    fn a_status_field_that_goes_away_is_nulled_and_nothing_else() {
        let old = json!({"conditions": [], "enforced": {"generation": 1}, "observedGeneration": 1});
        let new = json!({"conditions": [], "observedGeneration": 2});
        let gone = removed_top_level_fields(Some(&old), &new).unwrap();
        assert_eq!(serde_json::Value::Object(gone), json!({"enforced": null}));
        assert!(removed_top_level_fields(Some(&new), &old).is_none());
        assert!(removed_top_level_fields(None, &new).is_none());
    }
}
