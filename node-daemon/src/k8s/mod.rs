//! Kubernetes mode of the daemon: the API server replaces the state directory.
//!
//! ```text
//!  watch meshnodes?fieldSelector=metadata.name=<node> ─► store ─► read_spec ─┐
//!                                          (cached on disk, 0600)            ▼
//!  local workloads ─────────────────────────────────────────────► Reconciler::pass
//!  PATCH meshnodes/<node>/status (server-side apply, weft-node-daemon) ◄─ status
//! ```
//!
//! The daemon sees only its own MeshNode and writes only its status; RBAC in
//! `config/rbac` grants exactly that. The reconcile pass is the same code as
//! in standalone mode; only the transport differs.

pub mod transport;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataplane::Dataplane;
use crate::reconcile::Reconciler;
use crate::runner::now;
use crate::status;
use crate::workloads::{DirSource, WorkloadSource};

pub use transport::KubeTransport;

/// Settings of the Kubernetes loop.
#[derive(Clone, Debug)]
pub struct KubeRunConfig {
    /// Node name (also the MeshNode name).
    pub node: String,
    /// Address other nodes reach this node at (reported in status).
    pub advertise_address: String,
    /// Private data directory (keys, caches).
    pub data_dir: PathBuf,
    /// Where workload announcements are read from until the CNI plugin lands.
    pub workloads_dir: PathBuf,
    /// Time between passes.
    pub interval: Duration,
    /// Time between status writes when nothing changed.
    pub heartbeat: Duration,
}

/// Runs until `stop` is set. Reconcile passes (and so every namespace
/// switch) happen on the calling thread; the API client runs on its own
/// small runtime.
pub fn run<D: Dataplane>(cfg: &KubeRunConfig, dp: D, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kube-client")
        .enable_all()
        .build()?;
    let client = rt.block_on(kube::Client::try_default())?;
    let mut transport = KubeTransport::start(client, &cfg.node, &cfg.data_dir, rt.handle());
    let mut source = DirSource::new(cfg.workloads_dir.clone());
    let mut rec = Reconciler::new(&cfg.node, &cfg.advertise_address, dp, &cfg.data_dir)?;
    let mut last_status = None;
    let mut last_write = Instant::now();
    let mut last_errors: Vec<String> = Vec::new();
    tracing::info!(node = %cfg.node, address = %cfg.advertise_address, "node daemon running (kubernetes)");
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let spec = transport.read_spec();
        let local = source.list();
        let report = rec.pass(spec.as_ref(), &local, now());
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
        // Status can only be written once the operator created the MeshNode.
        if spec.is_some() && transport.exists() && (due || changed) {
            match rt.block_on(transport.publish_status(&report.status)) {
                Ok(()) => {
                    last_write = Instant::now();
                    last_status = Some(report.status);
                }
                Err(e) => tracing::warn!(error = %e, "cannot write MeshNode status"),
            }
        }
        let mut left = cfg.interval.saturating_sub(started.elapsed());
        while left > Duration::ZERO && !stop.load(Ordering::Relaxed) {
            let step = left.min(Duration::from_millis(50));
            std::thread::sleep(step);
            left = left.saturating_sub(step);
        }
    }
    tracing::info!(node = %cfg.node, "node daemon stopping");
    drop(transport);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
