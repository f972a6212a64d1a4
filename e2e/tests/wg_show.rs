//! End-to-end: the stock `wg` tool reads every Weft userspace device on a
//! node. Two simulated nodes with `examples/` (apps `demo/web` and
//! `demo/db`); each daemon serves its devices as `wf<appId>.sock` in its
//! own directory (`Cluster::wg_socket_dir`), which the test mounts over
//! /var/run/wireguard in a private mount namespace, where `wg` looks.
//!
//! Checked against the MeshNode status the daemons publish: keys, listen
//! ports, endpoints, latest handshakes and transfer counters; `wg set` is
//! refused; a socket goes when its app is deleted, when its daemon stops,
//! and (left by a crash) when the daemon starts again or `cleanup` runs.
//!
//! Needs root, `ip`, `ping`, `wg` (wireguard-tools), `unshare` and `mount`,
//! and the workspace binaries built first. Without root the test prints
//! `SKIPPED` — except under `CI=true`, where a missing piece is a failure.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use weft_api::{AppStatus, MeshNodeStatus};
use weft_e2e::cleanup::wireguard_sockets_in;
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::scenario::{self, DB_FILE, NS};
use weft_e2e::traffic::{ping, which};

const READY: Duration = Duration::from_secs(25);
/// Longer than two status heartbeats (5 s in standalone mode): counters and
/// handshake ages reach MeshNode status only with the heartbeat.
const STATUS_SETTLES: Duration = Duration::from_secs(20);

/// Runs the real `wg ARGS` with `dir` mounted over /var/run/wireguard, in a
/// mount namespace of its own (nothing on the host changes).
fn wg(dir: &Path, args: &[&str]) -> Result<Output> {
    const SCRIPT: &str = "mount -t tmpfs weft-wg /var/run && mkdir /var/run/wireguard \
                          && mount --bind \"$0\" /var/run/wireguard && exec wg \"$@\"";
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", SCRIPT])
        .arg(dir)
        .args(args)
        .output()
        .context("run unshare/wg")
}

/// `wg ARGS` that must succeed; its stdout.
fn wg_ok(dir: &Path, args: &[&str]) -> Result<String> {
    let out = wg(dir, args)?;
    ensure!(
        out.status.success(),
        "wg {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `wg pubkey` of a private key.
fn pubkey(private: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("{private}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "wg pubkey failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `wg show <dev> dump`: the interface line and one line per peer.
#[derive(Debug)]
struct Dump {
    private_key: String,
    public_key: String,
    listen_port: u16,
    peers: Vec<DumpPeer>,
}

#[derive(Debug)]
struct DumpPeer {
    public_key: String,
    endpoint: String,
    allowed_ips: String,
    /// Unix seconds; 0 when there was none.
    latest_handshake: u64,
    rx: u64,
    tx: u64,
}

fn parse_dump(text: &str) -> Result<Dump> {
    let mut lines = text.lines();
    let dev: Vec<&str> = lines.next().context("empty dump")?.split('\t').collect();
    ensure!(dev.len() == 4, "interface line {dev:?}");
    let mut peers = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split('\t').collect();
        ensure!(f.len() == 8, "peer line {f:?}");
        peers.push(DumpPeer {
            public_key: f[0].into(),
            endpoint: f[2].into(),
            allowed_ips: f[3].into(),
            latest_handshake: f[4].parse()?,
            rx: f[5].parse()?,
            tx: f[6].parse()?,
        });
    }
    Ok(Dump {
        private_key: dev[0].into(),
        public_key: dev[1].into(),
        listen_port: dev[2].parse()?,
        peers,
    })
}

/// Unix seconds of an RFC 3339 UTC time as the daemon writes its heartbeat
/// (`2026-01-02T03:04:05.678Z`).
fn unix_seconds(t: &str) -> Result<f64> {
    let t = t.strip_suffix('Z').context("not UTC")?;
    let (date, time) = t.split_once('T').context("no T")?;
    let d: Vec<i64> = date.split('-').map(str::parse).collect::<Result<_, _>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<i64> = hms.split(':').map(str::parse).collect::<Result<_, _>>()?;
    ensure!(d.len() == 3 && h.len() == 3, "bad time {t}");
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h[0] * 3600 + h[1] * 60 + h[2];
    Ok(secs as f64 + format!("0.{frac}").parse::<f64>()?)
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Node `i`'s reported status, which must exist.
fn status(c: &Cluster, i: usize) -> Result<MeshNodeStatus> {
    c.node_status(i)?
        .with_context(|| format!("no status of node {i}"))
}

fn app<'a>(st: &'a MeshNodeStatus, name: &str) -> Result<&'a AppStatus> {
    st.apps
        .iter()
        .find(|a| a.app == format!("{NS}/{name}"))
        .with_context(|| format!("{NS}/{name} not in status"))
}

/// The socket name of app `name` on node `i`, from its netns
/// `weft-<node>-<appId>`: `wf<appId>`.
fn socket_name(c: &Cluster, i: usize, name: &str) -> Result<String> {
    let netns = c
        .app_netns(i, &format!("{NS}/{name}"))?
        .with_context(|| format!("no netns for {name} on node {i}"))?;
    let id = netns
        .strip_prefix(&format!("weft-{}-", c.node_name(i)))
        .with_context(|| format!("netns {netns}"))?;
    Ok(format!("wf{id}"))
}

fn sockets(c: &Cluster, i: usize) -> BTreeSet<String> {
    wireguard_sockets_in(&c.wg_socket_dir(i))
}

/// Compares `wg show <dev> dump` on node `i` with what the daemons report.
/// `Ok(None)` while status has not caught up with the counters yet.
fn dump_matches_status(c: &Cluster, i: usize, app_name: &str, dev: &str) -> Result<Option<()>> {
    let other = 3 - i;
    let before = status(c, i)?;
    let dump = parse_dump(&wg_ok(&c.wg_socket_dir(i), &["show", dev, "dump"])?)?;
    let taken = now_unix();
    let after = status(c, i)?;
    let peer_node = status(c, other)?;
    let mine = app(&after, app_name)?;
    let theirs = app(&peer_node, app_name)?;

    ensure!(dump.public_key == mine.public_key, "{dev}: interface key");
    ensure!(
        pubkey(&dump.private_key)? == mine.public_key,
        "{dev}: the private key `wg` shows does not belong to the interface"
    );
    ensure!(dump.listen_port == mine.listen_port, "{dev}: listen port");
    ensure!(dump.peers.len() == 1, "{dev}: peers {:?}", dump.peers);
    let p = &dump.peers[0];
    ensure!(p.public_key == theirs.public_key, "{dev}: peer key");
    let reported = mine
        .peers
        .iter()
        .find(|s| s.public_key == p.public_key)
        .with_context(|| format!("{dev}: peer not in status: {:?}", mine.peers))?;
    let peer_address = peer_node
        .endpoint_address
        .as_deref()
        .context("peer node reports no endpoint address")?;
    ensure!(
        p.endpoint == format!("{peer_address}:{}", theirs.listen_port),
        "{dev}: endpoint {} (peer node {peer_address}, port {})",
        p.endpoint,
        theirs.listen_port
    );
    ensure!(p.allowed_ips != "(none)", "{dev}: no allowed IPs");
    ensure!(p.latest_handshake > 0, "{dev}: `wg` shows no handshake");
    ensure!(p.rx > 0 && p.tx > 0, "{dev}: `wg` shows no transfer: {p:?}");
    // Status that stayed the same around the `wg` call is comparable with it.
    if before != after {
        return Ok(None);
    }
    if (p.rx, p.tx) != (reported.rx_bytes, reported.tx_bytes) {
        // Counters reach status with the heartbeat; `wg` may be ahead of it
        // but never behind.
        ensure!(
            p.rx >= reported.rx_bytes && p.tx >= reported.tx_bytes,
            "{dev}: `wg` counters {}/{} behind status {}/{}",
            p.rx,
            p.tx,
            reported.rx_bytes,
            reported.tx_bytes
        );
        return Ok(None);
    }
    let heartbeat = unix_seconds(after.heartbeat.as_deref().context("no heartbeat")?)?;
    let age = reported
        .last_handshake_seconds
        .context("status reports no handshake")?;
    let from_status = heartbeat - age as f64;
    ensure!(
        (from_status - p.latest_handshake as f64).abs() <= 2.0,
        "{dev}: latest handshake {} by `wg`, {from_status:.1} by status (heartbeat {heartbeat:.1}, age {age})",
        p.latest_handshake
    );
    ensure!(
        p.latest_handshake as f64 <= taken + 1.0,
        "{dev}: handshake in the future"
    );
    Ok(Some(()))
}

#[test]
fn wg_show_reads_every_app_device_and_follows_its_lifetime() {
    let test = "wg_show_reads_every_app_device_and_follows_its_lifetime";
    let missing = ["wg", "unshare", "mount"]
        .into_iter()
        .filter(|t| which(t).is_none())
        .map(|t| format!("the `{t}` tool"));
    if !scenario::require(
        test,
        missing,
        " (scripts/setup.sh installs wireguard-tools)",
    ) {
        return;
    }
    let Some(mut c) = scenario::cluster_with_examples(test, 2) else {
        return;
    };
    scenario::add_workloads(&mut c).expect("announce workloads");
    for name in ["web", "db"] {
        c.wait_ready(NS, name, READY)
            .unwrap_or_else(|e| panic!("{NS}/{name} not Ready: {e:#}"));
    }
    let a = scenario::wait_addresses(&mut c, READY).expect("workload addresses");
    // Traffic both ways in both apps: handshakes and non-zero counters.
    for (from, to) in [
        ("web-1", a.web2),
        ("web-2", a.web1),
        ("db-1", a.db2),
        ("db-2", a.db1),
    ] {
        let r = ping(c.workload(from).netns(), to, 3, Duration::from_secs(5)).unwrap();
        assert!(r.ok, "{from} -> {to}: {r:?}");
    }

    let names = |c: &Cluster, i: usize| -> (String, String) {
        (
            socket_name(c, i, "web").unwrap(),
            socket_name(c, i, "db").unwrap(),
        )
    };
    for i in 1..=2 {
        let dir = c.wg_socket_dir(i);
        let (web, db) = names(&c, i);
        let st = status(&c, i).unwrap();
        // The documented mapping: the socket is named like the interface.
        assert_eq!(app(&st, "web").unwrap().interface, web);
        assert_eq!(app(&st, "db").unwrap().interface, db);

        // Exactly one socket per app, 0600 root.
        let want: BTreeSet<String> = [&web, &db].map(|n| format!("{n}.sock")).into();
        assert_eq!(sockets(&c, i), want, "node {i}'s socket directory");
        for s in &want {
            let md = std::fs::metadata(dir.join(s)).unwrap();
            assert!(md.file_type().is_socket(), "{s}");
            assert_eq!(md.mode() & 0o777, 0o600, "{s} mode");
            assert_eq!(md.uid(), 0, "{s} owner");
        }

        // `wg show` lists every app device of the node, and nothing else.
        let listed = wg_ok(&dir, &["show", "interfaces"]).unwrap();
        let listed: BTreeSet<&str> = listed.split_whitespace().collect();
        assert_eq!(
            listed,
            [web.as_str(), db.as_str()].into(),
            "wg show interfaces"
        );
        let all = wg_ok(&dir, &[]).unwrap();
        println!("node {i}, `wg show`:\n{all}");
        for name in ["web", "db"] {
            let s = app(&st, name).unwrap();
            let n = socket_name(&c, i, name).unwrap();
            for want in [
                format!("interface: {n}"),
                format!("public key: {}", s.public_key),
                "private key: (hidden)".to_string(),
                format!("listening port: {}", s.listen_port),
                format!("peer: {}", s.peers[0].public_key),
                "latest handshake: ".to_string(),
                "transfer: ".to_string(),
            ] {
                assert!(
                    all.contains(&want),
                    "node {i}: `wg show` lacks {want:?}:\n{all}"
                );
            }
        }

        // Per device: dump against status (until a heartbeat carries the
        // same counters), the pretty form and showconf.
        for name in ["web", "db"] {
            let dev = socket_name(&c, i, name).unwrap();
            weft_e2e::wait_for(
                &format!("`wg show {dev} dump` on node {i} to match MeshNode status"),
                STATUS_SETTLES,
                Duration::from_millis(300),
                || dump_matches_status(&c, i, name, &dev),
            )
            .unwrap();
            let s = app(&st, name).unwrap();
            let shown = wg_ok(&dir, &["show", &dev]).unwrap();
            assert!(shown.contains(&format!("interface: {dev}")), "{shown}");
            assert!(
                shown.contains(&format!("public key: {}", s.public_key)),
                "{shown}"
            );
            let conf = wg_ok(&dir, &["showconf", &dev]).unwrap();
            assert!(
                conf.contains(&format!("ListenPort = {}", s.listen_port)),
                "{conf}"
            );
            assert!(
                conf.contains(&format!("PublicKey = {}", s.peers[0].public_key)),
                "{conf}"
            );
            let private = conf
                .lines()
                .find_map(|l| l.strip_prefix("PrivateKey = "))
                .expect("showconf has the private key");
            assert_eq!(pubkey(private).unwrap(), s.public_key);
        }

        // Read-only: `wg set` is refused and changes nothing.
        let before = parse_dump(&wg_ok(&dir, &["show", &web, "dump"]).unwrap()).unwrap();
        let out = wg(&dir, &["set", &web, "listen-port", "1", "fwmark", "7"]).unwrap();
        assert!(!out.status.success(), "wg set must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Operation not permitted"), "{err}");
        let after = parse_dump(&wg_ok(&dir, &["show", &web, "dump"]).unwrap()).unwrap();
        assert_eq!(after.listen_port, before.listen_port);
        assert_eq!(after.peers.len(), before.peers.len());
    }

    // Deleting an app removes its sockets on both nodes; the other app's stay.
    let (web1, db1) = names(&c, 1);
    let (web2, db2) = names(&c, 2);
    c.delete_manifest(DB_FILE).unwrap();
    weft_e2e::wait_for(
        "db's sockets to go",
        READY,
        Duration::from_millis(100),
        || {
            c.check_alive()?;
            Ok((sockets(&c, 1) == [format!("{web1}.sock")].into()
                && sockets(&c, 2) == [format!("{web2}.sock")].into())
            .then_some(()))
        },
    )
    .unwrap();
    let listed = wg_ok(&c.wg_socket_dir(1), &["show", "interfaces"]).unwrap();
    assert_eq!(listed.trim(), web1, "after deleting db");
    assert!(!listed.contains(&db1) && !listed.contains(&db2));

    // A crash leaves a dead socket; the restarted daemon replaces it.
    let path = c.wg_socket_dir(1).join(format!("{web1}.sock"));
    let ino = std::fs::metadata(&path).unwrap().ino();
    c.crash_daemon(1).unwrap();
    assert!(path.exists(), "a SIGKILL leaves the socket behind");
    assert!(UnixStream::connect(&path).is_err(), "nobody serves it");
    c.restart_daemon(1).unwrap();
    let web_key = app(&status(&c, 1).unwrap(), "web")
        .unwrap()
        .public_key
        .clone();
    weft_e2e::wait_for(
        "node 1's web device behind a fresh socket",
        READY,
        Duration::from_millis(100),
        || {
            c.check_alive()?;
            let Ok(md) = std::fs::metadata(&path) else {
                return Ok(None);
            };
            if md.ino() == ino {
                return Ok(None);
            }
            let d = parse_dump(&wg_ok(&c.wg_socket_dir(1), &["show", &web1, "dump"])?)?;
            Ok((d.public_key == web_key).then_some(()))
        },
    )
    .unwrap();

    // A daemon stopping removes its sockets itself.
    let (_, killed) = c.daemon(2).unwrap().stop(Duration::from_secs(5));
    assert!(!killed, "daemon 2 ignored SIGTERM");
    assert_eq!(sockets(&c, 2), BTreeSet::new(), "after daemon 2 stopped");

    // And one that crashed has its dead socket removed by `cleanup`, which
    // the teardown runs (and whose leak check reads these directories).
    c.crash_daemon(1).unwrap();
    assert_eq!(sockets(&c, 1), [format!("{web1}.sock")].into());
    assert_torn_down_cleanly(c);
}

#[test]
fn heartbeat_times_parse() -> Result<()> {
    assert_eq!(unix_seconds("1970-01-01T00:00:00Z")?, 0.0);
    assert_eq!(unix_seconds("2000-03-01T00:00:01Z")?, 951_868_801.0);
    assert_eq!(unix_seconds("2024-02-29T23:59:59.5Z")?, 1_709_251_199.5);
    if unix_seconds("2024-02-29T23:59:59+01:00").is_ok() {
        bail!("only UTC is expected");
    }
    Ok(())
}
