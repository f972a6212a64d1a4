//! CNI error results: `{cniVersion, code, msg}` on stdout, non-zero exit.

/// Longest message the plugin prints (the runtime logs it and shows it in
/// pod events; a daemon answer or an echoed value must not make it huge).
pub use weft_api::attach::MAX_MESSAGE_CHARS;

/// A CNI error with its spec code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// CNI error code (1-99 spec-defined, >= 100 plugin-defined).
    pub code: u32,
    /// Human-readable message naming the problem.
    pub msg: String,
}

impl CniError {
    /// An error with a code.
    pub fn new(code: u32, msg: String) -> Self {
        CniError { code, msg }
    }
    /// Code 4: invalid necessary environment variables.
    pub fn invalid_env(msg: String) -> Self {
        CniError::new(4, msg)
    }
    /// Code 6: failed to decode content.
    pub fn decode(msg: String) -> Self {
        CniError::new(6, msg)
    }
    /// Code 7: invalid network config.
    pub fn invalid_config(msg: String) -> Self {
        CniError::new(7, msg)
    }
    /// Code 1: incompatible CNI version.
    pub fn incompatible(msg: String) -> Self {
        CniError::new(1, msg)
    }

    /// The message prefixed with who it is about (unless it names them
    /// already), one line, at most [`MAX_MESSAGE_CHARS`].
    pub fn about(self, subject: &str, key: Option<&str>) -> Self {
        let msg = if key.is_some_and(|k| self.msg.contains(k)) {
            self.msg
        } else {
            format!("{subject}: {}", self.msg)
        };
        CniError {
            code: self.code,
            msg: weft_api::attach::one_line(&msg, MAX_MESSAGE_CHARS),
        }
    }

    /// The JSON the runtime expects on stdout.
    pub fn to_json(&self) -> String {
        serde_json::json!({"cniVersion": "1.0.0", "code": self.code, "msg": self.msg}).to_string()
    }
}
