//! The daemon's main loop, shared by both modes: read the desired MeshNode
//! through a [`Transport`], list local workloads, run a reconcile pass,
//! publish status when it changed (or as a heartbeat), record metrics.
//!
//! ```text
//!  Transport::read_spec ─┐
//!  WorkloadSource::list ─┴─► Reconciler::pass ─► Transport::write_status (on change / heartbeat)
//!                                            └─► Metrics::observe_pass
//! ```
//!
//! With an attach socket (`--attach-socket`), the workload source
//! merges announcements with what the container runtime registered, and
//! after every pass publishes one outcome per registered workload to the
//! attach server ([`crate::attach`]).
//!
//! Standalone mode uses [`FileTransport`] (the state directory), Kubernetes
//! mode [`crate::k8s::KubeTransport`] (a watch on its own MeshNode and a
//! status patch); nothing else differs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weft_api::standalone::{NodeRegistration, StateDir};
use weft_api::{MeshNode, MeshNodeStatus};

use crate::attach::{AttachServer, Shared};
use crate::dataplane::Dataplane;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::standalone::{FileTransport, StateAnnouncements};
use crate::status;
use crate::status_backoff::Backoff as StatusBackoff;
use crate::workloads::{DirSource, RuntimeSource, WorkloadSource};

/// How the daemon exchanges MeshNode state with the control plane.
pub trait Transport {
    /// Short name of the mode, for logs.
    fn mode(&self) -> &'static str;
    /// The desired MeshNode, or the last good one; `None` until one is known.
    fn read_spec(&mut self) -> Option<MeshNode>;
    /// Whether status can be written now (in Kubernetes only once the
    /// operator has created the MeshNode).
    fn can_write_status(&self) -> bool {
        true
    }
    /// Publishes the status (the status subresource).
    fn write_status(&mut self, status: &MeshNodeStatus) -> anyhow::Result<()>;
}

/// Settings of the shared loop.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// Node name.
    pub node: String,
    /// Address peers reach this node at.
    pub advertise_address: String,
    /// Time between passes.
    pub interval: Duration,
    /// Time between status writes when nothing changed.
    pub heartbeat: Duration,
    /// Set when an input changed (see [`crate::wake`]): the loop runs its
    /// next pass at once instead of waiting out `interval`, which stays
    /// the safety net.
    pub wake: crate::wake::Wake,
}

/// Settings of the standalone loop.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Node name.
    pub node: String,
    /// Site of the node.
    pub site: String,
    /// Address peers reach this node at.
    pub advertise_address: String,
    /// Shared state directory.
    pub state_dir: std::path::PathBuf,
    /// Private data directory (keys, caches).
    pub data_dir: std::path::PathBuf,
    /// Time between passes.
    pub interval: Duration,
    /// Time between status writes when nothing changed.
    pub heartbeat: Duration,
    /// Whether each app netns has its resolver (named in CNI results).
    pub dns: bool,
    /// Serve the CNI attach protocol on this unix socket (off when `None`).
    pub attach_socket: Option<std::path::PathBuf>,
}

/// How long an ADD waits for the pass that attaches its workload (the
/// plugin gives up a little later).
pub const ATTACH_WAIT: Duration = Duration::from_secs(25);

/// Current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs the standalone mode until `stop` is set.
pub fn run<D: Dataplane>(
    cfg: &RunConfig,
    dp: D,
    stop: Arc<AtomicBool>,
    metrics: &Metrics,
) -> Result<(), Error> {
    let state = StateDir::new(&cfg.state_dir);
    let mut transport = FileTransport::new(state.clone(), &cfg.node, &cfg.data_dir);
    transport.register(&NodeRegistration {
        name: cfg.node.clone(),
        site: cfg.site.clone(),
        address: cfg.advertise_address.clone(),
        labels: Default::default(),
    })?;
    let rec = Reconciler::new(&cfg.node, &cfg.advertise_address, dp, &cfg.data_dir)?;
    let lc = LoopConfig {
        node: cfg.node.clone(),
        advertise_address: cfg.advertise_address.clone(),
        interval: cfg.interval,
        heartbeat: cfg.heartbeat,
        wake: crate::wake::Wake::default(),
    };
    // The operator's writes of this node's MeshNode and the announcements of
    // its workloads wake the loop (polling stays the safety net).
    crate::wake::watch(
        &lc.wake,
        vec![
            (state.node_dir(&cfg.node), Some("meshnode.json")),
            (state.workloads_dir(&cfg.node), None),
        ],
    );
    let Some(socket) = &cfg.attach_socket else {
        let mut source = DirSource::new(state.workloads_dir(&cfg.node));
        run_loop(&lc, &mut transport, &mut source, rec, &stop, metrics);
        return Ok(());
    };
    let attach = AttachService::start(socket, &cfg.data_dir, &stop, &lc.wake)?;
    let announcements = StateAnnouncements::new(state, &cfg.node);
    let mut source = RuntimeSource::new(announcements, attach.shared.clone()).with_dns(cfg.dns);
    run_loop(&lc, &mut transport, &mut source, rec, &stop, metrics);
    attach.stop(&stop);
    Ok(())
}

/// The attach socket's server thread and the registry it shares with the
/// loop (both modes).
pub struct AttachService {
    /// Registry and outcomes shared with [`RuntimeSource`].
    pub shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
}

impl AttachService {
    /// Binds `socket` (the registry persists under `data_dir`, so a restart
    /// re-attaches what the runtime added before) and serves it until `stop`;
    /// a change of what is registered sets `wake`.
    pub fn start(
        socket: &std::path::Path,
        data_dir: &std::path::Path,
        stop: &Arc<AtomicBool>,
        wake: &crate::wake::Wake,
    ) -> Result<Self, Error> {
        let shared = Arc::new(
            Shared::persistent(data_dir.join("attach-registry.json"))?.waking(wake.clone()),
        );
        let server = AttachServer::bind(socket, shared.clone(), ATTACH_WAIT)
            .map_err(|e| Error::io(socket, e))?;
        tracing::info!(socket = %socket.display(), "attach socket listening");
        let server_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("attach".into())
            .spawn(move || server.serve(server_stop))
            .map_err(|e| Error::io(socket, e))?;
        Ok(AttachService { shared, thread })
    }

    /// Sets `stop` and waits for the server thread.
    pub fn stop(self, stop: &AtomicBool) {
        stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
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
    tracing::info!(node = %cfg.node, address = %cfg.advertise_address, mode = transport.mode(), "node daemon running");
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let spec = transport.read_spec();
        let local = source.list();
        let mut report = rec.pass(spec.as_ref(), &local, now());
        add_pending(&mut report.status, source.pending());
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
        let mut left = cfg.interval.saturating_sub(started.elapsed());
        while left > Duration::ZERO && !stop.load(Ordering::Relaxed) && !cfg.wake.take() {
            let step = left.min(crate::wake::STEP);
            std::thread::sleep(step);
            left = left.saturating_sub(step);
        }
    }
    tracing::info!(node = %cfg.node, "node daemon stopping");
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
