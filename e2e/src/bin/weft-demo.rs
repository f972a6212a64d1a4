//! `weft-demo`: a guided tour of Weft on one machine.
//!
//! Builds two simulated nodes (network namespaces on a shared WAN bridge),
//! runs the standalone operator and one node daemon per node, starts two
//! apps with a workload on each node, and shows: status, ping and TCP
//! across nodes, WireGuard counters, that app traffic crosses the WAN only
//! encrypted, and that apps cannot reach each other. Then it removes
//! everything and shows that nothing is left. Needs root; build first
//! (`make build` / `cargo build --workspace`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use weft_e2e::capture::{Capture, CaptureConfig, CaptureStats};
use weft_e2e::cluster::Cluster;
use weft_e2e::scenario::{self, NS};
use weft_e2e::topology::Sim;
use weft_e2e::traffic::{ping, tcp_transfer_opts, TransferOpts};
use weft_e2e::workload::WORKLOAD_IFACE;

#[derive(Parser, Debug)]
#[command(about = "Weft on one machine: two simulated nodes, two apps, real WireGuard traffic")]
struct Args {
    /// MiB sent in the TCP throughput check.
    #[arg(long, default_value_t = 50)]
    transfer_mib: u64,
    /// Directory whose *.yaml files are copied into the operator's manifests
    /// directory (apps `demo/web` and `demo/db` are added if none defines them).
    #[arg(long)]
    examples: Option<PathBuf>,
    /// Seconds to wait for apps to become Ready.
    #[arg(long, default_value_t = 30)]
    ready_timeout: u64,
    /// Keep the run directory (logs, state) afterwards.
    #[arg(long)]
    keep_logs: bool,
    /// Instead of running the demo, remove what a crashed run with this name
    /// prefix (e.g. `wsim12345`) left behind: its processes and namespaces.
    #[arg(long, value_name = "PREFIX")]
    cleanup: Option<String>,
}

struct Checks {
    results: Vec<(String, bool)>,
}

impl Checks {
    fn check(&mut self, what: &str, ok: bool, detail: &str) -> bool {
        let mark = if ok { "  [ok]  " } else { "  [FAIL]" };
        if detail.is_empty() {
            println!("{mark} {what}");
        } else {
            println!("{mark} {what}: {detail}");
        }
        self.results.push((what.to_string(), ok));
        ok
    }
    fn failed(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(w, _)| w.as_str())
            .collect()
    }
}

fn heading(n: usize, title: &str) {
    println!();
    println!("== {n}. {title} ==");
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = weft_e2e::install_interrupt_handler() {
        eprintln!("cannot install the Ctrl-C handler: {e}");
        return ExitCode::from(2);
    }
    if let Some(m) = scenario::missing_privileges() {
        eprintln!(
            "weft-demo needs {m} (it creates network namespaces). Try: sudo {}",
            std::env::args().next().unwrap_or_default()
        );
        return ExitCode::from(2);
    }
    if let Some(prefix) = &args.cleanup {
        let found = weft_e2e::cleanup::cleanup_leftovers(prefix);
        println!("removed: {found}");
        let left = weft_e2e::cleanup::find_leftovers(prefix);
        println!("left: {left}");
        return if left.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    for b in ["weft-operator", "weft-node-daemon"] {
        if let Err(e) = weft_e2e::bin(b) {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    }
    println!("Weft demo: a per-application WireGuard mesh, simulated on this machine.");
    println!("Press Ctrl-C at any time: everything created is removed before exiting.");

    let mut checks = Checks {
        results: Vec::new(),
    };
    let mut cluster = match Cluster::new(2) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build the simulated network: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    cluster.keep_run_dir(args.keep_logs);
    let result = run(&mut cluster, &args, &mut checks);
    if let Err(e) = &result {
        println!();
        if weft_e2e::interrupted() {
            println!("Interrupted: cleaning up.");
        } else {
            println!("ERROR: {e:#}");
            cluster.keep_run_dir(true);
        }
    }

    if !checks.failed().is_empty() && !weft_e2e::interrupted() {
        cluster.keep_run_dir(true);
    }
    heading(9, "Cleaning up");
    let prefix = cluster.prefix().to_string();
    println!("Stopping daemons (SIGTERM), running `weft-node-daemon cleanup` on each node,");
    println!("stopping the operator, deleting workloads, nodes and the WAN...");
    let rep = cluster.teardown();
    drop(cluster);
    for w in &rep.warnings {
        println!("  warning: {w}");
    }
    let ours: Vec<String> = weft_e2e::netns::list_netns()
        .into_iter()
        .filter(|n| weft_e2e::cleanup::is_ours(n, &prefix))
        .collect();
    println!(
        "  network namespaces of this run still present: {}",
        if ours.is_empty() {
            "none".into()
        } else {
            ours.join(", ")
        }
    );
    println!(
        "  processes of this run still running: {}",
        if rep.leftovers.processes.is_empty() {
            "none".to_string()
        } else {
            format!("{:?}", rep.leftovers.processes)
        }
    );
    println!(
        "  WireGuard sockets left in /var/run/wireguard: {}",
        if rep.new_wg_sockets.is_empty() {
            "none".to_string()
        } else {
            rep.new_wg_sockets.join(", ")
        }
    );
    if let Some(d) = &rep.kept_run_dir {
        println!("  logs and state kept in {}", d.display());
    }
    let clean = rep.clean();
    checks.check("nothing left behind", clean, "");

    if result.is_ok() && !weft_e2e::interrupted() {
        heading(
            10,
            "Federation: two clusters and an edge host, one app, through a hub",
        );
        match Cluster::new(3) {
            Ok(mut fed) => {
                fed.keep_run_dir(args.keep_logs);
                let r = federation_part(&mut fed, &args, &mut checks);
                if let Err(e) = &r {
                    println!("ERROR: {e:#}");
                    checks.check("federation part", false, &format!("{e:#}"));
                    fed.keep_run_dir(true);
                }
                let rep = fed.teardown();
                for w in &rep.warnings {
                    println!("  warning: {w}");
                }
                if let Some(d) = &rep.kept_run_dir {
                    println!("  logs and state kept in {}", d.display());
                }
                checks.check("federation: nothing left behind", rep.clean(), "");
            }
            Err(e) => {
                checks.check(
                    "federation: build the simulated network",
                    false,
                    &format!("{e:#}"),
                );
            }
        }
    }

    if weft_e2e::interrupted() {
        return ExitCode::from(130);
    }
    println!();
    let failed = checks.failed();
    if result.is_err() || !failed.is_empty() {
        println!(
            "RESULT: FAILED ({})",
            if failed.is_empty() {
                "see the error above".to_string()
            } else {
                failed.join("; ")
            }
        );
        return ExitCode::FAILURE;
    }
    println!("RESULT: all {} checks passed.", checks.results.len());
    ExitCode::SUCCESS
}

fn run(c: &mut Cluster, args: &Args, checks: &mut Checks) -> Result<()> {
    heading(1, "A simulated WAN with two nodes");
    println!(
        "Each node is a network namespace; a bridge in `{}` plays the Internet.",
        c.sim().wan_netns()
    );
    for i in 1..=2 {
        println!(
            "  node {i}: {:<22} WAN address {}",
            c.node_name(i),
            Sim::node_addr(i)
        );
    }
    println!("  run directory (logs, state): {}", c.run_dir().display());

    heading(2, "Control plane");
    c.start_all()?;
    let op_pid = c.operator()?.pid();
    println!(
        "  weft-operator (standalone mode)  pid {op_pid}  reads manifests from {}",
        c.manifests_dir().display()
    );
    for i in 1..=2 {
        let pid = c.daemon(i)?.pid();
        println!(
            "  weft-node-daemon on node {i}       pid {pid}  (runs inside the node's namespace)"
        );
    }

    heading(3, "Two apps, one workload of each on each node");
    let examples = args
        .examples
        .clone()
        .unwrap_or_else(scenario::repo_examples_dir);
    let files = scenario::install_manifests(c, &examples)?;
    println!("  manifests: {}", files.join(", "));
    println!("  app demo/web selects workloads labelled tier=web");
    println!("  app demo/db  selects workloads labelled weft.dev/app=db");
    scenario::add_workloads(c)?;
    println!("  workloads: web-1, db-1 on node 1; web-2, db-2 on node 2 (each its own namespace)");
    let timeout = Duration::from_secs(args.ready_timeout);
    let t0 = Instant::now();
    for app in ["web", "db"] {
        let st = c.wait_ready(NS, app, timeout);
        let detail = match &st {
            Ok(s) => format!(
                "after {:.1} s: {}",
                t0.elapsed().as_secs_f64(),
                weft_e2e::status::describe_app(s)
            ),
            Err(e) => format!("{e:#}"),
        };
        checks.check(&format!("app {NS}/{app} Ready"), st.is_ok(), &detail);
        st?;
    }
    let a = scenario::wait_addresses(c, timeout)?;
    println!(
        "  addresses: web-1 {}  web-2 {}  db-1 {}  db-2 {}",
        a.web1, a.web2, a.db1, a.db2
    );

    heading(
        4,
        "What the operator reports (`weft-operator get meshapps`)",
    );
    match c.get_meshapps(false) {
        Ok(t) => print!("{}", indent(&t)),
        Err(e) => {
            checks.check("weft-operator get meshapps", false, &format!("{e:#}"));
        }
    }

    heading(5, "Traffic across nodes, inside each app");
    let (web1, web2) = (
        c.workload("web-1").netns().to_string(),
        c.workload("web-2").netns().to_string(),
    );
    let db1 = c.workload("db-1").netns().to_string();
    let p = ping(&web1, a.web2, 5, Duration::from_secs(5))?;
    checks.check(
        "ping web-1 -> web-2",
        p.received == p.transmitted && p.ok,
        &ping_detail(&p),
    );
    let p = ping(&db1, a.db2, 5, Duration::from_secs(5))?;
    checks.check(
        "ping db-1 -> db-2",
        p.received == p.transmitted && p.ok,
        &ping_detail(&p),
    );
    let bytes = args.transfer_mib << 20;
    let t = tcp_transfer_opts(
        &web1,
        &web2,
        a.web2,
        &TransferOpts {
            bytes,
            port: 18080,
            fill: None,
            timeout: Duration::from_secs(120),
        },
    );
    match &t {
        Ok(t) => checks.check(
            &format!("TCP {} MiB web-1 -> web-2", args.transfer_mib),
            true,
            &format!(
                "{:.0} Mbit/s in {:.2} s, byte count and checksum verified",
                t.mbit_per_s,
                t.elapsed.as_secs_f64()
            ),
        ),
        Err(e) => checks.check(
            &format!("TCP {} MiB web-1 -> web-2", args.transfer_mib),
            false,
            &format!("{e:#}"),
        ),
    };

    heading(6, "WireGuard peers as the daemons report them");
    // Counters are published with the daemons' periodic heartbeat (about
    // every 5 s): wait for the one that includes the transfer above.
    println!("  (waiting for the daemons' next status heartbeat, which carries the byte counters)");
    let web_app = format!("{NS}/web");
    let _ = weft_e2e::wait_for(
        "counters to include the transfer",
        Duration::from_secs(8),
        Duration::from_millis(100),
        || {
            let tx = c
                .node_status(1)?
                .and_then(|s| s.apps.into_iter().find(|a| a.app == web_app))
                .and_then(|a| a.peers.first().map(|p| p.tx_bytes))
                .unwrap_or(0);
            Ok((tx >= bytes).then_some(()))
        },
    );
    for i in 1..=2 {
        let Some(st) = c.node_status(i)? else {
            checks.check(&format!("status of node {i}"), false, "no status.json");
            continue;
        };
        println!(
            "  node {i} ({}), WireGuard implementation: {}",
            c.node_name(i),
            st.dataplane
                .map(|k| format!("{k:?}"))
                .unwrap_or_else(|| "unknown".into())
        );
        for app in &st.apps {
            println!(
                "    app {:<9} iface {:<15} port {:<5} programmed {}",
                app.app, app.interface, app.listen_port, app.programmed
            );
            for p in &app.peers {
                let hs = p
                    .last_handshake_seconds
                    .map(|s| format!("{s} s ago"))
                    .unwrap_or_else(|| "never".into());
                println!(
                    "      peer {:<22} handshake {:<10} rx {:>12} B  tx {:>12} B",
                    p.node, hs, p.rx_bytes, p.tx_bytes
                );
            }
        }
    }
    let web_peer = c
        .node_status(1)?
        .and_then(|s| s.apps.into_iter().find(|a| a.app == format!("{NS}/web")))
        .and_then(|a| a.peers.into_iter().next());
    checks.check(
        "node 1 has a recent handshake with node 2 for web, and bytes moved",
        web_peer.as_ref().is_some_and(|p| {
            p.last_handshake_seconds.is_some() && p.tx_bytes > 0 && p.rx_bytes > 0
        }),
        "",
    );

    heading(7, "Is app traffic encrypted on the WAN?");
    let marker = b"WEFT-DEMO-SECRET-0123456789".to_vec();
    let ports = c.listen_ports();
    let range = match (ports.first(), ports.last()) {
        (Some(a), Some(b)) => *a..=*b,
        _ => 1..=65535,
    };
    println!(
        "  Sending 4 MiB filled with the text {:?} from web-1 to web-2,",
        String::from_utf8_lossy(&marker)
    );
    println!(
        "  while capturing raw frames on node 1's WAN port and on web-2's `{WORKLOAD_IFACE}`."
    );
    let wan_cap = Capture::start(CaptureConfig {
        netns: c.sim().wan_netns().into(),
        iface: Sim::wan_port(1),
        udp_ports: range.clone(),
        marker: Some(marker.clone()),
    })?;
    let app_cap = Capture::start(CaptureConfig {
        netns: web2.clone(),
        iface: WORKLOAD_IFACE.into(),
        udp_ports: range,
        marker: Some(marker.clone()),
    });
    if let Err(e) = &app_cap {
        checks.check("capture inside web-2", false, &format!("{e:#}"));
    }
    let t = tcp_transfer_opts(
        &web1,
        &web2,
        a.web2,
        &TransferOpts {
            bytes: 4 << 20,
            port: 18081,
            fill: Some(marker),
            timeout: Duration::from_secs(60),
        },
    );
    let wan = wan_cap.stop()?;
    let app = match app_cap {
        Ok(cap) => cap.stop()?,
        Err(_) => CaptureStats::default(),
    };
    checks.check(
        "marker transfer",
        t.is_ok(),
        &t.as_ref()
            .map(|_| String::new())
            .unwrap_or_else(|e| format!("{e:#}")),
    );
    print_capture("on the WAN (node 1's port)", &wan);
    print_capture(&format!("inside web-2 ({WORKLOAD_IFACE})"), &app);
    println!(
        "  marker seen on WAN: {}",
        if wan.marker_seen() { "YES" } else { "no" }
    );
    println!(
        "  marker seen inside the app (plaintext, expected): {}",
        if app.marker_seen() { "yes" } else { "no" }
    );
    checks.check(
        "WireGuard data packets crossed the WAN",
        wan.wg_data > 0,
        &format!("{} packets", wan.wg_data),
    );
    checks.check(
        "the marker never appeared on the WAN",
        t.is_ok() && !wan.marker_seen(),
        "",
    );
    checks.check(
        "the marker arrived inside the app network (capture works)",
        app.marker_seen(),
        "",
    );

    heading(8, "Isolation between apps");
    println!(
        "  Two apps on the same nodes have separate networks: db cannot reach web and vice versa."
    );
    let p = ping(&db1, a.web2, 2, Duration::from_secs(2))?;
    checks.check("db-1 cannot reach web-2", !p.ok, &ping_detail(&p));
    let p = ping(&web1, a.db2, 2, Duration::from_secs(2))?;
    checks.check("web-1 cannot reach db-2", !p.ok, &ping_detail(&p));
    c.check_alive()
        .context("a Weft process died during the demo")?;
    Ok(())
}

/// Part 10: `examples/federation/` on three nodes (see `weft_e2e::federation`).
fn federation_part(c: &mut Cluster, args: &Args, checks: &mut Checks) -> Result<()> {
    use weft_e2e::federation::{self, NS as FNS};
    println!(
        "  cluster-a: its own operator and state; node 1, and node 2 as an edge host (site edge-a)"
    );
    println!("  cluster-b: another operator and state; node 3");
    println!(
        "  a hub directory between them (`weft-operator hub`); app demo/shop spans all three,"
    );
    println!("  demo/ledger-a and demo/ledger-b are unrelated apps of each cluster.");
    federation::start(c, None)?;
    let timeout = Duration::from_secs(args.ready_timeout);
    let t0 = Instant::now();
    for (member, state) in [
        ("cluster-a", c.state().clone()),
        ("cluster-b", c.member_state("cluster-b").clone()),
    ] {
        let st = weft_e2e::status::wait_for_ready(&state, FNS, "shop", timeout);
        let detail = match &st {
            Ok(s) => format!(
                "after {:.1} s: {}",
                t0.elapsed().as_secs_f64(),
                weft_e2e::status::describe_app(s)
            ),
            Err(e) => format!("{e:#}"),
        };
        checks.check(
            &format!("{member}: app {FNS}/shop Ready"),
            st.is_ok(),
            &detail,
        );
        st?;
    }
    println!("  `weft-operator get meshapps` in cluster-a:");
    print!(
        "{}",
        indent(&weft_e2e::status::get_meshapps(c.state(), false)?)
    );
    println!("  `weft-operator get meshapps` in cluster-b:");
    print!(
        "{}",
        indent(&weft_e2e::status::get_meshapps(
            c.member_state("cluster-b"),
            false
        )?)
    );
    println!("  `weft-operator hub-status`:");
    print!("{}", indent(&federation::hub_status(c)?));

    let addr = |c: &mut Cluster, n: &str| c.wait_address(n, timeout);
    let (shop1, shop2, shop3) = (addr(c, "shop-1")?, addr(c, "shop-2")?, addr(c, "shop-3")?);
    let ns = |c: &Cluster, n: &str| c.workload(n).netns().to_string();
    let captures: Vec<Capture> = (1..=3)
        .map(|i| {
            Capture::start(CaptureConfig {
                netns: c.sim().wan_netns().into(),
                iface: Sim::wan_port(i),
                udp_ports: 51000..=52999,
                marker: Some(b"WEFT-DEMO-FEDERATION".to_vec()),
            })
        })
        .collect::<Result<_>>()?;
    for (from, to, addr) in [
        ("shop-1", "shop-3", shop3),
        ("shop-3", "shop-1", shop1),
        ("shop-2", "shop-3", shop3),
        ("shop-3", "shop-2", shop2),
    ] {
        let p = ping(&ns(c, from), addr, 3, Duration::from_secs(5))?;
        checks.check(
            &format!("ping {from} -> {to} across clusters"),
            p.ok && p.received == p.transmitted,
            &ping_detail(&p),
        );
    }
    let t = tcp_transfer_opts(
        &ns(c, "shop-1"),
        &ns(c, "shop-3"),
        shop3,
        &TransferOpts {
            bytes: 8 << 20,
            port: 18082,
            fill: Some(b"WEFT-DEMO-FEDERATION".to_vec()),
            timeout: Duration::from_secs(60),
        },
    );
    checks.check(
        "TCP 8 MiB shop-1 (cluster-a) -> shop-3 (cluster-b)",
        t.is_ok(),
        &t.as_ref()
            .map(|t| format!("{:.0} Mbit/s", t.mbit_per_s))
            .unwrap_or_else(|e| format!("{e:#}")),
    );
    let stats: Vec<CaptureStats> = captures
        .into_iter()
        .map(|x| x.stop())
        .collect::<Result<_>>()?;
    let (n1, n3) = (Sim::node_addr(1), Sim::node_addr(3));
    println!("  WireGuard data packets on the WAN, by sender and receiver:");
    for (i, s) in stats.iter().enumerate() {
        for ((src, dst), n) in &s.wg_data_flows {
            println!("    seen on node {}'s port: {src} -> {dst}: {n}", i + 1);
        }
    }
    let direct = stats[0].wg_data_flows.get(&(n1, n3)).copied().unwrap_or(0);
    checks.check(
        "one hop: encrypted packets go from node 1 straight to node 3",
        direct > 0,
        &format!("{direct} packets"),
    );
    checks.check(
        "the marker never appeared on the WAN",
        stats.iter().all(|s| !s.marker_seen()),
        "",
    );
    let p = ping(&ns(c, "ledger-3"), shop1, 2, Duration::from_secs(2))?;
    checks.check(
        "ledger-3 (cluster-b) cannot reach shop-1 (cluster-a)",
        !p.ok,
        &ping_detail(&p),
    );
    c.check_alive()
        .context("a Weft process died during the federation part")?;
    Ok(())
}

fn print_capture(where_: &str, s: &CaptureStats) {
    println!(
        "  {where_:<28} frames {:>6}  WireGuard: init {} resp {} data {:>6}  marker frames {}",
        s.frames, s.wg_initiations, s.wg_responses, s.wg_data, s.marker_frames
    );
}

/// One line about a ping run (with ping's own message when it sent nothing).
fn ping_detail(p: &weft_e2e::traffic::PingResult) -> String {
    if p.transmitted == 0 {
        return format!(
            "no packet sent: {}",
            p.output.lines().next().unwrap_or("").trim()
        );
    }
    format!(
        "{}/{} replies, RTT avg {}",
        p.received,
        p.transmitted,
        fmt_ms(p.rtt_avg_ms)
    )
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3} ms"))
        .unwrap_or_else(|| "-".into())
}

fn indent(t: &str) -> String {
    t.lines().map(|l| format!("  {l}\n")).collect()
}
