//! Weft's chained CNI plugin (CNI spec 1.0). The runtime runs it after the
//! primary plugin; it asks the node daemon to attach the pod to its app and
//! returns the previous result with Weft's interface added.
//!
//! ```text
//! runtime ─ env CNI_* + JSON stdin ─► weft-cni ─ attach socket ─► node daemon
//!        ◄─ result JSON (prevResult + weft0) ─┘
//! ```

pub mod client;
pub mod config;
pub mod error;
pub mod result;

use std::collections::BTreeMap;

use weft_api::attach::{AttachRequest, AttachResponse, WorkloadRef};

use crate::config::NetConf;
use crate::error::CniError;

/// CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0"];

/// The CNI command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify.
    Check,
    /// Report supported versions.
    Version,
}

/// The runtime's environment, already read (`CNI_*`).
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// All `CNI_*` variables.
    pub vars: BTreeMap<String, String>,
}

impl Env {
    /// Reads `CNI_*` from the process environment.
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("CNI_"))
                .collect(),
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn require(&self, k: &str) -> Result<&str, CniError> {
        self.get(k)
            .ok_or_else(|| CniError::invalid_env(format!("{k} is not set")))
    }

    /// The command.
    pub fn command(&self) -> Result<Command, CniError> {
        match self.require("CNI_COMMAND")? {
            "ADD" => Ok(Command::Add),
            "DEL" => Ok(Command::Del),
            "CHECK" => Ok(Command::Check),
            "VERSION" => Ok(Command::Version),
            other => Err(CniError::invalid_env(format!(
                "CNI_COMMAND {other:?} is not ADD, DEL, CHECK or VERSION"
            ))),
        }
    }

    /// `K8S_POD_NAMESPACE` / `K8S_POD_NAME` from `CNI_ARGS` (`a=b;c=d`).
    fn pod(&self) -> Result<(String, String), CniError> {
        let args: BTreeMap<&str, &str> = self
            .get("CNI_ARGS")
            .unwrap_or("")
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
            (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => {
                Ok((ns.to_string(), n.to_string()))
            }
            _ => Err(CniError::invalid_env(
                "CNI_ARGS lacks K8S_POD_NAMESPACE and K8S_POD_NAME".into(),
            )),
        }
    }

    fn workload(&self, need_netns: bool) -> Result<WorkloadRef, CniError> {
        let (namespace, name) = self.pod()?;
        Ok(WorkloadRef {
            container_id: self.require("CNI_CONTAINERID")?.to_string(),
            netns: if need_netns {
                self.require("CNI_NETNS")?.to_string()
            } else {
                self.get("CNI_NETNS").unwrap_or("").to_string()
            },
            namespace,
            name,
        })
    }
}

/// Runs one invocation: returns what to print on stdout for success.
pub fn run(
    env: &Env,
    stdin: &str,
    talk: &mut dyn FnMut(&str, &AttachRequest) -> Result<AttachResponse, CniError>,
) -> Result<Option<String>, CniError> {
    let cmd = env.command()?;
    if cmd == Command::Version {
        return Ok(Some(
            serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS})
                .to_string(),
        ));
    }
    let conf = NetConf::parse(stdin)?;
    match cmd {
        Command::Add => {
            let w = env.workload(true)?;
            match talk(&conf.daemon_socket, &AttachRequest::Add(w.clone()))? {
                AttachResponse::Attached(a) => Ok(Some(
                    result::with_attachment(&conf, &a, &w.netns)?.to_string(),
                )),
                AttachResponse::NotMeshed => Ok(Some(result::passthrough(&conf).to_string())),
                AttachResponse::Error { code, message } => Err(CniError::new(code, message)),
                AttachResponse::Detached => Err(CniError::new(
                    weft_api::attach::codes::ATTACH_FAILED,
                    "daemon answered ADD with 'detached'".into(),
                )),
            }
        }
        Command::Del => {
            let w = env.workload(false)?;
            match talk(&conf.daemon_socket, &AttachRequest::Del(w))? {
                AttachResponse::Error { code, message } => Err(CniError::new(code, message)),
                _ => Ok(None),
            }
        }
        Command::Check => {
            let w = env.workload(true)?;
            match talk(&conf.daemon_socket, &AttachRequest::Check(w))? {
                AttachResponse::Error { code, message } => Err(CniError::new(code, message)),
                _ => Ok(None),
            }
        }
        Command::Version => unreachable!("handled above"),
    }
}
