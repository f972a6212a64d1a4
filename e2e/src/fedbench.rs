//! Federation figures of `weft-bench`, on the two-cluster scenario of
//! [`crate::federation`] (node 1 cluster-a, node 2 edge host of cluster-a,
//! node 3 cluster-b, a directory hub), with every process at its shipped
//! default intervals ([`DefaultIntervals`]):
//!
//! - **Cross-cluster migration.** Workload `shop-1` of app `demo/shop`
//!   leaves node 1 (cluster-a) and starts on node 3 (cluster-b), where
//!   nothing else of the app runs (the scenario's `shop-3` is removed first),
//!   so cluster-b plans the app onto node 3, exports it through the hub, and
//!   cluster-a's nodes learn the new peer. The client is `shop-2` on node 2,
//!   a workload of cluster-a. Measured as in [`crate::migration`]: from the
//!   attachment at the new place (the workload's `weft0` has its address) to
//!   the first client datagram arriving in the workload. Every move to B is
//!   followed by the move back to node 1, timed the same way: a move within
//!   cluster-a (node 1 joining the app again, client on node 2), the
//!   baseline of the same run.
//! - **New app across two clusters.** A new MeshApp (sites cluster-a and
//!   cluster-b, its own range) with one workload on node 1 and one on node 3,
//!   both announced beforehand. It is applied in cluster-a first; once node
//!   1's workload is attached and the hub has allocated the app, the same
//!   manifest is applied in cluster-b: that write is t0. Measured: t0 to the
//!   first datagram from node 1's workload arriving in node 3's (the sender
//!   starts as soon as node 3's workload has its address). Each run uses an
//!   app of its own (`fedprobe-<k>`), so every run is a new app for both
//!   members and the hub.
//!
//! Between moves the node left behind is waited for until it has dropped
//! the app (spec and namespace), so every move lands on a node that has to
//! join the app.

use std::ffi::OsString;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weft_api::federation::HubLayout;

use crate::cluster::Cluster;
use crate::federation::{self, NS};
use crate::migration::{wait_attached, Move, Receiver};
use crate::netns::list_netns;
use crate::procs::bin;
use crate::traffic::udp_probe_until_ok;

/// The shared app.
pub const SHOP: &str = "demo/shop";
/// The workload that moves (the scenario's workload of shop on node 1).
pub const MOVER: &str = "shop-1";
/// The client, a workload of cluster-a (node 2, cluster-a's edge host).
pub const CLIENT: &str = "shop-2";
/// The scenario's workload of shop on node 3, removed before the moves.
pub const REMOVED: &str = "shop-3";
/// UDP port the receiving workloads answer on.
pub const PORT: u16 = 7410;
/// Node of cluster-a the mover leaves, and comes back to.
pub const NODE_A: usize = 1;
/// Node of cluster-b the mover goes to.
pub const NODE_B: usize = 3;

/// Harness flags that set what no user sets: the test intervals and the
/// operator's once-a-second traffic refresh.
const TEST_ONLY_FLAGS: [&str; 3] = [
    "--interval-ms",
    "--idle-interval-ms",
    "--traffic-refresh-seconds",
];

/// While alive, Weft's binaries as found by [`bin`] are wrappers that drop
/// [`TEST_ONLY_FLAGS`] (and their values) and `exec` the real binary, so a
/// [`Cluster`] (which passes `--interval-ms 100` for tests) runs every
/// operator, hub and daemon at its shipped defaults. The process keeps its
/// pid (`exec`), so stopping and teardown are unchanged. Works by pointing
/// `WEFT_BIN_DIR` at the wrappers; the old value comes back on drop, so
/// tear the cluster down before dropping this.
pub struct DefaultIntervals {
    dir: tempfile::TempDir,
    old: Option<OsString>,
    /// What the shipped defaults are, from each binary's `--help`.
    pub described: String,
}

/// The `[default: N]` of `--interval-ms` in `program sub --help`.
pub fn default_interval_ms(program: &Path, sub: &str) -> Option<u64> {
    default_ms(program, sub, "--interval-ms")
}

/// The `[default: N]` of `flag` in `program sub --help`.
pub fn default_ms(program: &Path, sub: &str, flag: &str) -> Option<u64> {
    let out = std::process::Command::new(program)
        .args([sub, "--help"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let from = text.find(flag)?;
    let rest = &text[from..];
    let d = rest.find("[default: ")? + "[default: ".len();
    let end = rest[d..].find(']')?;
    rest[d..d + end].trim().parse().ok()
}

/// The wrapper script for `real`.
pub fn wrapper_script(real: &Path) -> String {
    let cases = TEST_ONLY_FLAGS.join("|");
    let eq_cases = TEST_ONLY_FLAGS
        .iter()
        .map(|f| format!("{f}=*"))
        .collect::<Vec<_>>()
        .join("|");
    format!(
        "#!/bin/sh\n\
         # weft-bench: run at the shipped defaults (drops {cases}).\n\
         skip=\n\
         for a do\n\
         \x20 shift\n\
         \x20 if [ -n \"$skip\" ]; then skip=; continue; fi\n\
         \x20 case \"$a\" in\n\
         \x20   {cases}) skip=1; continue ;;\n\
         \x20   {eq_cases}) continue ;;\n\
         \x20 esac\n\
         \x20 set -- \"$@\" \"$a\"\n\
         done\n\
         exec '{}' \"$@\"\n",
        real.display()
    )
}

impl DefaultIntervals {
    /// Writes the wrappers and points `WEFT_BIN_DIR` at them. Call it while
    /// no other thread looks at the environment.
    pub fn install() -> Result<DefaultIntervals> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("weft-bench-defaults-")
            .tempdir()?;
        let mut described = Vec::new();
        for name in ["weft-operator", "weft-node-daemon"] {
            let real = bin(name)?;
            let real = real.canonicalize().unwrap_or(real);
            let path: PathBuf = dir.path().join(name);
            std::fs::write(&path, wrapper_script(&real))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            let subs: &[&str] = if name == "weft-operator" {
                &["standalone", "hub"]
            } else {
                &["standalone"]
            };
            for sub in subs {
                let idle = default_ms(&real, sub, "--idle-interval-ms")
                    .map(|ms| format!(" ({ms} ms once settled)"))
                    .unwrap_or_default();
                described.push(format!(
                    "{name} {sub} {}{idle}",
                    default_interval_ms(&real, sub)
                        .map(|ms| format!("{ms} ms"))
                        .unwrap_or_else(|| "(default unknown)".into())
                ));
            }
        }
        let old = std::env::var_os("WEFT_BIN_DIR");
        std::env::set_var("WEFT_BIN_DIR", dir.path());
        Ok(DefaultIntervals {
            dir,
            old,
            described: described.join(", "),
        })
    }

    /// The wrappers' directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for DefaultIntervals {
    fn drop(&mut self) {
        match self.old.take() {
            Some(v) => std::env::set_var("WEFT_BIN_DIR", v),
            None => std::env::remove_var("WEFT_BIN_DIR"),
        }
    }
}

/// What the federation runs measured.
#[derive(Default)]
pub struct Figures {
    /// Moves from node 1 (cluster-a) to node 3 (cluster-b).
    pub a_to_b: Vec<Move>,
    /// Moves back from node 3 to node 1 (within cluster-a for the client).
    pub b_to_a: Vec<Move>,
    /// New app: t0 (second apply) to the first cross-cluster packet, ms.
    pub new_app_ms: Vec<f64>,
    /// New app: t0 to the attachment of node 3's workload, ms.
    pub new_app_attach_ms: Vec<f64>,
    /// Why a series stopped early, if one did.
    pub note: String,
}

/// The manifest of probe app `name` (both members apply the same one).
pub fn probe_manifest(name: &str, k: usize) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  sites: [cluster-a, cluster-b]\n  addressSpace: 10.{}.0.0/16\n  nodePrefixLength: 26\n  selector:\n    matchLabels:\n      app: {name}\n",
        130 + k
    )
}

/// Name of probe app `k`.
pub fn probe_app(k: usize) -> String {
    format!("fedprobe-{k}")
}

/// The scenario's hub manifest with probe apps 1..=`apps` exported by both
/// members as well (a hub prepared for them before they exist).
pub fn hub_manifest(c: &Cluster, apps: usize) -> Result<String> {
    let mut extra = String::new();
    for k in 1..=apps {
        extra.push_str(&format!(", {NS}/{}", probe_app(k)));
    }
    let text = federation::manifest(c, "hub.yaml", None)?;
    let want = "exports: [demo/shop]";
    anyhow::ensure!(
        text.matches(want).count() == 2,
        "examples/federation/hub.yaml no longer has `{want}` for both members"
    );
    Ok(text.replace(want, &format!("exports: [demo/shop{extra}]")))
}

/// [`federation::start`] with the example grace periods, except that the
/// hub also lists the probe apps.
pub fn start(c: &mut Cluster, probe_apps: usize) -> Result<()> {
    c.add_member("cluster-b", &[NODE_B])?;
    for (i, site, _) in federation::NODES {
        c.set_daemon_args(i, &["--site", site]);
    }
    c.apply_manifest(
        "federation.yaml",
        &federation::manifest(c, "cluster-a.yaml", None)?,
    )?;
    c.apply_member_manifest(
        "cluster-b",
        "federation.yaml",
        &federation::manifest(c, "cluster-b.yaml", None)?,
    )?;
    c.start_hub(&hub_manifest(c, probe_apps)?)?;
    c.start_operator()?;
    c.start_member_operator("cluster-b")?;
    for (i, _, _) in federation::NODES {
        c.start_daemon(i)?;
    }
    for (name, node, app) in federation::WORKLOADS {
        c.add_workload(node, name, NS, &[("app", app)])?;
    }
    Ok(())
}

/// Waits until node `i` no longer has `app` in its spec nor `netns` (the
/// namespace it had for it).
fn wait_dropped(c: &mut Cluster, i: usize, app: &str, netns: Option<String>) -> Result<()> {
    crate::wait_for(
        &format!("node {i} to drop {app}"),
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let in_spec = c.app_netns(i, app)?.is_some();
            let ns_left = netns
                .as_ref()
                .is_some_and(|n| list_netns().iter().any(|x| x == n));
            Ok((!in_spec && !ns_left).then_some(()))
        },
    )?;
    c.check_alive()
}

/// Moves [`MOVER`] to node `to` and times its first packet from [`CLIENT`].
fn move_to(c: &mut Cluster, to: usize, timeout: Duration) -> Result<Move> {
    c.remove_workload(MOVER);
    let announced = Instant::now();
    c.add_workload(to, MOVER, NS, &[("app", "shop")])?;
    let netns = c.workload(MOVER).netns().to_string();
    let client = c.workload(CLIENT).netns().to_string();
    let rx = Receiver::start(&netns, PORT)?;
    let (attached, address) = wait_attached(&netns, timeout)?;
    let left = timeout.saturating_sub(announced.elapsed());
    udp_probe_until_ok(
        &client,
        SocketAddrV4::new(address, PORT),
        Duration::from_millis(2),
        left,
    )
    .with_context(|| format!("{CLIENT} to {MOVER} at {address} on node {to}"))?;
    let first = rx
        .first()
        .context("an echo came back but the receiver saw nothing")?;
    Ok(Move {
        address,
        announce_to_attach: attached - announced,
        attach_to_first_packet: first.saturating_duration_since(attached),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Starts the scenario in `c` (3 nodes, nothing started) and measures
/// `moves` moves each way and `apps` new apps.
pub fn measure(c: &mut Cluster, moves: usize, apps: usize) -> Result<Figures> {
    let timeout = Duration::from_secs(60);
    start(c, apps)?;
    for state in [c.state().clone(), c.member_state("cluster-b").clone()] {
        crate::status::wait_for_ready(&state, NS, "shop", timeout)
            .context("demo/shop Ready in both members")?;
    }
    let client_addr = c.wait_address(CLIENT, timeout)?;
    let mover_addr = c.wait_address(MOVER, timeout)?;
    c.wait_address(REMOVED, timeout)?;
    let client = c.workload(CLIENT).netns().to_string();
    crate::traffic::ping_until_ok(&client, mover_addr, timeout)
        .context("shop-2 -> shop-1 before the moves")?;
    println!("  federation up: {CLIENT} at {client_addr} reaches {MOVER} at {mover_addr}");

    let mut f = Figures::default();
    if moves > 0 {
        let left = c.app_netns(NODE_B, SHOP)?;
        c.remove_workload(REMOVED);
        wait_dropped(c, NODE_B, SHOP, left)?;
        let one = |c: &mut Cluster, from: usize, to: usize| -> Result<Move> {
            let left = c.app_netns(from, SHOP)?;
            let m = move_to(c, to, timeout)?;
            wait_dropped(c, from, SHOP, left)?;
            Ok(m)
        };
        for run in 1..=moves {
            match one(c, NODE_A, NODE_B) {
                Ok(m) => {
                    println!(
                        "  move {run}/{moves} node 1 (cluster-a) -> node 3 (cluster-b) ({}): attached after {:.0} ms, first packet from cluster-a {:.0} ms after the attachment",
                        m.address,
                        ms(m.announce_to_attach),
                        ms(m.attach_to_first_packet)
                    );
                    f.a_to_b.push(m);
                }
                Err(e) => {
                    println!("  move {run} to cluster-b: {e:#}");
                    f.note = format!("(move {run} to cluster-b failed: {e:#})");
                    break;
                }
            }
            match one(c, NODE_B, NODE_A) {
                Ok(m) => {
                    println!(
                        "  move {run}/{moves} back to node 1 ({}): attached after {:.0} ms, first packet {:.0} ms after the attachment",
                        m.address,
                        ms(m.announce_to_attach),
                        ms(m.attach_to_first_packet)
                    );
                    f.b_to_a.push(m);
                }
                Err(e) => {
                    println!("  move {run} back to cluster-a: {e:#}");
                    f.note = format!("(move {run} back to cluster-a failed: {e:#})");
                    break;
                }
            }
        }
    }
    c.check_alive()?;

    let hub = HubLayout::new(c.hub_dir());
    for k in 1..=apps {
        match new_app(c, &hub, k, timeout) {
            Ok((attach, first)) => {
                println!(
                    "  new app {k}/{apps} ({NS}/{}): node 3's workload attached {:.0} ms after the apply in cluster-b, first packet from cluster-a {:.0} ms after it",
                    probe_app(k),
                    ms(attach),
                    ms(first)
                );
                f.new_app_attach_ms.push(ms(attach));
                f.new_app_ms.push(ms(first));
            }
            Err(e) => {
                println!("  new app {k}: {e:#}");
                f.note.push_str(&format!(" (new app {k} failed: {e:#})"));
                break;
            }
        }
    }
    c.check_alive()?;
    Ok(f)
}

/// One new app; returns (t0 -> attachment in B, t0 -> first packet).
fn new_app(
    c: &mut Cluster,
    hub: &HubLayout,
    k: usize,
    timeout: Duration,
) -> Result<(Duration, Duration)> {
    let app = probe_app(k);
    let (wa, wb) = (format!("fp-a-{k}"), format!("fp-b-{k}"));
    c.add_workload(NODE_A, &wa, NS, &[("app", &app)])?;
    c.add_workload(NODE_B, &wb, NS, &[("app", &app)])?;
    let (na, nb) = (
        c.workload(&wa).netns().to_string(),
        c.workload(&wb).netns().to_string(),
    );
    let rx = Receiver::start(&nb, PORT)?;
    let file = format!("bench-{app}.yaml");
    let yaml = probe_manifest(&app, k);
    // The first member has it: its workload attached, the hub allocated it.
    c.apply_manifest(&file, &yaml)?;
    wait_attached(&na, timeout).with_context(|| format!("{wa} in cluster-a"))?;
    let alloc = hub.allocation(&format!("{NS}/{app}"));
    crate::wait_for(
        &format!("the hub to allocate {NS}/{app}"),
        timeout,
        Duration::from_millis(20),
        || Ok(alloc.exists().then_some(())),
    )?;
    // A pass of cluster-a's operator to read the allocation back.
    crate::sleep(Duration::from_millis(500))?;
    anyhow::ensure!(rx.count() == 0, "{wb} got a packet before its app existed");
    let t0 = Instant::now();
    c.apply_member_manifest("cluster-b", &file, &yaml)?;
    let (attached, address) =
        wait_attached(&nb, timeout).with_context(|| format!("{wb} in cluster-b"))?;
    let left = timeout.saturating_sub(t0.elapsed());
    udp_probe_until_ok(
        &na,
        SocketAddrV4::new(address, PORT),
        Duration::from_millis(2),
        left,
    )
    .with_context(|| format!("{wa} to {wb} at {address}"))?;
    let first = rx
        .first()
        .context("an echo came back but the receiver saw nothing")?;
    Ok((attached - t0, first.saturating_duration_since(t0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapper_drops_the_test_only_flags_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("w");
        std::fs::write(&script, wrapper_script(Path::new("/bin/echo"))).unwrap();
        let out = std::process::Command::new("sh")
            .arg(&script)
            .args([
                "standalone",
                "--interval-ms",
                "100",
                "--idle-interval-ms=100",
                "--state",
                "/a b",
                "--traffic-refresh-seconds=1",
                "--traffic-refresh-seconds",
                "1",
                "--node",
                "n1",
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "standalone --state /a b --node n1\n"
        );
    }

    #[test]
    fn probe_manifests_have_their_own_range_and_the_hub_lists_them() {
        let y = probe_manifest(&probe_app(3), 3);
        assert!(y.contains("name: fedprobe-3"));
        assert!(y.contains("addressSpace: 10.133.0.0/16"));
        assert!(y.contains("app: fedprobe-3"));
    }
}
