//! The one error type of the Kubernetes controllers.

/// What can go wrong in a reconcile pass or in leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Server-side apply of a MeshNode failed.
    #[error("applying the spec of MeshNode {node} failed: {source}")]
    MeshNodeApply {
        /// MeshNode name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Patching the status subresource of a user object failed.
    #[error("patching the status of {kind} {object} failed: {source}")]
    StatusPatch {
        /// Kind of the object.
        kind: &'static str,
        /// `namespace/name` or `name`.
        object: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the MeshApp finalizer failed.
    #[error("updating finalizer weft.dev/cleanup of MeshApp {object} failed: {source}")]
    Finalizer {
        /// `namespace/name`.
        object: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading or writing the leader Lease failed.
    #[error("leader election Lease {lease} failed: {source}")]
    Lease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// An object could not be turned into JSON.
    #[error("serializing {what} failed: {source}")]
    Serialize {
        /// What was being serialized.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// A short, bounded label for the `reason` of error metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MeshNodeApply { .. } => "meshnode_apply",
            Error::StatusPatch { .. } => "status_patch",
            Error::Finalizer { .. } => "finalizer",
            Error::Lease { .. } => "lease",
            Error::Serialize { .. } => "serialize",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_are_stable_and_messages_name_the_object() {
        let e = Error::Serialize {
            what: "MeshNode n1".into(),
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        assert_eq!(e.metric_label(), "serialize");
        assert!(e.to_string().contains("MeshNode n1"));
    }
}
