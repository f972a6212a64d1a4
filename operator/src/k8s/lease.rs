//! Leader election over a `coordination.k8s.io/v1` Lease (kube-runtime 5 has
//! none). One replica holds the Lease and renews it; the others take it over
//! once `renewTime + leaseDurationSeconds` has passed. Every write uses the
//! Lease's resourceVersion, so two replicas can never both win a round: the
//! loser gets 409 Conflict and stays a follower.
//!
//! A replica that fails to renew stops writing at once (it reports "not
//! leading" before anyone else may take over), which keeps "only the leader
//! writes" true even across API hiccups.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

use super::error::Error;

/// Where the Lease lives and how long a term is.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a holder keeps the Lease without renewing.
    pub duration: Duration,
    /// How often the holder renews (well below `duration`).
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// Defaults: 15 s terms renewed every 5 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// Acquires and renews one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// An elector for `cfg` using `client`.
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.cfg.namespace, self.cfg.name)
    }

    fn err(&self, source: kube::Error) -> Error {
        Error::Lease {
            lease: self.lease_name(),
            source,
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.cfg.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One round: create, renew or take over the Lease. Returns whether this
    /// replica holds it afterwards.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, Error> {
        let me = &self.cfg.identity;
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(self.duration_secs()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let held_by_me = spec.holder_identity.as_deref() == Some(me.as_str());
        if !held_by_me {
            let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
                (Some(MicroTime(renewed)), Some(secs)) => {
                    now.duration_since(*renewed) > SignedDuration::from_secs(i64::from(secs))
                }
                _ => true,
            };
            let vacant = spec.holder_identity.as_deref().is_none_or(str::is_empty);
            if !expired && !vacant {
                return Ok(false);
            }
            spec.holder_identity = Some(me.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(self.duration_secs());
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Gives the Lease up if this replica holds it (graceful shutdown), so a
    /// follower takes over at its next round instead of waiting for expiry.
    pub async fn release(&self) -> Result<(), Error> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        // A renew time in the past lets anyone take it over at once.
        spec.renew_time = None;
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Keeps trying and renewing forever, publishing whether this replica
    /// leads. Any failed round publishes `false` before the next attempt.
    pub async fn run(self, leading: watch::Sender<bool>) {
        loop {
            let now_leading = match self.try_acquire_or_renew(Timestamp::now()).await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(reason = e.metric_label(), error = %e, "leader election round failed");
                    false
                }
            };
            if *leading.borrow() != now_leading {
                tracing::info!(identity = %self.cfg.identity, leading = now_leading, "leadership changed");
            }
            leading.send_replace(now_leading);
            tokio::time::sleep(self.cfg.renew_every).await;
        }
    }
}
