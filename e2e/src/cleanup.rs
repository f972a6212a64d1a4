//! Finding and removing whatever a run (or a crashed earlier run) left behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::{delete_netns, list_netns};
use crate::procs::registered_children;

/// Where userspace WireGuard implementations put their UAPI sockets, and
/// where `wg` looks for them (compiled into wireguard-tools). Simulated
/// nodes' daemons serve theirs in a directory per node instead (see
/// `Cluster::wg_socket_dir`): on one host, the same app's devices on two
/// nodes have the same name.
pub const WG_SOCKET_DIR: &str = "/var/run/wireguard";

/// Things left behind by a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Namespaces named after the run (`<prefix>-*`, `weft-<prefix>-*`).
    pub netns: Vec<String>,
    /// Processes whose command line names the run, or children we started
    /// and did not reap: `(pid, command line)`.
    pub processes: Vec<(u32, String)>,
}

impl Leftovers {
    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty() && self.processes.is_empty()
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing");
        }
        write!(f, "netns {:?}, processes {:?}", self.netns, self.processes)
    }
}

/// Whether a namespace name belongs to the run with this prefix: its own
/// namespaces `<prefix>-*`, and the app namespaces `weft-<node>-*` the
/// daemons of its nodes (named `<prefix>-n<i>`) create.
pub fn is_ours(netns: &str, prefix: &str) -> bool {
    netns.starts_with(&format!("{prefix}-")) || netns.starts_with(&format!("weft-{prefix}-"))
}

fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn is_zombie_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .map(|r| r.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => true,
    }
}

/// Lists what is left of the run with this prefix (and any child this
/// process started and did not reap).
pub fn find_leftovers(prefix: &str) -> Leftovers {
    find(prefix, true)
}

/// What is left of the run with this prefix only: namespaces and processes
/// named after it, not the children of other runs in this process (tests of
/// one binary run in parallel).
pub fn find_run_leftovers(prefix: &str) -> Leftovers {
    find(prefix, false)
}

fn find(prefix: &str, with_children: bool) -> Leftovers {
    let netns = list_netns()
        .into_iter()
        .filter(|n| is_ours(n, prefix))
        .collect();
    let me = std::process::id();
    let needle = format!("{prefix}-");
    let mut procs = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me || is_zombie_or_gone(pid) {
                continue;
            }
            if let Some(cl) = cmdline(pid) {
                if cl.contains(&needle) {
                    procs.insert((pid, cl));
                }
            }
        }
    }
    for pid in registered_children().into_iter().filter(|_| with_children) {
        if !is_zombie_or_gone(pid) {
            procs.insert((pid, cmdline(pid).unwrap_or_default()));
        }
    }
    Leftovers {
        netns,
        processes: procs.into_iter().collect(),
    }
}

/// Removes everything of the run with this prefix: stops its processes
/// (SIGTERM, then SIGKILL after 3 s, one pid at a time), then deletes its
/// app namespaces, workload namespaces, node namespaces and WAN. Returns what
/// it found.
pub fn cleanup_leftovers(prefix: &str) -> Leftovers {
    remove(find_leftovers(prefix))
}

/// Like [`cleanup_leftovers`], for what [`find_run_leftovers`] finds.
pub fn cleanup_run_leftovers(prefix: &str) -> Leftovers {
    remove(find_run_leftovers(prefix))
}

/// Like [`cleanup_run_leftovers`], sparing the namespaces named in `keep`
/// (a WAN that another run still shares, see `Sim::join`).
pub fn cleanup_run_leftovers_sparing(prefix: &str, keep: &[String]) -> Leftovers {
    let mut found = find_run_leftovers(prefix);
    found.netns.retain(|n| !keep.contains(n));
    remove(found)
}

fn remove(found: Leftovers) -> Leftovers {
    for (pid, _) in &found.processes {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let start = Instant::now();
    for (pid, _) in &found.processes {
        while !is_zombie_or_gone(*pid) && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !is_zombie_or_gone(*pid) {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
    // App namespaces first, then workloads, nodes, and the WAN last.
    let mut ns = found.netns.clone();
    ns.sort_by_key(|n| {
        if n.starts_with("weft-") {
            0
        } else if n.ends_with("-wan") {
            3
        } else if n.contains("-w-") {
            1
        } else {
            2
        }
    });
    for n in &ns {
        if let Err(e) = delete_netns(n) {
            eprintln!("warning: {e:#}");
        }
    }
    found
}

/// UAPI socket names currently in /var/run/wireguard.
pub fn wireguard_sockets() -> BTreeSet<String> {
    wireguard_sockets_in(Path::new(WG_SOCKET_DIR))
}

/// Every entry of a socket directory (sockets, and anything else a daemon
/// left there); empty when the directory does not exist.
pub fn wireguard_sockets_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
