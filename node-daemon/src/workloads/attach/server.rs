//! The unix-socket server the CNI plugin talks to. A request is read up to
//! [`MAX_REQUEST_BYTES`] within [`READ_DEADLINE`], at most
//! [`MAX_CONNECTIONS`] are answered at once, and every request gets an
//! answer, an unreadable one an error naming what is wrong with it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_api::attach::{
    codes, one_line, read_line, AttachRequest, AttachResponse, LineError, WorkloadRef,
    MAX_MESSAGE_CHARS, MAX_REQUEST_BYTES,
};

use super::registry::{key, Outcome, Shared, Unregistered, Waited};

/// How long a client has to send its whole request.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Connections answered at once (each holds a thread and up to
/// [`MAX_REQUEST_BYTES`]); more are told to try again. A node runs at most
/// a few hundred pods, and an ADD holds its connection only while it waits.
pub const MAX_CONNECTIONS: usize = 256;

/// CNI code 6: the request could not be decoded.
const DECODE: u32 = 6;
/// CNI code 4: a field of the request (from the runtime's environment) is invalid.
const INVALID_FIELD: u32 = 4;

/// Serves attach requests until stopped.
pub struct AttachServer {
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<Shared>,
    timeout: Duration,
    max_connections: usize,
    active: Arc<AtomicUsize>,
}

impl AttachServer {
    /// Binds `path` (0600, root only: the runtime runs the plugin as root),
    /// replacing a stale socket left by a previous run.
    pub fn bind(path: &Path, shared: Arc<Shared>, timeout: Duration) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(AttachServer {
            listener,
            path: path.to_path_buf(),
            shared,
            timeout,
            max_connections: MAX_CONNECTIONS,
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Answers at most `n` connections at once instead of [`MAX_CONNECTIONS`].
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Accepts connections until `stop` is set; each is answered on its own
    /// thread because an ADD may wait for the next reconcile pass.
    pub fn serve(self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    if self.active.load(Ordering::Relaxed) >= self.max_connections {
                        busy(conn, self.max_connections);
                        continue;
                    }
                    let shared = self.shared.clone();
                    let timeout = self.timeout;
                    let active = Active::enter(&self.active);
                    std::thread::spawn(move || {
                        let _active = active;
                        if let Err(e) = answer(conn, &shared, timeout) {
                            tracing::debug!(error = %e, "attach connection failed");
                        }
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "attach socket accept failed");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One answering thread, counted until it ends (even by a panic).
struct Active(Arc<AtomicUsize>);

impl Active {
    fn enter(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Active(n.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tells a connection over the limit to try again, without a thread: the
/// answer fits the empty socket buffer, and whatever the client sent is
/// drained without waiting so closing does not reset the answer away.
fn busy(conn: UnixStream, limit: usize) {
    tracing::warn!(limit, "attach socket busy; a request was told to try again");
    let resp = AttachResponse::Error {
        code: codes::TRY_AGAIN_LATER,
        message: format!("Weft node daemon busy: {limit} attach requests in progress"),
    };
    let _ = conn.set_nonblocking(true);
    let _ = (&conn).write_all(&encode(&resp));
    // At most one request's worth: a client that keeps sending must not
    // hold the accept loop.
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained <= MAX_REQUEST_BYTES {
        match (&conn).read(&mut sink) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// A read side that gives up at a fixed instant, however the bytes trickle
/// in (a per-read timeout alone lets a byte every few seconds hold on).
struct Deadline<'a> {
    conn: &'a UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no complete request within {}s", READ_DEADLINE.as_secs()),
            ));
        }
        self.conn.set_read_timeout(Some(left))?;
        (&mut &*self.conn).read(buf)
    }
}

fn encode(resp: &AttachResponse) -> Vec<u8> {
    // Serializing these plain types cannot fail; an empty line would still
    // tell the plugin "no answer".
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    out
}

fn answer(conn: UnixStream, shared: &Shared, timeout: Duration) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    let mut r = BufReader::new(Deadline {
        conn: &conn,
        until: Instant::now() + READ_DEADLINE,
    });
    let resp = match read_request(&mut r) {
        Ok(req) => handle(req, shared, timeout),
        Err(refused) => {
            tracing::debug!(message = %refused.message, "refused an attach request");
            refused.into()
        }
    };
    conn.set_write_timeout(Some(READ_DEADLINE))?;
    (&conn).write_all(&encode(&resp))
}

/// Why a request is refused: the answer's CNI code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// 6 (cannot decode) or 4 (a field is invalid).
    pub code: u32,
    /// What is wrong, naming the field; one line of at most 1024 characters.
    pub message: String,
}

impl From<Refused> for AttachResponse {
    fn from(r: Refused) -> Self {
        AttachResponse::Error {
            code: r.code,
            message: r.message,
        }
    }
}

/// Reads one request line (at most [`MAX_REQUEST_BYTES`]) and parses it.
pub fn read_request(r: &mut impl BufRead) -> Result<AttachRequest, Refused> {
    let line = read_line(r, MAX_REQUEST_BYTES).map_err(|e| Refused {
        code: DECODE,
        message: match e {
            LineError::TooLong(max) => format!("attach request longer than {max} bytes"),
            LineError::Io(e) => format!("cannot read the attach request: {e}"),
        },
    })?;
    parse_request(&line)
}

/// Parses one request line: UTF-8 JSON of an [`AttachRequest`] whose
/// workload passes [`WorkloadRef::problems`].
pub fn parse_request(line: &[u8]) -> Result<AttachRequest, Refused> {
    let fail = |code, message: String| Refused {
        code,
        message: one_line(&message, MAX_MESSAGE_CHARS),
    };
    let text = std::str::from_utf8(line).map_err(|e| {
        fail(
            DECODE,
            format!("attach request is not UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    if text.trim().is_empty() {
        return Err(fail(DECODE, "empty attach request".into()));
    }
    let req: AttachRequest = serde_json::from_str(text)
        .map_err(|e| fail(DECODE, format!("unreadable attach request: {e}")))?;
    let (w, netns_required) = match &req {
        AttachRequest::Add(w) | AttachRequest::Check(w) => (w, true),
        AttachRequest::Del(w) => (w, false),
    };
    if let Some((field, problem)) = w.problems(netns_required).into_iter().next() {
        return Err(fail(
            INVALID_FIELD,
            format!("attach request: {field}: {problem}"),
        ));
    }
    Ok(req)
}

fn withdrawn(w: &WorkloadRef, now: Option<WorkloadRef>, last: Option<Outcome>) -> AttachResponse {
    let k = key(w);
    match (now, last) {
        // Another ADD of this sandbox found it belongs to no app.
        (None, Some(Outcome::NotMeshed)) => AttachResponse::NotMeshed,
        (None, _) => AttachResponse::Error {
            code: codes::TRY_AGAIN_LATER,
            message: format!(
                "workload {k} (container {}) was deleted (CNI DEL) while its ADD waited; not attached",
                w.container_id
            ),
        },
        (Some(other), _) => AttachResponse::Error {
            code: codes::TRY_AGAIN_LATER,
            message: format!(
                "workload {k}: an ADD for container {} replaced this one for container {} while it waited; not attached",
                other.container_id, w.container_id
            ),
        },
    }
}

/// Answers one request (public for tests of the protocol logic).
pub fn handle(req: AttachRequest, shared: &Shared, timeout: Duration) -> AttachResponse {
    match req {
        AttachRequest::Add(w) => {
            let k = key(&w);
            shared.register(w.clone());
            match shared.wait_decided(&w, timeout) {
                Waited::Done(Some(Outcome::Attached(a))) => AttachResponse::Attached(a),
                // Kept registered (until its DEL): an app created later
                // that claims the pod attaches it then, as the run loop
                // knows its netns. Forgetting it made a running pod wait
                // for a restart to join an app applied after it started.
                Waited::Done(Some(Outcome::NotMeshed)) => AttachResponse::NotMeshed,
                Waited::Done(Some(Outcome::Failed { code, message })) => {
                    AttachResponse::Error { code, message }
                }
                Waited::Withdrawn { now, last } => withdrawn(&w, now, last),
                Waited::Done(None) | Waited::TimedOut(_) => AttachResponse::Error {
                    code: codes::TRY_AGAIN_LATER,
                    message: format!("workload {k} was not attached within {}s: is this node's MeshNode up to date?", timeout.as_secs()),
                },
            }
        }
        AttachRequest::Del(w) => {
            let k = key(&w);
            if shared.unregister(&k, &w.container_id) == Unregistered::Removed {
                // Wait for the pass that removes it; DEL must not leave the veth behind.
                let (done, _) =
                    shared.wait_for(&k, timeout, |o| !matches!(o, Some(Outcome::Attached(_))));
                if !done {
                    return AttachResponse::Error {
                        code: codes::TRY_AGAIN_LATER,
                        message: format!(
                            "workload {k} was not detached within {}s",
                            timeout.as_secs()
                        ),
                    };
                }
            }
            AttachResponse::Detached
        }
        AttachRequest::Check(w) => {
            let k = key(&w);
            match (
                shared.registered().iter().find(|r| key(r) == k),
                shared.outcome(&k),
            ) {
                (Some(r), Some(Outcome::Attached(a))) if r.netns == w.netns => {
                    AttachResponse::Attached(a)
                }
                (_, Some(Outcome::NotMeshed)) | (None, None) => AttachResponse::NotMeshed,
                (_, other) => AttachResponse::Error {
                    code: codes::DRIFT,
                    message: format!(
                        "workload {k} is not attached as ADD left it (last outcome: {other:?})"
                    ),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use weft_api::attach::{Attachment, WorkloadRef};

    fn w(netns: &str) -> WorkloadRef {
        WorkloadRef {
            container_id: "c1".into(),
            netns: netns.into(),
            namespace: "demo".into(),
            name: "web-1".into(),
        }
    }

    fn attachment() -> Attachment {
        Attachment {
            app: "demo/web".into(),
            interface: "weft0".into(),
            mac: "02:00:00:00:00:01".into(),
            address: "10.100.0.2/32".into(),
            gateway: "169.254.1.1".into(),
            routes: vec!["10.100.0.0/16".into()],
            dns: None,
        }
    }

    /// A stand-in run loop: after `delay`, publishes `outcome` for demo/web-1.
    fn pass_after(
        shared: &Arc<Shared>,
        delay: Duration,
        outcome: Option<Outcome>,
    ) -> std::thread::JoinHandle<()> {
        let s = shared.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            s.publish(
                outcome
                    .into_iter()
                    .map(|o| ("demo/web-1".to_string(), o))
                    .collect::<BTreeMap<_, _>>(),
            );
        })
    }

    #[test]
    fn add_waits_for_the_next_pass_and_answers_with_its_outcome() {
        let shared = Arc::new(Shared::in_memory());
        let h = pass_after(
            &shared,
            Duration::from_millis(50),
            Some(Outcome::Attached(attachment())),
        );
        let r = handle(
            AttachRequest::Add(w("/run/netns/p1")),
            &shared,
            Duration::from_secs(5),
        );
        h.join().unwrap();
        assert_eq!(r, AttachResponse::Attached(attachment()));
        assert_eq!(
            shared.registered().len(),
            1,
            "the run loop sees the workload"
        );
    }

    #[test]
    fn add_times_out_as_try_again_later_naming_the_workload() {
        let shared = Arc::new(Shared::in_memory());
        let r = handle(
            AttachRequest::Add(w("/run/netns/p1")),
            &shared,
            Duration::from_millis(100),
        );
        assert!(
            matches!(&r, AttachResponse::Error { code: 11, message } if message.contains("demo/web-1")),
            "{r:?}"
        );
    }

    #[test]
    fn a_workload_of_no_app_passes_and_stays_registered_until_its_del() {
        let shared = Arc::new(Shared::in_memory());
        let h = pass_after(&shared, Duration::from_millis(20), Some(Outcome::NotMeshed));
        assert_eq!(
            handle(
                AttachRequest::Add(w("/run/netns/p1")),
                &shared,
                Duration::from_secs(5)
            ),
            AttachResponse::NotMeshed
        );
        h.join().unwrap();
        assert_eq!(
            shared.registered(),
            vec![w("/run/netns/p1")],
            "kept, for an app that may claim it later"
        );
    }

    #[test]
    fn del_waits_until_the_pass_removed_it_and_is_idempotent() {
        let shared = Arc::new(Shared::in_memory());
        shared.register(w("/run/netns/p1"));
        let h = pass_after(&shared, Duration::from_millis(20), None);
        assert_eq!(
            handle(AttachRequest::Del(w("")), &shared, Duration::from_secs(5)),
            AttachResponse::Detached
        );
        h.join().unwrap();
        assert_eq!(
            handle(
                AttachRequest::Del(w("")),
                &shared,
                Duration::from_millis(10)
            ),
            AttachResponse::Detached,
            "DEL of an unknown workload succeeds"
        );
    }

    /// Runs `req` on its own thread (as the server does per connection).
    fn spawn(
        shared: &Arc<Shared>,
        req: AttachRequest,
        timeout: Duration,
    ) -> std::thread::JoinHandle<AttachResponse> {
        let s = shared.clone();
        std::thread::spawn(move || handle(req, &s, timeout))
    }

    /// A stand-in run loop: publishes `outcome` for demo/web-1 every 10 ms
    /// until `h` has answered.
    fn passes_until(
        shared: &Shared,
        outcome: Option<Outcome>,
        h: std::thread::JoinHandle<AttachResponse>,
    ) -> AttachResponse {
        while !h.is_finished() {
            shared.publish(
                outcome
                    .iter()
                    .map(|o| ("demo/web-1".to_string(), o.clone()))
                    .collect(),
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        h.join().unwrap()
    }

    fn wait_registered(shared: &Shared, w: &WorkloadRef) {
        while !shared.registered().contains(w) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // The timeouts below are far longer than the test: a broken fix shows
    // as the waiting ADD answering with its timeout message, not as a race.
    const LONG: Duration = Duration::from_secs(120);

    #[test]
    fn an_add_a_del_withdrew_answers_at_once() {
        let shared = Arc::new(Shared::in_memory());
        let add = spawn(&shared, AttachRequest::Add(w("/run/netns/p1")), LONG);
        wait_registered(&shared, &w("/run/netns/p1"));
        let del = spawn(&shared, AttachRequest::Del(w("")), LONG);
        // No pass has run: the ADD must not wait for one.
        let r = add.join().unwrap();
        assert!(
            matches!(&r, AttachResponse::Error { code: 11, message } if message.contains("demo/web-1") && message.contains("DEL")),
            "{r:?}"
        );
        assert_eq!(passes_until(&shared, None, del), AttachResponse::Detached);
    }

    #[test]
    fn a_second_add_of_a_pod_of_no_app_gets_the_first_ones_answer() {
        let shared = Arc::new(Shared::in_memory());
        shared.publish([("demo/web-1".to_string(), Outcome::NotMeshed)].into());
        shared.register(w("/run/netns/p1"));
        // A second ADD waits for the next pass; the first one, answered
        // NotMeshed by the last pass, now forgets the workload.
        let second = spawn(&shared, AttachRequest::Add(w("/run/netns/p1")), LONG);
        std::thread::sleep(Duration::from_millis(50));
        shared.unregister("demo/web-1", "c1");
        assert_eq!(second.join().unwrap(), AttachResponse::NotMeshed);
    }

    #[test]
    fn a_new_sandbox_supersedes_a_waiting_add_and_survives_the_old_ones_del() {
        let shared = Arc::new(Shared::in_memory());
        let old = spawn(&shared, AttachRequest::Add(w("/run/netns/p1")), LONG);
        wait_registered(&shared, &w("/run/netns/p1"));
        let new = WorkloadRef {
            container_id: "c2".into(),
            ..w("/run/netns/p2")
        };
        let add_new = spawn(&shared, AttachRequest::Add(new.clone()), LONG);
        let r = old.join().unwrap();
        assert!(
            matches!(&r, AttachResponse::Error { code: 11, message } if message.contains("c2")),
            "{r:?}"
        );
        wait_registered(&shared, &new);
        // The runtime tears the old sandbox down: the new one stays.
        assert_eq!(
            handle(AttachRequest::Del(w("")), &shared, LONG),
            AttachResponse::Detached
        );
        assert_eq!(shared.registered(), vec![new]);
        pass_after(
            &shared,
            Duration::ZERO,
            Some(Outcome::Attached(attachment())),
        )
        .join()
        .unwrap();
        assert_eq!(
            add_new.join().unwrap(),
            AttachResponse::Attached(attachment())
        );
    }

    #[test]
    fn check_reports_drift_when_the_attachment_is_gone() {
        let shared = Arc::new(Shared::in_memory());
        shared.register(w("/run/netns/p1"));
        shared.publish([("demo/web-1".to_string(), Outcome::Attached(attachment()))].into());
        assert!(matches!(
            handle(
                AttachRequest::Check(w("/run/netns/p1")),
                &shared,
                Duration::ZERO
            ),
            AttachResponse::Attached(_)
        ));
        shared.publish(BTreeMap::new());
        assert!(matches!(
            handle(
                AttachRequest::Check(w("/run/netns/p1")),
                &shared,
                Duration::ZERO
            ),
            AttachResponse::Error { code: 102, .. }
        ));
    }

    #[test]
    fn registry_survives_a_restart_with_mode_0600() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("attach-registry.json");
        Shared::persistent(p.clone())
            .unwrap()
            .register(w("/run/netns/p1"));
        assert_eq!(
            Shared::persistent(p.clone()).unwrap().registered(),
            vec![w("/run/netns/p1")]
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn serves_the_plugin_protocol_over_a_real_socket() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("attach.sock");
        let shared = Arc::new(Shared::in_memory());
        let stop = Arc::new(AtomicBool::new(false));
        let server = AttachServer::bind(&sock, shared.clone(), Duration::from_secs(5)).unwrap();
        let st = stop.clone();
        let h = std::thread::spawn(move || server.serve(st));
        let p = pass_after(
            &shared,
            Duration::from_millis(100),
            Some(Outcome::Attached(attachment())),
        );
        let mut c = UnixStream::connect(&sock).unwrap();
        writeln!(
            c,
            "{}",
            serde_json::to_string(&AttachRequest::Add(w("/run/netns/p1"))).unwrap()
        )
        .unwrap();
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        assert_eq!(
            serde_json::from_str::<AttachResponse>(&line).unwrap(),
            AttachResponse::Attached(attachment())
        );
        p.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        assert!(!sock.exists(), "socket removed on stop");
    }
}
