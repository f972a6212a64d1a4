//! Invokes the `weft-cni` binary the way a container runtime does: CNI_*
//! environment, network configuration on stdin, result or error on stdout.
//! The daemon side here is a scripted socket peer; the daemon's real attach
//! server is exercised by the node-daemon tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use weft_api::attach::{AttachRequest, AttachResponse, Attachment};

struct Out {
    code: i32,
    stdout: Value,
}

fn invoke(cmd: &str, args: Option<&str>, conf: &str) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weft-cni"));
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_NETNS", "/run/netns/pod-1")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(a) = args {
        c.env("CNI_ARGS", a);
    }
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: serde_json::from_str(text.trim()).unwrap_or(Value::Null),
    }
}

const POD: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=c0ffee";

fn conf(socket: &str) -> String {
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
    .to_string()
}

/// A scripted daemon answering each request with the next canned response.
fn daemon(
    answers: Vec<AttachResponse>,
) -> (
    tempfile::TempDir,
    String,
    std::thread::JoinHandle<Vec<AttachRequest>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join("attach.sock")
        .to_string_lossy()
        .into_owned();
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

fn attached() -> AttachResponse {
    AttachResponse::Attached(Attachment {
        app: "demo/web".into(),
        interface: "weft0".into(),
        mac: "02:00:00:00:00:01".into(),
        address: "10.100.0.2/32".into(),
        gateway: "169.254.1.1".into(),
        routes: vec!["10.100.0.0/16".into()],
    })
}

#[test]
fn version_lists_supported_versions() {
    let o = invoke("VERSION", None, "");
    assert_eq!(o.code, 0);
    assert_eq!(o.stdout["supportedVersions"], json!(["0.4.0", "1.0.0"]));
}

#[test]
fn add_appends_the_weft_interface_to_the_previous_result() {
    let (_d, sock, h) = daemon(vec![attached(), attached()]);
    let first = invoke("ADD", Some(POD), &conf(&sock));
    assert_eq!(first.code, 0, "{}", first.stdout);
    let r = &first.stdout;
    assert_eq!(
        r["interfaces"][0]["name"], "eth0",
        "primary interface untouched"
    );
    assert_eq!(
        r["interfaces"][1],
        json!({"name": "weft0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/pod-1"})
    );
    assert_eq!(
        r["ips"][1],
        json!({"address": "10.100.0.2/32", "interface": 1})
    );
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0"}, {"dst": "10.100.0.0/16", "gw": "169.254.1.1"}])
    );
    let again = invoke("ADD", Some(POD), &conf(&sock));
    assert_eq!(
        again.stdout, first.stdout,
        "a repeated ADD gives the same result"
    );
    let seen = h.join().unwrap();
    assert!(
        matches!(&seen[0], AttachRequest::Add(w) if w.namespace == "demo" && w.name == "web-1" && w.netns == "/run/netns/pod-1")
    );
}

#[test]
fn a_pod_of_no_app_passes_through_untouched() {
    let (_d, sock, _h) = daemon(vec![AttachResponse::NotMeshed]);
    let o = invoke("ADD", Some(POD), &conf(&sock));
    assert_eq!(o.code, 0);
    let prev: Value = serde_json::from_str(&conf(&sock)).unwrap();
    assert_eq!(o.stdout, prev["prevResult"]);
}

#[test]
fn del_succeeds_without_a_netns_and_check_reports_drift() {
    let (_d, sock, h) = daemon(vec![
        AttachResponse::Detached,
        AttachResponse::Error {
            code: 102,
            message: "weft0 of demo/web-1 is missing".into(),
        },
    ]);
    let mut c = Command::new(env!("CARGO_BIN_EXE_weft-cni"));
    c.env_clear()
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", "c0ffee")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", POD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf(&sock).as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "DEL without CNI_NETNS must succeed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let chk = invoke("CHECK", Some(POD), &conf(&sock));
    assert_eq!(chk.code, 1);
    assert_eq!(chk.stdout["code"], 102);
    assert!(chk.stdout["msg"].as_str().unwrap().contains("weft0"));
    assert!(matches!(&h.join().unwrap()[0], AttachRequest::Del(w) if w.netns.is_empty()));
}

#[test]
fn daemon_down_is_try_again_later_naming_the_socket() {
    let o = invoke("ADD", Some(POD), &conf("/nonexistent/weft/attach.sock"));
    assert_eq!(o.code, 1);
    assert_eq!(o.stdout["code"], 11);
    assert!(
        o.stdout["msg"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/weft/attach.sock"),
        "{}",
        o.stdout
    );
}

#[test]
fn unknown_app_from_the_daemon_is_reported_with_its_code() {
    let (_d, sock, _h) = daemon(vec![AttachResponse::Error {
        code: 100,
        message: "pod demo/web-1 names MeshApp demo/nope, which does not exist".into(),
    }]);
    let o = invoke("ADD", Some(POD), &conf(&sock));
    assert_eq!((o.code, o.stdout["code"].as_u64()), (1, Some(100)));
    assert!(o.stdout["msg"].as_str().unwrap().contains("demo/nope"));
}

#[test]
fn malformed_input_gets_a_coded_error_naming_the_problem() {
    let cases: Vec<(&str, Option<&str>, String, u64, &str)> = vec![
        ("ADD", Some(POD), "{not json".into(), 6, "not JSON"),
        (
            "ADD",
            Some(POD),
            json!({"type": "weft-cni"}).to_string(),
            7,
            "cniVersion",
        ),
        (
            "ADD",
            Some(POD),
            json!({"cniVersion": "0.1.0", "type": "weft-cni"}).to_string(),
            1,
            "0.1.0",
        ),
        (
            "ADD",
            Some(POD),
            json!({"cniVersion": "1.0.0"}).to_string(),
            7,
            "type",
        ),
        (
            "ADD",
            Some(POD),
            json!({"cniVersion": "1.0.0", "type": "weft-cni", "prevResult": 3}).to_string(),
            7,
            "prevResult",
        ),
        (
            "ADD",
            Some(POD),
            json!({"cniVersion": "1.0.0", "type": "weft-cni", "daemonSocket": 5}).to_string(),
            7,
            "daemonSocket",
        ),
        ("ADD", None, conf("/x"), 4, "K8S_POD_NAME"),
        ("FROB", Some(POD), conf("/x"), 4, "FROB"),
    ];
    for (cmd, args, stdin, code, needle) in cases {
        let o = invoke(cmd, args, &stdin);
        assert_eq!(o.code, 1, "{cmd} {stdin}");
        assert_eq!(
            o.stdout["code"].as_u64(),
            Some(code),
            "{cmd} {stdin}: {}",
            o.stdout
        );
        assert!(
            o.stdout["msg"].as_str().unwrap().contains(needle),
            "{}: want {needle}",
            o.stdout
        );
    }
}
