//! Helpers shared by the privileged data-plane tests: the prerequisite check
//! (a skip outside CI, a failure naming what is missing under CI=true), shell
//! helpers, and a namespace cleanup guard.
// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

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
