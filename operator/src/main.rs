//! `weft-operator`: the Kubernetes controllers, the standalone (file-based)
//! control loop and `get`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use k8s_openapi::jiff::Timestamp;
use weft_api::federation::HubLayout;
use weft_operator::standalone::get::{self, Output};
use weft_operator::standalone::{Standalone, StandaloneConfig};

#[derive(Parser)]
#[command(name = "weft-operator", version, about = "Weft operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control loop against a manifests directory and a state directory.
    Standalone {
        /// Directory of MeshApp / MeshPolicy / MeshSite manifests (*.yaml, *.yml, *.json).
        #[arg(long)]
        manifests: PathBuf,
        /// Shared state directory (nodes/, status/).
        #[arg(long)]
        state: PathBuf,
        /// Milliseconds between passes.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// Pool app ranges are allocated from.
        #[arg(long, default_value = weft_operator::planner::snapshot::DEFAULT_POOL)]
        pool: Ipv4Net,
        /// Size of each app range taken from the pool (apps without
        /// spec.addressSpace): the pool holds 2^(this - pool's prefix) apps.
        #[arg(long, default_value_t = weft_operator::planner::snapshot::DEFAULT_APP_PREFIX_LEN)]
        app_prefix_length: u8,
        /// Do one pass and exit.
        #[arg(long)]
        once: bool,
        /// Seconds before moving traffic counters alone rewrite a MeshApp's
        /// status (any other change rewrites it at once).
        #[arg(long, default_value_t = weft_operator::status::TRAFFIC_REFRESH_SECONDS)]
        traffic_refresh_seconds: i64,
    },
    /// Run the controllers against the Kubernetes API (in-cluster config or KUBECONFIG).
    Kubernetes {
        /// Pool app ranges are allocated from.
        #[arg(long, env = "WEFT_POOL", default_value = weft_operator::planner::snapshot::DEFAULT_POOL)]
        pool: Ipv4Net,
        /// Size of each app range taken from the pool (apps without
        /// spec.addressSpace): the pool holds 2^(this - pool's prefix) apps.
        #[arg(long, env = "WEFT_APP_PREFIX_LENGTH", default_value_t = weft_operator::planner::snapshot::DEFAULT_APP_PREFIX_LEN)]
        app_prefix_length: u8,
        /// Seconds between full passes when nothing changes (lost-node detection).
        #[arg(long, default_value_t = 10)]
        resync_seconds: u64,
        /// Elect a leader through this Lease (NAMESPACE/NAME); without it this
        /// replica assumes it is the only one.
        #[arg(long, env = "WEFT_LEADER_LEASE")]
        leader_lease: Option<String>,
        /// This replica's identity in the Lease (the pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, default_value = "0.0.0.0:8080")]
        metrics_address: std::net::SocketAddr,
        /// The operator's namespace: where the Secrets named by
        /// MeshSites' hubAccess.kubeconfigSecret are read.
        #[arg(long, env = "POD_NAMESPACE", default_value = "weft-system")]
        namespace: String,
        /// Milliseconds between reads of federation hubs (and writes of
        /// this member's records to them).
        #[arg(long, default_value_t = 1000)]
        hub_interval_ms: u64,
    },
    /// Serve a directory hub for federated standalone operators: publish the
    /// MeshHub's members, and allocate each shared app's range and each
    /// member's blocks of it.
    Hub {
        /// The hub directory members read and write (members/<site>/ each).
        #[arg(long)]
        dir: PathBuf,
        /// The MeshHub manifest (YAML or JSON).
        #[arg(long)]
        manifest: PathBuf,
        /// Milliseconds between passes.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// Do one pass and exit.
        #[arg(long)]
        once: bool,
    },
    /// Serve a hub on a Kubernetes API server (a hub cluster with
    /// config/hub applied; in-cluster config or KUBECONFIG): read the MeshHub
    /// and every member's MeshSiteRecords and heartbeat Lease, write the
    /// MeshHubAllocations and the MeshHub's status.
    HubKubernetes {
        /// The MeshHub's name.
        #[arg(long, default_value = "hub")]
        name: String,
        /// Milliseconds between passes.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Do one pass and exit.
        #[arg(long)]
        once: bool,
    },
    /// Print a directory hub's members: state, last sync, records.
    HubStatus {
        /// The hub directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print objects from a state directory, like kubectl get.
    Get {
        /// meshapps, meshnodes, meshpolicies, meshsites, meshhubs or manifests.
        kind: String,
        /// Shared state directory.
        #[arg(long)]
        state: PathBuf,
        /// Output format.
        #[arg(short = 'o', long = "output")]
        output: Option<Format>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Wide,
    Json,
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("signal received");
}

fn kubernetes(
    planner: weft_operator::planner::PlannerConfig,
    resync_seconds: u64,
    leader_lease: Option<String>,
    identity: Option<String>,
    metrics_address: std::net::SocketAddr,
    namespace: String,
    hub_every: Duration,
) -> anyhow::Result<()> {
    use weft_operator::k8s::lease::LeaseConfig;
    use weft_operator::k8s::run::{run, RunConfig};
    let lease = match leader_lease {
        None => None,
        Some(l) => {
            let (ns, name) = l.split_once('/').ok_or_else(|| {
                anyhow::anyhow!("--leader-lease must be NAMESPACE/NAME, got {l:?}")
            })?;
            let identity = identity.ok_or_else(|| {
                anyhow::anyhow!("--identity (or POD_NAME) is needed with --leader-lease")
            })?;
            Some(LeaseConfig::new(ns, name, &identity))
        }
    };
    let pool = planner.pool;
    let cfg = RunConfig {
        planner,
        lease,
        resync: Duration::from_secs(resync_seconds),
        debounce: Duration::from_millis(200),
        metrics: Default::default(),
        namespace,
        hub_every,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(metrics_address).await?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let server = tokio::spawn(weft_operator::k8s::metrics::serve(
                listener,
                cfg.metrics.clone(),
                async move {
                    let mut rx = stop_rx;
                    let _ = rx.wait_for(|stop| *stop).await;
                },
            ));
            let client = weft_operator::k8s::client().await?;
            tracing::info!(%pool, leader_election = cfg.lease.is_some(), "kubernetes operator starting");
            let result = run(client, cfg, shutdown_signal()).await;
            let _ = stop_tx.send(true);
            let _ = server.await;
            result
        })
}

fn epoch_seconds(t: Timestamp) -> u64 {
    u64::try_from(t.as_second()).unwrap_or(0)
}

/// The MeshHub of a manifest file.
fn read_hub(path: &std::path::Path) -> anyhow::Result<(String, weft_api::MeshHubSpec)> {
    use weft_operator::standalone::manifests::{parse_manifest, Manifest};
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let parsed = parse_manifest(path, &text);
    if let Some(p) = parsed.file_problem {
        anyhow::bail!("{}: {p}", path.display());
    }
    for doc in parsed.docs {
        if let Some(p) = doc.problems.first() {
            anyhow::bail!(
                "{}: document {}: {}: {}",
                path.display(),
                doc.index,
                p.field,
                p.message
            );
        }
        if let Some(Manifest::Hub(name, spec)) = doc.manifest {
            return Ok((name, spec));
        }
    }
    anyhow::bail!("{} holds no MeshHub", path.display())
}

fn hub(dir: PathBuf, manifest: PathBuf, interval_ms: u64, once: bool) -> anyhow::Result<()> {
    use weft_operator::federation::hub::Hub;
    let (name, mut spec) = read_hub(&manifest)?;
    let mut hub = Hub::new(&name, HubLayout::new(&dir));
    tracing::info!(hub = %name, dir = %dir.display(), "directory hub starting");
    let mut logged: Vec<String> = Vec::new();
    loop {
        // A manifest that stops parsing keeps the last good spec.
        match read_hub(&manifest) {
            Ok((_, s)) => spec = s,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "MeshHub manifest unreadable; the last good one stays")
            }
        }
        match hub.pass(&spec, epoch_seconds(Timestamp::now())) {
            Ok(report) => {
                let now: Vec<String> = report
                    .errors
                    .iter()
                    .chain(&report.refused)
                    .cloned()
                    .collect();
                for e in now.iter().filter(|e| !logged.contains(e)) {
                    tracing::warn!("{e}");
                }
                logged = now;
                if report.writes > 0 {
                    tracing::info!(apps = report.apps, writes = report.writes, "hub published");
                }
                if once {
                    return Ok(());
                }
            }
            Err(e) if once => return Err(e),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "hub pass failed; retrying"),
        }
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
}

fn hub_kubernetes(name: String, interval_ms: u64, once: bool) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let client = weft_operator::k8s::client().await?;
            tracing::info!(hub = %name, "hub on the Kubernetes API starting");
            let mut logged: Vec<String> = Vec::new();
            let stop = shutdown_signal();
            tokio::pin!(stop);
            loop {
                let now = epoch_seconds(Timestamp::now());
                match weft_operator::federation::hubapi::pass(&client, &name, now).await {
                    Ok(report) => {
                        let now: Vec<String> = report
                            .errors
                            .iter()
                            .chain(&report.refused)
                            .cloned()
                            .collect();
                        for e in now.iter().filter(|e| !logged.contains(e)) {
                            tracing::warn!("{e}");
                        }
                        logged = now;
                        if report.writes > 0 {
                            tracing::info!(
                                apps = report.apps,
                                writes = report.writes,
                                "hub published"
                            );
                        }
                        if once {
                            return Ok(());
                        }
                    }
                    Err(e) if once => return Err(e),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "hub pass failed; retrying")
                    }
                }
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(interval_ms)) => {}
                }
            }
        })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Kubernetes {
            pool,
            app_prefix_length,
            resync_seconds,
            leader_lease,
            identity,
            metrics_address,
            namespace,
            hub_interval_ms,
        } => {
            init_logs();
            let planner = weft_operator::planner::PlannerConfig::with_pool(pool, app_prefix_length)
                .map_err(anyhow::Error::msg)?;
            kubernetes(
                planner,
                resync_seconds,
                leader_lease,
                identity,
                metrics_address,
                namespace,
                Duration::from_millis(hub_interval_ms),
            )
        }
        Command::Standalone {
            manifests,
            state,
            interval_ms,
            pool,
            app_prefix_length,
            once,
            traffic_refresh_seconds,
        } => {
            init_logs();
            let planner = weft_operator::planner::PlannerConfig::with_pool(pool, app_prefix_length)
                .map_err(anyhow::Error::msg)?;
            let mut cfg = StandaloneConfig::new(manifests, state)
                .with_traffic_refresh(traffic_refresh_seconds);
            cfg.planner = planner;
            let mut op = Standalone::new(cfg);
            tracing::info!(%pool, interval_ms, "standalone operator starting");
            loop {
                match op.tick(Timestamp::now()) {
                    Ok(report) if once => {
                        tracing::info!(
                            meshnode_writes = report.meshnode_writes.len(),
                            status_writes = report.status_writes.len(),
                            errors = report.errors.len(),
                            "pass done"
                        );
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) if once => return Err(e),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "pass failed; retrying"),
                }
                op.wait_for_input(Duration::from_millis(interval_ms));
            }
        }
        Command::Hub {
            dir,
            manifest,
            interval_ms,
            once,
        } => {
            init_logs();
            hub(dir, manifest, interval_ms, once)
        }
        Command::HubKubernetes {
            name,
            interval_ms,
            once,
        } => {
            init_logs();
            hub_kubernetes(name, interval_ms, once)
        }
        Command::HubStatus { dir } => {
            let now = epoch_seconds(Timestamp::now());
            let report = weft_operator::federation::hub::report(&HubLayout::new(dir), now)?;
            print!("{}", weft_operator::federation::hub::render(&report, now));
            Ok(())
        }
        Command::Get {
            kind,
            state,
            output,
        } => {
            let output = match output {
                None => Output::Table,
                Some(Format::Wide) => Output::Wide,
                Some(Format::Json) => Output::Json,
            };
            print!("{}", get::render(&kind, &state, output, Timestamp::now())?);
            Ok(())
        }
    }
}
