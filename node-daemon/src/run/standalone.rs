//! Standalone mode: desired state from the state directory
//! ([`FileTransport`]); workloads from announcement files, from a CNI
//! runtime on the attach socket, or from the Docker engine (edge hosts).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use weft_api::standalone::{NodeRegistration, StateDir};

use super::attach_service::AttachService;
use super::metrics::Metrics;
use super::reconcile::Reconciler;
use super::{run_loop, LoopConfig};
use crate::dataplane::Dataplane;
use crate::desired::FileTransport;
use crate::error::Error;
use crate::workloads::docker::DockerSource;
use crate::workloads::{DirSource, RuntimeSource, StateAnnouncements};

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
    /// Time between passes while settling.
    pub interval: Duration,
    /// Time between passes once settled (see [`LoopConfig::idle_interval`]).
    pub idle_interval: Duration,
    /// Time between status writes when nothing changed.
    pub heartbeat: Duration,
    /// Whether each app netns has its resolver (named in CNI results).
    pub dns: bool,
    /// Serve the CNI attach protocol on this unix socket (off when `None`).
    pub attach_socket: Option<std::path::PathBuf>,
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
        idle_interval: cfg.idle_interval,
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

/// Runs the standalone mode with the Docker engine at `socket` as the
/// workload source, until `stop` is set.
pub fn run_docker<D: Dataplane>(
    cfg: &RunConfig,
    socket: &Path,
    dp: D,
    stop: Arc<AtomicBool>,
    metrics: &Metrics,
) -> Result<(), Error> {
    let state = StateDir::new(&cfg.state_dir);
    let meshnode_dir = state.node_dir(&cfg.node);
    let mut transport = FileTransport::new(state, &cfg.node, &cfg.data_dir);
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
        idle_interval: cfg.idle_interval,
        heartbeat: cfg.heartbeat,
        wake: crate::wake::Wake::default(),
    };
    crate::wake::watch(&lc.wake, vec![(meshnode_dir, Some("meshnode.json"))]);
    let mut source = DockerSource::start(socket.to_path_buf(), lc.wake.clone())
        .map_err(|e| Error::io(socket, e))?;
    tracing::info!(socket = %socket.display(), "workloads from the Docker engine");
    run_loop(&lc, &mut transport, &mut source, rec, &stop, metrics);
    Ok(())
}
