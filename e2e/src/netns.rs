//! Named network namespaces (`ip netns`, i.e. bind mounts under /run/netns)
//! and running code or commands inside them.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Directory where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Runs a command and returns its stdout, or an error carrying stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    check_output(program, args, out)
}

fn check_output(program: &str, args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Runs `ip -n NS ARGS` (iproute2 operating on a named namespace).
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs a short-lived tool inside a namespace with `ip netns exec` and returns
/// its full output (whatever the exit status).
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} in netns {ns}"))
}

/// Names of all namespaces under /run/netns, sorted.
pub fn list_netns() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether a named namespace exists.
pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Deletes a named namespace (retrying briefly if the kernel says busy).
pub fn delete_netns(name: &str) -> Result<()> {
    let mut last = None;
    for _ in 0..5 {
        if !netns_exists(name) {
            return Ok(());
        }
        match ip(&["netns", "del", name]) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.unwrap_or_else(|| anyhow!("cannot delete netns {name}")))
}

/// Moves the calling thread into a namespace. Only call this on a thread
/// dedicated to that namespace (see [`in_netns`] / [`spawn_in_netns`]).
pub fn enter(ns: &str) -> Result<()> {
    let f = File::open(netns_path(ns)).with_context(|| format!("netns {ns} does not exist"))?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {ns}"))?;
    Ok(())
}

/// Runs `f` on a fresh OS thread that has entered namespace `ns`, and waits
/// for it. Sockets opened and processes spawned by `f` live in `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    spawn_in_netns(ns, f)?
        .join()
        .map_err(|_| anyhow!("thread in netns {ns} panicked"))?
}

/// Like [`in_netns`] but returns the thread handle without waiting.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<JoinHandle<Result<T>>> {
    let ns = ns.to_string();
    std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            enter(&ns)?;
            f()
        })
        .context("cannot spawn thread")
}

/// A named namespace this run created; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name` (failing if it exists) and brings `lo` up.
    pub fn create(name: &str) -> Result<NetNs> {
        if netns_exists(name) {
            bail!("netns {name} already exists (leftover of an earlier run? try cleanup)");
        }
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ip_in(name, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// `ip -n <name> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        ip_in(&self.name, args)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = delete_netns(&self.name) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// A resolv.conf for the programs `ip netns exec` runs in one named
/// namespace (iproute2 bind-mounts `/etc/netns/<name>/resolv.conf` over
/// `/etc/resolv.conf` for them), as a pod's `dnsConfig` would give it.
/// Removed on drop, with its directory.
#[derive(Debug)]
pub struct NetnsResolvConf {
    dir: PathBuf,
}

impl NetnsResolvConf {
    /// Writes `nameserver <server>` and `search <search...>` for `netns`.
    pub fn set(netns: &str, server: std::net::Ipv4Addr, search: &[&str]) -> Result<Self> {
        let dir = PathBuf::from("/etc/netns").join(netns);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let guard = NetnsResolvConf { dir };
        let text = format!("nameserver {server}\nsearch {}\n", search.join(" "));
        std::fs::write(guard.dir.join("resolv.conf"), text).context("write resolv.conf")?;
        Ok(guard)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `busybox nslookup -type=a name server` inside `netns`: the IPv4
/// addresses it printed for `name`, sorted (empty for NXDOMAIN, no answer
/// or a timeout).
pub fn nslookup(
    netns: &str,
    name: &str,
    server: std::net::Ipv4Addr,
) -> Result<Vec<std::net::Ipv4Addr>> {
    let out = exec_in(
        netns,
        "timeout",
        &[
            "10",
            "busybox",
            "nslookup",
            "-type=a",
            name,
            &server.to_string(),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The answers follow the line "Name: <name>"; the server's own address
    // is printed before it.
    let mut addrs: Vec<std::net::Ipv4Addr> = text
        .split_once("Name:")
        .map(|(_, answers)| {
            answers
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Address:"))
                .filter_map(|a| a.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    addrs.sort();
    Ok(addrs)
}
