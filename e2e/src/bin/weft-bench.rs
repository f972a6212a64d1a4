//! `weft-bench`: figures for Weft on one machine, all from one run so the
//! ratios are comparable (absolute numbers depend on the CPUs):
//!
//! (a) raw veth between two namespaces (baseline),
//! (b) Weft between two workloads of one app on two simulated nodes,
//! (c) Debian's wireguard-go between two namespaces, and (c') boringtun 0.7
//!     driven as the daemon drove it before GotaTun (the old data path);
//!     every throughput row also gets the CPU its tunnel processes spent
//!     per Gbit moved,
//! (d) time from dropping a new MeshApp manifest to the first packet through
//!     its tunnel (workloads already announced), p50/p95,
//! (e) resident memory of each daemon at idle with two apps,
//! (f) throughput and RTT of (b) with 100 and 1,000 MeshPolicy rules in
//!     place, as ratios to the same path with no policy at all. The rules
//!     that allow the measured traffic come LAST, so the first packet of
//!     every new flow walks the whole list (later packets of a flow take the
//!     conntrack `established` rule at the top, as in production),
//! (g) workload migration: a workload moves between two nodes (same name and
//!     labels, removed from one, started on the other; a client stays on a
//!     third node), p50/p95 of the time from its new attachment (its `weft0`
//!     has the address) to the first client packet reaching it there (see
//!     `weft_e2e::migration`).
//! (h) cross-cluster migration, on the federation scenario (two clusters
//!     and a hub, `weft_e2e::fedbench`): a workload of demo/shop leaves
//!     cluster-a and starts in cluster-b; p50/p95 of its attachment in B to
//!     the first packet from a workload of A reaching it, beside the move
//!     back within cluster-a of the same run,
//! (i) a new MeshApp applied in both clusters: from the second apply to the
//!     first packet between its workloads across the clusters, p50/p95.
//! (j) a daemon restart (SIGTERM, start again) under a UDP stream between
//!     two nodes: datagrams lost and the longest silence (`weft_e2e::restart`).
//! (k) many apps on one node (`weft_e2e::manyapps`): cold programming of
//!     all, then at rest the daemon's pass time, CPU and memory.
//! (l) Kubernetes mode against a real kube-apiserver (`weft_e2e::kubebench`):
//!     `kubectl apply` of a MeshApp to the first packet between two of its
//!     pods, and a pod's CNI ADD chain once its app is planned, p50/p95.
//!
//! Every Weft process runs at its shipped default intervals
//! (`weft_e2e::fedbench::DefaultIntervals` drops the harness's 100 ms):
//! a figure taken at settings no user runs is not the product's figure.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use weft_e2e::baseline::{Userspace, UserspacePair, VethPair};
use weft_e2e::cluster::Cluster;
use weft_e2e::procs::{cpu_seconds, rss_kib};
use weft_e2e::scenario::{self, NS};
use weft_e2e::traffic::{
    have_iperf3, iperf3_tcp, median, percentile, ping, udp_probe_until_ok, UdpEcho,
};

#[derive(Parser, Debug)]
#[command(
    about = "Weft throughput, latency, time-to-first-packet and memory, compared with raw veth and wireguard-go"
)]
struct Args {
    /// iperf3 runs per path (the median is reported).
    #[arg(long, default_value_t = 3)]
    iperf_runs: u32,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    iperf_secs: u32,
    /// Pings per path for the RTT median.
    #[arg(long, default_value_t = 20)]
    ping_count: u32,
    /// Apps on one node for (k) (0 skips).
    #[arg(long, default_value_t = 200)]
    many_apps: usize,
    /// Time-to-first-packet runs (0 skips).
    #[arg(long, default_value_t = 10)]
    ttfp_runs: u32,
    /// Apps for the Kubernetes-mode figures (l) (0 skips; needs the
    /// control plane `scripts/control-plane.sh` builds).
    #[arg(long, default_value_t = 5)]
    kube_apps: usize,
    /// Workload moves for the migration figure (g) (0 skips).
    #[arg(long, default_value_t = 10)]
    migration_runs: u32,
    /// Moves each way for the cross-cluster migration figure (h) (0 skips).
    #[arg(long, default_value_t = 10)]
    federation_moves: usize,
    /// New apps across two clusters for figure (i) (0 skips).
    #[arg(long, default_value_t = 5)]
    federation_apps: usize,
    /// Skip the wireguard-go row.
    #[arg(long)]
    skip_wireguard_go: bool,
    /// Seconds to wait for apps to become Ready.
    #[arg(long, default_value_t = 30)]
    ready_timeout: u64,
    /// Rule counts for the policy-overhead rows (f), comma separated; empty skips.
    #[arg(long, default_value = "100,1000", value_parser = parse_counts)]
    policy_rules: RuleCounts,
    /// Directory whose *.yaml files are copied into the operator's manifests
    /// directory (it must define apps `demo/web` and `demo/db`).
    #[arg(long)]
    examples: Option<std::path::PathBuf>,
}

#[derive(Default, Clone)]
struct Row {
    name: String,
    runs: Vec<f64>,
    /// CPU seconds per Gbit moved, per run: the tunnel processes of both
    /// ends together (utime + stime from /proc; empty for raw veth).
    cpu_per_gbit: Vec<f64>,
    /// Median ping RTT.
    rtt_ms: Option<f64>,
    note: String,
}

impl Row {
    fn mbit(&self) -> Option<f64> {
        (!self.runs.is_empty()).then(|| median(&self.runs))
    }

    fn cpu_per_gbit(&self) -> Option<f64> {
        (!self.cpu_per_gbit.is_empty()).then(|| median(&self.cpu_per_gbit))
    }
}

/// Ping and iperf3 from `client` to `addr` (in `server`); `tunnel_pids`
/// are the processes that carry the path (their CPU is charged to it).
fn measure(
    name: &str,
    client: &str,
    server: &str,
    addr: Ipv4Addr,
    tunnel_pids: &[u32],
    args: &Args,
    log_dir: &std::path::Path,
) -> Row {
    let mut row = Row {
        name: name.into(),
        ..Default::default()
    };
    println!("  {name}: ping x{} ...", args.ping_count);
    match ping(
        client,
        addr,
        args.ping_count,
        Duration::from_secs(u64::from(args.ping_count) + 5),
    ) {
        Ok(p) if p.ok => row.rtt_ms = p.rtt_p50_ms().or(p.rtt_avg_ms),
        Ok(p) => row.note.push_str(&format!(
            "ping failed ({} of {}) ",
            p.received, p.transmitted
        )),
        Err(e) => row.note.push_str(&format!("ping: {e:#} ")),
    }
    if !have_iperf3() {
        row.note
            .push_str("iperf3 not installed: throughput skipped");
        return row;
    }
    for r in 1..=args.iperf_runs {
        if weft_e2e::interrupted() {
            break;
        }
        let cpu = || {
            tunnel_pids
                .iter()
                .map(|p| cpu_seconds(*p))
                .sum::<Option<f64>>()
        };
        let cpu_before = cpu();
        match iperf3_tcp(client, server, addr, args.iperf_secs, log_dir) {
            Ok(m) => {
                let per_gbit = match (cpu_before, cpu()) {
                    (Some(a), Some(b)) if m > 0.0 && !tunnel_pids.is_empty() => {
                        Some((b - a) / (m * f64::from(args.iperf_secs) / 1e3))
                    }
                    _ => None,
                };
                println!(
                    "  {name}: iperf3 run {r}/{}: {m:.0} Mbit/s{}",
                    args.iperf_runs,
                    per_gbit
                        .map(|c| format!(", {c:.2} CPU-s per Gbit"))
                        .unwrap_or_default()
                );
                row.runs.push(m);
                row.cpu_per_gbit.extend(per_gbit);
            }
            Err(e) => {
                row.note.push_str(&format!("iperf3: {e:#} "));
                break;
            }
        }
    }
    row
}

struct WeftFigures {
    row: Row,
    /// (rules, row); 0 rules is the no-policy reference.
    policy_rows: Vec<(usize, Row)>,
    ttfp_ms: Vec<f64>,
    ttfp_note: String,
    rss: Vec<(String, Option<u64>)>,
    /// (j), or why not.
    restart: Result<weft_e2e::restart::Gap, String>,
}

/// (c) and (c'): a userspace WireGuard baseline between two namespaces.
fn measure_userspace(kind: Userspace, prefix: &str, args: &Args, log_dir: &std::path::Path) -> Row {
    let pair = kind.missing().map_or_else(
        || UserspacePair::new(kind, prefix, log_dir),
        |m| Err(anyhow::anyhow!(m)),
    );
    match pair {
        Ok(p) => {
            let _ = weft_e2e::traffic::ping_until_ok(
                p.a.name(),
                UserspacePair::ADDR_B,
                Duration::from_secs(10),
            );
            measure(
                kind.label(),
                p.a.name(),
                p.b.name(),
                UserspacePair::ADDR_B,
                &p.pids(),
                args,
                log_dir,
            )
        }
        Err(e) => Row {
            name: kind.label().into(),
            note: format!("{e:#}"),
            ..Default::default()
        },
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = weft_e2e::install_interrupt_handler() {
        eprintln!("cannot install the Ctrl-C handler: {e}");
        return ExitCode::from(2);
    }
    if let Some(m) = scenario::missing_privileges() {
        eprintln!("weft-bench needs {m}");
        return ExitCode::from(2);
    }
    let log_dir = match tempfile::Builder::new().prefix("weft-bench-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let prefix = weft_e2e::unique_prefix();
    let mut ok = true;

    println!("(a) raw veth pair between two namespaces");
    let raw = match VethPair::new(&prefix) {
        Ok(p) => measure(
            "raw veth",
            p.a.name(),
            p.b.name(),
            VethPair::ADDR_B,
            &[],
            &args,
            log_dir.path(),
        ),
        Err(e) => Row {
            name: "raw veth".into(),
            note: format!("{e:#}"),
            ..Default::default()
        },
    };

    println!("(c) wireguard-go between two namespaces");
    let wggo = if args.skip_wireguard_go {
        Row {
            name: Userspace::WireguardGo.label().into(),
            note: "skipped (--skip-wireguard-go)".into(),
            ..Default::default()
        }
    } else {
        measure_userspace(Userspace::WireguardGo, &prefix, &args, log_dir.path())
    };
    println!("(c') boringtun 0.7 driven as Weft drove it before GotaTun");
    let boringtun = measure_userspace(Userspace::Boringtun07, &prefix, &args, log_dir.path());

    println!("(b, d, e) Weft: two simulated nodes, operator and daemons");
    let weft = match run_weft(&args) {
        Ok(w) => w,
        Err(e) => {
            ok = false;
            eprintln!("Weft measurements failed: {e:#}");
            WeftFigures {
                row: Row {
                    name: "Weft".into(),
                    note: format!("{e:#}"),
                    ..Default::default()
                },
                policy_rows: Vec::new(),
                ttfp_ms: Vec::new(),
                ttfp_note: "not measured".into(),
                rss: Vec::new(),
                restart: Err("not measured".into()),
            }
        }
    };
    if weft_e2e::interrupted() {
        eprintln!("interrupted");
        return ExitCode::from(130);
    }

    let migration = if args.migration_runs == 0 {
        Migration {
            note: "skipped (--migration-runs 0)".into(),
            ..Default::default()
        }
    } else {
        println!("(g) workload migration: three simulated nodes");
        match run_migration(&args) {
            Ok(m) => m,
            Err(e) => {
                ok = false;
                eprintln!("migration measurements failed: {e:#}");
                Migration {
                    note: format!("{e:#}"),
                    ..Default::default()
                }
            }
        }
    };
    if weft_e2e::interrupted() {
        eprintln!("interrupted");
        return ExitCode::from(130);
    }

    let many = if args.many_apps == 0 {
        Err("skipped (--many-apps 0)".to_string())
    } else {
        println!("(k) {} apps on one node", args.many_apps);
        run_many_apps(&args).map_err(|e| {
            ok = false;
            eprintln!("many-apps measurements failed: {e:#}");
            format!("{e:#}")
        })
    };
    if weft_e2e::interrupted() {
        eprintln!("interrupted");
        return ExitCode::from(130);
    }

    let kube = if args.kube_apps == 0 {
        Err("skipped (--kube-apps 0)".to_string())
    } else {
        // The processes run with the arguments of config/default's
        // manifests: the shipped defaults.
        println!("(l) Kubernetes mode: a real kube-apiserver, two simulated nodes");
        weft_e2e::kubebench::measure(args.kube_apps).map_err(|e| {
            ok = false;
            eprintln!("Kubernetes-mode measurements failed: {e:#}");
            format!("{e:#}")
        })
    };
    if weft_e2e::interrupted() {
        eprintln!("interrupted");
        return ExitCode::from(130);
    }

    let fed = if args.federation_moves == 0 && args.federation_apps == 0 {
        FedResult {
            note: "skipped (--federation-moves 0 --federation-apps 0)".into(),
            ..Default::default()
        }
    } else {
        println!("(h, i) federation: two clusters and a hub, at the shipped default intervals");
        match run_federation(&args) {
            Ok(f) => f,
            Err(e) => {
                ok = false;
                eprintln!("federation measurements failed: {e:#}");
                FedResult {
                    note: format!("{e:#}"),
                    ..Default::default()
                }
            }
        }
    };
    if weft_e2e::interrupted() {
        eprintln!("interrupted");
        return ExitCode::from(130);
    }

    println!();
    println!("Results (one run, same CPUs for everything; compare ratios, not absolute figures)");
    println!(
        "{:<34} {:>14} {:>28} {:>14} {:>12}",
        "path",
        format!("TCP Mbit/s"),
        format!("runs ({}x{} s)", args.iperf_runs, args.iperf_secs),
        "CPU-s/Gbit",
        "RTT p50"
    );
    for r in [&raw, &weft.row, &wggo, &boringtun] {
        let runs = r
            .runs
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "{:<34} {:>14} {:>28} {:>14} {:>12}  {}",
            r.name,
            r.mbit()
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "-".into()),
            runs,
            r.cpu_per_gbit()
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.rtt_ms
                .map(|v| format!("{v:.3} ms"))
                .unwrap_or_else(|| "-".into()),
            r.note.trim()
        );
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    println!();
    println!(
        "Weft / raw veth:      throughput {}   RTT {}",
        ratio(weft.row.mbit(), raw.mbit()),
        ratio(weft.row.rtt_ms, raw.rtt_ms)
    );
    println!(
        "Weft / wireguard-go:  throughput {} (target >= 2.0)   RTT {} (target <= 1)   CPU per Gbit {}",
        ratio(weft.row.mbit(), wggo.mbit()),
        ratio(weft.row.rtt_ms, wggo.rtt_ms),
        ratio(weft.row.cpu_per_gbit(), wggo.cpu_per_gbit())
    );
    println!(
        "Weft / boringtun 0.7: throughput {} (target >= 1.3)   RTT {}   CPU per Gbit {}",
        ratio(weft.row.mbit(), boringtun.mbit()),
        ratio(weft.row.rtt_ms, boringtun.rtt_ms),
        ratio(weft.row.cpu_per_gbit(), boringtun.cpu_per_gbit())
    );
    println!(
        "  (CPU-s/Gbit: CPU time of the tunnel processes of both ends, user + system from /proc, per Gbit moved; the Weft row counts both node daemons)"
    );
    println!();
    if weft.ttfp_ms.is_empty() {
        println!("(d) time to first packet: {}", weft.ttfp_note);
    } else {
        println!(
            "(d) time from dropping a MeshApp manifest to the first packet through its tunnel, {} runs: p50 {:.0} ms, p95 {:.0} ms (min {:.0}, max {:.0}) {}",
            weft.ttfp_ms.len(),
            percentile(&weft.ttfp_ms, 50.0),
            percentile(&weft.ttfp_ms, 95.0),
            percentile(&weft.ttfp_ms, 0.0),
            percentile(&weft.ttfp_ms, 100.0),
            weft.ttfp_note
        );
    }
    for (who, kib) in &weft.rss {
        println!(
            "(e) resident memory of {who} at idle with 2 apps: {}",
            kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into())
        );
    }
    match &weft.restart {
        Ok(g) => println!(
            "(j) daemon restart on node 2 under a UDP stream (one datagram every {} ms): {} of {} lost, longest silence {:.0} ms (the restart itself took {:.0} ms)",
            weft_e2e::restart::INTERVAL.as_millis(),
            g.lost(),
            g.sent,
            g.longest_silence.as_secs_f64() * 1e3,
            g.restart_took.as_secs_f64() * 1e3
        ),
        Err(e) => println!("(j) daemon restart: not measured: {e}"),
    }
    match &many {
        Ok(m) => println!(
            "(k) {} apps on one node: cold programming {:.0} ms (target <= 5,000); settling (the {} s after it, passes every 1 s): daemon pass {}, CPU {:.1}%; at rest (the {} s after that): daemon pass {} (target <= 20 ms), CPU {:.1}% of one core (target < 2%), RSS {} (target < 40 MiB)",
            m.apps,
            m.cold.as_secs_f64() * 1e3,
            weft_e2e::manyapps::SETTLING_WINDOW.as_secs(),
            m.settling
                .pass_ms
                .map(|(ms, n)| format!("{ms:.1} ms avg over {n} passes"))
                .unwrap_or_else(|| "-".into()),
            m.settling.cpu_percent,
            weft_e2e::manyapps::IDLE_WINDOW.as_secs(),
            m.pass_ms
                .map(|(ms, n)| format!("{ms:.1} ms avg over {n} passes"))
                .unwrap_or_else(|| "-".into()),
            m.cpu_percent,
            m.rss_kib
                .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into())
        ),
        Err(e) => println!("(k) many apps on one node: {e}"),
    }
    if migration.attach_to_first_ms.is_empty() {
        println!(
            "(g) workload migration: attach -> first packet: {}",
            migration.note
        );
    } else {
        let m = &migration.attach_to_first_ms;
        println!(
            "(g) workload migration: attach -> first packet, {} moves: p50 {:.0} ms, p95 {:.0} ms (min {:.0}, max {:.0}); the attachment came p50 {:.0} ms after the workload appeared on its new node {}",
            m.len(),
            percentile(m, 50.0),
            percentile(m, 95.0),
            percentile(m, 0.0),
            percentile(m, 100.0),
            percentile(&migration.announce_to_attach_ms, 50.0),
            migration.note
        );
    }
    print_federation(&fed);
    match &kube {
        Ok(k) => {
            let p = |v: &[f64], q: f64| percentile(v, q);
            println!(
                "(l) Kubernetes mode ({}): kubectl apply -> first packet, {} apps: p50 {:.0} ms, p95 {:.0} ms (target p50 <= 300, p95 <= 600); CNI ADD of a pod whose app is planned, {} pods: p50 {:.0} ms, p95 {:.0} ms (target p95 <= 300); of a pod of no app: p50 {:.0} ms",
                k.server,
                k.apply_to_first_ms.len(),
                p(&k.apply_to_first_ms, 50.0),
                p(&k.apply_to_first_ms, 95.0),
                k.cni_add_ms.len(),
                p(&k.cni_add_ms, 50.0),
                p(&k.cni_add_ms, 95.0),
                p(&k.cni_add_unmeshed_ms, 50.0),
            );
        }
        Err(e) => println!("(l) Kubernetes mode: not measured: {e}"),
    }
    if let Some((_, reference)) = weft.policy_rows.iter().find(|(n, _)| *n == 0) {
        println!();
        println!(
            "(f) MeshPolicy overhead on the Weft path (allowing rules last; ratios to no policy):"
        );
        println!(
            "{:<34} {:>14} {:>12} {:>18} {:>10}",
            "rules in the app's table", "TCP Mbit/s", "RTT p50", "throughput ratio", "RTT ratio"
        );
        for (n, r) in &weft.policy_rows {
            println!(
                "{:<34} {:>14} {:>12} {:>18} {:>10}  {}",
                if *n == 0 {
                    "no policy".to_string()
                } else {
                    format!("{n} rules + the allowing ones")
                },
                r.mbit()
                    .map(|m| format!("{m:.0}"))
                    .unwrap_or_else(|| "-".into()),
                r.rtt_ms
                    .map(|v| format!("{v:.3} ms"))
                    .unwrap_or_else(|| "-".into()),
                ratio(r.mbit(), reference.mbit()),
                ratio(r.rtt_ms, reference.rtt_ms),
                r.note.trim()
            );
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// (g) figures.
#[derive(Default)]
struct Migration {
    attach_to_first_ms: Vec<f64>,
    announce_to_attach_ms: Vec<f64>,
    note: String,
}

/// (g): client on node 3, the workload moves 1 -> 2 -> 1 -> ... on its own
/// three-node cluster (so a move always crosses nodes and leaves one).
fn run_migration(args: &Args) -> Result<Migration> {
    let defaults = weft_e2e::fedbench::DefaultIntervals::install()?;
    let res = run_migration_at(args);
    drop(defaults); // after the teardown: it runs the daemons' cleanup through the wrappers
    res
}

fn run_migration_at(args: &Args) -> Result<Migration> {
    use weft_e2e::migration;
    let mut c = Cluster::new(3)?;
    let res = (|| -> Result<Migration> {
        c.start_all()?;
        let examples = args
            .examples
            .clone()
            .unwrap_or_else(scenario::repo_examples_dir);
        scenario::install_manifests(&c, &examples)?;
        migration::setup(&mut c, 3, 1)?;
        let mut m = Migration::default();
        for run in 1..=args.migration_runs {
            let to = if run % 2 == 1 { 2 } else { 1 };
            match migration::move_to(&mut c, to, Duration::from_secs(30)) {
                Ok(mv) => {
                    let ms = mv.attach_to_first_packet.as_secs_f64() * 1e3;
                    println!(
                        "  move {run}/{} to node {to} ({}): attached after {:.0} ms, first packet {ms:.0} ms after the attachment",
                        args.migration_runs,
                        mv.address,
                        mv.announce_to_attach.as_secs_f64() * 1e3
                    );
                    m.attach_to_first_ms.push(ms);
                    m.announce_to_attach_ms
                        .push(mv.announce_to_attach.as_secs_f64() * 1e3);
                }
                Err(e) => {
                    println!("  move {run}: {e:#}");
                    m.note = format!("(move {run} failed: {e:#})");
                    break; // the mover is gone: later moves would measure nothing
                }
            }
        }
        c.check_alive()?;
        Ok(m)
    })();
    finish(c, res, "migration")
}

/// (k): one node, many apps, at the shipped defaults.
fn run_many_apps(args: &Args) -> Result<weft_e2e::manyapps::Figures> {
    let defaults = weft_e2e::fedbench::DefaultIntervals::install()?;
    let res = Cluster::new(1).and_then(|mut c| {
        let res = c.start_all().and_then(|()| {
            weft_e2e::manyapps::measure(&mut c, args.many_apps, Duration::from_secs(120))
        });
        finish(c, res, "many apps")
    });
    drop(defaults);
    res
}

/// (h) and (i) figures, with the intervals they ran at.
#[derive(Default)]
struct FedResult {
    figures: weft_e2e::fedbench::Figures,
    intervals: String,
    note: String,
}

/// (h, i): the federation scenario, every process at its default interval.
fn run_federation(args: &Args) -> Result<FedResult> {
    use weft_e2e::fedbench;
    let defaults = fedbench::DefaultIntervals::install()?;
    println!("  intervals: {}", defaults.described);
    let res = Cluster::new(3).and_then(|mut c| {
        let res = fedbench::measure(&mut c, args.federation_moves, args.federation_apps);
        finish(c, res, "federation")
    });
    let intervals = defaults.described.clone();
    drop(defaults); // after the teardown: it runs the daemons' cleanup through the wrappers
    let figures = res?;
    Ok(FedResult {
        note: figures.note.clone(),
        figures,
        intervals,
    })
}

/// Target of the cross-cluster migration figure (p95).
const FED_MIGRATION_TARGET_MS: f64 = 500.0;
/// Target of the new-app figure (p50).
const FED_NEW_APP_TARGET_MS: f64 = 1000.0;

fn print_federation(fed: &FedResult) {
    let f = &fed.figures;
    let pct = |v: &[f64], p: f64| percentile(v, p);
    if !fed.intervals.is_empty() {
        println!(
            "(h, i) federation (two clusters, edge host, directory hub) at the shipped default intervals: {}",
            fed.intervals
        );
    }
    if f.a_to_b.is_empty() {
        println!("(h) cross-cluster migration: {}", fed.note);
    } else {
        let cross: Vec<f64> = f
            .a_to_b
            .iter()
            .map(|m| m.attach_to_first_packet.as_secs_f64() * 1e3)
            .collect();
        let attach: Vec<f64> = f
            .a_to_b
            .iter()
            .map(|m| m.announce_to_attach.as_secs_f64() * 1e3)
            .collect();
        println!(
            "(h) cross-cluster migration, cluster-a -> cluster-b: attach -> first packet from cluster-a, {} moves: p50 {:.0} ms, p95 {:.0} ms (min {:.0}, max {:.0}); target p95 <= {FED_MIGRATION_TARGET_MS:.0} ms; the attachment came p50 {:.0} ms after the workload appeared in cluster-b",
            cross.len(),
            pct(&cross, 50.0),
            pct(&cross, 95.0),
            pct(&cross, 0.0),
            pct(&cross, 100.0),
            pct(&attach, 50.0),
        );
        if !f.b_to_a.is_empty() {
            let within: Vec<f64> = f
                .b_to_a
                .iter()
                .map(|m| m.attach_to_first_packet.as_secs_f64() * 1e3)
                .collect();
            let r = |p: f64| {
                let w = pct(&within, p);
                if w > 0.0 {
                    format!("{:.2}", pct(&cross, p) / w)
                } else {
                    "-".into()
                }
            };
            println!(
                "    the move back within cluster-a (same run, client on its edge host), {} moves: p50 {:.0} ms, p95 {:.0} ms (min {:.0}, max {:.0}); cross-cluster / within: p50 {}, p95 {}",
                within.len(),
                pct(&within, 50.0),
                pct(&within, 95.0),
                pct(&within, 0.0),
                pct(&within, 100.0),
                r(50.0),
                r(95.0),
            );
        }
    }
    if f.new_app_ms.is_empty() {
        println!("(i) new app across two clusters: {}", fed.note);
    } else {
        let v = &f.new_app_ms;
        println!(
            "(i) new app across two clusters: apply in the second cluster -> first cross-cluster packet, {} apps: p50 {:.0} ms, p95 {:.0} ms (min {:.0}, max {:.0}); target p50 <= {FED_NEW_APP_TARGET_MS:.0} ms; the workload in cluster-b attached p50 {:.0} ms after the apply",
            v.len(),
            pct(v, 50.0),
            pct(v, 95.0),
            pct(v, 0.0),
            pct(v, 100.0),
            pct(&f.new_app_attach_ms, 50.0),
        );
    }
    if !fed.note.is_empty() && !f.a_to_b.is_empty() && !f.new_app_ms.is_empty() {
        println!("    {}", fed.note.trim());
    }
}

/// Tears the cluster down (keeping its run directory when the measurement
/// failed) and reports what teardown found; passes `res` through.
fn finish<T>(mut c: Cluster, res: Result<T>, what: &str) -> Result<T> {
    if res.is_err() && !weft_e2e::interrupted() {
        c.keep_run_dir(true);
    }
    let rep = c.teardown();
    for w in &rep.warnings {
        println!("  teardown warning: {w}");
    }
    if !rep.clean() {
        println!(
            "  teardown left behind: {} {:?}",
            rep.leftovers, rep.new_wg_sockets
        );
    }
    if let Some(d) = &rep.kept_run_dir {
        println!("  {what} logs and state kept in {}", d.display());
    }
    res
}

fn run_weft(args: &Args) -> Result<WeftFigures> {
    let defaults = weft_e2e::fedbench::DefaultIntervals::install()?;
    println!("  intervals: {}", defaults.described);
    let res = Cluster::new(2).and_then(|mut c| {
        let res = measure_weft(&mut c, args);
        finish(c, res, "Weft")
    });
    drop(defaults);
    res
}

fn measure_weft(c: &mut Cluster, args: &Args) -> Result<WeftFigures> {
    c.start_all()?;
    let examples = args
        .examples
        .clone()
        .unwrap_or_else(scenario::repo_examples_dir);
    scenario::install_manifests(c, &examples)?;
    scenario::add_workloads(c)?;
    let timeout = Duration::from_secs(args.ready_timeout);
    c.wait_ready(NS, "web", timeout)?;
    c.wait_ready(NS, "db", timeout)?;
    let a = scenario::wait_addresses(c, timeout)?;
    let (web1, web2) = (
        c.workload("web-1").netns().to_string(),
        c.workload("web-2").netns().to_string(),
    );
    weft_e2e::traffic::ping_until_ok(&web1, a.web2, timeout)?;

    // (e) memory at idle with two apps.
    weft_e2e::sleep(Duration::from_secs(2))?;
    let mut rss = Vec::new();
    for i in 1..=2 {
        let pid = c.daemon(i)?.pid();
        rss.push((
            format!("weft-node-daemon on node {i} (pid {pid})"),
            rss_kib(pid),
        ));
    }
    let op = c.operator()?.pid();
    rss.push((format!("weft-operator (pid {op})"), rss_kib(op)));

    // (b) throughput and RTT.
    let log_dir = c.log_dir();
    let daemons = [c.daemon(1)?.pid(), c.daemon(2)?.pid()];
    let row = measure(
        "Weft (2 nodes, one app)",
        &web1,
        &web2,
        a.web2,
        &daemons,
        args,
        &log_dir,
    );
    c.check_alive()?;

    // (d) time to first packet.
    let mut ttfp_ms = Vec::new();
    let mut ttfp_note = String::new();
    if args.ttfp_runs > 0 {
        c.add_workload(
            1,
            "probe-1",
            "bench",
            &[(weft_api::labels::APP_LABEL, "probe")],
        )?;
        c.add_workload(
            2,
            "probe-2",
            "bench",
            &[(weft_api::labels::APP_LABEL, "probe")],
        )?;
        let baseline: Vec<usize> = (1..=2).map(|i| c.weft_netns(i).len()).collect();
        let (p1, p2) = (
            c.workload("probe-1").netns().to_string(),
            c.workload("probe-2").netns().to_string(),
        );
        let manifest = scenario::app_manifest(
            "probe",
            "bench",
            &[(weft_api::labels::APP_LABEL, "probe")],
            None,
        );
        for run in 1..=args.ttfp_runs {
            let echo = UdpEcho::start(&p2, 7777)?;
            let t0 = Instant::now();
            c.apply_manifest("bench-probe.yaml", &manifest)?;
            let res = (|| -> Result<Duration> {
                let addr = weft_e2e::wait_for(
                    "probe-2's address",
                    Duration::from_secs(30),
                    Duration::from_millis(5),
                    || c.workload("probe-2").address(),
                )?;
                let left = Duration::from_secs(30).saturating_sub(t0.elapsed());
                udp_probe_until_ok(
                    &p1,
                    SocketAddrV4::new(addr, 7777),
                    Duration::from_millis(5),
                    left,
                )?;
                Ok(t0.elapsed())
            })();
            drop(echo);
            match res {
                Ok(d) => {
                    println!(
                        "  time to first packet, run {run}/{}: {:.0} ms",
                        args.ttfp_runs,
                        d.as_secs_f64() * 1e3
                    );
                    ttfp_ms.push(d.as_secs_f64() * 1e3);
                }
                Err(e) => {
                    ttfp_note = format!("(run {run} failed: {e:#})");
                    println!("  time to first packet, run {run}: {e:#}");
                }
            }
            c.delete_manifest("bench-probe.yaml")?;
            weft_e2e::wait_for(
                "the probe app to be removed",
                Duration::from_secs(30),
                Duration::from_millis(20),
                || {
                    let gone = (1..=2).all(|i| c.weft_netns(i).len() <= baseline[i - 1])
                        && c.workload("probe-1").address()?.is_none()
                        && c.workload("probe-2").address()?.is_none();
                    Ok(gone.then_some(()))
                },
            )
            .context("between time-to-first-packet runs")?;
        }
    }
    c.check_alive()?;

    // (f) policy overhead.
    let mut policy_rows = Vec::new();
    if !args.policy_rules.0.is_empty() {
        policy_rows = measure_policy_overhead(c, args, &examples, &web1, &web2, a.web2)?;
    }
    c.check_alive()?;

    // (j) a daemon restart under traffic, last: it disturbs what follows.
    weft_e2e::traffic::ping_until_ok(&web1, a.web2, timeout)?;
    let restart = weft_e2e::restart::measure(
        c,
        2,
        &web1,
        &web2,
        a.web2,
        Duration::from_secs(2),
        Duration::from_secs(8),
    )
    .map_err(|e| format!("{e:#}"));
    c.check_alive()?;
    Ok(WeftFigures {
        row,
        policy_rows,
        ttfp_ms,
        ttfp_note,
        rss,
        restart,
    })
}

/// File name of the generated policy in the manifests directory.
const BENCH_POLICY_FILE: &str = "bench-policy.yaml";

/// A MeshPolicy for `demo/web` with `n` ingress rules that never match the
/// benchmark traffic (distinct /32 sources outside every node slice, distinct
/// TCP ports), followed by the rule that allows it (TCP and ICMP from the
/// app's web workloads). Compiled, that is `n + 2` allow rules per node.
fn policy_with_rules(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshPolicy\nmetadata:\n  name: bench-rules\n  namespace: demo\nspec:\n  app: web\n  selector:\n    matchLabels:\n      tier: web\n  ingress:\n",
    );
    for i in 0..n {
        // 10.100.200.0 - 10.100.255.255: inside the app range, never a node slice here.
        let (hi, lo) = (200 + i / 256, i % 256);
        y.push_str(&format!(
            "    - peers: [{{cidr: 10.100.{hi}.{lo}/32}}]\n      ports: [{{protocol: TCP, port: {}}}]\n",
            10_000 + i
        ));
    }
    y.push_str(
        "    - peers: [{selector: {matchLabels: {tier: web}}}]\n      ports: [{protocol: TCP}, {protocol: ICMP}]\n",
    );
    y
}

/// Allow rules (`... return`) in the `ip weft` table of `netns`; 0 without a table.
fn nft_allow_rules(netns: &str) -> usize {
    match weft_e2e::netns::exec_in(netns, "nft", &["list", "table", "ip", "weft"]) {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.trim_end().contains(" return"))
            .count(),
        _ => 0,
    }
}

/// Waits until the web app's table on both nodes has at least `want` allow
/// rules (`want == 0`: no table at all).
fn wait_rules(c: &mut Cluster, want: usize) -> Result<()> {
    let netns: Vec<String> = (1..=2)
        .map(|i| {
            c.app_netns(i, &format!("{NS}/web"))?
                .context("web has no namespace on a node")
        })
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    weft_e2e::wait_for(
        &format!("{want} policy rules programmed on both nodes"),
        Duration::from_secs(120),
        Duration::from_millis(100),
        || {
            let counts: Vec<usize> = netns.iter().map(|n| nft_allow_rules(n)).collect();
            let done = if want == 0 {
                counts.iter().all(|k| *k == 0)
            } else {
                counts.iter().all(|k| *k >= want)
            };
            Ok(done.then_some(()))
        },
    )?;
    println!(
        "  {want} allow rules programmed on both nodes after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    c.check_alive()
}

/// (f): the example policies are removed for a no-policy reference, then
/// the generated policy is applied with each rule count in turn.
fn measure_policy_overhead(
    c: &mut Cluster,
    args: &Args,
    examples: &std::path::Path,
    web1: &str,
    web2: &str,
    addr: Ipv4Addr,
) -> Result<Vec<(usize, Row)>> {
    let log_dir = c.log_dir();
    let mut rows = Vec::new();
    // Example policies would add rules of their own: take them out.
    for f in std::fs::read_dir(examples)?.flatten() {
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        if text.contains("kind: MeshPolicy") {
            let name = f.file_name().to_string_lossy().into_owned();
            if c.manifests_dir().join(&name).exists() {
                c.delete_manifest(&name)?;
            }
        }
    }
    wait_rules(c, 0)?;
    weft_e2e::traffic::ping_until_ok(web1, addr, Duration::from_secs(30))?;
    let before = pass_stats(c);
    let daemons = [c.daemon(1)?.pid(), c.daemon(2)?.pid()];
    let mut row = measure("no policy", web1, web2, addr, &daemons, args, &log_dir);
    note_pass_time(&mut row, before, pass_stats(c));
    rows.push((0, row));
    for &n in &args.policy_rules.0 {
        if weft_e2e::interrupted() {
            break;
        }
        c.apply_manifest(BENCH_POLICY_FILE, &policy_with_rules(n))?;
        wait_rules(c, n + 2)?;
        weft_e2e::traffic::ping_until_ok(web1, addr, Duration::from_secs(30))?;
        let before = pass_stats(c);
        let mut row = measure(
            &format!("{n} rules"),
            web1,
            web2,
            addr,
            &daemons,
            args,
            &log_dir,
        );
        note_pass_time(&mut row, before, pass_stats(c));
        rows.push((n, row));
    }
    print_daemon_metrics(c);
    c.delete_manifest(BENCH_POLICY_FILE)?;
    Ok(rows)
}

/// (sum of seconds, count) of the receiving node's reconcile passes, from
/// its `/metrics`.
fn pass_stats(c: &Cluster) -> Option<(f64, f64)> {
    let (_, body) = c.daemon_http_get(2, "/metrics").ok()?;
    let v = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    Some((
        v("weft_node_reconcile_duration_seconds_sum")?,
        v("weft_node_reconcile_duration_seconds_count")?,
    ))
}

/// Notes the receiving daemon's mean pass time during the row: it reads the
/// policy counters (`nft list`) every pass and shares the CPUs with the
/// traffic.
fn note_pass_time(row: &mut Row, before: Option<(f64, f64)>, after: Option<(f64, f64)>) {
    if let (Some((s0, n0)), Some((s1, n1))) = (before, after) {
        if n1 > n0 {
            row.note.push_str(&format!(
                "daemon pass {:.1} ms avg over {} passes",
                (s1 - s0) / (n1 - n0) * 1e3,
                n1 - n0
            ));
        }
    }
}

/// What the receiving node's daemon exports after the policy runs: the
/// allowing rules' counters, drops, peers and pass timings.
fn print_daemon_metrics(c: &Cluster) {
    match c.daemon_http_get(2, "/metrics") {
        Ok((status, body)) => {
            println!("  node 2 daemon /metrics ({status}), excerpt:");
            for l in body.lines().filter(|l| {
                !l.starts_with('#')
                    && l.contains("app=\"demo/web\"")
                    && (l.contains("rule=\"demo/bench-rules:ingress[")
                        && !l.contains("ingress[0].")
                        && !l.contains("ingress[1].")
                        && l.contains("_packets_total")
                        && !l.ends_with(" 0")
                        || l.starts_with("weft_node_policy_drops_packets_total")
                        || l.starts_with("weft_node_peers_up"))
                    || l.starts_with("weft_node_reconcile_duration_seconds_count")
                    || l.starts_with("weft_node_reconcile_duration_seconds_sum")
            }) {
                println!("    {l}");
            }
        }
        Err(e) => println!("  node 2 daemon /metrics: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_policy_puts_the_allowing_rule_last_and_ports_are_distinct() {
        let y = policy_with_rules(1000);
        let entries: Vec<&str> = y.lines().filter(|l| l.starts_with("    - peers")).collect();
        assert_eq!(entries.len(), 1001);
        assert!(entries[1000].contains("tier: web"));
        assert!(y.contains("cidr: 10.100.200.0/32"));
        assert!(y.contains("cidr: 10.100.203.231/32"), "the 1000th source");
        assert!(y.contains("port: 10999}"));
        let ports: std::collections::BTreeSet<&str> =
            y.lines().filter_map(|l| l.split("port: ").nth(1)).collect();
        assert_eq!(ports.len(), 1000);
    }
}

/// Rule counts for the policy rows; empty means none.
#[derive(Clone, Debug)]
struct RuleCounts(Vec<usize>);

fn parse_counts(s: &str) -> Result<RuleCounts, String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<usize>().map_err(|e| format!("{x:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()
        .map(RuleCounts)
}
