//! Helpers shared by the privileged data-plane tests: the prerequisite check
//! (a skip outside CI, a failure naming what is missing under CI=true), shell
//! helpers, a namespace cleanup guard, and [`Node`]: a `LinuxDataplane` on a
//! thread that entered a node netns first (as the daemon does).
// Each test binary uses a different subset.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;

use ipnet::Ipv4Net;
use nix::sched::{setns, CloneFlags};
use weft_api::DataplaneKind;
use weft_node_daemon::core::diff::{diff, KeySource};
use weft_node_daemon::core::ops::Op;
use weft_node_daemon::core::state::NodeState;
use weft_node_daemon::dataplane::linux::{LinuxDataplane, LinuxOptions};
use weft_node_daemon::dataplane::{Dataplane, Observation};
use weft_node_daemon::keys::PrivateKey;

/// Whether root, /dev/net/tun, `ip`, `ping` and `tools` (command, version
/// flag) are here. Missing under CI=true is a failure naming what is missing.
pub fn privileged(test: &str, tools: &[(&str, &str)]) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".to_string());
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun".to_string());
    }
    for (tool, arg) in [("ip", "-V"), ("ping", "-V")].iter().chain(tools) {
        if !Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            missing.push(format!("the `{tool}` command"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{test} needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason} (CI=true: a skipped privileged test is a failure)");
    }
    println!("SKIPPED: {reason}");
    false
}

/// Runs a command, panicking if it cannot start.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a command succeeds.
pub fn sh_ok(args: &[&str]) -> bool {
    run(args).status.success()
}

/// Removes every namespace it lists (and whatever lives in them) on drop.
#[derive(Default)]
pub struct Cleanup {
    pub netns: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in self.netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

type Job = Box<dyn FnOnce(&mut LinuxDataplane) + Send>;

/// A LinuxDataplane living on its own thread inside a node netns.
pub struct Node {
    pub netns: String,
    pub thread_name: String,
    pub kind: DataplaneKind,
    tx: Option<Sender<Job>>,
    join: Option<JoinHandle<()>>,
}

impl Node {
    /// Starts the worker thread `thread_name` in `/run/netns/<netns>`.
    pub fn start(netns: &str, thread_name: &str, options: LinuxOptions) -> Node {
        let (tx, rx) = channel::<Job>();
        let (ready_tx, ready_rx) = channel();
        let path = format!("/run/netns/{netns}");
        let join = std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                let ns = File::open(&path).expect("open node netns");
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("enter node netns");
                let mut dp = LinuxDataplane::new(options).expect("LinuxDataplane::new");
                ready_tx.send(dp.kind()).unwrap();
                for job in rx {
                    job(&mut dp);
                }
            })
            .unwrap();
        let kind = ready_rx.recv().expect("node worker failed to start");
        Node {
            netns: netns.to_string(),
            thread_name: thread_name.to_string(),
            kind,
            tx: Some(tx),
            join: Some(join),
        }
    }

    /// Runs `f` on the worker (inside the node netns).
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut LinuxDataplane) -> T + Send + 'static,
    ) -> T {
        let (rtx, rrx) = channel();
        self.tx
            .as_ref()
            .unwrap()
            .send(Box::new(move |dp| drop(rtx.send(f(dp)))))
            .expect("node worker gone");
        rrx.recv()
            .unwrap_or_else(|_| panic!("node worker {} panicked", self.netns))
    }

    /// observe -> diff -> apply; returns the ops applied (panics on a failed op).
    pub fn sync(&self, desired: &NodeState, keys: &Keys, prefix: &str) -> Vec<Op> {
        let (desired, keys, prefix) = (desired.clone(), keys.clone(), prefix.to_string());
        self.call(move |dp| {
            let obs = dp.observe(&prefix).expect("observe");
            let ops = diff(&desired, &obs.state, &keys);
            for op in &ops {
                dp.apply(op).unwrap_or_else(|e| panic!("apply {op:?}: {e}"));
            }
            ops
        })
    }

    /// Applies one op, returning its error as text.
    pub fn apply(&self, op: Op) -> Result<(), String> {
        self.call(move |dp| dp.apply(&op).map_err(|e| e.to_string()))
    }

    pub fn observe(&self, prefix: &str) -> Observation {
        let prefix = prefix.to_string();
        self.call(move |dp| dp.observe(&prefix).expect("observe"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Private keys by app netns.
#[derive(Clone, Default)]
pub struct Keys(pub BTreeMap<String, PrivateKey>);

impl KeySource for Keys {
    fn private_key(&self, netns: &str) -> Option<PrivateKey> {
        self.0.get(netns).cloned()
    }
}

pub fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}
