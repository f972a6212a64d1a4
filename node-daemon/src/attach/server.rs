//! The unix-socket server the CNI plugin talks to.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weft_api::attach::{codes, AttachRequest, AttachResponse};

use super::registry::{key, Outcome, Shared};

/// Serves attach requests until stopped.
pub struct AttachServer {
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<Shared>,
    timeout: Duration,
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
        })
    }

    /// Accepts connections until `stop` is set; each is answered on its own
    /// thread because an ADD may wait for the next reconcile pass.
    pub fn serve(self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    let shared = self.shared.clone();
                    let timeout = self.timeout;
                    std::thread::spawn(move || {
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

fn answer(conn: UnixStream, shared: &Shared, timeout: Duration) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let resp = match serde_json::from_str::<AttachRequest>(&line) {
        Ok(req) => handle(req, shared, timeout),
        Err(e) => AttachResponse::Error {
            code: 6,
            message: format!("unreadable attach request: {e}"),
        },
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_default();
    out.push('\n');
    (&conn).write_all(out.as_bytes())
}

/// Answers one request (public for tests of the protocol logic).
pub fn handle(req: AttachRequest, shared: &Shared, timeout: Duration) -> AttachResponse {
    match req {
        AttachRequest::Add(w) => {
            let k = key(&w);
            shared.register(w);
            let (done, outcome) = shared.wait_for(&k, timeout, |o| o.is_some());
            match outcome {
                Some(Outcome::Attached(a)) if done => AttachResponse::Attached(a),
                Some(Outcome::NotMeshed) if done => {
                    // Nothing to keep for a workload of no app.
                    shared.unregister(&k);
                    AttachResponse::NotMeshed
                }
                Some(Outcome::Failed { code, message }) if done => AttachResponse::Error { code, message },
                _ => AttachResponse::Error {
                    code: codes::TRY_AGAIN_LATER,
                    message: format!("workload {k} was not attached within {}s: is this node's MeshNode up to date?", timeout.as_secs()),
                },
            }
        }
        AttachRequest::Del(w) => {
            let k = key(&w);
            if shared.unregister(&k) {
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
    fn a_workload_of_no_app_passes_and_is_forgotten() {
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
        assert!(shared.registered().is_empty());
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
