//! `weft-bench`: figures for Weft on one machine, all from one run so the
//! ratios are comparable (absolute numbers depend on the CPUs):
//!
//! (a) raw veth between two namespaces (baseline),
//! (b) Weft between two workloads of one app on two simulated nodes,
//! (c) Debian's wireguard-go between two namespaces,
//! (d) time from dropping a new MeshApp manifest to the first packet through
//!     its tunnel (workloads already announced), p50/p95,
//! (e) resident memory of each daemon at idle with two apps.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use weft_e2e::baseline::{VethPair, WgGoPair};
use weft_e2e::cluster::Cluster;
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
    /// Pings per path for the RTT average.
    #[arg(long, default_value_t = 20)]
    ping_count: u32,
    /// Time-to-first-packet runs (0 skips).
    #[arg(long, default_value_t = 10)]
    ttfp_runs: u32,
    /// Skip the wireguard-go row.
    #[arg(long)]
    skip_wireguard_go: bool,
    /// Seconds to wait for apps to become Ready.
    #[arg(long, default_value_t = 30)]
    ready_timeout: u64,
    /// Directory whose *.yaml files are copied into the operator's manifests
    /// directory (apps `demo/web` and `demo/db` are added if none defines them).
    #[arg(long)]
    examples: Option<std::path::PathBuf>,
}

#[derive(Default, Clone)]
struct Row {
    name: String,
    runs: Vec<f64>,
    rtt_ms: Option<f64>,
    note: String,
}

impl Row {
    fn mbit(&self) -> Option<f64> {
        (!self.runs.is_empty()).then(|| median(&self.runs))
    }
}

fn measure(
    name: &str,
    client: &str,
    server: &str,
    addr: Ipv4Addr,
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
        Ok(p) if p.ok => row.rtt_ms = p.rtt_avg_ms,
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
        match iperf3_tcp(client, server, addr, args.iperf_secs, log_dir) {
            Ok(m) => {
                println!(
                    "  {name}: iperf3 run {r}/{}: {m:.0} Mbit/s",
                    args.iperf_runs
                );
                row.runs.push(m);
            }
            Err(e) => {
                row.note.push_str(&format!("iperf3: {e:#} "));
                break;
            }
        }
    }
    row
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct WeftFigures {
    row: Row,
    ttfp_ms: Vec<f64>,
    ttfp_note: String,
    rss: Vec<(String, Option<u64>)>,
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
            name: "wireguard-go".into(),
            note: "skipped (--skip-wireguard-go)".into(),
            ..Default::default()
        }
    } else if let Some(t) = WgGoPair::missing_tools() {
        Row {
            name: "wireguard-go".into(),
            note: format!("{t} not installed: skipped"),
            ..Default::default()
        }
    } else {
        match WgGoPair::new(&prefix, log_dir.path()) {
            Ok(p) => {
                let _ = weft_e2e::traffic::ping_until_ok(
                    p.a.name(),
                    WgGoPair::ADDR_B,
                    Duration::from_secs(10),
                );
                measure(
                    "wireguard-go",
                    p.a.name(),
                    p.b.name(),
                    WgGoPair::ADDR_B,
                    &args,
                    log_dir.path(),
                )
            }
            Err(e) => Row {
                name: "wireguard-go".into(),
                note: format!("{e:#}"),
                ..Default::default()
            },
        }
    };

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
                ttfp_ms: Vec::new(),
                ttfp_note: "not measured".into(),
                rss: Vec::new(),
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
        "{:<34} {:>14} {:>28} {:>12}",
        "path",
        format!("TCP Mbit/s"),
        format!("runs ({}x{} s)", args.iperf_runs, args.iperf_secs),
        "ping RTT"
    );
    for r in [&raw, &weft.row, &wggo] {
        let runs = r
            .runs
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "{:<34} {:>14} {:>28} {:>12}  {}",
            r.name,
            r.mbit()
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "-".into()),
            runs,
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
        "Weft / wireguard-go:  throughput {}   RTT {}",
        ratio(weft.row.mbit(), wggo.mbit()),
        ratio(weft.row.rtt_ms, wggo.rtt_ms)
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
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_weft(args: &Args) -> Result<WeftFigures> {
    let mut c = Cluster::new(2)?;
    let res = measure_weft(&mut c, args);
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
        println!("  Weft logs and state kept in {}", d.display());
    }
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
    let row = measure(
        "Weft (2 nodes, one app)",
        &web1,
        &web2,
        a.web2,
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
    Ok(WeftFigures {
        row,
        ttfp_ms,
        ttfp_note,
        rss,
    })
}
