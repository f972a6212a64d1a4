//! Reading what the operator and the daemons report in the state directory.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use weft_api::standalone::{StateDir, StoredStatus};
use weft_api::{MeshAppStatus, MeshNodeStatus};

/// Reads a JSON file; `Ok(None)` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("cannot parse {}", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a file atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, contents).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

/// The stored status of MeshApp `ns/name`, if the operator wrote one.
pub fn read_app_status(
    state: &StateDir,
    ns: &str,
    name: &str,
) -> Result<Option<StoredStatus<MeshAppStatus>>> {
    read_json(&state.status_file("meshapps", &format!("{ns}/{name}")))
}

/// A node's MeshNode status as its daemon reported it.
pub fn read_node_status(state: &StateDir, node: &str) -> Result<Option<MeshNodeStatus>> {
    read_json(&state.node_status(node))
}

/// The node's desired state as the operator wrote it (a MeshNode object, kept
/// as JSON so this harness does not depend on its exact shape).
pub fn read_meshnode(state: &StateDir, node: &str) -> Result<Option<serde_json::Value>> {
    read_json(&state.meshnode(node))
}

/// Status of a condition type (`"True"`, `"False"`, ...), if present.
pub fn condition<'a>(st: &'a MeshAppStatus, type_: &str) -> Option<&'a str> {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// One line describing an app status: `Ready=True nodes 2/2 peers 1/1 cidr ...`.
pub fn describe_app(st: &MeshAppStatus) -> String {
    let msg = st
        .conditions
        .iter()
        .filter(|c| c.type_ != "Ready")
        .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "Ready={} nodes {}/{} peers {}/{} cidr {} {}",
        condition(st, "Ready").unwrap_or("?"),
        st.nodes_ready,
        st.nodes_total,
        st.peers_up,
        st.peers_total,
        st.address_space.as_deref().unwrap_or("-"),
        msg
    )
}

/// Waits until MeshApp `ns/name` has condition Ready=True and returns its status.
pub fn wait_for_ready(
    state: &StateDir,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<MeshAppStatus> {
    let mut last = String::from("no status file yet");
    let res = crate::wait_for(
        &format!("MeshApp {ns}/{name} to become Ready"),
        timeout,
        Duration::from_millis(50),
        || {
            let Some(st) = read_app_status(state, ns, name)? else {
                return Ok(None);
            };
            last = describe_app(&st.status);
            Ok((condition(&st.status, "Ready") == Some("True")).then_some(st.status))
        },
    );
    res.with_context(|| format!("last status: {last}"))
}

/// Runs `weft-operator get meshapps --state DIR [-o wide]` and returns its output.
pub fn get_meshapps(state: &StateDir, wide: bool) -> Result<String> {
    let op = crate::bin("weft-operator")?;
    let mut cmd = Command::new(&op);
    cmd.args(["get", "meshapps", "--state"]).arg(state.root());
    if wide {
        cmd.args(["-o", "wide"]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("run {}", op.display()))?;
    if !out.status.success() {
        bail!(
            "weft-operator get meshapps failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
