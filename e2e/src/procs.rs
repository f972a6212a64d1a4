//! Child processes (operator, daemons, iperf3 servers, wireguard-go) with
//! their output in log files, stopped with SIGTERM then SIGKILL on drop.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

use crate::netns;

static CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Pids of long-running children this process started and has not reaped yet.
pub fn registered_children() -> Vec<u32> {
    CHILDREN
        .lock()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}

/// Locates one of Weft's binaries: `$WEFT_BIN_DIR/<name>` if that variable is
/// set, else next to the current executable or one directory up (so both
/// `target/<profile>/weft-demo` and `target/<profile>/deps/<test>` find
/// `target/<profile>/<name>`).
pub fn bin(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{} not found ($WEFT_BIN_DIR is set)", p.display());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    bail!(
        "{name} not found next to {} (set WEFT_BIN_DIR, or run `cargo build --workspace` first)",
        exe.display()
    )
}

/// CPU time (user + system, all threads) `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    Some(ticks as f64 / hz as f64)
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A long-running child process.
#[derive(Debug)]
pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    netns: Option<String>,
    log: PathBuf,
    child: Option<Child>,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `program args` (inside `netns` if given: the child inherits the
    /// namespace of the thread that spawns it, and nothing else changes, so
    /// namespaces it creates under /run/netns are visible to us). Output goes
    /// to `log` (appended). The child gets its own process group so a Ctrl-C
    /// on the terminal reaches only us; we stop it in order.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        netns: Option<&str>,
        log: &Path,
    ) -> Result<Proc> {
        let mut p = Proc {
            name: name.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            netns: netns.map(str::to_string),
            log: log.to_path_buf(),
            child: None,
            exit: None,
        };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let log2 = log.try_clone()?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let child = match &self.netns {
            Some(ns) => netns::in_netns(ns, move || Ok(cmd.spawn()?)),
            None => Ok(cmd.spawn()?),
        }
        .with_context(|| format!("cannot start {} ({})", self.name, self.program.display()))?;
        if let Ok(mut s) = CHILDREN.lock() {
            s.insert(child.id());
        }
        self.child = Some(child);
        self.exit = None;
        Ok(())
    }

    /// The child's name as given to [`Proc::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether it is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        let Some(c) = self.child.as_mut() else {
            return false;
        };
        match c.try_wait() {
            Ok(Some(st)) => {
                self.exit = Some(st);
                self.forget();
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Exit status, once it has exited and been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    fn forget(&mut self) {
        if let Some(c) = self.child.take() {
            if let Ok(mut s) = CHILDREN.lock() {
                s.remove(&c.id());
            }
        }
    }

    /// Sends `sig` to the child.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if let Some(c) = &self.child {
            kill(Pid::from_raw(c.id() as i32), sig)?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the child to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if !self.is_running() {
                return self.exit;
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if still alive after `grace`. Returns the exit
    /// status and whether SIGKILL was needed.
    pub fn stop(&mut self, grace: Duration) -> (Option<ExitStatus>, bool) {
        if !self.is_running() {
            return (self.exit, false);
        }
        let _ = self.signal(Signal::SIGTERM);
        if let Some(st) = self.wait_timeout(grace) {
            return (Some(st), false);
        }
        (self.kill_hard(), true)
    }

    /// SIGKILL and reap (a crash, as far as the child is concerned).
    pub fn kill_hard(&mut self) -> Option<ExitStatus> {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            if let Ok(st) = c.wait() {
                self.exit = Some(st);
            }
        }
        self.forget();
        self.exit
    }

    /// Starts the same command again (after it was stopped).
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("{} is still running", self.name);
        }
        self.start()
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let (_, killed) = self.stop(Duration::from_secs(5));
        if killed {
            eprintln!(
                "warning: {} ignored SIGTERM for 5 s and was killed",
                self.name
            );
        }
    }
}

/// Runs a command to completion inside `netns` (or here), with a timeout,
/// returning its combined output. Used for one-shot helpers such as
/// `weft-node-daemon cleanup`, which must see the node's links.
pub fn run_to_completion(
    program: &Path,
    args: &[String],
    netns: Option<&str>,
    log: &Path,
    timeout: Duration,
) -> Result<ExitStatus> {
    let mut p = Proc::spawn(
        &program
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        program,
        args,
        &[],
        netns,
        log,
    )?;
    match p.wait_timeout(timeout) {
        Some(st) => Ok(st),
        None => {
            p.kill_hard();
            bail!(
                "{} {} did not finish within {timeout:?}",
                program.display(),
                args.join(" ")
            )
        }
    }
}
