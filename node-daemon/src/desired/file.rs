//! Desired state from the state directory (standalone mode): it stands in
//! for the API server. The daemon registers its node, reads its MeshNode,
//! and writes its status.

use std::path::PathBuf;

use weft_api::standalone::{NodeRegistration, StateDir};
use weft_api::MeshNode;
use weft_api::MeshNodeStatus;

use super::Transport;
use crate::error::Error;
use crate::storage;

/// File-based exchange with the standalone operator.
#[derive(Debug)]
pub struct FileTransport {
    state: StateDir,
    node: String,
    /// Copy of the last spec that parsed, so a torn or corrupt file (or a
    /// restart) never leaves the daemon without desired state.
    cache_path: PathBuf,
    last_good: Option<MeshNode>,
    last_error: Option<String>,
    /// The MeshNode file as last parsed (inode, size, change time): an
    /// unchanged file is not parsed again (at 200 apps that parse was a
    /// twentieth of an idle node's passes).
    parsed: Option<(u64, u64, i64, i64)>,
}

/// What identifies one version of a file written by rename or in place.
fn stamp(md: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (md.ino(), md.size(), md.ctime(), md.ctime_nsec())
}

impl FileTransport {
    /// Opens the transport; `data_dir` holds the cached spec.
    pub fn new(state: StateDir, node: &str, data_dir: &std::path::Path) -> Self {
        let cache_path = data_dir.join("last-meshnode.json");
        let last_good = storage::read_json(&cache_path).ok().flatten();
        FileTransport {
            state,
            node: node.into(),
            cache_path,
            last_good,
            last_error: None,
            parsed: None,
        }
    }

    /// Announces the node (like a Node object appearing).
    pub fn register(&self, reg: &NodeRegistration) -> Result<(), Error> {
        storage::write_json(&self.state.registration(&self.node), reg, 0o644)
    }

    /// The desired MeshNode: the file if it parses, else the last good one.
    pub fn read_spec(&mut self) -> Option<MeshNode> {
        let path = self.state.meshnode(&self.node);
        let now = std::fs::metadata(&path).ok().map(|m| stamp(&m));
        if now.is_some() && now == self.parsed && self.last_good.is_some() {
            return self.last_good.clone();
        }
        match storage::read_json::<MeshNode>(&path) {
            Ok(Some(mn)) => {
                self.last_error = None;
                self.parsed = now;
                if self
                    .last_good
                    .as_ref()
                    .map(|g| (&g.metadata.generation, &g.spec))
                    != Some((&mn.metadata.generation, &mn.spec))
                {
                    if let Err(e) = storage::write_json_private(&self.cache_path, &mn) {
                        tracing::warn!(error = %e, "cannot cache MeshNode spec");
                    }
                    self.last_good = Some(mn);
                }
            }
            Ok(None) => {}
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, "unreadable MeshNode spec; keeping the last good one");
                    self.last_error = Some(msg);
                }
            }
        }
        self.last_good.clone()
    }

    /// Publishes the status (the status subresource).
    pub fn write_status(&self, status: &MeshNodeStatus) -> Result<(), Error> {
        storage::write_json(&self.state.node_status(&self.node), status, 0o644)
    }
}

impl Transport for FileTransport {
    fn mode(&self) -> &'static str {
        "standalone"
    }
    fn read_spec(&mut self) -> Option<MeshNode> {
        FileTransport::read_spec(self)
    }
    fn write_status(&mut self, status: &MeshNodeStatus) -> anyhow::Result<()> {
        Ok(FileTransport::write_status(self, status)?)
    }
}
