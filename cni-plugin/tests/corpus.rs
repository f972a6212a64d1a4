//! Bad input corpus: every case runs the real `weft-cni` binary the way a
//! runtime does and must give a CNI error result with the expected code, a
//! message naming the variable or JSON field at fault (`field`) and who the
//! invocation is about (`who`: the pod, else the container), on one line.

mod support;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use serde_json::{json, Value};
use support::{conf_value, invoke_env, runtime_env, POD};

/// Nothing listens here: cases that get past validation fail with 11.
const NO_DAEMON: &str = "/nonexistent/weft/attach.sock";

struct Case {
    name: &'static str,
    env: Vec<(OsString, OsString)>,
    stdin: Vec<u8>,
    code: u64,
    field: String,
    who: &'static str,
}

fn env_with(cmd: &str, changes: &[(&str, Option<OsString>)]) -> Vec<(OsString, OsString)> {
    let mut env = runtime_env(cmd, Some(POD));
    for (k, v) in changes {
        env.retain(|(name, _)| name != k);
        if let Some(v) = v {
            env.push((k.into(), v.clone()));
        }
    }
    env
}

fn not_utf8(prefix: &str) -> OsString {
    let mut b = prefix.as_bytes().to_vec();
    b.extend_from_slice(&[0xff, 0xfe]);
    OsString::from_vec(b)
}

fn args(namespace: &str, name: &str) -> Option<OsString> {
    Some(format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}").into())
}

/// The valid configuration with `path` (`a.b`) set to `v`, or removed.
fn conf_with(path: &str, v: Option<Value>) -> Vec<u8> {
    let mut c = conf_value(NO_DAEMON);
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (p.split('.').fold(&mut c, |c, k| &mut c[k]), l),
        None => (&mut c, path),
    };
    let obj = parent.as_object_mut().unwrap();
    match v {
        Some(v) => obj.insert(last.to_string(), v),
        None => obj.remove(last),
    };
    c.to_string().into_bytes()
}

fn env_case(
    name: &'static str,
    cmd: &str,
    changes: &[(&str, Option<OsString>)],
    code: u64,
    field: &str,
    who: &'static str,
) -> Case {
    Case {
        name,
        env: env_with(cmd, changes),
        stdin: conf_value(NO_DAEMON).to_string().into_bytes(),
        code,
        field: field.into(),
        who,
    }
}

fn conf_case(name: &'static str, stdin: Vec<u8>, code: u64, field: &str) -> Case {
    Case {
        name,
        env: env_with("ADD", &[]),
        stdin,
        code,
        field: field.into(),
        who: "pod demo/web-1",
    }
}

fn cases() -> Vec<Case> {
    const POD_WHO: &str = "pod demo/web-1";
    const CONTAINER: &str = "container c0ffee";
    let s = |v: &str| Some(OsString::from(v));
    let long = |n: usize| "a".repeat(n);
    let mut nested = String::new();
    for _ in 0..200 {
        nested.push_str("{\"a\":");
    }
    vec![
        // The environment.
        env_case(
            "no command",
            "ADD",
            &[("CNI_COMMAND", None)],
            4,
            "CNI_COMMAND is not set",
            POD_WHO,
        ),
        env_case(
            "empty command",
            "ADD",
            &[("CNI_COMMAND", s(""))],
            4,
            "CNI_COMMAND is not set",
            POD_WHO,
        ),
        env_case(
            "unknown command",
            "ADD",
            &[("CNI_COMMAND", s("FROB"))],
            4,
            "CNI_COMMAND \"FROB\"",
            POD_WHO,
        ),
        env_case(
            "lower-case command",
            "ADD",
            &[("CNI_COMMAND", s("add"))],
            4,
            "CNI_COMMAND \"add\"",
            POD_WHO,
        ),
        env_case(
            "command with a newline",
            "ADD",
            &[("CNI_COMMAND", s("ADD\n"))],
            4,
            "CNI_COMMAND \"ADD\\\\n\"",
            POD_WHO,
        ),
        env_case(
            "command not UTF-8",
            "ADD",
            &[("CNI_COMMAND", Some(not_utf8("AD")))],
            4,
            "CNI_COMMAND is not valid UTF-8",
            POD_WHO,
        ),
        env_case(
            "no CNI_ARGS",
            "ADD",
            &[("CNI_ARGS", None)],
            4,
            "CNI_ARGS lacks K8S_POD_NAMESPACE",
            CONTAINER,
        ),
        env_case(
            "no pod name",
            "ADD",
            &[("CNI_ARGS", s("K8S_POD_NAMESPACE=demo"))],
            4,
            "CNI_ARGS lacks K8S_POD_NAME",
            CONTAINER,
        ),
        env_case(
            "empty pod name",
            "DEL",
            &[("CNI_ARGS", args("demo", ""))],
            4,
            "CNI_ARGS lacks K8S_POD_NAME",
            CONTAINER,
        ),
        env_case(
            "CNI_ARGS not UTF-8",
            "ADD",
            &[("CNI_ARGS", Some(not_utf8("K8S_POD_NAME=")))],
            4,
            "CNI_ARGS is not valid UTF-8",
            CONTAINER,
        ),
        env_case(
            "CNI_ARGS item without =",
            "ADD",
            &[(
                "CNI_ARGS",
                s("K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;junk"),
            )],
            4,
            "CNI_ARGS: \"junk\" is not KEY=VALUE",
            CONTAINER,
        ),
        env_case(
            "pod name not a DNS subdomain",
            "ADD",
            &[("CNI_ARGS", args("demo", "Web_1"))],
            4,
            "CNI_ARGS K8S_POD_NAME: \"Web_1\"",
            "pod demo/Web_1",
        ),
        env_case(
            "pod name with a slash",
            "CHECK",
            &[("CNI_ARGS", args("demo", "a/b"))],
            4,
            "CNI_ARGS K8S_POD_NAME",
            "pod demo/a/b",
        ),
        env_case(
            "pod name too long",
            "ADD",
            &[("CNI_ARGS", args("demo", &long(254)))],
            4,
            "longer than 253 characters",
            "pod demo/aaaa",
        ),
        env_case(
            "pod name with an escape sequence",
            "ADD",
            &[("CNI_ARGS", args("demo", "web\x1b[31m"))],
            4,
            "CNI_ARGS K8S_POD_NAME",
            "pod demo/web\\u{1b}[31m",
        ),
        env_case(
            "namespace not a DNS label",
            "ADD",
            &[("CNI_ARGS", args("de.mo", "web-1"))],
            4,
            "CNI_ARGS K8S_POD_NAMESPACE: \"de.mo\"",
            "pod de.mo/web-1",
        ),
        env_case(
            "namespace too long",
            "DEL",
            &[("CNI_ARGS", args(&long(64), "web-1"))],
            4,
            "longer than 63 characters",
            "/web-1",
        ),
        env_case(
            "no container id",
            "ADD",
            &[("CNI_CONTAINERID", None)],
            4,
            "CNI_CONTAINERID is not set",
            POD_WHO,
        ),
        env_case(
            "container id starts with -",
            "ADD",
            &[("CNI_CONTAINERID", s("-c0ffee"))],
            4,
            "CNI_CONTAINERID: \"-c0ffee\"",
            POD_WHO,
        ),
        env_case(
            "container id with a slash",
            "DEL",
            &[("CNI_CONTAINERID", s("../c0ffee"))],
            4,
            "CNI_CONTAINERID",
            POD_WHO,
        ),
        env_case(
            "container id not UTF-8",
            "ADD",
            &[("CNI_CONTAINERID", Some(not_utf8("c0")))],
            4,
            "CNI_CONTAINERID is not valid UTF-8",
            POD_WHO,
        ),
        env_case(
            "container id too long",
            "ADD",
            &[("CNI_CONTAINERID", s(&long(2000)))],
            4,
            "longer than 1024 characters",
            POD_WHO,
        ),
        env_case(
            "no netns on ADD",
            "ADD",
            &[("CNI_NETNS", None)],
            4,
            "CNI_NETNS is not set",
            POD_WHO,
        ),
        env_case(
            "no netns on CHECK",
            "CHECK",
            &[("CNI_NETNS", None)],
            4,
            "CNI_NETNS is not set",
            POD_WHO,
        ),
        env_case(
            "relative netns",
            "ADD",
            &[("CNI_NETNS", s("run/netns/pod-1"))],
            4,
            "CNI_NETNS: \"run/netns/pod-1\" must be an absolute path",
            POD_WHO,
        ),
        env_case(
            "netns not UTF-8 on DEL",
            "DEL",
            &[("CNI_NETNS", Some(not_utf8("/run/netns/")))],
            4,
            "CNI_NETNS is not valid UTF-8",
            POD_WHO,
        ),
        env_case(
            "netns too long",
            "ADD",
            &[("CNI_NETNS", s(&format!("/{}", long(5000))))],
            4,
            "longer than 4096 bytes",
            POD_WHO,
        ),
        // The network configuration.
        conf_case(
            "empty stdin",
            Vec::new(),
            6,
            "network configuration is not JSON",
        ),
        conf_case(
            "not JSON",
            b"{not json".to_vec(),
            6,
            "network configuration is not JSON",
        ),
        conf_case(
            "trailing garbage",
            [conf_value(NO_DAEMON).to_string().as_bytes(), b" x"].concat(),
            6,
            "trailing characters",
        ),
        conf_case(
            "not UTF-8",
            b"{\"cniVersion\": \"1.0.0\xff\"}".to_vec(),
            6,
            "network configuration is not UTF-8 (byte 21)",
        ),
        conf_case(
            "nested without end",
            nested.into_bytes(),
            6,
            "recursion limit",
        ),
        conf_case(
            "a list",
            b"[1, 2]".to_vec(),
            7,
            "must be a JSON object, not a list",
        ),
        conf_case(
            "a string",
            b"\"weft\"".to_vec(),
            7,
            "must be a JSON object, not a string",
        ),
        conf_case(
            "null",
            b"null".to_vec(),
            7,
            "must be a JSON object, not null",
        ),
        conf_case(
            "no cniVersion",
            conf_with("cniVersion", None),
            7,
            "cniVersion: missing",
        ),
        conf_case(
            "cniVersion a number",
            conf_with("cniVersion", Some(json!(1.0))),
            7,
            "cniVersion: must be a string, not a number",
        ),
        conf_case(
            "cniVersion empty",
            conf_with("cniVersion", Some(json!(""))),
            7,
            "cniVersion: must not be empty",
        ),
        conf_case(
            "cniVersion unsupported",
            conf_with("cniVersion", Some(json!("0.1.0"))),
            1,
            "cniVersion: \"0.1.0\" is not supported",
        ),
        conf_case(
            "cniVersion with a newline",
            conf_with("cniVersion", Some(json!("1.0.0\n"))),
            1,
            "cniVersion: \"1.0.0\\\\n\"",
        ),
        conf_case("no type", conf_with("type", None), 7, "type: missing"),
        conf_case(
            "type an object",
            conf_with("type", Some(json!({}))),
            7,
            "type: must be a string, not an object",
        ),
        conf_case(
            "name a number",
            conf_with("name", Some(json!(7))),
            7,
            "name: must be a string, not a number",
        ),
        conf_case(
            "daemonSocket a number",
            conf_with("daemonSocket", Some(json!(5))),
            7,
            "daemonSocket: must be a string, not a number",
        ),
        conf_case(
            "daemonSocket empty",
            conf_with("daemonSocket", Some(json!(""))),
            7,
            "daemonSocket: must not be empty",
        ),
        conf_case(
            "daemonSocket relative",
            conf_with("daemonSocket", Some(json!("run/weft.sock"))),
            7,
            "daemonSocket: \"run/weft.sock\" must be an absolute path",
        ),
        conf_case(
            "daemonSocket with NUL",
            conf_with("daemonSocket", Some(json!("/run/\u{0}x"))),
            7,
            "daemonSocket: \"/run/\\\\u{0}x\" must be an absolute path",
        ),
        conf_case(
            "daemonSocket too long",
            conf_with("daemonSocket", Some(json!(format!("/{}", long(200))))),
            7,
            "longer than 107 bytes",
        ),
        conf_case(
            "prevResult a number",
            conf_with("prevResult", Some(json!(3))),
            7,
            "prevResult: must be an object, not a number",
        ),
        conf_case(
            "prevResult.interfaces an object",
            conf_with("prevResult.interfaces", Some(json!({}))),
            7,
            "prevResult.interfaces: must be a list, not an object",
        ),
        conf_case(
            "prevResult.ips[1] a string",
            conf_with("prevResult.ips", Some(json!([{}, "10.0.0.1/32"]))),
            7,
            "prevResult.ips[1]: must be an object, not a string",
        ),
        conf_case(
            "prevResult.routes a boolean",
            conf_with("prevResult.routes", Some(json!(true))),
            7,
            "prevResult.routes: must be a list, not a boolean",
        ),
        conf_case(
            "larger than 1 MiB",
            [b"{\"pad\": \"".as_slice(), &vec![b'a'; 1024 * 1024], b"\"}"].concat(),
            7,
            "larger than 1048576 bytes",
        ),
        // Valid input, no daemon: try again later, naming the pod.
        conf_case(
            "no daemon on ADD",
            conf_with("daemonSocket", Some(json!(NO_DAEMON))),
            11,
            NO_DAEMON,
        ),
        Case {
            name: "no daemon on CHECK",
            env: env_with("CHECK", &[]),
            stdin: conf_value(NO_DAEMON).to_string().into_bytes(),
            code: 11,
            field: "not reachable".into(),
            who: POD_WHO,
        },
    ]
}

#[test]
fn every_bad_input_gets_its_code_and_names_the_field_and_the_pod() {
    let cases = cases();
    assert!(cases.len() >= 45, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let o = invoke_env(&c.env, &c.stdin);
        let msg = o.stdout["msg"].as_str().unwrap_or_default();
        let problems: Vec<String> = [
            (o.code != 1).then(|| format!("exit {}", o.code)),
            (o.stdout["code"].as_u64() != Some(c.code))
                .then(|| format!("code {} (want {})", o.stdout["code"], c.code)),
            (o.stdout["cniVersion"] != "1.0.0").then(|| "no cniVersion".into()),
            (!msg.contains(c.field.as_str())).then(|| format!("no {:?}", c.field)),
            (!msg.contains(c.who)).then(|| format!("no {:?}", c.who)),
            msg.chars()
                .any(char::is_control)
                .then(|| "control characters".into()),
            (msg.chars().count() > 1025).then(|| format!("{} characters", msg.len())),
            (!o.stderr
                .contains(&format!("weft-cni: CNI error {}", c.code)))
            .then(|| format!("stderr {:?}", o.stderr)),
            o.stderr.contains("panicked").then(|| "panic".into()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {} — got {}",
                c.name,
                problems.join(", "),
                o.stdout
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
