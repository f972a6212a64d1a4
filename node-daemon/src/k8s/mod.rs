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
//! `config/rbac` grants exactly that. The loop is the same code as in
//! standalone mode ([`crate::runner::run_loop`]); only the transport differs.

pub mod transport;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::dataplane::Dataplane;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::runner::{run_loop, LoopConfig};
use crate::workloads::DirSource;

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

/// Runs until `stop` is set: the shared loop ([`run_loop`]) over a
/// [`KubeTransport`]. Reconcile passes (and so every namespace switch) happen
/// on the calling thread; the API client runs on its own small runtime.
pub fn run<D: Dataplane>(
    cfg: &KubeRunConfig,
    dp: D,
    stop: Arc<AtomicBool>,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kube-client")
        .enable_all()
        .build()?;
    let client = rt.block_on(kube::Client::try_default())?;
    let mut transport = KubeTransport::start(client, &cfg.node, &cfg.data_dir, rt.handle());
    let mut source = DirSource::new(cfg.workloads_dir.clone());
    let rec = Reconciler::new(&cfg.node, &cfg.advertise_address, dp, &cfg.data_dir)?;
    let lc = LoopConfig {
        node: cfg.node.clone(),
        advertise_address: cfg.advertise_address.clone(),
        interval: cfg.interval,
        heartbeat: cfg.heartbeat,
    };
    run_loop(&lc, &mut transport, &mut source, rec, &stop, metrics);
    drop(transport);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
