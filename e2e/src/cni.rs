//! Invoking CNI plugins exactly as a container runtime does: `CNI_*`
//! environment, the network configuration as JSON on stdin, a result (or an
//! error result) as JSON on stdout — from inside the simulated node's
//! network namespace, where the runtime of that node would run them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::Value;

/// Where Debian's containernetworking-plugins install the plugins.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// One plugin invocation's outcome.
#[derive(Clone, Debug)]
pub struct CniOutput {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Stdout parsed as JSON (`Null` when empty or not JSON).
    pub json: Value,
    /// Raw stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

impl CniOutput {
    /// Whether the plugin exited 0.
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// What a runtime passes to every plugin of one pod's chain.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// Netns of the simulated node the runtime runs in.
    pub node_netns: String,
    /// `CNI_PATH`.
    pub cni_path: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (path of the pod's netns).
    pub pod_netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Pod namespace and name (`CNI_ARGS`).
    pub pod: (String, String),
}

impl Runtime {
    /// `CNI_ARGS` as kubelet/containerd set them.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.pod.0, self.pod.1, self.container_id
        )
    }

    /// Runs `plugin` with `command` and `conf` on stdin, inside the node netns.
    pub fn invoke(&self, plugin: &Path, command: &str, conf: &Value) -> Result<CniOutput> {
        let plugin = plugin.to_path_buf();
        let env: Vec<(String, String)> = vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), self.container_id.clone()),
            (
                "CNI_NETNS".into(),
                self.pod_netns.to_string_lossy().into_owned(),
            ),
            ("CNI_IFNAME".into(), self.ifname.clone()),
            ("CNI_PATH".into(), self.cni_path.clone()),
            ("CNI_ARGS".into(), self.cni_args()),
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            ),
        ];
        let stdin = conf.to_string();
        crate::netns::in_netns(&self.node_netns, move || {
            let mut child = Command::new(&plugin)
                .env_clear()
                .envs(env)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot run {}", plugin.display()))?;
            child
                .stdin
                .take()
                .context("plugin stdin")?
                .write_all(stdin.as_bytes())?;
            let o = child.wait_with_output()?;
            let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
            Ok(CniOutput {
                code: o.status.code().unwrap_or(-1),
                json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
                stdout,
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            })
        })
    }

    /// Runs a chained plugin: `conf` plus `prevResult` (as a runtime does for
    /// every plugin after the first, and for CHECK/DEL with the cached result).
    pub fn invoke_chained(
        &self,
        plugin: &Path,
        command: &str,
        conf: &Value,
        prev_result: &Value,
    ) -> Result<CniOutput> {
        let mut c = conf.clone();
        c["prevResult"] = prev_result.clone();
        self.invoke(plugin, command, &c)
    }
}

/// What is missing to run the CNI chain tests (beyond root, `ip`, `ping`).
pub fn missing_cni_plugins() -> Vec<String> {
    ["bridge", "host-local"]
        .iter()
        .map(|p| Path::new(DEBIAN_CNI_DIR).join(p))
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect()
}
