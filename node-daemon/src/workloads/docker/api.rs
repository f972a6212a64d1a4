//! The few Docker Engine answers the daemon reads (bollard's models) and
//! how a container becomes a workload (pure: no I/O). Works with the
//! engine's own API version (20.10 / API 1.41 and later): every field read
//! here has been there since long before.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use weft_api::labels::APP_LABEL;
use weft_api::standalone::LocalWorkload;
use weft_api::validation::printable;

/// Longest piece of engine output quoted in a message (messages end up in
/// the log and in the MeshNode's status).
const MAX_QUOTED: usize = 300;

/// An engine or transport error as it may appear in a message: one line,
/// bounded (the engine's message is quoted whole by bollard).
pub fn describe(e: &bollard::errors::Error) -> String {
    printable(&e.to_string(), MAX_QUOTED)
}

/// Label giving a container's workload namespace (default [`DEFAULT_NAMESPACE`]).
pub const NAMESPACE_LABEL: &str = "weft.dev/namespace";
/// Namespace of a container without [`NAMESPACE_LABEL`].
pub const DEFAULT_NAMESPACE: &str = "default";

/// Only containers carrying the app label, ever (the engine filters).
fn filters(events: bool) -> HashMap<String, Vec<String>> {
    let mut f = HashMap::from([("label".to_string(), vec![APP_LABEL.to_string()])]);
    if events {
        f.insert("type".into(), vec!["container".into()]);
    }
    f
}

/// Listing: the running containers with an app label.
pub fn list_options() -> ListContainersOptions {
    ListContainersOptions {
        filters: Some(filters(false)),
        ..Default::default()
    }
}

/// The event stream: container events of labelled containers, replayed
/// from `since` (Unix seconds) on.
pub fn events_options(since: u64) -> EventsOptions {
    EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(filters(true)),
    }
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

/// What an inspected container is.
pub fn container(i: ContainerInspectResponse) -> Container {
    let state = i.state.unwrap_or_default();
    Container {
        id: i.id.unwrap_or_default(),
        name: i
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        labels: i
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_iter()
            .collect(),
        running: state.running.unwrap_or(false) || state.paused.unwrap_or(false),
        pid: state.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        network_mode: i
            .host_config
            .and_then(|h| h.network_mode)
            .unwrap_or_default(),
    }
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

/// What an event means; `Ok(None)` for events that change nothing
/// (create, kill, exec_*, health_status...).
pub fn change(e: &EventMessage) -> Result<Option<Change>, String> {
    if e.typ
        .is_some_and(|t| t != EventMessageTypeEnum::CONTAINER && t != EventMessageTypeEnum::EMPTY)
    {
        return Ok(None);
    }
    let action = e.action.as_deref().unwrap_or_default();
    let id = e
        .actor
        .as_ref()
        .and_then(|a| a.id.clone())
        .unwrap_or_default();
    if id.is_empty() {
        return Err(format!(
            "event {:?} without Actor.ID",
            printable(action, 40)
        ));
    }
    Ok(match action {
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
    //! On answers recorded from a real engine (Docker 20.10.24, API 1.41):
    //! bollard's models read them, and the conversion keeps what matters.

    use bollard::models::ContainerSummary;

    use super::*;

    const INSPECT: &str = include_str!("testdata/inspect-running.json");
    const LIST: &str = include_str!("testdata/containers.json");
    const EVENTS: &str = include_str!("testdata/events.jsonl");
    const ID: &str = "623836b62f9703890ac726d3463f0da80e29b2d81342ff1588fb934a2c839e8f";

    fn inspected() -> Container {
        container(serde_json::from_str(INSPECT).expect("bollard reads a recorded inspect"))
    }

    #[test]
    fn a_recorded_running_container_becomes_a_workload() {
        let c = inspected();
        assert_eq!(c.id, ID);
        assert_eq!(c.name, "probe1");
        assert!(c.running);
        assert_eq!(c.pid, 24490);
        assert_eq!(c.network_mode, "none");
        let w = to_workload(&c).unwrap().unwrap();
        assert_eq!(w.name, "probe1");
        assert_eq!(w.namespace, "demo");
        assert_eq!(w.netns, "/proc/24490/ns/net");
        assert_eq!(w.labels.get(APP_LABEL).map(String::as_str), Some("web"));
        // Whatever the engine leaves out, the conversion does not panic.
        let empty = container(ContainerInspectResponse::default());
        assert!(!empty.running && empty.pid == 0 && empty.labels.is_empty());
    }

    #[test]
    fn containers_that_cannot_be_workloads_say_why() {
        let base = inspected();
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
        let list: Vec<ContainerSummary> = serde_json::from_str(LIST).unwrap();
        let ids: Vec<_> = list.into_iter().filter_map(|c| c.id).collect();
        assert_eq!(ids, vec![ID.to_string()]);
        let changes: Vec<Option<Change>> = EVENTS
            .lines()
            .map(|l| change(&serde_json::from_str(l).unwrap()).unwrap())
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
        let ev = |json: &str| change(&serde_json::from_str(json).unwrap());
        let exec = r#"{"Type":"container","Action":"exec_die","Actor":{"ID":"x"}}"#;
        assert_eq!(ev(exec).unwrap(), None);
        let image = r#"{"Type":"image","Action":"delete","Actor":{"ID":"x"}}"#;
        assert_eq!(ev(image).unwrap(), None);
        let e = ev(r#"{"Type":"container","Action":"die"}"#).unwrap_err();
        assert!(e.contains("without Actor.ID"), "{e}");
    }

    #[test]
    fn requests_filter_on_the_app_label() {
        let list = list_options();
        assert_eq!(
            list.filters,
            Some(HashMap::from([("label".into(), vec![APP_LABEL.into()])]))
        );
        assert!(!list.all, "running containers only");
        let ev = events_options(1_700_000_000);
        assert_eq!(ev.since.as_deref(), Some("1700000000"));
        assert_eq!(ev.until, None, "a stream, not a page of history");
        let f = ev.filters.unwrap();
        assert_eq!(f["type"], vec!["container".to_string()]);
        assert_eq!(f["label"], vec![APP_LABEL.to_string()]);
    }
}
