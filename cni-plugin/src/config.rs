//! The network configuration the runtime passes on stdin. Every problem is
//! reported with the JSON path of the field concerned.

use std::io::Read;

use serde_json::{Map, Value};

use crate::error::CniError;

/// Largest network configuration read from stdin. A configuration with its
/// `prevResult` is a few KiB; more is not one, and must not be buffered.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Longest unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// What Weft reads from the network configuration.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// `cniVersion` of the configuration.
    pub cni_version: String,
    /// The previous plugin's result (required when chained), as JSON.
    pub prev_result: Option<Value>,
    /// The daemon's attach socket (`daemonSocket`, default /run/weft/attach.sock).
    pub daemon_socket: String,
}

/// Reads stdin up to [`MAX_CONFIG_BYTES`]; more is an error, and nothing
/// past the limit (plus one byte) is read.
pub fn read_config(r: &mut dyn Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    let limit = MAX_CONFIG_BYTES as u64 + 1;
    r.take(limit).read_to_end(&mut buf).map_err(|e| {
        CniError::decode(format!(
            "cannot read the network configuration from stdin: {e}"
        ))
    })?;
    if buf.len() > MAX_CONFIG_BYTES {
        return Err(CniError::invalid_config(format!(
            "network configuration on stdin is larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    Ok(buf)
}

/// How a JSON value is called in a message.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn bad(field: &str, problem: String) -> CniError {
    CniError::invalid_config(format!("network configuration: {field}: {problem}"))
}

/// A string field: `Ok(None)` when absent.
fn string<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, CniError> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(bad(field, format!("must be a string, not {}", kind(v)))),
    }
}

/// A required, non-empty string field.
fn required<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, CniError> {
    match string(obj, field)? {
        None => Err(bad(field, "missing".into())),
        Some("") => Err(bad(field, "must not be empty".into())),
        Some(s) => Ok(s),
    }
}

/// `prevResult`'s lists Weft appends to must be lists of objects.
fn check_prev_result(prev: &Map<String, Value>) -> Result<(), CniError> {
    for list in ["interfaces", "ips", "routes"] {
        let field = format!("prevResult.{list}");
        match prev.get(list) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if let Some((i, v)) = items.iter().enumerate().find(|(_, v)| !v.is_object()) {
                    return Err(bad(
                        &format!("{field}[{i}]"),
                        format!("must be an object, not {}", kind(v)),
                    ));
                }
            }
            Some(v) => return Err(bad(&field, format!("must be a list, not {}", kind(v)))),
        }
    }
    Ok(())
}

impl NetConf {
    /// Parses and validates the configuration.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let text = std::str::from_utf8(stdin).map_err(|e| {
            CniError::decode(format!(
                "network configuration is not UTF-8 (byte {})",
                e.valid_up_to()
            ))
        })?;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| CniError::decode(format!("network configuration is not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            CniError::invalid_config(format!(
                "network configuration must be a JSON object, not {}",
                kind(&v)
            ))
        })?;
        let cni_version = required(obj, "cniVersion")?;
        if !crate::SUPPORTED_VERSIONS.contains(&cni_version) {
            return Err(CniError::incompatible(format!(
                "network configuration: cniVersion: {:?} is not supported (supported: {})",
                weft_api::validation::printable(cni_version, 40),
                crate::SUPPORTED_VERSIONS.join(", ")
            )));
        }
        required(obj, "type")?;
        string(obj, "name")?;
        let daemon_socket = match string(obj, "daemonSocket")? {
            None => weft_api::attach::DEFAULT_SOCKET.to_string(),
            Some(s) => {
                let shown = weft_api::validation::printable(s, 80);
                if s.is_empty() {
                    return Err(bad("daemonSocket", "must not be empty".into()));
                }
                if !s.starts_with('/') || s.contains('\0') {
                    return Err(bad(
                        "daemonSocket",
                        format!("{shown:?} must be an absolute path"),
                    ));
                }
                if s.len() > MAX_SOCKET_PATH_LEN {
                    return Err(bad(
                        "daemonSocket",
                        format!("{shown:?} is longer than {MAX_SOCKET_PATH_LEN} bytes, the most a unix socket path can be"),
                    ));
                }
                s.to_string()
            }
        };
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => {
                check_prev_result(p)?;
                Some(Value::Object(p.clone()))
            }
            Some(v) => {
                return Err(bad(
                    "prevResult",
                    format!("must be an object, not {}", kind(v)),
                ))
            }
        };
        Ok(NetConf {
            cni_version: cni_version.to_string(),
            prev_result,
            daemon_socket,
        })
    }
}
