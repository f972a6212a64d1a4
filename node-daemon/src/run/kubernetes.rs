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
//! standalone mode ([`super::run_loop`]); only the transport differs.
//!
//! With `--attach-socket` the daemon serves the CNI plugin: pod metadata
//! comes from a watch on this node's pods ([`crate::workloads::pods`]), the netns from the
//! plugin's ADD, and which apps claim them from MeshApp watches in those
//! pods' namespaces only ([`crate::workloads::pods::app_watch`]). With `--cni-conf-dir` it also puts the plugin into the
//! node's CNI chain once the socket listens, and takes it out again on a
//! graceful exit, so a node without a running daemon keeps starting pods
//! (unmeshed) instead of failing every ADD. An edge host (no Kubernetes
//! Node) passes `--register-site` and creates its own MeshNode, and takes
//! its workloads from Docker (`--workloads docker`).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::attach_service::AttachService;
use super::metrics::Metrics;
use super::reconcile::Reconciler;
use super::{run_loop, LoopConfig};
use crate::cni_install;
use crate::dataplane::Dataplane;
use crate::desired::KubeTransport;
use crate::kubeapi::client;
use crate::workloads::docker::DockerSource;
use crate::workloads::pods::PodAnnouncements;
use crate::workloads::{DirSource, RuntimeSource};

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
    /// Time between passes while settling.
    pub interval: Duration,
    /// Time between passes once settled (see [`LoopConfig::idle_interval`]).
    pub idle_interval: Duration,
    /// Time between status writes when nothing changed.
    pub heartbeat: Duration,
    /// Serve the CNI attach protocol here (pods come from the pod watch).
    pub attach_socket: Option<PathBuf>,
    /// Put the CNI plugin into the node's chain while running.
    pub cni: Option<CniChain>,
    /// Register this host as a MeshNode of this site (edge hosts).
    pub register_site: Option<String>,
    /// Take workloads from the Docker engine at this socket (edge hosts)
    /// instead of announcement files.
    pub docker_socket: Option<PathBuf>,
    /// Whether each app netns has its resolver (named in CNI results).
    pub dns: bool,
}

/// Where the node's CNI configuration and plugins live.
#[derive(Clone, Debug)]
pub struct CniChain {
    /// The runtime's CNI configuration directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The runtime's CNI binary directory (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The weft-cni binary to copy there.
    pub plugin: PathBuf,
}

/// weft-cni in the node's CNI chain, taken out again on drop.
struct ChainGuard<'a>(&'a CniChain);

impl<'a> ChainGuard<'a> {
    /// Installs; a failure half-way is undone before the error is returned.
    fn install(c: &'a CniChain, socket: &str) -> anyhow::Result<Self> {
        match cni_install::install(&c.conf_dir, &c.bin_dir, &c.plugin, socket) {
            Ok(rep) => {
                tracing::info!(
                    rewritten = rep.rewritten.len(),
                    unchanged = rep.unchanged.len(),
                    "weft-cni is in the node's CNI chain"
                );
                Ok(ChainGuard(c))
            }
            Err(e) => {
                let _ = cni_install::uninstall(&c.conf_dir, &c.bin_dir);
                Err(e.context("cannot put weft-cni into the node's CNI chain"))
            }
        }
    }
}

impl Drop for ChainGuard<'_> {
    fn drop(&mut self) {
        match cni_install::uninstall(&self.0.conf_dir, &self.0.bin_dir) {
            Ok(_) => tracing::info!("weft-cni removed from the node's CNI chain"),
            Err(e) => tracing::warn!(error = %e, "cannot remove weft-cni from the CNI chain"),
        }
    }
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
    let client = rt.block_on(client())?;
    let mut transport = KubeTransport::start(client.clone(), &cfg.node, &cfg.data_dir, rt.handle());
    if let Some(site) = &cfg.register_site {
        transport = transport.register_as(site);
    }
    let rec = Reconciler::new(&cfg.node, &cfg.advertise_address, dp, &cfg.data_dir)?;
    let lc = LoopConfig {
        node: cfg.node.clone(),
        advertise_address: cfg.advertise_address.clone(),
        interval: cfg.interval,
        idle_interval: cfg.idle_interval,
        heartbeat: cfg.heartbeat,
        wake: transport.wake(),
    };
    match (&cfg.attach_socket, &cfg.docker_socket) {
        (Some(_), Some(_)) => {
            anyhow::bail!("--attach-socket serves a CNI runtime; it cannot be combined with --workloads docker")
        }
        (None, Some(docker)) => {
            let mut source = DockerSource::start(docker.clone(), lc.wake.clone())?;
            tracing::info!(socket = %docker.display(), "workloads from the Docker engine");
            run_loop(&lc, &mut transport, &mut source, rec, &stop, metrics);
        }
        (None, None) => {
            let mut source = DirSource::new(cfg.workloads_dir.clone());
            run_loop(&lc, &mut transport, &mut source, rec, &stop, metrics);
        }
        (Some(socket), None) => {
            let attach = AttachService::start(socket, &cfg.data_dir, &stop, &lc.wake)?;
            // Chained for as long as the guard lives: removed on a normal
            // return and on a panic alike (a SIGKILL leaves it: the
            // plugin then answers "try again later" until we are back).
            let chain = match &cfg.cni {
                Some(c) => match ChainGuard::install(c, &socket.to_string_lossy()) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        attach.stop(&stop);
                        return Err(e);
                    }
                },
                None => None,
            };
            let pods = PodAnnouncements::start(client, &cfg.node, rt.handle(), lc.wake.clone());
            let mut source = RuntimeSource::new(pods, attach.shared.clone()).with_dns(cfg.dns);
            run_loop(&lc, &mut transport, &mut source, rec, &stop, metrics);
            // Out of the chain before the socket closes.
            drop(chain);
            attach.stop(&stop);
        }
    }
    drop(transport);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
