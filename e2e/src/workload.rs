//! Workloads: a namespace per workload, announced to a node's daemon with a
//! `LocalWorkload` file (the standalone stand-in for CNI / Docker events).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use weft_api::standalone::{LocalWorkload, StateDir};

use crate::netns::NetNs;
use crate::status::{read_node_status, write_atomic};

/// Interface the daemon gives each workload.
pub const WORKLOAD_IFACE: &str = "weft0";

/// A workload namespace announced to a node. Dropping it withdraws the
/// announcement, then deletes the namespace.
#[derive(Debug)]
pub struct Workload {
    /// Workload name.
    pub name: String,
    /// Its (Kubernetes-style) namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Node it runs on.
    pub node: String,
    state: StateDir,
    file: PathBuf,
    netns: NetNs,
}

impl Workload {
    /// Creates namespace `netns_name` and announces the workload to `node`.
    pub fn create(
        state: &StateDir,
        node: &str,
        netns_name: &str,
        name: &str,
        namespace: &str,
        labels: &[(&str, &str)],
    ) -> Result<Workload> {
        let netns = NetNs::create(netns_name)?;
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let file = state.workloads_dir(node).join(format!("{name}.json"));
        let w = Workload {
            name: name.to_string(),
            namespace: namespace.to_string(),
            labels,
            node: node.to_string(),
            state: state.clone(),
            file,
            netns,
        };
        w.announce()?;
        Ok(w)
    }

    /// (Re)writes the announcement file.
    pub fn announce(&self) -> Result<()> {
        let lw = LocalWorkload {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            netns: self.netns.path().to_string_lossy().into_owned(),
        };
        write_atomic(&self.file, &serde_json::to_vec_pretty(&lw)?)
    }

    /// Removes the announcement (the daemon detaches the workload).
    pub fn withdraw(&self) -> Result<()> {
        match std::fs::remove_file(&self.file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Name of the workload's namespace.
    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    /// Its app address as the node currently reports it.
    pub fn address(&self) -> Result<Option<Ipv4Addr>> {
        let Some(st) = read_node_status(&self.state, &self.node)? else {
            return Ok(None);
        };
        let Some(w) = st
            .workloads
            .iter()
            .find(|w| w.name == self.name && w.namespace == self.namespace)
        else {
            return Ok(None);
        };
        match &w.address {
            Some(a) => {
                let ip = a.split('/').next().unwrap_or(a);
                Ok(Some(
                    ip.parse()
                        .with_context(|| format!("bad workload address {a:?}"))?,
                ))
            }
            None => Ok(None),
        }
    }

    /// Waits until the node reports an address for the workload.
    pub fn wait_address(&self, timeout: Duration) -> Result<Ipv4Addr> {
        crate::wait_for(
            &format!(
                "an address for workload {}/{} on {}",
                self.namespace, self.name, self.node
            ),
            timeout,
            Duration::from_millis(20),
            || self.address(),
        )
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.withdraw();
    }
}

/// Announces a pod's metadata to `node` with an empty netns: the container
/// runtime tells the daemon the netns through the CNI ADD (standalone
/// stand-in for the Pod object). Returns the announcement file.
pub fn announce_pod(
    state: &StateDir,
    node: &str,
    name: &str,
    namespace: &str,
    labels: &[(&str, &str)],
) -> Result<PathBuf> {
    let lw = LocalWorkload {
        name: name.to_string(),
        namespace: namespace.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        netns: String::new(),
    };
    let file = state.workloads_dir(node).join(format!("{name}.json"));
    write_atomic(&file, &serde_json::to_vec_pretty(&lw)?)?;
    Ok(file)
}

/// A workload's app address as `node` reports it (`None` until attached or
/// once released).
pub fn reported_address(
    state: &StateDir,
    node: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<String>> {
    Ok(read_node_status(state, node)?.and_then(|st| {
        st.workloads
            .into_iter()
            .find(|w| w.name == name && w.namespace == namespace)
            .and_then(|w| w.address)
    }))
}
