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
//! Talks HTTP/1.1 over the engine's unix socket with a small hand-written
//! client ([`http`]); the answers are parsed in [`api`] (pure, tested on
//! recorded engine output).

pub mod api;
pub mod http;
pub mod inventory;
pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
    sandboxes: SandboxChanges,
}

impl DockerSource {
    /// Starts watching the engine at `socket` (a thread that reconnects on
    /// its own; an unreachable engine is not an error here); each container
    /// event sets `wake`.
    pub fn start(socket: PathBuf, wake: crate::wake::Wake) -> std::io::Result<DockerSource> {
        let inventory = Arc::new(Mutex::new(Inventory::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (socket, inventory, stop) = (socket.clone(), inventory.clone(), stop.clone());
            std::thread::Builder::new()
                .name("docker-watch".into())
                .spawn(move || watch::watch(socket, inventory, stop, wake))?
        };
        Ok(DockerSource {
            socket,
            inventory,
            stop,
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
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.watcher.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The watcher's I/O against a scripted engine on a unix socket (the
    //! real engine is exercised by e2e/tests/docker_edge.rs; these cover
    //! what cannot be done to a shared engine: dropping its event stream
    //! and changing containers while the daemon is disconnected).

    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::wake::Wake;

    #[derive(Default)]
    struct Engine {
        /// id -> (name, app, pid) of running containers.
        running: BTreeMap<String, (String, String, u32)>,
        streams: Vec<UnixStream>,
        lists: usize,
    }

    struct Scripted {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        engine: Arc<Mutex<Engine>>,
    }

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
                    let Some(path) = read_request(&mut s) else {
                        continue;
                    };
                    let mut g = e.lock().unwrap();
                    if path.starts_with("/events?") {
                        assert_eq!(path, api::events_path());
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                        );
                        g.streams.push(s);
                        continue;
                    }
                    let (status, body) = if path == api::list_path() {
                        g.lists += 1;
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
                                    "State": {"Running": true, "Pid": pid},
                                    "Config": {"Labels": {"weft.dev/app": app}},
                                    "HostConfig": {"NetworkMode": "none"}
                                })
                                .to_string(),
                            ),
                            None => (404, r#"{"message":"No such container"}"#.to_string()),
                        }
                    };
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
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
            let mut g = self.engine.lock().unwrap();
            g.running
                .insert(id.into(), (name.into(), app.into(), std::process::id()));
            if announce {
                let ev =
                    format!(r#"{{"Type":"container","Action":"start","Actor":{{"ID":"{id}"}}}}"#);
                for s in &mut g.streams {
                    chunk(s, &format!("{ev}\n"));
                }
            }
        }

        fn stop(&self, id: &str) {
            let mut g = self.engine.lock().unwrap();
            g.running.remove(id);
            let ev = format!(r#"{{"Type":"container","Action":"die","Actor":{{"ID":"{id}"}}}}"#);
            // Split across two chunks: lines need not align with chunks.
            let (a, b) = ev.split_at(10);
            for s in &mut g.streams {
                chunk(s, a);
                chunk(s, &format!("{b}\n"));
            }
        }

        /// Sends one line of `len` bytes without end in sight on every
        /// stream; returns how much the daemon took before hanging up.
        fn flood(&self, len: usize) -> usize {
            let block = "x".repeat(64 * 1024);
            let mut taken = 0;
            for s in &mut self.engine.lock().unwrap().streams {
                let mut sent = 0;
                while sent < len
                    && write!(s, "{:x}\r\n{block}\r\n", block.len())
                        .and_then(|()| s.flush())
                        .is_ok()
                {
                    sent += block.len();
                }
                taken = taken.max(sent);
            }
            taken
        }

        /// The engine restarts: every event stream ends.
        fn drop_streams(&self) {
            for s in self.engine.lock().unwrap().streams.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
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

        engine.run("c2", "by-event", "web", true);
        wait_names(&mut src, &["before-start", "by-event"]);
        assert!(woke(&wake), "a started container wakes the loop");
        engine.stop("c1");
        wait_names(&mut src, &["by-event"]);
        assert!(woke(&wake), "a stopped container wakes the loop");

        // Started while the stream is down: found by the resync.
        engine.drop_streams();
        engine.run("c3", "while-away", "db", false);
        wait_names(&mut src, &["by-event", "while-away"]);
        assert!(engine.engine.lock().unwrap().lists >= 2);
    }

    #[test]
    fn an_endless_event_line_ends_the_session_and_the_next_one_catches_up() {
        let engine = Scripted::start();
        engine.run("c1", "first", "web", false);
        let mut src = DockerSource::start(engine.socket.clone(), Wake::default()).unwrap();
        wait_names(&mut src, &["first"]);
        let lists = engine.engine.lock().unwrap().lists;
        // Started while the stream carries garbage: only a resync finds it.
        engine.run("c2", "second", "web", false);
        let taken = engine.flood(16 * http::MAX_EVENT_LINE);
        assert!(
            taken < 16 * http::MAX_EVENT_LINE,
            "the daemon read {taken} bytes of one line"
        );
        wait_names(&mut src, &["first", "second"]);
        assert!(engine.engine.lock().unwrap().lists > lists);
        assert_eq!(src.condition().unwrap().reason, "Watching");
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
    }
}
