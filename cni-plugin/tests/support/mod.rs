//! Runs the `weft-cni` binary the way a container runtime does (CNI_*
//! environment, network configuration on stdin, result or error on stdout)
//! against a scripted daemon socket.

#![allow(dead_code)] // each test file uses its own part

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use weft_api::attach::{AttachRequest, AttachResponse, Attachment};

/// What the plugin printed and how it exited.
pub struct Out {
    pub code: i32,
    pub stdout: Value,
    pub stderr: String,
}

/// Runs the plugin with exactly `env` (nothing inherited) and `stdin`.
pub fn invoke_env(env: &[(OsString, OsString)], stdin: &[u8]) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weft-cni"));
    c.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // The plugin may stop reading early (a bound, VERSION): ignore EPIPE.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: serde_json::from_str(text.trim()).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The environment a runtime sets for `cmd` (CNI_ARGS when given).
pub fn runtime_env(cmd: &str, args: Option<&str>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/pod-1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect();
    if let Some(a) = args {
        env.push(("CNI_ARGS".into(), a.into()));
    }
    env
}

/// Runs `cmd` with the runtime's environment and `conf` on stdin.
pub fn invoke(cmd: &str, args: Option<&str>, conf: &str) -> Out {
    invoke_env(&runtime_env(cmd, args), conf.as_bytes())
}

/// `CNI_ARGS` as kubelet sets them for pod demo/web-1.
pub const POD: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=c0ffee";

/// A chained configuration pointing at `socket`.
pub fn conf_value(socket: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "weft-cni",
        "daemonSocket": socket,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/pod-1"}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    })
}

/// [`conf_value`] as text.
pub fn conf(socket: &str) -> String {
    conf_value(socket).to_string()
}

/// A socket path in a fresh directory.
fn socket_path() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join("attach.sock")
        .to_string_lossy()
        .into_owned();
    (dir, path)
}

/// A scripted daemon answering each request with the next canned response.
pub fn daemon(
    answers: Vec<AttachResponse>,
) -> (
    tempfile::TempDir,
    String,
    std::thread::JoinHandle<Vec<AttachRequest>>,
) {
    let (dir, path) = socket_path();
    let l = UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for a in answers {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            seen.push(serde_json::from_str(&line).unwrap());
            let mut w = &s;
            writeln!(w, "{}", serde_json::to_string(&a).unwrap()).unwrap();
        }
        seen
    });
    (dir, path, h)
}

/// What a misbehaving daemon sends back.
pub enum Reply {
    /// These bytes, then close.
    Bytes(Vec<u8>),
    /// `byte` without end (until the plugin hangs up); the thread returns
    /// how much it got written.
    Endless(u8),
}

/// A daemon that reads each request line and answers with the next reply.
pub fn raw_daemon(
    replies: Vec<Reply>,
) -> (
    tempfile::TempDir,
    String,
    std::thread::JoinHandle<Vec<usize>>,
) {
    let (dir, path) = socket_path();
    let l = UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || {
        let mut written = Vec::new();
        for r in replies {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            let _ = BufReader::new(&s).read_line(&mut line);
            let mut w = &s;
            match r {
                Reply::Bytes(b) => {
                    let _ = w.write_all(&b);
                    written.push(b.len());
                }
                Reply::Endless(byte) => {
                    let block = [byte; 64 * 1024];
                    let mut n = 0;
                    while w.write_all(&block).is_ok() {
                        n += block.len();
                    }
                    written.push(n);
                }
            }
        }
        written
    });
    (dir, path, h)
}

/// The attachment a daemon gives demo/web-1.
pub fn attached() -> AttachResponse {
    AttachResponse::Attached(Attachment {
        app: "demo/web".into(),
        interface: "weft0".into(),
        mac: "02:00:00:00:00:01".into(),
        address: "10.100.0.2/32".into(),
        gateway: "169.254.1.1".into(),
        routes: vec!["10.100.0.0/16".into()],
        dns: None,
    })
}

/// The error message on stdout.
pub fn msg(o: &Out) -> &str {
    o.stdout["msg"].as_str().unwrap_or_default()
}
