//! Docker-only edge hosts: the local Docker engine as the workload source.
//!
//! ```text
//!  dockerd ──/events (label weft.dev/app)──► watcher thread ──► Inventory ◄── DockerSource::list (each pass)
//!          ◄─/containers/json, /{id}/json──┘ (catch-up, inspect)           └─ only pids whose netns is unchanged
//! ```
//!
//! A running container labelled `weft.dev/app=NAME` is a workload: name =
//! container name, namespace = label `weft.dev/namespace` (default
//! `default`), labels = container labels, netns = `/proc/<pid>/ns/net`.
//! The daemon gives it a veth `weft0` straight from the app's namespace
//! (veth ends move between any two namespaces by fd, so the host namespace
//! Docker runs in is never involved). When the container stops its
//! namespace dies and takes the veth with it; the next pass drops the
//! workload and the reconciler removes what is left (deleting an already
//! missing link is fine). Containers that share the host's or another
//! container's network (`--network host`, `container:...`) are refused with
//! a warning. The daemon must see the engine's pids: on the host, or in a
//! container with `--pid host`.
//!
//! The engine client is bollard (unix socket only, no TLS), on the
//! watcher's own thread and current-thread runtime ([`watch`]); what the
//! daemon makes of its answers is in [`api`] (pure, tested on output
//! recorded from a real engine). Requests use the engine's API version, so
//! Docker 20.10 (API 1.41) and current engines both work. Unlike the
//! hand-written client this replaces, nothing bounds how much the engine
//! may send (an event line, a listing): the engine runs as root on this
//! host and is trusted with it, as every Docker client trusts it.

pub mod api;
pub mod inventory;
pub mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use weft_api::conditions;
use weft_api::standalone::LocalWorkload;

use crate::workloads::{SandboxChanges, WorkloadSource};
use inventory::{Engine, Inventory};

/// The engine's default socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Condition type on MeshNode status saying whether the engine is watched.
pub const CONDITION: &str = "WorkloadsWatched";

/// Workloads from the local Docker engine (see the module docs).
pub struct DockerSource {
    socket: PathBuf,
    inventory: Arc<Mutex<Inventory>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    watcher: Option<std::thread::JoinHandle<()>>,
    sandboxes: SandboxChanges,
}

impl DockerSource {
    /// Starts watching the engine at `socket` (a thread that reconnects on
    /// its own; an unreachable engine is not an error here); each container
    /// event sets `wake`.
    pub fn start(socket: PathBuf, wake: crate::wake::Wake) -> std::io::Result<DockerSource> {
        let inventory = Arc::new(Mutex::new(Inventory::default()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let watcher = {
            let (socket, inventory) = (socket.clone(), inventory.clone());
            std::thread::Builder::new()
                .name("docker-watch".into())
                .spawn(move || {
                    rt.block_on(async move {
                        tokio::select! {
                            _ = stopped => {}
                            () = watch::watch(&socket, &inventory, wake) => {}
                        }
                    });
                })?
        };
        Ok(DockerSource {
            socket,
            inventory,
            stop: Some(stop),
            watcher: Some(watcher),
            sandboxes: SandboxChanges::default(),
        })
    }

    fn inventory(&self) -> std::sync::MutexGuard<'_, Inventory> {
        self.inventory.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WorkloadSource for DockerSource {
    fn list(&mut self) -> Vec<LocalWorkload> {
        let live = self.inventory().workloads(watch::netns_id);
        self.sandboxes.filter(live)
    }

    fn condition(&self) -> Option<Condition> {
        let inv = self.inventory();
        let rejected = inv.rejected();
        let c = match inv.engine() {
            Engine::Starting => conditions::new(
                CONDITION,
                false,
                "Connecting",
                format!(
                    "connecting to the Docker engine at {}",
                    self.socket.display()
                ),
                None,
            ),
            Engine::Unreachable(why) => {
                conditions::new(CONDITION, false, "DockerUnreachable", why.clone(), None)
            }
            Engine::Watching if rejected.is_empty() => conditions::new(
                CONDITION,
                true,
                "Watching",
                format!("watching the Docker engine at {}", self.socket.display()),
                None,
            ),
            Engine::Watching => conditions::new(
                CONDITION,
                true,
                "ContainersRefused",
                refused_message(&rejected),
                None,
            ),
        };
        Some(c)
    }
}

/// Most refusals spelled out in the condition (the rest are counted), so
/// a host full of mislabelled containers cannot bloat the MeshNode status.
const MAX_REFUSALS_SHOWN: usize = 10;

fn refused_message(rejected: &[String]) -> String {
    let mut m = rejected[..rejected.len().min(MAX_REFUSALS_SHOWN)].join("; ");
    if rejected.len() > MAX_REFUSALS_SHOWN {
        m.push_str(&format!(
            "; and {} more containers refused",
            rejected.len() - MAX_REFUSALS_SHOWN
        ));
    }
    m
}

impl Drop for DockerSource {
    fn drop(&mut self) {
        // Ends the watcher at its next await (a request in flight is dropped).
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.watcher.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The watcher against a scripted engine on a unix socket that speaks
    //! like Docker 20.10 (API 1.41: a request for a newer version is
    //! refused). The real engine is exercised by e2e/tests/docker_edge.rs;
    //! these cover what cannot be done to a shared engine: dropping its
    //! event stream, changing containers while the daemon is disconnected
    //! or between its listing and its subscription.

    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::wake::Wake;

    /// The newest API version the scripted engine speaks.
    const MAX_MINOR: u32 = 41;

    #[derive(Default)]
    struct Engine {
        /// id -> (name, app, pid) of running containers.
        running: BTreeMap<String, (String, String, u32)>,
        /// Every event sent: (Unix seconds, JSON line).
        history: Vec<(u64, String)>,
        streams: Vec<UnixStream>,
        lists: usize,
        /// When each listing was asked for (Unix seconds).
        listed_at: Vec<u64>,
        /// `since` of each event subscription.
        since: Vec<u64>,
        /// A container to start just before the next subscription lands
        /// (after the listing): only the replay can tell the daemon.
        on_subscribe: Option<(String, String, String)>,
        /// Request paths with an API version newer than the engine's.
        too_new: Vec<String>,
    }

    impl Engine {
        fn start(&mut self, id: &str, name: &str, app: &str, announce: bool) {
            self.running
                .insert(id.into(), (name.into(), app.into(), std::process::id()));
            if announce {
                self.event("start", id);
            }
        }

        fn event(&mut self, action: &str, id: &str) {
            let now = unix_now();
            let ev = format!(
                r#"{{"Type":"container","Action":"{action}","Actor":{{"ID":"{id}","Attributes":{{}}}},"time":{now}}}"#
            );
            // Split across two chunks: lines need not align with chunks.
            let (a, b) = ev.split_at(10);
            for s in &mut self.streams {
                chunk(s, a);
                chunk(s, &format!("{b}\n"));
            }
            self.history.push((now, ev));
        }
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    struct Scripted {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        engine: Arc<Mutex<Engine>>,
    }

    /// The request target of the next request on `s`.
    fn read_request(s: &mut UnixStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).ok()? == 0 {
                return None;
            }
            buf.push(b[0]);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        text.split(' ').nth(1).map(str::to_string)
    }

    fn chunk(s: &mut UnixStream, body: &str) {
        let _ = write!(s, "{:x}\r\n{body}\r\n", body.len());
    }

    /// Splits `/v1.41/x?q` into (minor version if any, `/x`, `q`).
    fn split_target(target: &str) -> (Option<u32>, String, String) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let versioned = path
            .strip_prefix("/v1.")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(minor, rest)| Some((minor.parse().ok()?, format!("/{rest}"))));
        match versioned {
            Some((minor, rest)) => (Some(minor), rest, query.into()),
            None => (None, path.into(), query.into()),
        }
    }

    fn query_param(query: &str, key: &str) -> Option<String> {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    }

    fn answer(s: &mut UnixStream, status: u16, body: &str) {
        let _ = write!(
            s,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nApi-Version: 1.{MAX_MINOR}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }

    impl Scripted {
        fn start() -> Scripted {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("docker.sock");
            let listener = UnixListener::bind(&socket).unwrap();
            let engine = Arc::new(Mutex::new(Engine::default()));
            let e = engine.clone();
            std::thread::spawn(move || {
                for s in listener.incoming() {
                    let Ok(mut s) = s else { return };
                    let Some(target) = read_request(&mut s) else {
                        continue;
                    };
                    let mut g = e.lock().unwrap();
                    let (minor, path, query) = split_target(&target);
                    if minor.is_some_and(|m| m > MAX_MINOR) {
                        g.too_new.push(target.clone());
                        let m = minor.unwrap();
                        let msg = format!(
                            r#"{{"message":"client version 1.{m} is too new. Maximum supported API version is 1.{MAX_MINOR}"}}"#
                        );
                        answer(&mut s, 400, &msg);
                        continue;
                    }
                    if path == "/events" {
                        assert!(
                            query_param(&query, "filters").is_some_and(|f| f.contains("weft.dev")),
                            "{target}"
                        );
                        let since: u64 = query_param(&query, "since")
                            .and_then(|v| v.parse().ok())
                            .expect("the daemon asks for a replay");
                        g.since.push(since);
                        if let Some((id, name, app)) = g.on_subscribe.take() {
                            g.start(&id, &name, &app, true);
                        }
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                        );
                        for (_, ev) in g.history.iter().filter(|(t, _)| *t >= since) {
                            chunk(&mut s, &format!("{ev}\n"));
                        }
                        g.streams.push(s);
                        continue;
                    }
                    let (status, body) = if path == "/version" {
                        (
                            200,
                            format!(
                                r#"{{"Version":"20.10.24","ApiVersion":"1.{MAX_MINOR}","MinAPIVersion":"1.12"}}"#
                            ),
                        )
                    } else if path == "/containers/json" {
                        assert!(
                            query_param(&query, "filters").is_some_and(|f| f.contains("weft.dev")),
                            "{target}"
                        );
                        g.lists += 1;
                        g.listed_at.push(unix_now());
                        let ids: Vec<_> = g
                            .running
                            .keys()
                            .map(|id| serde_json::json!({"Id": id}))
                            .collect();
                        (200, serde_json::Value::from(ids).to_string())
                    } else {
                        let id = path
                            .strip_prefix("/containers/")
                            .and_then(|p| p.strip_suffix("/json"))
                            .unwrap_or_default();
                        match g.running.get(id) {
                            Some((name, app, pid)) => (
                                200,
                                serde_json::json!({
                                    "Id": id, "Name": format!("/{name}"),
                                    "State": {"Status": "running", "Running": true, "Pid": pid},
                                    "Config": {"Labels": {"weft.dev/app": app}},
                                    "HostConfig": {"NetworkMode": "none"}
                                })
                                .to_string(),
                            ),
                            None => (404, r#"{"message":"No such container"}"#.to_string()),
                        }
                    };
                    answer(&mut s, status, &body);
                }
            });
            Scripted {
                _dir: dir,
                socket,
                engine,
            }
        }

        /// A container starts; `announce`: the engine sends the event.
        fn run(&self, id: &str, name: &str, app: &str, announce: bool) {
            self.engine.lock().unwrap().start(id, name, app, announce);
        }

        fn stop(&self, id: &str) {
            let mut g = self.engine.lock().unwrap();
            g.running.remove(id);
            g.event("die", id);
        }

        /// The engine restarts: every event stream ends.
        fn drop_streams(&self) {
            for s in self.engine.lock().unwrap().streams.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    impl Drop for Scripted {
        fn drop(&mut self) {
            let too_new = &self.engine.lock().unwrap().too_new;
            if !std::thread::panicking() {
                assert!(
                    too_new.is_empty(),
                    "requests for a newer API than the engine's: {too_new:?}"
                );
            }
        }
    }

    fn wait_names(src: &mut DockerSource, want: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: Vec<String> = src.list().into_iter().map(|w| w.name).collect();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "workloads {got:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `wake` is set within a second (the watcher sets it just
    /// after the inventory changes, so a list may see the change first).
    fn woke(wake: &Wake) -> bool {
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            if wake.take() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn catches_up_follows_events_and_resyncs_after_the_stream_drops() {
        let engine = Scripted::start();
        engine.run("c1", "before-start", "web", false);
        let wake = Wake::default();
        let mut src = DockerSource::start(engine.socket.clone(), wake.clone()).unwrap();
        wait_names(&mut src, &["before-start"]);
        assert!(woke(&wake), "the catch-up wakes the loop");
        let w = &src.list()[0];
        assert_eq!(w.netns, format!("/proc/{}/ns/net", std::process::id()));
        assert_eq!(w.namespace, "default");
        let c = src.condition().unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Watching"));

        // Subscribed: wait for the stream before starting anything.
        let deadline = Instant::now() + Duration::from_secs(10);
        while engine.engine.lock().unwrap().streams.is_empty() {
            assert!(Instant::now() < deadline, "no event subscription");
            std::thread::sleep(Duration::from_millis(10));
        }
        engine.run("c2", "by-event", "web", true);
        wait_names(&mut src, &["before-start", "by-event"]);
        assert!(woke(&wake), "a started container wakes the loop");
        engine.stop("c1");
        wait_names(&mut src, &["by-event"]);
        assert!(woke(&wake), "a stopped container wakes the loop");
        assert_eq!(
            engine.engine.lock().unwrap().lists,
            1,
            "events, no relisting"
        );

        // Started while the stream is down: found by the resync.
        engine.drop_streams();
        engine.run("c3", "while-away", "db", false);
        wait_names(&mut src, &["by-event", "while-away"]);
        assert!(engine.engine.lock().unwrap().lists >= 2);
    }

    #[test]
    fn what_starts_between_the_listing_and_the_subscription_is_replayed() {
        let engine = Scripted::start();
        engine.run("c1", "listed", "web", false);
        engine.engine.lock().unwrap().on_subscribe =
            Some(("c2".into(), "in-between".into(), "web".into()));
        let mut src = DockerSource::start(engine.socket.clone(), Wake::default()).unwrap();
        wait_names(&mut src, &["in-between", "listed"]);
        let g = engine.engine.lock().unwrap();
        assert_eq!(g.lists, 1, "found by the replay, not by a second listing");
        assert!(
            g.since[0] < g.listed_at[0],
            "the replay starts before the listing: since {} listed at {}",
            g.since[0],
            g.listed_at[0]
        );
    }

    #[test]
    fn a_host_full_of_refused_containers_gets_a_bounded_condition() {
        let reasons: Vec<String> = (0..1000).map(|i| format!("container c{i}: no")).collect();
        let m = refused_message(&reasons);
        assert!(m.contains("c9: no") && !m.contains("c10: no"), "{m}");
        assert!(m.ends_with("and 990 more containers refused"), "{m}");
        assert_eq!(
            refused_message(&reasons[..2]),
            "container c0: no; container c1: no"
        );
    }

    #[test]
    fn an_unreachable_engine_is_reported_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("no-engine.sock");
        let mut src = DockerSource::start(socket.clone(), Wake::default()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let c = loop {
            let c = src.condition().unwrap();
            if c.reason != "Connecting" || Instant::now() > deadline {
                break c;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "DockerUnreachable")
        );
        assert!(
            c.message.contains(&socket.display().to_string()),
            "{}",
            c.message
        );
        assert!(src.list().is_empty());

        // The engine appears at that path: the watcher gets there on its own.
        let engine = Scripted::start();
        engine.run("c1", "late", "web", false);
        std::os::unix::fs::symlink(&engine.socket, &socket).unwrap();
        wait_names(&mut src, &["late"]);
        assert_eq!(src.condition().unwrap().reason, "Watching");
        let started = Instant::now();
        drop(src);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the watcher stops at once, even while it follows events"
        );
    }
}
