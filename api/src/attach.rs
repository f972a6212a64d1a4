//! The node-local attach protocol between Weft's CNI plugin (or any runtime
//! integration) and the node daemon: one JSON request line over the daemon's
//! unix socket, one JSON response line back. Types, their field rules and
//! the bounded line framing both ends read with.

use std::io::{BufRead, Read};

use serde::{Deserialize, Serialize};

use crate::validation;

/// Default path of the daemon's attach socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/attach.sock";

/// Longest request line the daemon reads: a request is a few hundred bytes;
/// anything near this is not a request, and each connection may hold this
/// much while it is answered.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Longest response line the plugin reads (an answer is a few hundred bytes).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest `containerId` accepted (runtimes use 64 hex digits).
pub const MAX_CONTAINER_ID_LEN: usize = 1024;
/// Longest `netns` path accepted (Linux's `PATH_MAX`).
pub const MAX_NETNS_PATH_LEN: usize = 4096;

/// Longest message either end puts on the wire or prints.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// `s` as one line (control characters escaped) of at most `max`
/// characters plus an ellipsis: escaping happens first, so the bound holds
/// for the text that is shown.
pub fn one_line(s: &str, max: usize) -> String {
    let escaped = validation::printable(s, usize::MAX);
    match escaped.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

/// Why [`read_line`] returned no line.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// More than the limit arrived without a newline.
    #[error("longer than {0} bytes")]
    TooLong(usize),
    /// The stream failed (timeout, reset...).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one line (up to `\n` or EOF, without the `\n`) of at most `max`
/// bytes. Never buffers more than `max + 1` bytes of it, so a peer sending
/// without end costs nothing beyond the limit.
pub fn read_line(r: &mut impl BufRead, max: usize) -> Result<Vec<u8>, LineError> {
    let mut line = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    r.take(limit).read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > max {
        return Err(LineError::TooLong(max));
    }
    Ok(line)
}

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

impl WorkloadRef {
    /// Every field that breaks the rules, as `(field, problem)` with the
    /// wire name of the field: `namespace` a DNS-1123 label, `name` a DNS-1123
    /// subdomain (as Kubernetes requires; the pair is the workload's key),
    /// `containerId` as the CNI spec requires, `netns` an absolute path (or
    /// empty where `netns_required` is false: DEL after the sandbox is gone).
    pub fn problems(&self, netns_required: bool) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = validation::dns_label(&self.namespace) {
            out.push(("namespace", e));
        }
        if let Err(e) = validation::dns_subdomain(&self.name) {
            out.push(("name", e));
        }
        if let Err(e) = container_id(&self.container_id) {
            out.push(("containerId", e));
        }
        if let Err(e) = netns_path(&self.netns, netns_required) {
            out.push(("netns", e));
        }
        out
    }
}

/// The CNI spec's rule for `CNI_CONTAINERID`: an alphanumeric, then
/// alphanumerics, `_`, `.` or `-`.
pub fn container_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    let shown = validation::printable(s, 80);
    if s.len() > MAX_CONTAINER_ID_LEN {
        return Err(format!(
            "{shown:?} is longer than {MAX_CONTAINER_ID_LEN} characters"
        ));
    }
    let ok = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{shown:?} must start with a letter or digit and consist of letters, digits, '_', '.' and '-'"
        ))
    }
}

/// A network namespace path: absolute, at most `PATH_MAX`, no NUL; empty
/// only where not `required`.
pub fn netns_path(s: &str, required: bool) -> Result<(), String> {
    if s.is_empty() {
        return if required {
            Err("must not be empty".into())
        } else {
            Ok(())
        };
    }
    let shown = validation::printable(s, 80);
    if s.len() > MAX_NETNS_PATH_LEN {
        Err(format!(
            "{shown:?} is longer than {MAX_NETNS_PATH_LEN} bytes"
        ))
    } else if !s.starts_with('/') || s.contains('\0') {
        Err(format!("{shown:?} must be an absolute path"))
    } else {
        Ok(())
    }
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
    /// The app's own resolver (names `<workload>.<app>.<namespace>.weft`),
    /// when the daemon runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<AttachDns>,
}

/// Where a workload's resolver is: the CNI result's `dns`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachDns {
    /// The app's resolver address on this node.
    pub nameservers: Vec<String>,
    /// `<app>.<namespace>.weft`, so a workload's short name resolves.
    pub search: Vec<String>,
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

    #[test]
    fn one_line_bounds_the_escaped_text() {
        assert_eq!(one_line("a\nb", 10), "a\\nb");
        let s = one_line(&"\u{1b}".repeat(100), 10);
        assert_eq!(s.chars().count(), 11, "{s}");
        assert!(!s.chars().any(char::is_control));
        assert_eq!(one_line("abc", 3), "abc");
    }

    #[test]
    fn lines_are_read_up_to_the_limit_and_no_further() {
        let mut r: &[u8] = b"abc\ndef";
        assert_eq!(read_line(&mut r, 3).unwrap(), b"abc");
        assert_eq!(read_line(&mut r, 3).unwrap(), b"def", "EOF ends a line");
        assert_eq!(read_line(&mut r, 3).unwrap(), b"");
        let mut r: &[u8] = b"abcd\n";
        assert!(matches!(read_line(&mut r, 3), Err(LineError::TooLong(3))));
        assert_eq!(r, b"\n", "read exactly one byte past the limit");
    }

    #[test]
    fn workload_fields_are_checked_by_their_wire_names() {
        let good = WorkloadRef {
            container_id: "c0ffee".into(),
            netns: "/run/netns/p1".into(),
            namespace: "demo".into(),
            name: "web-1".into(),
        };
        assert!(good.problems(true).is_empty());
        let gone = WorkloadRef {
            netns: String::new(),
            ..good.clone()
        };
        assert!(
            gone.problems(false).is_empty(),
            "DEL after the netns is gone"
        );
        assert_eq!(gone.problems(true)[0].0, "netns");
        let bad = WorkloadRef {
            container_id: "-x".into(),
            netns: "run/netns/p1".into(),
            namespace: "De/mo".into(),
            name: "a/b".into(),
        };
        let fields: Vec<_> = bad.problems(true).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["namespace", "name", "containerId", "netns"]);
    }
}
