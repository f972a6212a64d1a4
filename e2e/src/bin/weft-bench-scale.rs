//! `weft-bench-scale`: the control plane at scale (issue 10). Generates a
//! synthetic cluster (N nodes, M apps each on 3 nodes round-robin, or one
//! app on every node), drives the operator's own pass in-process, standalone
//! (`Standalone::tick` over a state directory) and Kubernetes
//! (`reconcile_all` against the scripted fake API server), and prints per
//! size: first full pass, converged passes, adding an app, a workload
//! moving, a restart, peak RSS and the largest MeshNode, with the growth
//! factor from the previous size and the targets.
//!
//! Each size and mode runs in its own child process, so peaks do not mix
//! and a size that passes the memory cap is killed and reported instead of
//! taking the machine down; larger sizes of that mode are then skipped.
//!
//! Last, federation at the planner level (`weft_e2e::fedscale`): S member
//! sites of N nodes sharing one app through a hub, in memory; the time until
//! every member's plan and the hub's allocation stop changing, the rounds,
//! and a check that all the plans agree.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use weft_e2e::fedscale;
use weft_e2e::scale::report::{self, Outcome, Run};
use weft_e2e::scale::{self, emit, keys, Cluster, Ipam, Mode, Size, DEFAULT_SIZES, QUICK_SIZES};

#[derive(Parser, Debug)]
#[command(
    about = "Control-plane scale benchmark: plan time, writes, memory and MeshNode size by cluster size"
)]
struct Args {
    #[command(subcommand)]
    child: Option<Child>,
    /// Sizes, comma separated: NODESxAPPS (3 nodes per app), NODESxAPPS/K
    /// (K nodes per app) or NODESxAPPS/all (every node).
    #[arg(long, default_value = DEFAULT_SIZES)]
    sizes: String,
    /// Modes, comma separated: standalone, kubernetes.
    #[arg(long, default_value = "standalone,kubernetes")]
    modes: String,
    /// Smoke test: tiny sizes (overrides --sizes) and 2 converged passes.
    #[arg(long)]
    quick: bool,
    /// Kill a size whose RSS passes this many MiB and report it over cap.
    #[arg(long, default_value_t = 4096)]
    max_rss_mib: u64,
    /// Kill a size still running after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Passes with nothing new to time (the median is reported).
    #[arg(long, default_value_t = 3)]
    converged_passes: usize,
    /// MeshApps per manifest file in standalone mode.
    #[arg(long, default_value_t = 1)]
    apps_per_file: usize,
    /// How apps get ranges: pool (the planner allocates) or explicit
    /// (spec.addressSpace in every MeshApp).
    #[arg(long, default_value = "pool")]
    ipam: String,
    /// Where the standalone state directories go (default: the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also run sizes larger than one that went over the cap or timed out.
    #[arg(long)]
    keep_going: bool,
    /// Federation sizes, comma separated: SITESxNODES (nodes per site, one
    /// app shared by all); empty skips.
    #[arg(long, default_value = fedscale::DEFAULT_SIZES)]
    federation: String,
}

#[derive(Subcommand, Debug)]
enum Child {
    /// The fake API server of a Kubernetes-mode child (its own process).
    #[command(hide = true)]
    FakeApi {
        #[arg(long)]
        kubeconfig: PathBuf,
    },
    /// Runs one size in one mode (what the parent spawns).
    #[command(hide = true)]
    Child {
        #[arg(long)]
        mode: String,
        #[arg(long)]
        size: String,
        #[arg(long)]
        ipam: String,
        #[arg(long)]
        work_dir: PathBuf,
        #[arg(long)]
        converged_passes: usize,
        #[arg(long)]
        apps_per_file: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.child {
        Some(Child::FakeApi { kubeconfig }) => {
            scale::k8s::serve_fake(kubeconfig).map(|()| ExitCode::SUCCESS)
        }
        Some(Child::Child {
            mode,
            size,
            ipam,
            work_dir,
            converged_passes,
            apps_per_file,
        }) => child(
            mode,
            size,
            ipam,
            work_dir.clone(),
            *converged_passes,
            *apps_per_file,
        ),
        None => parent(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // The parent reads this line as the reason a child failed; a
            // parent already gone (a killed child's fake API) is no reason
            // to panic.
            let _ = writeln!(std::io::stdout(), "ERROR {e:#}");
            eprintln!("weft-bench-scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn child(
    mode: &str,
    size: &str,
    ipam: &str,
    work_dir: PathBuf,
    converged_passes: usize,
    apps_per_file: usize,
) -> Result<ExitCode> {
    let mode: Mode = mode.parse()?;
    let size: Size = size.parse()?;
    let cluster = Cluster::new(size, ipam.parse()?)?;
    match mode {
        Mode::Standalone => scale::standalone::run(
            cluster,
            &work_dir,
            &scale::standalone::Options {
                converged_passes,
                apps_per_file,
            },
        )?,
        Mode::Kubernetes => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(scale::k8s::run(
                cluster,
                &work_dir,
                &scale::k8s::Options { converged_passes },
            ))?,
    }
    let peak = scale::proc_status_bytes("self", "VmHWM").context("reading VmHWM")?;
    emit(keys::PEAK_RSS, peak as f64);
    Ok(ExitCode::SUCCESS)
}

struct Plan {
    sizes: Vec<Size>,
    modes: Vec<Mode>,
    cap: u64,
    timeout: Duration,
    converged_passes: usize,
    apps_per_file: usize,
    ipam: String,
    work_dir: PathBuf,
    keep_going: bool,
}

fn parent(args: &Args) -> Result<ExitCode> {
    let plan = Plan {
        sizes: scale::parse_sizes(if args.quick { QUICK_SIZES } else { &args.sizes })?,
        modes: args
            .modes
            .split(',')
            .map(|m| m.trim().parse())
            .collect::<Result<_>>()?,
        cap: args.max_rss_mib * 1024 * 1024,
        timeout: Duration::from_secs(args.timeout_secs),
        converged_passes: if args.quick { 2 } else { args.converged_passes },
        apps_per_file: args.apps_per_file,
        ipam: {
            args.ipam.parse::<Ipam>()?;
            args.ipam.clone()
        },
        work_dir: args.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        keep_going: args.keep_going,
    };
    println!(
        "# weft-bench-scale: sizes {}; modes {}; cap {} MiB; ipam {}; {} converged passes; {} app(s) per manifest file",
        plan.sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        plan.modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
        args.max_rss_mib,
        plan.ipam,
        plan.converged_passes,
        plan.apps_per_file,
    );
    println!(
        "# Times are whole operator passes: standalone reads every file, plans, writes with fsync; kubernetes plans the stores and writes over HTTP to the fake API server (a process of its own). RSS is the operator's. No daemons, no policies. MeshNode size: compact JSON of metadata and spec."
    );
    println!();
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut runs: Vec<Run> = Vec::new();
    for size in &plan.sizes {
        for &mode in &plan.modes {
            let given_up = runs
                .iter()
                .find(|r| r.mode == mode && r.gave_up() && r.size.dominated_by(size));
            let run = match given_up {
                Some(r) if !plan.keep_going => Run {
                    mode,
                    size: *size,
                    metrics: BTreeMap::new(),
                    outcome: Outcome::Skipped(format!(
                        "{} did not finish in this mode (--keep-going runs it anyway)",
                        r.size
                    )),
                    rss_seen: 0,
                },
                _ => run_child(&exe, &plan, mode, size)?,
            };
            let prev = runs.iter().rev().find(|r| report::same_shape(r, &run));
            println!("{}", report::size_table(&run, prev));
            runs.push(run);
        }
    }
    for &mode in &plan.modes {
        println!("{}", report::summary(&runs, mode));
    }
    let fed_sizes = fedscale::parse_sizes(if args.quick {
        fedscale::QUICK_SIZES
    } else {
        &args.federation
    })?;
    let fed_failed = !fed_sizes.is_empty() && !federation(&fed_sizes);
    let failed = runs.iter().any(|r| matches!(r.outcome, Outcome::Failed(_))) || fed_failed;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs one size in a child, watching its RSS; kills it (our own child, by
/// its handle) over the cap or the time limit.
fn run_child(exe: &PathBuf, plan: &Plan, mode: Mode, size: &Size) -> Result<Run> {
    let work = tempfile::Builder::new()
        .prefix("weft-bench-scale-")
        .tempdir_in(&plan.work_dir)
        .with_context(|| format!("creating a work directory in {}", plan.work_dir.display()))?;
    eprintln!("running {} {size} ...", mode.name());
    let mut child = Command::new(exe)
        .arg("child")
        .args(["--mode", mode.name()])
        .args(["--size", &size.to_string()])
        .args(["--ipam", &plan.ipam])
        .arg("--work-dir")
        .arg(work.path())
        .args(["--converged-passes", &plan.converged_passes.to_string()])
        .args(["--apps-per-file", &plan.apps_per_file.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a child")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let pid = child.id().to_string();
    let started = Instant::now();
    let mut rss_seen = 0;
    let killed = loop {
        if let Some(status) = child.try_wait()? {
            break (!status.success()).then(|| Outcome::Failed(format!("exit status {status}")));
        }
        let rss = scale::proc_status_bytes(&pid, "VmRSS").unwrap_or(0);
        rss_seen = rss_seen.max(rss);
        let over = if rss > plan.cap {
            Some(Outcome::OverCap(plan.cap))
        } else if started.elapsed() > plan.timeout {
            Some(Outcome::TimedOut(plan.timeout.as_secs()))
        } else {
            None
        };
        if let Some(outcome) = over {
            child.kill()?;
            child.wait()?;
            break Some(outcome);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    let mut metrics = BTreeMap::new();
    let mut error = None;
    for line in rx.try_iter() {
        if let Some((k, v)) = scale::parse_metric(&line) {
            metrics.insert(k, v);
        } else if let Some(e) = line.strip_prefix("ERROR ") {
            error = Some(e.to_string());
        }
    }
    let outcome = match killed {
        None => Outcome::Complete,
        Some(Outcome::Failed(status)) => Outcome::Failed(error.unwrap_or(status)),
        Some(o) => o,
    };
    Ok(Run {
        mode,
        size: *size,
        metrics,
        outcome,
        rss_seen,
    })
}

/// Federation target of issue (planner level, 50 sites x 20 nodes).
const FEDERATION_TARGET_S: f64 = 5.0;

/// Runs and prints the federation sizes (in this process, one after the
/// other); false if one failed.
fn federation(sizes: &[fedscale::FedSize]) -> bool {
    println!(
        "### federation | planner level, in memory: S member sites x N nodes (same node names and app spec in every member), one app shared by all through a hub |"
    );
    println!();
    println!(
        "| sites x nodes | nodes | until converged | rounds | one more round (converged: every member plans again) | every plan agrees | target |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut ok = true;
    let mut done: Vec<fedscale::FedRun> = Vec::new();
    for &size in sizes {
        eprintln!("running federation {size} ...");
        let target = if size.sites == 50 && size.nodes == 20 {
            format!("<= {FEDERATION_TARGET_S:.0} s")
        } else {
            String::new()
        };
        match fedscale::run(size) {
            Ok(r) => {
                println!(
                    "| {} x {} | {} | {} | {} | {} | yes: {} peer entries, {} disjoint slices | {target} |",
                    size.sites,
                    size.nodes,
                    size.total(),
                    secs(r.converge),
                    r.rounds,
                    secs(r.extra_round),
                    r.peers_checked,
                    size.total(),
                );
                done.push(r);
            }
            Err(e) => {
                ok = false;
                println!(
                    "| {} x {} | {} | failed | | | {} | {target} |",
                    size.sites,
                    size.nodes,
                    size.total(),
                    format!("{e:#}").replace('|', "/")
                );
            }
        }
    }
    println!();
    for w in done.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        println!(
            "federation growth {} -> {} (nodes x{:.1}, peer entries x{:.1}): until converged x{:.1}, one more round x{:.1}",
            a.size,
            b.size,
            b.size.total() as f64 / a.size.total() as f64,
            b.peers_checked as f64 / a.peers_checked.max(1) as f64,
            b.converge.as_secs_f64() / a.converge.as_secs_f64().max(1e-9),
            b.extra_round.as_secs_f64() / a.extra_round.as_secs_f64().max(1e-9),
        );
    }
    if let Some(r) = done
        .iter()
        .find(|r| r.size.sites == 50 && r.size.nodes == 20)
    {
        println!(
            "federation 50 x 20 until converged: {:.2} s (target <= {FEDERATION_TARGET_S:.0} s)",
            r.converge.as_secs_f64()
        );
    }
    println!();
    ok
}

/// Seconds, or milliseconds below one second.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}
