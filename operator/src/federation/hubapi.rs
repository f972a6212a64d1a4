//! The hub on a Kubernetes API server (a hub cluster, `config/hub`): the
//! transport of [`super::hub::decide`], as [`super::hubdir`] is for a
//! directory. Members' records are MeshSiteRecords in their namespaces
//! `weft-hub-<site>`, their heartbeats the Lease `weft-member` there; the
//! hub writes MeshHubAllocations in its own namespace and the MeshHub's
//! status. A record outside its member's namespace (or naming another
//! member) is refused here too, whatever the admission policy let through.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use weft_api::federation::{file_stem, HubAllocationSpec, MeshHubAllocation, MeshSiteRecord};
use weft_api::meshhub::HubMemberStatus;
use weft_api::MeshHub;

use super::hub::{check, decide, HubReport};
use super::import::Liveness;

/// The hub operator's namespace (allocations live there).
pub const HUB_NAMESPACE: &str = "weft-hub";
/// Each member's account and heartbeat Lease, in its namespace.
pub const MEMBER: &str = "weft-member";
/// Field manager of the hub's writes.
const MANAGER: &str = "weft-hub";

/// A member's namespace on the hub.
pub fn member_namespace(site: &str) -> String {
    format!("weft-hub-{site}")
}

/// One pass of the hub `name` at `now` (seconds since the epoch).
pub async fn pass(client: &Client, name: &str, now: u64) -> anyhow::Result<HubReport> {
    let hubs: Api<MeshHub> = Api::all(client.clone());
    let hub = hubs.get(name).await?;
    if let Err(report) = check(name, &hub.spec) {
        return Ok(report);
    }
    let mut records = BTreeMap::new();
    let mut refused = Vec::new();
    for r in Api::<MeshSiteRecord>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        let ns = r.namespace().unwrap_or_default();
        let Some(site) = ns.strip_prefix("weft-hub-") else {
            refused.push(format!(
                "record {ns}/{} refused: not in a member's namespace",
                r.name_any()
            ));
            continue;
        };
        if r.name_any() != file_stem(&r.spec.app) {
            refused.push(format!(
                "record {ns}/{} refused: a record is named after its app ({})",
                r.name_any(),
                file_stem(&r.spec.app)
            ));
            continue;
        }
        records.insert((site.to_string(), r.spec.app.clone()), r.spec);
    }
    let mut heartbeats = BTreeMap::new();
    for m in &hub.spec.members {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &member_namespace(&m.site));
        if let Some(renewed) = leases
            .get_opt(MEMBER)
            .await?
            .and_then(|l| l.spec?.renew_time)
        {
            let t = u64::try_from(renewed.0.as_second()).unwrap_or(0);
            heartbeats.insert(m.site.clone(), t);
        }
    }
    let allocs: Api<MeshHubAllocation> = Api::namespaced(client.clone(), HUB_NAMESPACE);
    let stored: Vec<MeshHubAllocation> = allocs.list(&ListParams::default()).await?.items;
    let previous: BTreeMap<String, HubAllocationSpec> = stored
        .iter()
        .map(|a| (a.spec.app.clone(), a.spec.clone()))
        .collect();
    let decided = decide(
        name,
        &hub.spec,
        records,
        &heartbeats,
        &previous,
        now,
        |site| format!("namespace {}", member_namespace(site)),
    );
    let mut report = decided.report;
    report.refused.extend(refused);
    let pp = PatchParams::apply(MANAGER).force();
    for (app, spec) in &decided.allocations {
        if previous.get(app) == Some(spec) {
            continue;
        }
        let body = json!({
            "apiVersion": "weft.dev/v1alpha1",
            "kind": "MeshHubAllocation",
            "metadata": {"name": file_stem(app), "namespace": HUB_NAMESPACE},
            "spec": spec,
        });
        allocs
            .patch(&file_stem(app), &pp, &Patch::Apply(&body))
            .await?;
        report.writes += 1;
    }
    for a in &stored {
        if !decided.allocations.contains_key(&a.spec.app) {
            allocs
                .delete(&a.name_any(), &DeleteParams::default())
                .await?;
            report.writes += 1;
        }
    }
    let members: Vec<HubMemberStatus> = report
        .members
        .iter()
        .map(|m| HubMemberStatus {
            site: m.site.clone(),
            state: match m.liveness {
                Liveness::Fresh => "Syncing",
                Liveness::Stale => "Stale",
                Liveness::Pruned => "Gone",
            }
            .into(),
            last_sync: m.last_sync.and_then(|t| {
                let t = k8s_openapi::jiff::Timestamp::from_second(i64::try_from(t).ok()?).ok()?;
                Some(t.to_string())
            }),
            records: u32::try_from(m.records).unwrap_or(u32::MAX),
        })
        .collect();
    let syncing = members.iter().filter(|m| m.state == "Syncing").count();
    let status = json!({
        "status": {
            "members": syncing,
            "memberStatus": members,
            "observedGeneration": hub.metadata.generation,
        }
    });
    if hub.status.as_ref().map(|s| (&s.member_status, s.members))
        != Some((&members, u32::try_from(syncing).unwrap_or(u32::MAX)))
    {
        hubs.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    Ok(report)
}
