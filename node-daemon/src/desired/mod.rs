//! Sources of desired state: where the daemon reads its MeshNode and writes
//! its status. Standalone mode reads the state directory ([`file`]),
//! Kubernetes mode the API server ([`kube`]); the run loop sees only
//! [`Transport`].

pub mod file;
pub mod kube;

use weft_api::{MeshNode, MeshNodeStatus};

pub use file::FileTransport;
pub use kube::KubeTransport;

/// How the daemon exchanges MeshNode state with the control plane.
pub trait Transport {
    /// Short name of the mode, for logs.
    fn mode(&self) -> &'static str;
    /// The desired MeshNode, or the last good one; `None` until one is known.
    fn read_spec(&mut self) -> Option<MeshNode>;
    /// Whether status can be written now (in Kubernetes only once the
    /// operator has created the MeshNode).
    fn can_write_status(&self) -> bool {
        true
    }
    /// Publishes the status (the status subresource).
    fn write_status(&mut self, status: &MeshNodeStatus) -> anyhow::Result<()>;
}
