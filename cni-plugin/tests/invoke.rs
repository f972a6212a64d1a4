//! Invokes the `weft-cni` binary the way a container runtime does: CNI_*
//! environment, network configuration on stdin, result or error on stdout.
//! The daemon side here is a scripted socket peer (also a misbehaving one);
//! the daemon's real attach server is exercised by the node-daemon tests.
//! The table of bad inputs is in `corpus.rs`.

mod support;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::{
    attached, conf, daemon, invoke, invoke_env, msg, raw_daemon, runtime_env, Reply, POD,
};
use weft_api::attach::{AttachRequest, AttachResponse, MAX_RESPONSE_BYTES};

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
fn daemon_down_on_add_is_try_again_later_naming_the_pod_and_the_socket() {
    let o = invoke("ADD", Some(POD), &conf("/nonexistent/weft/attach.sock"));
    assert_eq!(o.code, 1);
    assert_eq!(o.stdout["code"], 11);
    assert!(
        msg(&o).starts_with("pod demo/web-1: ")
            && msg(&o).contains("/nonexistent/weft/attach.sock"),
        "{}",
        o.stdout
    );
}

#[test]
fn del_succeeds_with_a_warning_when_the_daemon_is_down() {
    // Nothing listens: the runtime would retry a failed DEL forever.
    let o = invoke("DEL", Some(POD), &conf("/nonexistent/weft/attach.sock"));
    assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
    assert_eq!(o.stdout, Value::Null, "DEL prints nothing on success");
    assert!(
        o.stderr.contains("warning")
            && o.stderr.contains("pod demo/web-1")
            && o.stderr.contains("/nonexistent/weft/attach.sock"),
        "{}",
        o.stderr
    );
    // A socket file nobody listens on (a daemon that died) is the same.
    let d = tempfile::tempdir().unwrap();
    let stale = d.path().join("attach.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let o = invoke("DEL", Some(POD), &conf(&stale.to_string_lossy()));
    assert_eq!(o.code, 0, "{}", o.stdout);
    // A daemon that is there and says no is not ignored.
    let (_d, sock, _h) = daemon(vec![AttachResponse::Error {
        code: 11,
        message: "workload demo/web-1 was not detached within 25s".into(),
    }]);
    let o = invoke("DEL", Some(POD), &conf(&sock));
    assert_eq!((o.code, o.stdout["code"].as_u64()), (1, Some(11)));
}

#[test]
fn any_environment_variable_that_is_not_utf8_is_survived() {
    // The report: `env -i CNI_COMMAND=VERSION X=$'\xff' weft-cni` exited 101.
    let bad = || OsString::from_vec(vec![b'x', 0xff]);
    let o = invoke_env(
        &[
            ("CNI_COMMAND".into(), "VERSION".into()),
            ("X".into(), bad()),
            (bad(), "1".into()),
            ("CNI_PATH".into(), bad()),
            ("CNI_IFNAME".into(), bad()),
        ],
        b"",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout["supportedVersions"], json!(["0.4.0", "1.0.0"]));
    // One it reads gets a CNI error naming it.
    let mut env = runtime_env("ADD", Some(POD));
    env.push(("CNI_NETNS".into(), bad()));
    env.retain(|(k, v)| k != "CNI_NETNS" || v != "/run/netns/pod-1");
    let o = invoke_env(&env, conf("/x").as_bytes());
    assert_eq!((o.code, o.stdout["code"].as_u64()), (1, Some(4)));
    assert!(
        msg(&o).contains("CNI_NETNS") && msg(&o).contains("pod demo/web-1"),
        "{}",
        o.stdout
    );
}

#[test]
fn unusable_answers_from_the_daemon_are_coded_errors() {
    let attached_with = |field: &str, value: Value| {
        let mut v = serde_json::to_value(attached()).unwrap();
        v[field] = value;
        format!("{v}\n").into_bytes()
    };
    let (_d, sock, h) = raw_daemon(vec![
        Reply::Bytes(b"not json\n".to_vec()),
        Reply::Bytes(vec![b'"', 0xff, b'"', b'\n']),
        Reply::Bytes(Vec::new()),
        Reply::Bytes(br#"{"result":"frobbed"}"#.to_vec()),
        Reply::Bytes(attached_with("address", json!("10.100.0.2"))),
        Reply::Bytes(attached_with("interface", json!("../../etc"))),
        Reply::Bytes(br#"{"result":"error","code":0,"message":"?"}"#.to_vec()),
        Reply::Endless(b'x'),
    ]);
    let want: [(u64, &str); 8] = [
        (6, "unreadable answer"),
        (6, "not UTF-8"),
        (11, "without an answer"),
        (6, "frobbed"),
        (6, "address"),
        (6, "interface"),
        (6, "code: 0"),
        (11, &format!("longer than {MAX_RESPONSE_BYTES} bytes")),
    ];
    for (code, needle) in want {
        let o = invoke("ADD", Some(POD), &conf(&sock));
        assert_eq!(o.code, 1, "{needle}: {}", o.stdout);
        assert_eq!(
            o.stdout["code"].as_u64(),
            Some(code),
            "{needle}: {}",
            o.stdout
        );
        assert!(
            msg(&o).contains(needle) && msg(&o).contains("demo/web-1"),
            "want {needle:?}: {}",
            o.stdout
        );
    }
    // The endless answer stopped because the plugin hung up.
    assert!(h.join().unwrap()[7] > MAX_RESPONSE_BYTES);
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weft-cni"));
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    c.env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .stdout(w)
        .stderr(Stdio::piped());
    let o = c.output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
}

#[test]
fn an_oversized_configuration_is_refused_not_buffered() {
    let mut big = conf("/x").into_bytes();
    big.pop(); // drop the closing brace: pad inside the object
    big.extend_from_slice(b", \"pad\": \"");
    big.resize(2 * 1024 * 1024, b'a');
    big.extend_from_slice(b"\"}");
    let o = invoke_env(&runtime_env("ADD", Some(POD)), &big);
    assert_eq!((o.code, o.stdout["code"].as_u64()), (1, Some(7)));
    assert!(
        msg(&o).contains("larger than 1048576 bytes"),
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
