//! A scripted fake Kubernetes API server on 127.0.0.1, for running the real
//! daemon binary in Kubernetes mode where no API server can run. It answers
//! LISTs of the collections it was given, lets every WATCH expire (410) after
//! a moment so clients list again, stores objects created by server-side
//! apply, applies status patches to stored objects, and records every
//! request so tests can check what the binary asked for. It can also be
//! taken down for a while ([`FakeApi::set_down`]): every request is then
//! answered 503, as by an API server that is restarting. HTTP/1.1, no TLS.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// One request the server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string (percent-encoded, as sent).
    pub query: String,
    /// JSON body (`Null` if none or not JSON).
    pub body: Value,
}

/// How long a watch stays open before it expires.
const WATCH_EXPIRES: Duration = Duration::from_millis(300);

#[derive(Default)]
struct State {
    /// Collection path (`/api/v1/pods`) → `(kind of the list, items)`.
    lists: BTreeMap<String, (String, Vec<Value>)>,
    seen: Vec<Seen>,
    /// Answer everything 503 (an outage).
    down: bool,
}

/// The running fake.
pub struct FakeApi {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeApi {
    /// Starts serving on an ephemeral loopback port.
    pub fn start() -> Result<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind fake API")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("fake-api".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if sp.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (st, sp) = (st.clone(), sp.clone());
                    std::thread::spawn(move || serve(conn, &st, &sp));
                }
            })?;
        Ok(FakeApi { port, state, stop })
    }

    /// Serves `items` as the collection at `path` (e.g.
    /// `/apis/weft.dev/v1alpha1/meshnodes`), listed as `list_kind`.
    pub fn set_list(&self, path: &str, list_kind: &str, items: Vec<Value>) {
        self.state
            .lock()
            .unwrap()
            .lists
            .insert(path.to_string(), (list_kind.to_string(), items));
    }

    /// Takes the server down (every request answered 503 Service
    /// Unavailable, still recorded) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Every request since the last call, forgotten by the server: a
    /// long run (the scale benchmark) keeps no copy of what it already read.
    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state.lock().unwrap().seen)
    }

    /// Writes a kubeconfig that points at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://127.0.0.1:{}\"}}\nusers:\n- name: fake\n  user: {{token: fake}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\n",
            self.port
        );
        std::fs::write(path, cfg).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    // Head and body go out in two writes: without this, Nagle's algorithm
    // holds the body until the client's delayed ACK, 40 ms per request.
    let _ = conn.set_nodelay(true);
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(conn);
    while !stop.load(Ordering::Relaxed) {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, target) = (method.to_string(), target.to_string());
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        let seen = Seen {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        let down = state.lock().unwrap().down;
        if down {
            state.lock().unwrap().seen.push(seen);
            let text = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "ServiceUnavailable", "code": 503, "message": "the fake API is down"})
            .to_string();
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                text.len()
            );
            if out.write_all(head.as_bytes()).is_err() || out.write_all(text.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        if method == "GET"
            && query
                .split('&')
                .any(|kv| kv == "watch=true" || kv == "watch=1")
        {
            // No watch events: after a moment the watch expires (410 Gone),
            // so the client lists again and sees what changed meanwhile.
            state.lock().unwrap().seen.push(seen);
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            let _ = out.flush();
            std::thread::sleep(WATCH_EXPIRES);
            let event = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version"}})
            .to_string()
                + "\n";
            let _ = write!(out, "{:x}\r\n{event}\r\n0\r\n\r\n", event.len());
            let _ = out.flush();
            return;
        }
        let (code, reply) = answer(&seen, state);
        // Recorded after answering: no copy of a large body per request.
        state.lock().unwrap().seen.push(seen);
        let text = reply.to_string();
        let head = format!(
            "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            text.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

/// The collection at `path`: one given for it, or for a namespaced path
/// (`/apis/g/v/namespaces/ns/plural`) with none given, the cluster-wide one
/// (`/apis/g/v/plural`) narrowed to `ns`, as a real API server serves both.
fn list_at(
    lists: &BTreeMap<String, (String, Vec<Value>)>,
    path: &str,
) -> Option<(String, Vec<Value>)> {
    if let Some((kind, items)) = lists.get(path) {
        return Some((kind.clone(), items.clone()));
    }
    let (prefix, rest) = path.split_once("/namespaces/")?;
    let (ns, plural) = rest.split_once('/')?;
    if plural.contains('/') {
        return None;
    }
    let (kind, items) = lists.get(&format!("{prefix}/{plural}"))?;
    let items = items
        .iter()
        .filter(|i| i["metadata"]["namespace"] == ns)
        .cloned()
        .collect();
    Some((kind.clone(), items))
}

fn answer(seen: &Seen, state: &Mutex<State>) -> (&'static str, Value) {
    let mut st = state.lock().unwrap();
    match seen.method.as_str() {
        "GET" => match list_at(&st.lists, &seen.path) {
            Some((kind, items)) => (
                "200 OK",
                json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}),
            ),
            None => not_found(&seen.path),
        },
        // Server-side apply: the stored object with the applied status, or
        // the applied object itself (a create), with a resourceVersion.
        "PATCH" => {
            let status = seen.path.ends_with("/status");
            let object_path = seen.path.trim_end_matches("/status");
            let (collection, name) = object_path.rsplit_once('/').unwrap_or_default();
            let stored = st.lists.get(collection).and_then(|(_, items)| {
                items
                    .iter()
                    .find(|i| i["metadata"]["name"] == name)
                    .cloned()
            });
            let mut obj = match (status, stored) {
                (true, Some(mut o)) => {
                    o["status"] = seen.body["status"].clone();
                    o
                }
                (true, None) => return not_found(&seen.path),
                (false, Some(o)) => o,
                (false, None) => {
                    // A create by apply: stored for the next LIST.
                    let mut o = seen.body.clone();
                    o["metadata"]["name"] = json!(name);
                    o["metadata"]["resourceVersion"] = json!("1");
                    o["metadata"]["generation"] = json!(1);
                    if let Some((_, items)) = st.lists.get_mut(collection) {
                        items.push(o.clone());
                    }
                    o
                }
            };
            obj["metadata"]["name"] = json!(name);
            obj["metadata"]["resourceVersion"] = json!("2");
            ("200 OK", obj)
        }
        _ => not_found(&seen.path),
    }
}

fn not_found(path: &str) -> (&'static str, Value) {
    (
        "404 Not Found",
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
    )
}
