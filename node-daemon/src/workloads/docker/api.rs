//! The few Docker Engine API answers the daemon reads, and how a container
//! becomes a workload (pure: no I/O). Field names are the engine's (API
//! 1.41 and later; unknown fields are ignored).

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_api::labels::APP_LABEL;
use weft_api::standalone::LocalWorkload;
use weft_api::validation::printable;

/// Longest piece of engine output quoted in a message (messages end up in
/// the log and in the MeshNode's status).
const MAX_QUOTED: usize = 200;

/// Engine output as it may appear in a message: one line, bounded.
pub fn excerpt(body: &[u8]) -> String {
    printable(String::from_utf8_lossy(body).trim(), MAX_QUOTED)
}

/// A decoding error: serde quotes offending values whole, so bound it.
fn json_error(what: &str, e: serde_json::Error) -> String {
    format!("{what}: {}", printable(&e.to_string(), MAX_QUOTED))
}

/// Label giving a container's workload namespace (default [`DEFAULT_NAMESPACE`]).
pub const NAMESPACE_LABEL: &str = "weft.dev/namespace";
/// Namespace of a container without [`NAMESPACE_LABEL`].
pub const DEFAULT_NAMESPACE: &str = "default";

/// Only containers carrying the app label, ever (the engine filters).
fn label_filter(extra: &str) -> String {
    super::http::encode_query(&format!(r#"{{{extra}"label":["{APP_LABEL}"]}}"#))
}

/// `GET` path listing the running containers with an app label.
pub fn list_path() -> String {
    format!("/containers/json?filters={}", label_filter(""))
}

/// `GET` path of one container's details.
pub fn inspect_path(id: &str) -> String {
    format!("/containers/{}/json", super::http::encode_query(id))
}

/// `GET` path of the event stream: container events of labelled containers.
pub fn events_path() -> String {
    format!(
        "/events?filters={}",
        label_filter(r#""type":["container"],"#)
    )
}

/// One entry of `GET /containers/json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Summary {
    /// Container id.
    #[serde(rename = "Id")]
    pub id: String,
}

/// Ids from a `GET /containers/json` body.
pub fn parse_list(body: &[u8]) -> Result<Vec<String>, String> {
    let v: Vec<Summary> =
        serde_json::from_slice(body).map_err(|e| json_error("container list", e))?;
    Ok(v.into_iter().map(|s| s.id).collect())
}

#[derive(Debug, Default, Deserialize)]
struct InspectState {
    #[serde(rename = "Running", default)]
    running: bool,
    #[serde(rename = "Paused", default)]
    paused: bool,
    #[serde(rename = "Pid", default)]
    pid: i64,
}

#[derive(Debug, Default, Deserialize)]
struct InspectConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
struct InspectHostConfig {
    #[serde(rename = "NetworkMode", default)]
    network_mode: String,
}

#[derive(Debug, Deserialize)]
struct Inspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "State", default)]
    state: InspectState,
    #[serde(rename = "Config", default)]
    config: InspectConfig,
    #[serde(rename = "HostConfig", default)]
    host_config: InspectHostConfig,
}

/// What the daemon needs to know about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    /// Whether its processes run (a paused container keeps its netns and counts).
    pub running: bool,
    /// Host pid of its init process (0 when not running).
    pub pid: u32,
    /// `HostConfig.NetworkMode` (`none`, `bridge`, `host`, `container:ID`...).
    pub network_mode: String,
}

/// Parses a `GET /containers/{id}/json` body.
pub fn parse_inspect(body: &[u8]) -> Result<Container, String> {
    let i: Inspect =
        serde_json::from_slice(body).map_err(|e| json_error("container details", e))?;
    Ok(Container {
        name: i.name.trim_start_matches('/').to_string(),
        labels: i.config.labels.unwrap_or_default(),
        running: i.state.running || i.state.paused,
        pid: u32::try_from(i.state.pid).unwrap_or(0),
        network_mode: i.host_config.network_mode,
        id: i.id,
    })
}

/// Path of a process's network namespace.
pub fn netns_path(pid: u32) -> String {
    format!("/proc/{pid}/ns/net")
}

/// The workload a container stands for, or why it cannot be one (`None`
/// when it has no app label at all: not ours, nothing to say).
pub fn to_workload(c: &Container) -> Option<Result<LocalWorkload, String>> {
    let app = c.labels.get(APP_LABEL)?;
    let what = format!("container {} ({})", printable(&c.name, 80), short(&c.id));
    let check = || -> Result<LocalWorkload, String> {
        if app.is_empty() {
            return Err(format!("{what}: label {APP_LABEL} is empty"));
        }
        if !c.running || c.pid == 0 {
            return Err(format!("{what}: not running"));
        }
        // Its netns is the host's or another container's: a weft0 there
        // would serve (or clash with) something else.
        if c.network_mode == "host" || c.network_mode.starts_with("container:") {
            return Err(format!(
                "{what}: HostConfig.NetworkMode {:?} shares another network namespace; \
                 run it with its own (e.g. --network none)",
                printable(&c.network_mode, 80)
            ));
        }
        let namespace = match c.labels.get(NAMESPACE_LABEL) {
            None => DEFAULT_NAMESPACE.to_string(),
            Some(ns) if ns.is_empty() => {
                return Err(format!("{what}: label {NAMESPACE_LABEL} is empty"))
            }
            Some(ns) => ns.clone(),
        };
        if c.name.is_empty() {
            return Err(format!("{what}: no name"));
        }
        Ok(LocalWorkload {
            name: c.name.clone(),
            namespace,
            labels: c.labels.clone(),
            netns: netns_path(c.pid),
        })
    };
    Some(check())
}

/// What an event means for the set of running containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Look the container up again (it started, restarted, was renamed...).
    Refresh(String),
    /// The container stopped running (or is gone).
    Gone(String),
}

#[derive(Debug, Deserialize)]
struct Actor {
    #[serde(rename = "ID", default)]
    id: String,
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "Type", default)]
    type_: String,
    #[serde(rename = "Action", default)]
    action: String,
    #[serde(rename = "Actor")]
    actor: Option<Actor>,
}

/// Parses one line of `GET /events`; `Ok(None)` for events that change
/// nothing (create, kill, exec_*, health_status...).
pub fn parse_event(line: &[u8]) -> Result<Option<Change>, String> {
    let e: Event = serde_json::from_slice(line).map_err(|e| json_error("event", e))?;
    if !e.type_.is_empty() && e.type_ != "container" {
        return Ok(None);
    }
    let id = e.actor.map(|a| a.id).unwrap_or_default();
    if id.is_empty() {
        return Err(format!(
            "event {:?} without Actor.ID",
            printable(&e.action, 40)
        ));
    }
    Ok(match e.action.as_str() {
        "start" | "restart" | "unpause" | "rename" | "update" => Some(Change::Refresh(id)),
        "die" | "stop" | "destroy" | "oom" => Some(Change::Gone(id)),
        _ => None,
    })
}

/// The first 12 characters of an id, as `docker ps` shows it (never more,
/// and escaped, whatever the engine sent).
pub fn short(id: &str) -> String {
    let head = id.char_indices().nth(12).map_or(id, |(i, _)| &id[..i]);
    printable(head, usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSPECT: &str = include_str!("testdata/inspect-running.json");
    const LIST: &str = include_str!("testdata/containers.json");
    const EVENTS: &str = include_str!("testdata/events.jsonl");
    const ID: &str = "661210d153f04cd72b8a979822b31f5d6a3a0ff7d5ba4c75c6e2e2c8d90f54c9";

    #[test]
    fn a_recorded_running_container_becomes_a_workload() {
        let c = parse_inspect(INSPECT.as_bytes()).unwrap();
        assert_eq!(c.id, ID);
        assert_eq!(c.name, "probe1");
        assert!(c.running);
        assert_eq!(c.pid, 7850);
        assert_eq!(c.network_mode, "none");
        let w = to_workload(&c).unwrap().unwrap();
        assert_eq!(w.name, "probe1");
        assert_eq!(w.namespace, "demo");
        assert_eq!(w.netns, "/proc/7850/ns/net");
        assert_eq!(w.labels.get(APP_LABEL).map(String::as_str), Some("web"));
    }

    #[test]
    fn containers_that_cannot_be_workloads_say_why() {
        let base = parse_inspect(INSPECT.as_bytes()).unwrap();
        let err = |f: &dyn Fn(&mut Container)| {
            let mut c = base.clone();
            f(&mut c);
            to_workload(&c).unwrap().unwrap_err()
        };
        assert!(err(&|c| c.network_mode = "host".into()).contains("NetworkMode \"host\""));
        assert!(err(&|c| c.network_mode = "container:abc".into()).contains("NetworkMode"));
        assert!(err(&|c| {
            c.running = false;
            c.pid = 0
        })
        .contains("not running"));
        let e = err(&|c| {
            c.labels.insert(APP_LABEL.into(), String::new());
        });
        assert!(
            e.contains("probe1") && e.contains("label weft.dev/app is empty"),
            "{e}"
        );
        assert!(err(&|c| {
            c.labels.insert(NAMESPACE_LABEL.into(), String::new());
        })
        .contains(NAMESPACE_LABEL));

        let mut plain = base.clone();
        plain.labels.clear();
        assert!(to_workload(&plain).is_none(), "unlabelled: not ours");
        let mut no_ns = base.clone();
        no_ns.labels.remove(NAMESPACE_LABEL);
        assert_eq!(to_workload(&no_ns).unwrap().unwrap().namespace, "default");
        // The bridge network is fine: weft0 is added next to eth0.
        let mut bridged = base;
        bridged.network_mode = "bridge".into();
        assert!(to_workload(&bridged).unwrap().is_ok());
    }

    #[test]
    fn recorded_lists_and_events_parse() {
        assert_eq!(parse_list(LIST.as_bytes()).unwrap(), vec![ID.to_string()]);
        assert!(parse_list(b"{}").is_err());
        let changes: Vec<Option<Change>> = EVENTS
            .lines()
            .map(|l| parse_event(l.as_bytes()).unwrap())
            .collect();
        use Change::*;
        assert_eq!(
            changes,
            vec![
                None, // create
                Some(Refresh(ID.into())),
                None, // kill (SIGTERM)
                None, // kill (SIGKILL)
                Some(Gone(ID.into())),
                Some(Gone(ID.into())),
                Some(Gone(ID.into())),
            ]
        );
        let exec = br#"{"Type":"container","Action":"exec_die","Actor":{"ID":"x"}}"#;
        assert_eq!(parse_event(exec).unwrap(), None);
        assert!(parse_event(br#"{"Type":"container","Action":"die"}"#).is_err());
        assert!(parse_event(b"not json").is_err());
    }

    #[test]
    fn request_paths_filter_on_the_app_label() {
        assert_eq!(
            list_path(),
            "/containers/json?filters=%7B%22label%22%3A%5B%22weft.dev%2Fapp%22%5D%7D"
        );
        assert_eq!(
            events_path(),
            "/events?filters=%7B%22type%22%3A%5B%22container%22%5D%2C%22label%22%3A%5B%22weft.dev%2Fapp%22%5D%7D"
        );
        assert_eq!(inspect_path("abc"), "/containers/abc/json");
    }
}
