//! The `weft-operator kubernetes` loop: six reflectors, one trigger channel,
//! a debounced global reconcile, exponential backoff with jitter on errors,
//! and writes only while this replica leads.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use weft_api::{MeshApp, MeshNode, MeshPolicy, MeshSite};

use super::federation::{FedInputs, FederationTask};
use super::lease::{LeaderElector, LeaseConfig};
use super::metrics::Metrics;
use super::pass_state::PassState;
use super::reconcile::reconcile_all;
use super::snapshot::Observed;
use super::trim;
use super::watch::retrying_watcher;
use crate::planner::PlannerConfig;

/// Settings of the Kubernetes loop.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Planner settings.
    pub planner: PlannerConfig,
    /// Leader election; `None` runs as the only writer (one replica).
    pub lease: Option<LeaseConfig>,
    /// A pass runs at least this often (lost-node detection needs time to pass).
    pub resync: Duration,
    /// Passes start at most this often: changes arriving while a pass
    /// waits for its turn are planned together (see [`pause_before_pass`]).
    pub debounce: Duration,
    /// Where passes, errors, leadership and readiness are counted.
    pub metrics: Arc<Metrics>,
    /// The operator's namespace: where the Secrets of hub kubeconfigs live.
    pub namespace: String,
    /// How often federation hubs are read and written (see
    /// [`super::federation`]).
    pub hub_every: Duration,
}

/// How long a change that comes after a quiet spell waits for the rest of
/// its burst (one `kubectl apply` of several objects) before the pass.
pub const GATHER: Duration = Duration::from_millis(20);

/// Passes start at least this many times their own last duration apart
/// under a stream of changes, so the operator spends at most a fifth of its
/// time in passes however small the cluster.
pub const PASS_SPACING: u32 = 4;

/// The pause before the next pass. Under a stream of changes (heartbeats of
/// a thousand nodes) passes start every [`PASS_SPACING`] times the last
/// pass's duration, at least [`GATHER`] and at most `debounce` apart; after
/// a quiet spell, and for an isolated change (a new app, a node's new key),
/// after [`GATHER`]. A small cluster so answers a node's new key tens of
/// milliseconds after the pass that planned its app, where a fixed
/// `debounce` made every app's first packet wait for it; a large one, whose
/// passes take longer, keeps the full `debounce` between them.
pub fn pause_before_pass(
    since_last: Option<Duration>,
    last_took: Duration,
    debounce: Duration,
) -> Duration {
    let gap = (last_took * PASS_SPACING).max(GATHER).min(debounce);
    match since_last {
        Some(d) if d < gap => (gap - d).max(GATHER),
        _ => GATHER.min(debounce),
    }
}

/// Pause before the pass that sends status writes a pass had to defer.
pub const STATUS_PACING: Duration = Duration::from_secs(1);

/// First retry delay after a failed pass.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Next delay: doubled, capped.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(BACKOFF_MAX)
}

/// Adds up to 25% jitter, derived from the clock's sub-second part.
pub fn with_jitter(d: Duration) -> Duration {
    let nanos = u64::from(Timestamp::now().subsec_nanosecond().unsigned_abs());
    let max = u64::try_from(d.as_millis() / 4).unwrap_or(0);
    if max == 0 {
        return d;
    }
    d + Duration::from_millis(nanos % max)
}

fn trim_meta<K: Resource>(o: &mut K) {
    trim::meta(o.meta_mut());
}

fn reflect<K>(
    api: Api<K>,
    tx: mpsc::Sender<()>,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    // The caches keep only what the snapshot reads (see `trim`).
    let stream = retrying_watcher(api, watcher::Config::default()).modify(trim);
    let fut = reflector::reflector(writer, stream).for_each(move |ev| {
        let tx = tx.clone();
        async move {
            match ev {
                // Yielded before each list attempt, also while the API is
                // down: nothing changed, no reason for a pass.
                Ok(watcher::Event::Init) => {}
                Ok(_) => {
                    let _ = tx.try_send(());
                }
                Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
    (reader, fut)
}

/// Runs until `shutdown` resolves.
pub async fn run(
    client: Client,
    cfg: RunConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let (apps, f1) = reflect(Api::<MeshApp>::all(client.clone()), tx.clone(), trim_meta);
    let (policies, f2) = reflect(
        Api::<MeshPolicy>::all(client.clone()),
        tx.clone(),
        trim_meta,
    );
    let (sites, f3) = reflect(Api::<MeshSite>::all(client.clone()), tx.clone(), trim_meta);
    let mut meshnode_trim = trim::MeshNodeTrim::default();
    let (meshnodes, f4) = reflect(Api::<MeshNode>::all(client.clone()), tx.clone(), move |m| {
        meshnode_trim.apply(m)
    });
    let (pods, f5) = reflect(Api::<Pod>::all(client.clone()), tx.clone(), trim::pod);
    let (nodes, f6) = reflect(Api::<Node>::all(client.clone()), tx.clone(), trim::node);
    let tasks = [
        tokio::spawn(f1),
        tokio::spawn(f2),
        tokio::spawn(f3),
        tokio::spawn(f4),
        tokio::spawn(f5),
        tokio::spawn(f6),
    ];

    let (leading_tx, mut leading) = watch::channel(cfg.lease.is_none());
    let elector = cfg
        .lease
        .clone()
        .map(|l| tokio::spawn(LeaderElector::new(client.clone(), l).run(leading_tx)));

    tokio::pin!(shutdown);
    tracing::info!("waiting for the caches to fill");
    tokio::select! {
        _ = &mut shutdown => return Ok(()),
        r = async {
            apps.wait_until_ready().await?;
            policies.wait_until_ready().await?;
            sites.wait_until_ready().await?;
            meshnodes.wait_until_ready().await?;
            pods.wait_until_ready().await?;
            nodes.wait_until_ready().await
        } => r?,
    }
    tracing::info!("caches ready");
    cfg.metrics.set_ready(true);

    let (plans_tx, plans_rx) = watch::channel(None);
    let (fed_tx, fed_rx) = watch::channel::<Option<Arc<FedInputs>>>(None);
    let federation = tokio::spawn(
        FederationTask {
            client: client.clone(),
            namespace: cfg.namespace.clone(),
            sites: sites.clone(),
            apps: apps.clone(),
            every: cfg.hub_every,
        }
        .run(leading.clone(), plans_rx, fed_tx, tx.clone()),
    );

    let mut backoff = BACKOFF_MIN;
    let mut logged: Vec<String> = Vec::new();
    let mut due = true;
    let mut state = PassState::default();
    let mut last_pass: Option<std::time::Instant> = None;
    let mut last_took = Duration::ZERO;
    loop {
        if !due {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = rx.recv() => {}
                _ = leading.changed() => {}
                _ = tokio::time::sleep(cfg.resync) => {}
            }
        }
        due = false;
        tokio::time::sleep(pause_before_pass(
            last_pass.map(|t| t.elapsed()),
            last_took,
            cfg.debounce,
        ))
        .await;
        last_pass = Some(std::time::Instant::now());
        while rx.try_recv().is_ok() {}
        let is_leader = *leading.borrow();
        cfg.metrics.set_leader(is_leader);
        if !is_leader {
            // A replica that leads again starts from what is stored.
            state = PassState::default();
            continue;
        }
        let obs = Observed {
            apps: apps.state(),
            policies: policies.state(),
            sites: sites.state(),
            meshnodes: meshnodes.state(),
            pods: pods.state(),
            nodes: nodes.state(),
        };
        state.federation = fed_rx.borrow().clone();
        let started = std::time::Instant::now();
        let instance = cfg.lease.as_ref().map(|l| l.identity.as_str());
        let result = reconcile_all(
            &client,
            &obs,
            &cfg.planner,
            Timestamp::now(),
            instance,
            &mut state,
        )
        .await;
        last_took = started.elapsed();
        cfg.metrics.observe_pass(last_took, result.as_ref());
        if let Some(plan) = &state.last_plan {
            plans_tx.send_if_modified(|p| {
                let new = p.as_ref().is_none_or(|old| !Arc::ptr_eq(old, plan));
                if new {
                    *p = Some(plan.clone());
                }
                new
            });
        }
        match result {
            Ok(report) => {
                backoff = BACKOFF_MIN;
                let now: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
                for e in report
                    .errors
                    .iter()
                    .filter(|e| !logged.contains(&e.to_string()))
                {
                    tracing::warn!(object = %e.object, field = %e.field, reason = %e.reason, "{}", e.message);
                }
                logged = now;
                if report.wrote_anything() {
                    tracing::debug!(?report, "pass wrote");
                }
                if report.statuses_deferred > 0 {
                    // Paced: at most one budget of status patches a second.
                    tracing::info!(
                        deferred = report.statuses_deferred,
                        "status writes over this pass's budget follow in the next"
                    );
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(STATUS_PACING) => {}
                    }
                    due = true;
                }
            }
            Err(e) => {
                let delay = with_jitter(backoff);
                tracing::warn!(reason = e.metric_label(), error = %e, retry_in_ms = delay.as_millis() as u64, "pass failed");
                backoff = next_backoff(backoff);
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                due = true;
            }
        }
    }
    tracing::info!("shutting down");
    federation.abort();
    for t in tasks {
        t.abort();
    }
    if let Some(e) = elector {
        e.abort();
        let _ = e.await;
        if let Some(l) = cfg.lease.clone() {
            match LeaderElector::new(client.clone(), l).release().await {
                Ok(()) => tracing::info!("released the leader Lease"),
                Err(e) => tracing::warn!(error = %e, "cannot release the leader Lease"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap_and_jitter_adds_at_most_a_quarter() {
        let mut d = BACKOFF_MIN;
        for _ in 0..20 {
            d = next_backoff(d);
        }
        assert_eq!(d, BACKOFF_MAX);
        let j = with_jitter(Duration::from_secs(4));
        assert!(j >= Duration::from_secs(4) && j < Duration::from_secs(5));
    }

    #[test]
    fn passes_are_spaced_by_their_own_cost_within_debounce_and_soon_after_quiet() {
        let d = Duration::from_millis(200);
        let ms = Duration::from_millis;
        // Slow passes (a large cluster): the full debounce between starts.
        let slow = ms(80);
        assert_eq!(pause_before_pass(None, slow, d), GATHER, "the first pass");
        assert_eq!(
            pause_before_pass(Some(ms(5_000)), slow, d),
            GATHER,
            "after quiet"
        );
        assert_eq!(pause_before_pass(Some(ms(200)), slow, d), GATHER);
        assert_eq!(
            pause_before_pass(Some(ms(50)), slow, d),
            ms(150),
            "a stream of changes"
        );
        assert_eq!(
            pause_before_pass(Some(ms(190)), slow, d),
            GATHER,
            "never less than GATHER"
        );
        // Quick passes (a small cluster): four times their cost apart.
        let quick = ms(15);
        assert_eq!(pause_before_pass(Some(ms(10)), quick, d), ms(50));
        assert_eq!(
            pause_before_pass(Some(ms(70)), quick, d),
            GATHER,
            "a new key soon after"
        );
        assert_eq!(
            pause_before_pass(Some(ms(1)), ms(1), d),
            GATHER,
            "never a pause under GATHER"
        );
        assert_eq!(
            pause_before_pass(None, Duration::ZERO, ms(5)),
            ms(5),
            "a shorter debounce wins"
        );
    }
}
