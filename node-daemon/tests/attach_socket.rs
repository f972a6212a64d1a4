//! The daemon's attach server on a real unix socket, fed what no plugin
//! sends: every request gets an answer (an error naming what is wrong for
//! an unreadable one), a request past the limit is not read further, and
//! connections past the limit are told to try again.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weft_api::attach::{AttachResponse, MAX_REQUEST_BYTES};
use weft_node_daemon::workloads::attach::{AttachServer, Shared};

struct Server {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(max_connections: usize) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("attach.sock");
        let server = AttachServer::bind(
            &socket,
            Arc::new(Shared::in_memory()),
            Duration::from_secs(5),
        )
        .unwrap()
        .with_max_connections(max_connections);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = Some(std::thread::spawn(move || server.serve(s)));
        Server {
            _dir: dir,
            socket,
            stop,
            thread,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_answer(c: &UnixStream) -> AttachResponse {
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Sends `bytes` (then ends the request) and reads the answer. A server
/// that answers before reading (busy) may have hung up already: the
/// answer is there to read all the same.
fn ask(socket: &Path, bytes: &[u8]) -> AttachResponse {
    let c = UnixStream::connect(socket).unwrap();
    let _ = (&c).write_all(bytes);
    let _ = c.shutdown(std::net::Shutdown::Write);
    read_answer(&c)
}

fn error(r: &AttachResponse) -> (u32, &str) {
    match r {
        AttachResponse::Error { code, message } => (*code, message),
        other => panic!("not an error: {other:?}"),
    }
}

const CHECK: &str = r#"{"op":"check","containerId":"c1","netns":"/run/netns/p1","namespace":"demo","name":"web-1"}"#;

#[test]
fn unreadable_requests_are_answered_not_dropped() {
    let s = Server::start(8);
    let cases: [(&[u8], u32, &str); 5] = [
        (&[0xff, 0xfe, b'\n'], 6, "not UTF-8"),
        (b"GET / HTTP/1.1\r\n", 6, "unreadable attach request"),
        (b"\n", 6, "empty"),
        (b"", 6, "empty"),
        (
            br#"{"op":"add","containerId":"c1","netns":"/run/netns/p1","namespace":"Demo","name":"web-1"}"#,
            4,
            "namespace: \"Demo\"",
        ),
    ];
    for (bytes, code, needle) in cases {
        let r = ask(&s.socket, bytes);
        let (c, m) = error(&r);
        assert_eq!(c, code, "{r:?}");
        assert!(m.contains(needle), "want {needle:?}: {r:?}");
    }
    // A request that ends at EOF instead of a newline still counts.
    assert_eq!(ask(&s.socket, CHECK.as_bytes()), AttachResponse::NotMeshed);
}

#[test]
fn an_endless_request_is_cut_off_at_the_limit_and_answered() {
    let s = Server::start(8);
    let c = UnixStream::connect(&s.socket).unwrap();
    let w = c.try_clone().unwrap();
    // Stops on its own only when the server hangs up (or after 64 MiB).
    let writer = std::thread::spawn(move || {
        let block = [b'{'; 64 * 1024];
        let mut sent = 0usize;
        while sent < 64 * 1024 * 1024 && (&w).write_all(&block).is_ok() {
            sent += block.len();
        }
        sent
    });
    let r = read_answer(&c);
    let (code, message) = error(&r);
    assert_eq!(code, 6);
    assert!(
        message.contains(&format!("longer than {MAX_REQUEST_BYTES} bytes")),
        "{r:?}"
    );
    drop(c);
    let sent = writer.join().unwrap();
    // What the server read plus what the socket buffers held.
    assert!(sent < 16 * 1024 * 1024, "the server took {sent} bytes");
}

#[test]
fn connections_past_the_limit_are_told_to_try_again() {
    let s = Server::start(1);
    // Holds the only slot: connected, request not sent yet.
    let first = UnixStream::connect(&s.socket).unwrap();
    let r = ask(&s.socket, CHECK.as_bytes());
    let (code, message) = error(&r);
    assert_eq!(code, 11);
    assert!(message.contains("busy"), "{r:?}");
    // The first one is still served.
    (&first).write_all(CHECK.as_bytes()).unwrap();
    (&first).write_all(b"\n").unwrap();
    assert_eq!(read_answer(&first), AttachResponse::NotMeshed);
    // And its slot comes free once its thread is done.
    let mut tries = 0;
    while ask(&s.socket, CHECK.as_bytes()) != AttachResponse::NotMeshed {
        tries += 1;
        assert!(tries < 500, "the slot never came free");
        std::thread::sleep(Duration::from_millis(10));
    }
}
