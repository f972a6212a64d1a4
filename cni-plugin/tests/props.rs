//! Property tests of everything `weft-cni` reads from outside: the
//! environment, the network configuration and the daemon's answer.
//! Arbitrary bytes and mutated valid inputs give a result or a coded error
//! naming who and what, never a panic; the readers stop at their limits.
//! (The daemon is a stub here; `invoke.rs` and `corpus.rs` run the binary.)

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use weft_api::attach::{AttachRequest, AttachResponse, Attachment, MAX_RESPONSE_BYTES};
use weft_cni::client::{self, TalkError};
use weft_cni::config::{self, NetConf, MAX_CONFIG_BYTES};
use weft_cni::error::{CniError, MAX_MESSAGE_CHARS};
use weft_cni::{result, run, Env};

const POD: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1";

fn valid_conf() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "weft-cni",
        "daemonSocket": "/run/weft/attach.sock",
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/p1"}],
            "ips": [{"address": "10.244.1.5/24", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    })
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

fn os(b: Vec<u8>) -> OsString {
    OsString::from_vec(b)
}

/// Variable names: the ones the plugin reads, others, and any bytes.
fn name() -> impl Strategy<Value = OsString> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_ARGS", "CNI_IFNAME", "CNI_PATH", "PATH",
        ])
        .prop_map(OsString::from),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(os),
    ]
}

/// Values: plausible ones, ones that look like CNI_ARGS, any text, any bytes.
fn value() -> impl Strategy<Value = OsString> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "ADD", "DEL", "CHECK", "VERSION", POD, "c0ffee", "/run/netns/p1", "",
        ])
        .prop_map(OsString::from),
        2 => "(K8S_POD_(NAMESPACE|NAME)=[a-zA-Z0-9./_-]{0,12};?){0,3}".prop_map(OsString::from),
        1 => ".{0,40}".prop_map(OsString::from),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(os),
    ]
}

/// An environment that is mostly a runtime's, with arbitrary additions.
fn environment() -> impl Strategy<Value = Vec<(OsString, OsString)>> {
    let base: Vec<(OsString, OsString)> = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/p1"),
        ("CNI_ARGS", POD),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect();
    (
        prop::collection::vec((name(), value()), 0..6),
        any::<bool>(),
    )
        .prop_map(move |(extra, keep)| {
            let mut env = if keep { base.clone() } else { Vec::new() };
            // Later entries win, as a later setenv would.
            for (k, v) in extra {
                env.retain(|(n, _)| n != &k);
                env.push((k, v));
            }
            env
        })
}

/// What the stub daemon answers.
fn answer() -> impl Strategy<Value = Result<AttachResponse, TalkError>> {
    prop_oneof![
        Just(Ok(AttachResponse::Attached(attachment()))),
        Just(Ok(AttachResponse::NotMeshed)),
        Just(Ok(AttachResponse::Detached)),
        (1u32..200, ".{0,2000}")
            .prop_map(|(code, message)| Ok(AttachResponse::Error { code, message })),
        Just(Err(TalkError::Unreachable("no daemon".into()))),
    ]
}

/// Byte-level damage to a valid input.
fn mutate(mut b: Vec<u8>, edits: &[(Index, u8, u8)]) -> Vec<u8> {
    for (at, op, byte) in edits {
        if b.is_empty() {
            b.push(*byte);
            continue;
        }
        let i = at.index(b.len());
        match op % 4 {
            0 => b[i] = *byte,
            1 => {
                b.remove(i);
            }
            2 => b.insert(i, *byte),
            _ => b.truncate(i),
        }
    }
    b
}

fn edits() -> impl Strategy<Value = Vec<(Index, u8, u8)>> {
    prop::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..6)
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
        prop::sample::select(vec!["1.0.0", "0.4.0", "/run/weft/attach.sock", "weft-cni"])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What every error must be: a known code, one bounded line naming who.
fn check_error(e: &CniError, env: &Env) {
    assert!(e.code != 0, "{e:?}");
    assert!(!e.msg.is_empty());
    assert!(
        e.msg.chars().count() <= MAX_MESSAGE_CHARS + 1,
        "{} chars",
        e.msg.len()
    );
    assert!(!e.msg.chars().any(char::is_control), "{:?}", e.msg);
    let who = env.subject();
    let named = e.msg.starts_with(&format!("{who}: ")) || e.msg.contains("demo/web-1");
    assert!(named, "{:?} does not name {who:?}", e.msg);
}

fn run_with(
    env: &Env,
    stdin: &[u8],
    answer: Result<AttachResponse, TalkError>,
) -> Result<weft_cni::Done, CniError> {
    let mut talk = |_: &str, _: &AttachRequest| answer.clone();
    run(env, &mut &stdin[..], &mut talk)
}

fn check_outcome(out: Result<weft_cni::Done, CniError>, env: &Env) {
    match out {
        Ok(done) => {
            if let Some(s) = done.stdout {
                serde_json::from_str::<Value>(&s).expect("a result is JSON");
            }
        }
        Err(e) => check_error(&e, env),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_environment_and_stdin_give_a_result_or_a_named_error(
        vars in environment(),
        stdin in prop::collection::vec(any::<u8>(), 0..256),
        answer in answer(),
    ) {
        let env = Env::from_vars_os(vars);
        check_outcome(run_with(&env, &stdin, answer), &env);
    }

    #[test]
    fn damaged_configurations_give_a_result_or_a_named_error(
        vars in environment(),
        edits in edits(),
        answer in answer(),
    ) {
        let env = Env::from_vars_os(vars);
        let stdin = mutate(valid_conf().to_string().into_bytes(), &edits);
        check_outcome(run_with(&env, &stdin, answer), &env);
    }

    #[test]
    fn a_field_of_the_wrong_shape_is_named_by_its_path(
        field in prop::sample::select(vec![
            "cniVersion", "type", "name", "daemonSocket", "prevResult",
            "prevResult.interfaces", "prevResult.ips", "prevResult.routes",
        ]),
        v in json_value(),
    ) {
        let mut conf = valid_conf();
        match field.split_once('.') {
            Some((a, b)) => conf[a][b] = v,
            None => conf[field] = v,
        }
        match NetConf::parse(conf.to_string().as_bytes()) {
            Ok(c) => {
                // Whatever passed must be usable for the result.
                result::with_attachment(&c, &attachment(), "/run/netns/p1").unwrap();
            }
            Err(e) => {
                prop_assert!(e.code == 7 || e.code == 1, "{e:?}");
                prop_assert!(e.msg.contains(field), "{:?} does not name {field}", e.msg);
            }
        }
    }

    #[test]
    fn any_json_value_as_configuration_is_parsed_or_refused(v in json_value()) {
        match NetConf::parse(v.to_string().as_bytes()) {
            Ok(_) => prop_assert!(v.is_object()),
            Err(e) => prop_assert!(matches!(e.code, 1 | 6 | 7), "{e:?}"),
        }
    }

    #[test]
    fn any_answer_bytes_are_parsed_or_refused(line in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = client::parse_response(&line);
    }

    #[test]
    fn damaged_answers_are_parsed_or_refused_and_what_passes_is_usable(
        which in 0usize..3,
        edits in edits(),
    ) {
        let valid = [
            AttachResponse::Attached(attachment()),
            AttachResponse::Error { code: 100, message: "pod demo/web-1 names MeshApp demo/nope".into() },
            AttachResponse::NotMeshed,
        ];
        let line = mutate(serde_json::to_vec(&valid[which]).unwrap(), &edits);
        if let Ok(AttachResponse::Attached(a)) = client::parse_response(&line) {
            let conf = NetConf::parse(valid_conf().to_string().as_bytes()).unwrap();
            result::with_attachment(&conf, &a, "/run/netns/p1").unwrap();
        }
    }

    #[test]
    fn attachment_fields_are_checked_before_they_reach_the_result(
        field in prop::sample::select(vec!["interface", "mac", "address", "gateway"]),
        v in ".{0,24}",
    ) {
        let mut a = serde_json::to_value(AttachResponse::Attached(attachment())).unwrap();
        a[field] = json!(v);
        match client::parse_response(a.to_string().as_bytes()) {
            Ok(AttachResponse::Attached(got)) => {
                let conf = NetConf::parse(valid_conf().to_string().as_bytes()).unwrap();
                result::with_attachment(&conf, &got, "/run/netns/p1").unwrap();
            }
            Ok(other) => prop_assert!(false, "{other:?}"),
            Err(e) => prop_assert!(e.starts_with(field), "{e}"),
        }
    }
}

/// Counts what is read from an endless source.
struct Counting<R> {
    inner: R,
    read: usize,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n;
        Ok(n)
    }
}

fn endless(byte: u8) -> Counting<std::io::Repeat> {
    Counting {
        inner: std::io::repeat(byte),
        read: 0,
    }
}

#[test]
fn endless_stdin_is_read_to_its_limit_and_no_further() {
    let mut stdin = endless(b' ');
    let e = config::read_config(&mut stdin).unwrap_err();
    assert_eq!(e.code, 7);
    assert_eq!(stdin.read, MAX_CONFIG_BYTES + 1);

    // The same through a whole invocation.
    let env = Env::from_vars_os([("CNI_COMMAND".into(), "ADD".into())]);
    let mut stdin = endless(b'{');
    let mut talk = |_: &str, _: &AttachRequest| -> Result<AttachResponse, TalkError> {
        unreachable!("no configuration, no request")
    };
    let e = run(&env, &mut stdin, &mut talk).unwrap_err();
    assert!(e.msg.contains("larger than"), "{e:?}");
    assert_eq!(stdin.read, MAX_CONFIG_BYTES + 1);
}

#[test]
fn an_endless_answer_is_read_to_its_limit_and_no_further() {
    let mut daemon = endless(b'x');
    let e = client::read_answer(&mut daemon, "/run/weft/attach.sock").unwrap_err();
    assert_eq!(e.code, 11);
    assert!(
        e.msg
            .contains(&format!("longer than {MAX_RESPONSE_BYTES} bytes")),
        "{e:?}"
    );
    // The line limit plus at most one buffer the reader had already filled.
    assert!(
        daemon.read <= MAX_RESPONSE_BYTES + 1 + 8 * 1024,
        "{} bytes",
        daemon.read
    );
}
