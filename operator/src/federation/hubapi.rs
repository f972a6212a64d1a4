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
        write_status(&hubs, &hub, &report, Vec::new()).await?;
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
    write_status(&hubs, &hub, &report, members).await?;
    Ok(report)
}

/// Writes the MeshHub's status when it changed (ignoring condition times).
async fn write_status(
    hubs: &Api<MeshHub>,
    hub: &MeshHub,
    report: &HubReport,
    members: Vec<HubMemberStatus>,
) -> anyhow::Result<()> {
    let syncing =
        u32::try_from(members.iter().filter(|m| m.state == "Syncing").count()).unwrap_or(u32::MAX);
    let old = hub.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone();
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    weft_api::conditions::set(&mut conditions, report.ready(hub.metadata.generation), now);
    let names: Vec<&str> = members
        .iter()
        .filter(|m| m.state == "Syncing")
        .map(|m| m.site.as_str())
        .collect();
    // RFC 3339 in UTC sorts as time does; a member never synced counts
    // as the oldest of all, and is told by its state.
    let oldest_sync = members.iter().map(|m| m.last_sync.clone()).min().flatten();
    let new = weft_api::meshhub::MeshHubStatus {
        conditions,
        observed_generation: hub.metadata.generation,
        members: syncing,
        syncing: (!names.is_empty()).then(|| names.join(",")),
        oldest_sync,
        member_status: members,
    };
    let same = old.members == new.members
        && old.member_status == new.member_status
        && old.syncing == new.syncing
        && old.oldest_sync == new.oldest_sync
        && old.observed_generation == new.observed_generation
        && weft_api::conditions::lists_equal_ignoring_time(&old.conditions, &new.conditions);
    if !same {
        hubs.patch_status(
            &hub.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": new })),
        )
        .await?;
    }
    Ok(())
}

/// Everything a member reads from a hub API, as [`super::hubdir::read_view`]
/// does from a directory: the MeshHub as [`HubState`], the allocations,
/// every member's records (those out of their member's namespace or not
/// named after their app are left out) and heartbeats.
pub async fn read_view(client: &Client, hub_name: &str) -> anyhow::Result<super::import::HubView> {
    let hub = Api::<MeshHub>::all(client.clone()).get(hub_name).await?;
    let spec = &hub.spec;
    let state = weft_api::federation::HubState {
        hub: hub_name.to_string(),
        members: spec.members.clone(),
        stale_after_seconds: spec
            .stale_after_seconds
            .unwrap_or(weft_api::federation::DEFAULT_STALE_AFTER_SECONDS),
        prune_after_seconds: spec
            .prune_after_seconds
            .unwrap_or(weft_api::federation::DEFAULT_PRUNE_AFTER_SECONDS),
        block_slices: spec
            .block_slices
            .unwrap_or(weft_api::federation::DEFAULT_BLOCK_SLICES),
    };
    let mut records = BTreeMap::new();
    for r in Api::<MeshSiteRecord>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        let ns = r.namespace().unwrap_or_default();
        if let Some(site) = ns.strip_prefix("weft-hub-") {
            if r.name_any() == file_stem(&r.spec.app) {
                records.insert((site.to_string(), r.spec.app.clone()), r.spec);
            }
        }
    }
    let allocations = Api::<MeshHubAllocation>::namespaced(client.clone(), HUB_NAMESPACE)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|a| a.name_any() == file_stem(&a.spec.app))
        .map(|a| (a.spec.app.clone(), a.spec))
        .collect();
    let mut heartbeats = BTreeMap::new();
    for m in &spec.members {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &member_namespace(&m.site));
        if let Some(t) = leases
            .get_opt(MEMBER)
            .await?
            .and_then(|l| l.spec?.renew_time)
        {
            heartbeats.insert(m.site.clone(), u64::try_from(t.0.as_second()).unwrap_or(0));
        }
    }
    Ok(super::import::HubView {
        state: Some(state),
        allocations,
        records,
        heartbeats,
        error: None,
        read_at: 0,
    })
}

/// What a member last wrote to a hub API, so unchanged records are not
/// written again (as [`super::hubdir::MemberFiles`] for a directory).
#[derive(Default)]
pub struct MemberApi {
    written: Option<BTreeMap<String, weft_api::federation::SiteRecordSpec>>,
    last_beat: Option<u64>,
}

impl MemberApi {
    /// Whether any record this member wrote is still on the hub.
    pub fn holds_records(&self) -> bool {
        self.written.as_ref().is_some_and(|w| !w.is_empty())
    }

    /// Brings this member's records in its namespace in line with
    /// `records` (by app) and renews its Lease every `beat_every` seconds
    /// (and whenever a record changed). Returns the objects written.
    pub async fn sync(
        &mut self,
        client: &Client,
        site: &str,
        records: &BTreeMap<String, &weft_api::federation::SiteRecordSpec>,
        now: u64,
        beat_every: u64,
    ) -> anyhow::Result<usize> {
        let ns = member_namespace(site);
        let api: Api<MeshSiteRecord> = Api::namespaced(client.clone(), &ns);
        let written = match &mut self.written {
            Some(w) => w,
            None => {
                let mut found = BTreeMap::new();
                for r in api.list(&ListParams::default()).await? {
                    found.insert(r.spec.app.clone(), r.spec);
                }
                self.written.insert(found)
            }
        };
        let pp = PatchParams::apply(MEMBER).force();
        let mut writes = 0;
        for (app, r) in records {
            if written.get(app) == Some(*r) {
                continue;
            }
            let body = json!({
                "apiVersion": "weft.dev/v1alpha1",
                "kind": "MeshSiteRecord",
                "metadata": {"name": file_stem(app), "namespace": ns},
                "spec": r,
            });
            api.patch(&file_stem(app), &pp, &Patch::Apply(&body))
                .await?;
            written.insert(app.clone(), (*r).clone());
            writes += 1;
        }
        let gone: Vec<String> = written
            .keys()
            .filter(|a| !records.contains_key(*a))
            .cloned()
            .collect();
        for app in gone {
            match api.delete(&file_stem(&app), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            written.remove(&app);
            writes += 1;
        }
        if self.last_beat.is_none_or(|b| now >= b + beat_every) || writes > 0 {
            let t = k8s_openapi::jiff::Timestamp::from_second(i64::try_from(now).unwrap_or(0))?;
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": MEMBER, "namespace": ns},
                "spec": {
                    "holderIdentity": site,
                    "renewTime": t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                },
            });
            Api::<Lease>::namespaced(client.clone(), &ns)
                .patch(MEMBER, &pp, &Patch::Apply(&lease))
                .await?;
            self.last_beat = Some(now);
        }
        Ok(writes)
    }
}
