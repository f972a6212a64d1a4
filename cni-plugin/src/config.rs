//! The network configuration the runtime passes on stdin.

use serde_json::Value;

use crate::error::CniError;

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

impl NetConf {
    /// Parses and validates the configuration.
    pub fn parse(stdin: &str) -> Result<Self, CniError> {
        let v: Value = serde_json::from_str(stdin)
            .map_err(|e| CniError::decode(format!("network configuration is not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            CniError::invalid_config("network configuration must be a JSON object".into())
        })?;
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                CniError::invalid_config("network configuration lacks cniVersion".into())
            })?
            .to_string();
        if !crate::SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::incompatible(format!(
                "cniVersion {cni_version} is not supported (supported: {:?})",
                crate::SUPPORTED_VERSIONS
            )));
        }
        if obj.get("type").and_then(Value::as_str).is_none() {
            return Err(CniError::invalid_config(
                "network configuration lacks type".into(),
            ));
        }
        let daemon_socket = match obj.get("daemonSocket") {
            None => weft_api::attach::DEFAULT_SOCKET.to_string(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                return Err(CniError::invalid_config(
                    "daemonSocket must be a non-empty string".into(),
                ))
            }
        };
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(p @ Value::Object(_)) => Some(p.clone()),
            Some(_) => {
                return Err(CniError::invalid_config(
                    "prevResult must be an object".into(),
                ))
            }
        };
        Ok(NetConf {
            cni_version,
            prev_result,
            daemon_socket,
        })
    }
}
