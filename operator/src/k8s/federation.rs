//! The Kubernetes operator as a federation member: the transport that
//! reads each hub and writes this member's records there, run as a task of
//! its own beside the reconcile loop so a slow or unreachable hub never
//! holds up the cluster's own reconciling.
//!
//! A hub cluster is reached with the kubeconfig in a Secret of the
//! operator's namespace (key `kubeconfig`, minted by
//! `scripts/hub-kubeconfig.sh`), read through the API (the operator may
//! `get` only the Secret names its Role lists); a hub directory mounted
//! into the pod works as in standalone mode. Every `every` the task reads
//! the hubs, hands the planner what they say ([`FedInputs`], waking the
//! reconcile loop when it changed), and writes the records of the latest
//! plan with this member's heartbeat. Only the leader does either.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::Store;
use kube::{Client, Config, ResourceExt};
use tokio::sync::{mpsc, watch};
use weft_api::{MeshApp, MeshSite, MeshSiteSpec};

use super::snapshot::{is_deleting, key_of};
use crate::federation::hubapi::{self, MemberApi};
use crate::federation::member::{HubRef, Member};
use crate::planner::snapshot::HubLink;
use crate::planner::{Federated, ObjectKey, Plan};

/// The key of the kubeconfig in a hub Secret.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// A hub Secret is read again at least this often (rotated credentials).
const SECRET_REFRESH: Duration = Duration::from_secs(60);
/// Each request to a hub gives up after this long: the hub is then
/// reported unreachable and the last view stays in force.
const HUB_TIMEOUT: Duration = Duration::from_secs(5);

/// What the hubs say, for the planner: each shared app's input and each
/// Remote site's link. `version` changes with the content, for the
/// reconcile loop's input fingerprint.
#[derive(Debug, Default, PartialEq)]
pub struct FedInputs {
    /// Counts changes.
    pub version: u64,
    /// Shared apps' imports.
    pub imports: BTreeMap<ObjectKey, Federated>,
    /// Remote sites behind hubs.
    pub links: BTreeMap<String, HubLink>,
}

/// A hub cluster's client, made from its Secret.
struct ClusterConn {
    /// The Secret's resourceVersion the client was made from.
    secret_version: String,
    read_at: Instant,
    /// The last request to the hub failed: read the Secret again first.
    failed: bool,
    client: Client,
    api: MemberApi,
}

/// The member task; see the module doc.
pub struct FederationTask {
    /// This cluster's API.
    pub client: Client,
    /// The operator's namespace (where hub Secrets live).
    pub namespace: String,
    /// The MeshSites and MeshApps caches.
    pub sites: Store<MeshSite>,
    /// See `sites`.
    pub apps: Store<MeshApp>,
    /// How often hubs are read and written.
    pub every: Duration,
}

fn epoch_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A client for the hub of `kubeconfig`, with short timeouts.
async fn hub_client(kubeconfig: &str) -> anyhow::Result<Client> {
    let kc = Kubeconfig::from_yaml(kubeconfig).context("the kubeconfig does not parse")?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("the kubeconfig is not usable")?;
    config.connect_timeout = Some(HUB_TIMEOUT);
    config.read_timeout = Some(HUB_TIMEOUT);
    config.write_timeout = Some(HUB_TIMEOUT);
    // As for this cluster's client (see `k8s::client`): errors surface at
    // once and the next round retries.
    config.default_retry = false;
    Ok(Client::try_from(config)?)
}

/// An API server's refusal as its message and code, without the echo of
/// the whole Status object kube's error carries (it ends up in a
/// condition's message).
fn concise(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(s)) => anyhow::anyhow!("{} ({})", s.message, s.code),
        _ => e,
    }
}

impl FederationTask {
    /// Runs until the process ends: reads and writes hubs while `leading`,
    /// publishes what they say on `inputs` and pokes `wake` when it
    /// changed; `plans` carries each pass's plan (its exports).
    pub async fn run(
        self,
        mut leading: watch::Receiver<bool>,
        mut plans: watch::Receiver<Option<Arc<Plan>>>,
        inputs: watch::Sender<Option<Arc<FedInputs>>>,
        wake: mpsc::Sender<()>,
    ) {
        let mut member = Member::with_cluster_transport();
        let mut conns: BTreeMap<String, ClusterConn> = BTreeMap::new();
        let mut version = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                r = plans.changed() => if r.is_err() { return },
                r = leading.changed() => if r.is_err() { return },
            }
            if !*leading.borrow() {
                // A new leader starts from what the hubs hold.
                member = Member::with_cluster_transport();
                conns.clear();
                continue;
            }
            let now = epoch_now();
            let sites: BTreeMap<String, MeshSiteSpec> = self
                .sites
                .state()
                .iter()
                .filter(|s| !is_deleting(s.as_ref()))
                .map(|s| (s.name_any(), s.spec.clone()))
                .collect();
            if !member.active() && !Member::any_hub(&sites) {
                if inputs.borrow().is_some() {
                    inputs.send_replace(None);
                    let _ = wake.try_send(());
                }
                continue;
            }
            let apps = self.apps.state();
            let wanted = member.wanted(
                &sites,
                apps.iter()
                    .filter(|a| !is_deleting(a.as_ref()))
                    .map(|a| (key_of(a.as_ref()), a.spec.sites.as_slice())),
            );
            drop(apps);
            for hub in wanted {
                let read = self.read(&hub, &mut conns).await;
                member.absorb(&hub, read, now);
            }
            let (imports, links) = member.imports(&sites, now);
            let changed = inputs
                .borrow()
                .as_ref()
                .is_none_or(|f| f.imports != imports || f.links != links);
            if changed {
                version += 1;
                inputs.send_replace(Some(Arc::new(FedInputs {
                    version,
                    imports,
                    links,
                })));
                let _ = wake.try_send(());
            }
            let plan = plans.borrow_and_update().clone();
            if let Some(plan) = plan {
                self.write(&mut member, &mut conns, &plan, now).await;
            }
        }
    }

    /// The hub cluster client of `secret`, made again when the Secret
    /// changed (checked every [`SECRET_REFRESH`] and after a failure).
    async fn conn<'a>(
        &self,
        secret: &str,
        conns: &'a mut BTreeMap<String, ClusterConn>,
    ) -> anyhow::Result<&'a mut ClusterConn> {
        let fresh = conns
            .get(secret)
            .is_some_and(|c| !c.failed && c.read_at.elapsed() < SECRET_REFRESH);
        if !fresh {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let s = secrets.get(secret).await.with_context(|| {
                format!(
                    "reading Secret {}/{secret} (hubAccess.kubeconfigSecret)",
                    self.namespace
                )
            })?;
            let version = s.resource_version().unwrap_or_default();
            match conns.get_mut(secret) {
                Some(c) if c.secret_version == version => {
                    c.read_at = Instant::now();
                    c.failed = false;
                }
                _ => {
                    let text = s
                        .data
                        .as_ref()
                        .and_then(|d| d.get(KUBECONFIG_KEY))
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        .with_context(|| {
                            format!(
                                "Secret {}/{secret} has no key {KUBECONFIG_KEY:?}",
                                self.namespace
                            )
                        })?;
                    let client = hub_client(&text).await.with_context(|| {
                        format!("Secret {}/{secret}, key {KUBECONFIG_KEY}", self.namespace)
                    })?;
                    let api = conns.remove(secret).map(|c| c.api).unwrap_or_default();
                    conns.insert(
                        secret.to_string(),
                        ClusterConn {
                            secret_version: version,
                            read_at: Instant::now(),
                            failed: false,
                            client,
                            api,
                        },
                    );
                }
            }
        }
        conns.get_mut(secret).context("hub connection")
    }

    async fn read(
        &self,
        hub: &HubRef,
        conns: &mut BTreeMap<String, ClusterConn>,
    ) -> anyhow::Result<crate::federation::import::HubView> {
        match hub {
            HubRef::Directory(d) => {
                crate::federation::hubdir::read_view(&weft_api::federation::HubLayout::new(d))
            }
            HubRef::Cluster { hub, secret } => {
                let conn = self.conn(secret, conns).await?;
                let read =
                    tokio::time::timeout(HUB_TIMEOUT * 2, hubapi::read_view(&conn.client, hub))
                        .await
                        .unwrap_or_else(|_| {
                            Err(anyhow::anyhow!("no answer within {HUB_TIMEOUT:?}"))
                        });
                conn.failed = read.is_err();
                read.map_err(concise)
                    .with_context(|| format!("reading MeshHub {hub}"))
            }
        }
    }

    /// Writes this member's records of `plan` and its heartbeat to every
    /// hub; failures are logged and retried next time.
    async fn write(
        &self,
        member: &mut Member,
        conns: &mut BTreeMap<String, ClusterConn>,
        plan: &Plan,
        now: u64,
    ) {
        if let Err(e) = member.export(plan, now) {
            tracing::warn!(error = %format!("{e:#}"), "cannot write to a hub directory; retrying");
        }
        let outgoing: Vec<(
            HubRef,
            String,
            BTreeMap<String, weft_api::federation::SiteRecordSpec>,
            u64,
        )> = member
            .outgoing(plan)
            .into_iter()
            .filter(|o| matches!(o.hub, HubRef::Cluster { .. }))
            .map(|o| {
                let records = o.records.into_iter().map(|(k, r)| (k, r.clone())).collect();
                (o.hub, o.member.to_string(), records, o.beat_every)
            })
            .collect();
        for (hub, site, records, every) in outgoing {
            let HubRef::Cluster { secret, .. } = &hub else {
                continue;
            };
            let conn = match self.conn(secret, conns).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%hub, error = %format!("{e:#}"), "cannot reach the hub; retrying");
                    continue;
                }
            };
            let refs: BTreeMap<String, &weft_api::federation::SiteRecordSpec> =
                records.iter().map(|(k, r)| (k.clone(), r)).collect();
            let sync = tokio::time::timeout(
                HUB_TIMEOUT * 2,
                conn.api.sync(&conn.client, &site, &refs, now, every),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {HUB_TIMEOUT:?}")))
            .map_err(concise);
            match sync {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(%hub, writes = n, "wrote this member's records to the hub");
                    }
                    let holds = conn.api.holds_records();
                    member.exported(&hub, holds);
                    if !holds && !member.is_used(&hub) {
                        conns.remove(secret);
                    }
                }
                Err(e) => {
                    conn.failed = true;
                    tracing::warn!(%hub, error = %format!("{e:#}"), "cannot write to the hub; retrying");
                }
            }
        }
    }
}
