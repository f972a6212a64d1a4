//! `weft-operator`: the standalone (file-based) control loop and `get`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::Ipv4Net;
use k8s_openapi::jiff::Timestamp;
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
        /// Do one pass and exit.
        #[arg(long)]
        once: bool,
    },
    /// Print objects from a state directory, like kubectl get.
    Get {
        /// meshapps, meshnodes, meshpolicies or meshsites.
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Standalone {
            manifests,
            state,
            interval_ms,
            pool,
            once,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let mut op = Standalone::new(StandaloneConfig::new(manifests, state).with_pool(pool));
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
                std::thread::sleep(Duration::from_millis(interval_ms));
            }
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
