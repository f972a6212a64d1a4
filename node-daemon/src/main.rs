//! `weft-node-daemon`: the per-node agent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use weft_node_daemon::core::ops::Op;
use weft_node_daemon::core::plan::{netns_prefix, owns_netns};
use weft_node_daemon::dataplane::linux::{LinuxDataplane, LinuxOptions};
use weft_node_daemon::dataplane::Dataplane;
use weft_node_daemon::run::kubernetes::{CniChain, KubeRunConfig};
use weft_node_daemon::run::metrics::{Metrics, Server};
use weft_node_daemon::run::{run, RunConfig};

#[derive(Parser)]
#[command(
    name = "weft-node-daemon",
    about = "Weft node daemon: per-app network namespaces and WireGuard interfaces"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where a daemon's workloads come from (besides a CNI runtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum WorkloadsFrom {
    /// Announcement files in `<state>/nodes/<node>/workloads/`.
    Files,
    /// The local Docker engine.
    Docker,
}

/// The per-app DNS resolvers (`<workload>.<app>.<namespace>.weft`).
#[derive(clap::Args, Clone, Debug)]
struct DnsArgs {
    /// Do not run a DNS resolver in each app netns.
    #[arg(long)]
    no_dns: bool,
    /// The resolv.conf whose nameservers get the names outside `.weft` that
    /// workloads ask the app resolver (queried from this daemon's netns).
    #[arg(long, default_value = "/etc/resolv.conf")]
    dns_resolv_conf: PathBuf,
}

impl DnsArgs {
    fn options(&self) -> Option<weft_node_daemon::dns::DnsOptions> {
        (!self.no_dns).then(|| weft_node_daemon::dns::DnsOptions {
            resolv_conf: self.dns_resolv_conf.clone(),
            ..Default::default()
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run against a standalone state directory (no Kubernetes).
    Standalone {
        /// Node name (also its MeshNode name).
        #[arg(long, env = "WEFT_NODE", value_parser = node_name)]
        node: String,
        /// Shared state directory the standalone operator uses.
        #[arg(long)]
        state: PathBuf,
        /// Private data directory (keys, caches); 0700.
        #[arg(long, default_value = "/var/lib/weft")]
        data_dir: PathBuf,
        /// Address other nodes reach this node at.
        #[arg(long)]
        advertise_address: String,
        /// MeshSite of this node.
        #[arg(long, default_value = weft_api::labels::LOCAL_SITE)]
        site: String,
        /// Milliseconds between reconcile passes while the node is settling
        /// (a write, an error or an app not programmed in the last 30 s).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Milliseconds between reconcile passes once the node has settled.
        /// Every input wakes the loop at once (MeshNode, workloads, changes
        /// in app namespaces); this timed pass refreshes figures and is the
        /// safety net.
        #[arg(long, default_value_t = 5000)]
        idle_interval_ms: u64,
        /// Use userspace WireGuard even where the kernel module exists.
        #[arg(long)]
        force_userspace: bool,
        /// Serve each userspace WireGuard device to `wg show` as a read-only
        /// socket `wf<appId>.sock` here (where `wg` looks); empty: off.
        /// Kernel devices need none (`ip netns exec <netns> wg show`).
        #[arg(long, default_value = weft_node_daemon::dataplane::linux::wgsock::DEFAULT_DIR)]
        wg_socket_dir: String,
        #[command(flatten)]
        dns: DnsArgs,
        /// Serve /metrics, /healthz and /readyz here (e.g. 127.0.0.1:9464;
        /// port 0 picks one). Off unless given.
        #[arg(long, env = "WEFT_METRICS_ADDRESS")]
        metrics_address: Option<std::net::SocketAddr>,
        /// Serve the CNI attach protocol on this unix socket (e.g.
        /// /run/weft/attach.sock). Off unless given.
        #[arg(long)]
        attach_socket: Option<PathBuf>,
        /// Where the node's workloads come from: `files` (announcements in
        /// the state directory) or `docker` (running containers labelled
        /// weft.dev/app, from the engine at --docker-socket).
        #[arg(long, value_enum, default_value_t = WorkloadsFrom::Files)]
        workloads: WorkloadsFrom,
        /// The Docker engine's API socket (with --workloads docker).
        #[arg(long, default_value = weft_node_daemon::workloads::docker::DEFAULT_SOCKET)]
        docker_socket: PathBuf,
    },
    /// Run against the Kubernetes API: watch this node's MeshNode, write its status.
    Kubernetes {
        /// Node name (also its MeshNode name); the downward API's spec.nodeName.
        #[arg(long, env = "WEFT_NODE", value_parser = node_name)]
        node: String,
        /// Private data directory (keys, caches); 0700.
        #[arg(long, default_value = "/var/lib/weft")]
        data_dir: PathBuf,
        /// Address other nodes reach this node at; the downward API's status.hostIP.
        #[arg(long, env = "WEFT_ADVERTISE_ADDRESS")]
        advertise_address: String,
        /// Directory of workload announcements (stand-in until the CNI plugin lands).
        #[arg(long, default_value = "/var/lib/weft/workloads")]
        workloads_dir: PathBuf,
        /// Milliseconds between reconcile passes while the node is settling
        /// (a write, an error or an app not programmed in the last 30 s).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Milliseconds between reconcile passes once the node has settled.
        /// Every input wakes the loop at once (MeshNode, workloads, changes
        /// in app namespaces); this timed pass refreshes figures and is the
        /// safety net.
        #[arg(long, default_value_t = 5000)]
        idle_interval_ms: u64,
        /// Seconds between status writes when nothing changed.
        #[arg(long, default_value_t = 10)]
        heartbeat_seconds: u64,
        /// Use userspace WireGuard even where the kernel module exists.
        #[arg(long)]
        force_userspace: bool,
        /// Serve each userspace WireGuard device to `wg show` as a read-only
        /// socket `wf<appId>.sock` here (where `wg` looks); empty: off.
        /// Kernel devices need none (`ip netns exec <netns> wg show`).
        #[arg(long, default_value = weft_node_daemon::dataplane::linux::wgsock::DEFAULT_DIR)]
        wg_socket_dir: String,
        #[command(flatten)]
        dns: DnsArgs,
        /// Serve /metrics, /healthz and /readyz here (e.g. 127.0.0.1:9464;
        /// port 0 picks one). Off unless given.
        #[arg(long, env = "WEFT_METRICS_ADDRESS")]
        metrics_address: Option<std::net::SocketAddr>,
        /// Serve the CNI attach protocol on this unix socket; pods then come
        /// from a watch on this node's pods. Off unless given.
        #[arg(long)]
        attach_socket: Option<PathBuf>,
        /// Put weft-cni into the CNI chain in this directory while running
        /// (needs --attach-socket); removed again on a graceful exit.
        #[arg(long, requires = "attach_socket")]
        cni_conf_dir: Option<PathBuf>,
        /// CNI binary directory the plugin is copied to.
        #[arg(long, default_value = "/opt/cni/bin")]
        cni_bin_dir: PathBuf,
        /// The weft-cni binary (default: next to this executable).
        #[arg(long)]
        cni_plugin: Option<PathBuf>,
        /// Edge host without a Kubernetes Node: register this host as a
        /// MeshNode of this MeshSite.
        #[arg(long)]
        register_site: Option<String>,
        /// Where the node's workloads come from besides the CNI plugin:
        /// `files` (announcements in --workloads-dir) or `docker` (an edge
        /// host's containers labelled weft.dev/app).
        #[arg(long, value_enum, default_value_t = WorkloadsFrom::Files)]
        workloads: WorkloadsFrom,
        /// The Docker engine's API socket (with --workloads docker).
        #[arg(long, default_value = weft_node_daemon::workloads::docker::DEFAULT_SOCKET)]
        docker_socket: PathBuf,
    },
    /// Put the weft-cni plugin last into every *.conflist of the node's CNI
    /// chain and copy its binary (or, with --uninstall, remove both).
    CniInstall {
        /// The runtime's CNI configuration directory.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The runtime's CNI binary directory.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The weft-cni binary to copy (default: next to this executable).
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Attach socket the plugin talks to.
        #[arg(long, default_value = weft_api::attach::DEFAULT_SOCKET)]
        daemon_socket: String,
        /// Remove what install added instead.
        #[arg(long)]
        uninstall: bool,
    },
    /// Remove every namespace and key this node's daemon created.
    Cleanup {
        /// Node name.
        #[arg(long, env = "WEFT_NODE", value_parser = node_name)]
        node: String,
        /// Private data directory to remove.
        #[arg(long, default_value = "/var/lib/weft")]
        data_dir: PathBuf,
        /// Socket directory the daemon used (its dead sockets are removed).
        #[arg(long, default_value = weft_node_daemon::dataplane::linux::wgsock::DEFAULT_DIR)]
        wg_socket_dir: String,
    },
}

fn main() -> anyhow::Result<()> {
    // Block SIGINT/SIGTERM in this thread before any other thread exists, so
    // every thread inherits the mask and only our waiter below sees them.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.thread_block()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    raise_fd_limit();
    fix_mmap_threshold();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(sig) = sigs.wait() {
                    tracing::info!(signal = ?sig, "shutting down");
                }
                stop.store(true, Ordering::Relaxed);
            })?;
    }
    match cli.cmd {
        Cmd::Standalone {
            node,
            state,
            data_dir,
            advertise_address,
            site,
            interval_ms,
            idle_interval_ms,
            force_userspace,
            wg_socket_dir,
            dns,
            metrics_address,
            attach_socket,
            workloads,
            docker_socket,
        } => {
            if workloads == WorkloadsFrom::Docker && attach_socket.is_some() {
                anyhow::bail!("--attach-socket serves a CNI runtime; it cannot be combined with --workloads docker");
            }
            let dp = dataplane(force_userspace, &wg_socket_dir, dns.options())?;
            let cfg = RunConfig {
                attach_socket,
                node,
                site,
                advertise_address,
                state_dir: state,
                data_dir,
                interval: Duration::from_millis(interval_ms),
                idle_interval: Duration::from_millis(idle_interval_ms),
                heartbeat: Duration::from_secs(5),
                dns: !dns.no_dns,
            };
            let metrics = Arc::new(Metrics::default());
            let _server = serve_metrics(metrics_address, &metrics)?;
            match workloads {
                WorkloadsFrom::Files => run(&cfg, dp, stop, &metrics)?,
                WorkloadsFrom::Docker => {
                    weft_node_daemon::run::run_docker(&cfg, &docker_socket, dp, stop, &metrics)?
                }
            }
        }
        Cmd::Kubernetes {
            node,
            data_dir,
            advertise_address,
            workloads_dir,
            interval_ms,
            idle_interval_ms,
            heartbeat_seconds,
            force_userspace,
            wg_socket_dir,
            dns,
            metrics_address,
            attach_socket,
            cni_conf_dir,
            cni_bin_dir,
            cni_plugin,
            register_site,
            workloads,
            docker_socket,
        } => {
            let dp = dataplane(force_userspace, &wg_socket_dir, dns.options())?;
            let cni = match cni_conf_dir {
                Some(conf_dir) => Some(CniChain {
                    conf_dir,
                    bin_dir: cni_bin_dir,
                    plugin: match cni_plugin {
                        Some(p) => p,
                        None => plugin_next_to_me()?,
                    },
                }),
                None => None,
            };
            let cfg = KubeRunConfig {
                node,
                advertise_address,
                data_dir,
                workloads_dir,
                interval: Duration::from_millis(interval_ms),
                idle_interval: Duration::from_millis(idle_interval_ms),
                heartbeat: Duration::from_secs(heartbeat_seconds),
                attach_socket,
                cni,
                register_site,
                docker_socket: (workloads == WorkloadsFrom::Docker).then_some(docker_socket),
                dns: !dns.no_dns,
            };
            let metrics = Arc::new(Metrics::default());
            let _server = serve_metrics(metrics_address, &metrics)?;
            weft_node_daemon::run::kubernetes::run(&cfg, dp, stop, &metrics)?;
        }
        Cmd::CniInstall {
            conf_dir,
            bin_dir,
            plugin,
            daemon_socket,
            uninstall,
        } => {
            use weft_node_daemon::cni_install;
            let rep = if uninstall {
                cni_install::uninstall(&conf_dir, &bin_dir)?
            } else {
                let plugin = match plugin {
                    Some(p) => p,
                    None => plugin_next_to_me()?,
                };
                cni_install::install(&conf_dir, &bin_dir, &plugin, &daemon_socket)?
            };
            for p in &rep.rewritten {
                println!("rewrote {}", p.display());
            }
            for p in &rep.unchanged {
                println!("unchanged {}", p.display());
            }
            if let Some(b) = &rep.binary {
                println!(
                    "{} {}",
                    if uninstall { "removed" } else { "installed" },
                    b.display()
                );
            }
        }
        Cmd::Cleanup {
            node,
            data_dir,
            wg_socket_dir,
        } => {
            // Opening the data plane removes the dead sockets of a daemon
            // that did not stop cleanly.
            let mut dp = LinuxDataplane::new(LinuxOptions {
                force_userspace: true,
                wg_socket_dir: socket_dir(&wg_socket_dir),
                ..Default::default()
            })?;
            let observed = dp.observe(&netns_prefix(&node))?;
            for netns in observed.state.apps.keys().filter(|n| owns_netns(&node, n)) {
                dp.apply(&Op::DeleteNetns {
                    netns: netns.clone(),
                })?;
                println!("removed netns {netns}");
            }
            match std::fs::remove_dir_all(&data_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => println!("removed {}", data_dir.display()),
            }
        }
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one: each app holds
/// about ten fds (netlink, UDP, DNS and `wg` sockets, its TUN device), and
/// the usual soft limit of 1,024 would stop a node at about a hundred apps.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open file limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open file limit"),
    }
}

/// Allocations from this size up get pages of their own, so capacity
/// never written never becomes resident (see [`fix_mmap_threshold`]).
const MMAP_THRESHOLD: i32 = 96 * 1024;

/// Fixes glibc's mmap threshold. By default it starts at 128 KiB and rises
/// to the size of any mapped block freed: the first userspace WireGuard
/// device frees a 16 MiB receive area, after which every allocation below
/// 16 MiB comes from the heap, where it reuses pages other allocations
/// already touched. GotaTun gives each device a 4,000-slot buffer queue
/// (125 KiB) that idle devices barely use; from the heap, 200 devices kept
/// about 5 MiB of it resident. Nothing on the packet path allocates this
/// much per packet.
fn fix_mmap_threshold() {
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread starts.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if ok != 1 {
        tracing::debug!("cannot set the allocator's mmap threshold");
    }
}

/// Characters of an app id in a namespace name (`weft-<node>-<appId>`).
const APP_ID_LEN: usize = 10;
/// Longest file name, and so namespace name under /run/netns (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// `--node` names the MeshNode, the directory `<state>/nodes/<node>` and
/// every namespace `weft-<node>-<appId>`: refuse (clap names the flag) what
/// would make a bad path before anything is created.
fn node_name(node: &str) -> Result<String, String> {
    weft_api::validation::dns_subdomain(node)?;
    let longest = netns_prefix(node).len() + APP_ID_LEN;
    if longest > NAME_MAX {
        return Err(format!(
            "{} characters make namespace names (weft-<node>-<appId>) of {longest} bytes, longer than the {NAME_MAX} a file name can have; use at most {}",
            node.len(),
            NAME_MAX - (longest - node.len())
        ));
    }
    Ok(node.to_string())
}

/// The weft-cni binary shipped next to this executable.
fn plugin_next_to_me() -> anyhow::Result<PathBuf> {
    std::env::current_exe()?
        .parent()
        .map(|d| d.join(weft_node_daemon::cni_install::PLUGIN_TYPE))
        .ok_or_else(|| anyhow::anyhow!("cannot locate weft-cni; pass its path"))
}

/// `--wg-socket-dir`, where an empty value turns the sockets off.
fn socket_dir(dir: &str) -> Option<PathBuf> {
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The node's data plane (kernel WireGuard if present, else userspace WireGuard (GotaTun)).
fn dataplane(
    force_userspace: bool,
    wg_socket_dir: &str,
    dns: Option<weft_node_daemon::dns::DnsOptions>,
) -> anyhow::Result<LinuxDataplane> {
    let dp = LinuxDataplane::new(LinuxOptions {
        force_userspace,
        wg_socket_dir: socket_dir(wg_socket_dir),
        dns,
        ..Default::default()
    })?;
    tracing::info!(dataplane = ?dp.kind(), "data plane selected");
    Ok(dp)
}

/// Starts the endpoint server when an address was given.
fn serve_metrics(
    address: Option<std::net::SocketAddr>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Server>> {
    let Some(address) = address else {
        return Ok(None);
    };
    let server = Server::start(address, metrics.clone())
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {address}: {e}"))?;
    Ok(Some(server))
}
