//! The node-local attach protocol between Weft's CNI plugin (or any runtime
//! integration) and the node daemon: one JSON request line over the daemon's
//! unix socket, one JSON response line back. Types only.

use serde::{Deserialize, Serialize};

/// Default path of the daemon's attach socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/attach.sock";

/// A workload as the container runtime names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Runtime's container (sandbox) id.
    pub container_id: String,
    /// Path of the workload's network namespace (may be gone on `Del`).
    pub netns: String,
    /// Workload namespace (Kubernetes namespace of the pod).
    pub namespace: String,
    /// Workload name (pod name).
    pub name: String,
}

/// What the runtime asks of the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum AttachRequest {
    /// Attach the workload to its app (idempotent).
    Add(WorkloadRef),
    /// Detach it and release its address (idempotent; fine if the netns is gone).
    Del(WorkloadRef),
    /// Report whether the attachment is still as ADD made it.
    Check(WorkloadRef),
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum AttachResponse {
    /// The workload is attached.
    Attached(Attachment),
    /// The workload belongs to no MeshApp: nothing was done.
    NotMeshed,
    /// The workload was detached (or was not attached).
    Detached,
    /// The request failed.
    Error {
        /// CNI error code (11 = try again later, >= 100 = Weft-specific).
        code: u32,
        /// What went wrong, naming the object.
        message: String,
    },
}

/// The interface the daemon gave the workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// The app (`namespace/name`).
    pub app: String,
    /// Interface name inside the workload's netns.
    pub interface: String,
    /// MAC address of that interface.
    pub mac: String,
    /// Address with prefix (a /32).
    pub address: String,
    /// Next hop for the app's range (link-local).
    pub gateway: String,
    /// Destinations routed through the interface (the app range).
    pub routes: Vec<String>,
}

/// Weft-specific CNI error codes (CNI reserves 0-99).
pub mod codes {
    /// The daemon is not reachable or not ready (CNI's "try again later").
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The workload names an app that does not exist on this node.
    pub const UNKNOWN_APP: u32 = 100;
    /// The daemon could not program the attachment.
    pub const ATTACH_FAILED: u32 = 101;
    /// CHECK found the attachment different from what ADD made.
    pub const DRIFT: u32 = 102;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_and_camel_case() {
        let r = AttachRequest::Add(WorkloadRef {
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            namespace: "demo".into(),
            name: "web-1".into(),
        });
        let s = serde_json::to_string(&r).unwrap();
        assert!(
            s.contains(r#""op":"add""#) && s.contains(r#""containerId":"c1""#),
            "{s}"
        );
        let e: AttachResponse =
            serde_json::from_str(r#"{"result":"error","code":11,"message":"down"}"#).unwrap();
        assert_eq!(
            e,
            AttachResponse::Error {
                code: 11,
                message: "down".into()
            }
        );
    }
}
