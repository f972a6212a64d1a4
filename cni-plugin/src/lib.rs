//! Weft's chained CNI plugin (CNI spec 1.0). The runtime runs it after the
//! primary plugin; it asks the node daemon to attach the pod to its app and
//! returns the previous result with Weft's interface added.
//!
//! ```text
//! runtime ─ env CNI_* + JSON stdin ─► weft-cni ─ attach socket ─► node daemon
//!        ◄─ result JSON (prevResult + weft0) ─┘
//! ```
//! Every error names the pod (or the container) and the variable or JSON
//! field at fault; no input makes it panic or read without bound.

pub mod client;
pub mod config;
pub mod error;
pub mod result;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;

use weft_api::attach::{AttachRequest, AttachResponse, WorkloadRef};
use weft_api::validation::printable;

use crate::client::TalkError;
use crate::config::NetConf;
use crate::error::CniError;

/// CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0"];

/// The environment variables the plugin reads; every other one (CNI_IFNAME,
/// CNI_PATH, PATH...) is never looked at, whatever bytes it holds.
pub const VARIABLES: &[&str] = &["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_ARGS"];

const POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
const POD_NAME: &str = "K8S_POD_NAME";

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

/// The runtime's environment, already read: [`VARIABLES`] only, each as
/// UTF-8 text or, when it is not, `Err` until someone needs it.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<&'static str, Result<String, ()>>,
}

impl Env {
    /// Picks [`VARIABLES`] out of `vars` (names and values as the OS gives
    /// them, e.g. [`std::env::vars_os`]).
    pub fn from_vars_os(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut out = BTreeMap::new();
        for (k, v) in vars {
            if let Some(name) = VARIABLES.iter().find(|n| k == **n) {
                out.insert(*name, v.into_string().map_err(|_| ()));
            }
        }
        Env { vars: out }
    }

    /// Reads [`VARIABLES`] from the process environment.
    pub fn from_process() -> Self {
        Env::from_vars_os(std::env::vars_os())
    }

    /// A variable's value; `None` when unset or empty.
    fn get(&self, k: &str) -> Result<Option<&str>, CniError> {
        match self.vars.get(k) {
            None => Ok(None),
            Some(Err(())) => Err(CniError::invalid_env(format!("{k} is not valid UTF-8"))),
            Some(Ok(v)) if v.is_empty() => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
        }
    }

    fn require(&self, k: &str) -> Result<&str, CniError> {
        self.get(k)?
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
                "CNI_COMMAND {:?} is not ADD, DEL, CHECK or VERSION",
                printable(other, 40)
            ))),
        }
    }

    /// `CNI_ARGS` (`A=1;B=2`) as a map; an item without `=` is an error, as
    /// in libcni.
    fn args(&self) -> Result<BTreeMap<&str, &str>, CniError> {
        let mut out = BTreeMap::new();
        for item in self.get("CNI_ARGS")?.unwrap_or("").split(';') {
            if item.is_empty() {
                continue;
            }
            let (k, v) = item.split_once('=').ok_or_else(|| {
                CniError::invalid_env(format!(
                    "CNI_ARGS: {:?} is not KEY=VALUE",
                    printable(item, 80)
                ))
            })?;
            out.insert(k, v);
        }
        Ok(out)
    }

    /// The pod's `namespace/name` from `CNI_ARGS`, if both are there.
    fn pod_key(&self) -> Option<String> {
        let args = self.args().ok()?;
        match (args.get(POD_NAMESPACE), args.get(POD_NAME)) {
            (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => {
                Some(format!("{}/{}", printable(ns, 63), printable(n, 253)))
            }
            _ => None,
        }
    }

    /// Who an invocation is about, for messages: the pod when `CNI_ARGS`
    /// names it, else the container.
    pub fn subject(&self) -> String {
        if let Some(k) = self.pod_key() {
            return format!("pod {k}");
        }
        match self.get("CNI_CONTAINERID") {
            Ok(Some(id)) => format!("container {}", printable(id, 80)),
            _ => "container without CNI_CONTAINERID".into(),
        }
    }

    /// The workload, every field checked; the error names the variable.
    fn workload(&self, need_netns: bool) -> Result<WorkloadRef, CniError> {
        let args = self.args()?;
        let arg = |k: &str| match args.get(k) {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(CniError::invalid_env(format!("CNI_ARGS lacks {k}"))),
        };
        let w = WorkloadRef {
            namespace: arg(POD_NAMESPACE)?,
            name: arg(POD_NAME)?,
            container_id: self.require("CNI_CONTAINERID")?.to_string(),
            netns: if need_netns {
                self.require("CNI_NETNS")?.to_string()
            } else {
                self.get("CNI_NETNS")?.unwrap_or("").to_string()
            },
        };
        if let Some((field, problem)) = w.problems(need_netns).into_iter().next() {
            let var = match field {
                "namespace" => "CNI_ARGS K8S_POD_NAMESPACE",
                "name" => "CNI_ARGS K8S_POD_NAME",
                "containerId" => "CNI_CONTAINERID",
                _ => "CNI_NETNS",
            };
            return Err(CniError::invalid_env(format!("{var}: {problem}")));
        }
        Ok(w)
    }
}

/// What a successful invocation prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// The result for stdout, if the command has one.
    pub stdout: Option<String>,
    /// Something the runtime's log should show (stderr).
    pub warning: Option<String>,
}

impl Done {
    fn result(s: String) -> Self {
        Done {
            stdout: Some(s),
            warning: None,
        }
    }
}

/// The daemon conversation, injectable for tests ([`client::talk`] for real).
pub type Talk<'a> = dyn FnMut(&str, &AttachRequest) -> Result<AttachResponse, TalkError> + 'a;

/// Runs one invocation: the environment, stdin (read only when the command
/// needs it, at most [`config::MAX_CONFIG_BYTES`]) and the daemon. Every
/// error names the pod (else the container).
pub fn run(env: &Env, stdin: &mut dyn Read, talk: &mut Talk<'_>) -> Result<Done, CniError> {
    run_command(env, stdin, talk).map_err(|e| e.about(&env.subject(), env.pod_key().as_deref()))
}

fn version() -> Done {
    Done::result(
        serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS})
            .to_string(),
    )
}

fn run_command(env: &Env, stdin: &mut dyn Read, talk: &mut Talk<'_>) -> Result<Done, CniError> {
    let cmd = env.command()?;
    if cmd == Command::Version {
        return Ok(version());
    }
    let conf = NetConf::parse(&config::read_config(stdin)?)?;
    match cmd {
        Command::Version => Ok(version()),
        Command::Add => {
            let w = env.workload(true)?;
            match talk(&conf.daemon_socket, &AttachRequest::Add(w.clone()))
                .map_err(TalkError::into_cni)?
            {
                AttachResponse::Attached(a) => Ok(Done::result(
                    result::with_attachment(&conf, &a, &w.netns)?.to_string(),
                )),
                AttachResponse::NotMeshed => {
                    Ok(Done::result(result::passthrough(&conf).to_string()))
                }
                AttachResponse::Error { code, message } => Err(CniError::new(code, message)),
                AttachResponse::Detached => Err(CniError::new(
                    weft_api::attach::codes::ATTACH_FAILED,
                    "daemon answered ADD with 'detached'".into(),
                )),
            }
        }
        Command::Del => {
            let w = env.workload(false)?;
            match talk(&conf.daemon_socket, &AttachRequest::Del(w)) {
                // The runtime retries a failed DEL forever, and with no
                // daemon listening no retry can undo anything now: DEL
                // succeeds and says why on stderr.
                Err(TalkError::Unreachable(why)) => Ok(Done {
                    stdout: None,
                    warning: Some(format!(
                        "{}: DEL done without the daemon: {why}",
                        env.subject()
                    )),
                }),
                Err(e) => Err(e.into_cni()),
                Ok(AttachResponse::Error { code, message }) => Err(CniError::new(code, message)),
                Ok(_) => Ok(Done::default()),
            }
        }
        Command::Check => {
            let w = env.workload(true)?;
            match talk(&conf.daemon_socket, &AttachRequest::Check(w))
                .map_err(TalkError::into_cni)?
            {
                AttachResponse::Error { code, message } => Err(CniError::new(code, message)),
                _ => Ok(Done::default()),
            }
        }
    }
}
