//! The daemon's error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the daemon, with where it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file is unusable.
    #[error("key file {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The desired state from the MeshNode spec is unusable.
    #[error("MeshNode {node} spec.apps[{app}].{field}: {message}")]
    Spec {
        /// Node name.
        node: String,
        /// App (`namespace/name`).
        app: String,
        /// Offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A data-plane operation failed.
    #[error("{op} in netns {netns}: {message}")]
    Dataplane {
        /// What was being done (e.g. `create device wfabc`).
        op: String,
        /// Network namespace.
        netns: String,
        /// The cause.
        message: String,
    },
    /// A serialisation error.
    #[error("{what}: {message}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The cause.
        message: String,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    /// A data-plane error.
    pub fn dp(
        op: impl Into<String>,
        netns: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Self {
        Error::Dataplane {
            op: op.into(),
            netns: netns.into(),
            message: message.to_string(),
        }
    }
    /// Short label for metrics (`error_total{reason=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Key { .. } => "key",
            Error::Spec { .. } => "spec",
            Error::Dataplane { .. } => "dataplane",
            Error::Decode { .. } => "decode",
        }
    }
}
