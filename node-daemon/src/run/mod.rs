//! The run loop, the one place that joins the daemon's parts: read the
//! desired MeshNode through a [`Transport`], list local workloads, run a
//! reconcile pass, publish status when it changed (or as a heartbeat),
//! record metrics, then sleep until the next pass or an input wakes it.
//!
//! ```text
//!  Transport::read_spec ─┐
//!  WorkloadSource::list ─┴─► Reconciler::pass ─► Transport::write_status (on change / heartbeat)
//!                                            └─► Metrics::observe_pass
//! ```
//!
//! Each mode ([`standalone`], [`kubernetes`]) only picks a transport and a
//! workload source and calls [`run_loop`]; nothing else differs.

pub mod attach_service;
pub mod kubernetes;
pub mod metrics;
pub mod reconcile;
pub mod standalone;
pub mod status_backoff;

pub use standalone::{run, run_docker, RunConfig};

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weft_api::MeshNodeStatus;

use crate::core::status;
use crate::dataplane::Dataplane;
use crate::desired::Transport;
use crate::workloads::WorkloadSource;
use metrics::Metrics;
use reconcile::Reconciler;
use status_backoff::Backoff as StatusBackoff;

/// Settings of the shared loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// Node name.
    pub node: String,
    /// Address peers reach this node at.
    pub advertise_address: String,
    /// Time between passes while the node is settling: a pass wrote,
    /// failed or left an app unprogrammed in the last [`SETTLING`].
    pub interval: Duration,
    /// Time between passes once settled. Inputs wake the loop at once
    /// (see [`crate::wake`] and [`Dataplane::wake_on_change`]), so the timed
    /// pass only refreshes figures (handshakes, counters) and is the
    /// safety net; at 200 apps a pass a second was most of an idle node's CPU.
    pub idle_interval: Duration,
    /// Time between status writes when nothing changed.
    pub heartbeat: Duration,
    /// Set when an input changed (see [`crate::wake`]): the loop runs its
    /// next pass at once instead of waiting out `interval`, which stays
    /// the safety net.
    pub wake: crate::wake::Wake,
}

/// How long after its last write, error or unprogrammed app a node still
/// counts as settling (new peers' first handshakes show within it).
pub const SETTLING: Duration = Duration::from_secs(30);

/// Current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// The loop itself, generic over the transport; runs until `stop` is set.
/// Reconcile passes (and so every namespace switch) happen on the calling
/// thread.
pub fn run_loop<D: Dataplane, T: Transport, W: WorkloadSource>(
    cfg: &LoopConfig,
    transport: &mut T,
    source: &mut W,
    mut rec: Reconciler<D>,
    stop: &AtomicBool,
    metrics: &Metrics,
) {
    let mut last_status: Option<MeshNodeStatus> = None;
    let mut last_write = Instant::now();
    let mut last_errors: Vec<String> = Vec::new();
    let mut status_writes = StatusBackoff::for_status_writes();
    let mut unsettled = Instant::now();
    let mut was_settling = true;
    rec.wake_on_change(&cfg.wake);
    tracing::info!(node = %cfg.node, address = %cfg.advertise_address, mode = transport.mode(), "node daemon running");
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let spec = transport.read_spec();
        let local = source.list();
        let mut report = rec.pass(spec.as_ref(), &local, now());
        add_pending(&mut report.status, source.pending());
        if let Some(spec) = &spec {
            let placed: BTreeSet<&str> = spec
                .spec
                .apps
                .iter()
                .flat_map(|a| a.workloads.iter().map(String::as_str))
                .collect();
            if let Some(claimed) = source.claimed_apps(&spec.spec.site, &placed) {
                let here: BTreeSet<&str> = spec.spec.apps.iter().map(|a| a.app.as_str()).collect();
                let wanted = claimed
                    .into_iter()
                    .filter(|a| !here.contains(a.as_str()))
                    .collect();
                rec.prepare_keys(&wanted, &mut report);
            }
        }
        if let Some(c) = source.condition() {
            weft_api::conditions::set(&mut report.status.conditions, c, now());
        }
        metrics.observe_pass(started.elapsed(), &report);
        if spec.is_some() {
            metrics.set_ready(true);
        }
        if report.errors != last_errors {
            for e in report.errors.iter().filter(|e| !last_errors.contains(e)) {
                tracing::warn!(node = %cfg.node, error = %e, "reconcile problem");
            }
            last_errors = report.errors.clone();
        }
        if report.writes > 0 {
            tracing::info!(node = %cfg.node, writes = report.writes, "data plane updated");
        }
        let due = last_write.elapsed() >= cfg.heartbeat;
        let changed = last_status
            .as_ref()
            .is_none_or(|old| status::changed(old, &report.status));
        // A failed write waits out its backoff; the next one carries this
        // pass's status (last_status only moves on success).
        if (due || changed) && transport.can_write_status() && status_writes.due(Instant::now()) {
            match transport.write_status(&report.status) {
                Ok(()) => {
                    metrics.status_written();
                    last_write = Instant::now();
                    last_status = Some(report.status.clone());
                    if let Some(r) = status_writes.succeeded(last_write) {
                        r.log();
                    }
                }
                Err(e) => {
                    metrics.error("status_write");
                    status_writes.failed(Instant::now()).log(&e);
                }
            }
        }
        // After the status write: whoever the answer reaches can already
        // read the address in status.
        source.after_pass(spec.as_ref(), &report.status);
        if report.writes > 0
            || !report.errors.is_empty()
            || report.status.apps.iter().any(|a| !a.programmed)
        {
            unsettled = Instant::now();
        }
        let settling = unsettled.elapsed() < SETTLING;
        if was_settling && !settling {
            release_freed_memory();
        }
        was_settling = settling;
        let interval = if settling {
            cfg.interval
        } else {
            cfg.idle_interval.max(cfg.interval)
        };
        let next = started + interval;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() || stop.load(Ordering::Relaxed) || cfg.wake.wait(left) {
                break;
            }
        }
    }
    tracing::info!(node = %cfg.node, "node daemon stopping");
}

/// Gives the heap pages freed while the node was settling back to the
/// kernel, once it has settled: programming many apps frees much of what
/// it allocated, and glibc keeps freed pages resident (about 1.5 MiB after
/// 200 apps). Once per settling, never on the packet path.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Adds workloads that are announced but not attachable yet to the status
/// (no app, no address), keeping the list sorted by `namespace/name`.
fn add_pending(status: &mut MeshNodeStatus, pending: Vec<weft_api::standalone::LocalWorkload>) {
    if pending.is_empty() {
        return;
    }
    for w in pending {
        if status
            .workloads
            .iter()
            .any(|s| s.namespace == w.namespace && s.name == w.name)
        {
            continue;
        }
        status.workloads.push(weft_api::WorkloadStatus {
            name: w.name,
            namespace: w.namespace,
            labels: w.labels,
            app: None,
            address: None,
        });
    }
    status
        .workloads
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
}
