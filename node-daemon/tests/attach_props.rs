//! Property tests of the daemon's attach request reader: arbitrary bytes
//! and damaged valid requests give a request whose fields follow the rules
//! or a refusal naming what is wrong, never a panic; an endless request is
//! read to its limit and no further.

use std::io::{BufReader, Read};

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use weft_api::attach::{AttachRequest, WorkloadRef, MAX_MESSAGE_CHARS, MAX_REQUEST_BYTES};
use weft_node_daemon::workloads::attach::server::{parse_request, read_request, Refused};

fn valid(op: &str) -> Value {
    json!({
        "op": op,
        "containerId": "c0ffee",
        "netns": "/run/netns/p1",
        "namespace": "demo",
        "name": "web-1",
    })
}

fn check_refusal(r: &Refused) {
    assert!(r.code == 6 || r.code == 4, "{r:?}");
    assert!(!r.message.is_empty());
    assert!(
        r.message.chars().count() <= MAX_MESSAGE_CHARS + 1,
        "{} chars",
        r.message.len()
    );
    assert!(!r.message.chars().any(char::is_control), "{:?}", r.message);
}

fn check(line: &[u8]) {
    match parse_request(line) {
        Ok(req) => {
            let (w, netns_required) = match &req {
                AttachRequest::Add(w) | AttachRequest::Check(w) => (w, true),
                AttachRequest::Del(w) => (w, false),
            };
            assert!(w.problems(netns_required).is_empty(), "{req:?} passed");
        }
        Err(r) => check_refusal(&r),
    }
}

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

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_are_a_valid_request_or_a_refusal(line in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&line);
    }

    #[test]
    fn damaged_requests_are_valid_or_refused(
        op in prop::sample::select(vec!["add", "del", "check"]),
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..8),
    ) {
        check(&mutate(valid(op).to_string().into_bytes(), &edits));
    }

    #[test]
    fn a_bad_field_is_refused_by_its_name(
        op in prop::sample::select(vec!["add", "del", "check"]),
        field in prop::sample::select(vec!["containerId", "netns", "namespace", "name"]),
        v in prop_oneof![
            ".{0,300}",
            "[a-z0-9.-]{0,70}",
            "/[ -~]{0,40}",
            Just("x".repeat(5000)),
        ],
    ) {
        let mut req = valid(op);
        req[field] = json!(v);
        let line = req.to_string();
        match parse_request(line.as_bytes()) {
            Ok(_) => {
                let w: WorkloadRef = serde_json::from_value(req.clone()).unwrap();
                prop_assert!(w.problems(op != "del").is_empty());
            }
            Err(r) => {
                check_refusal(&r);
                prop_assert_eq!(r.code, 4);
                prop_assert!(r.message.contains(&format!("{field}: ")), "{:?}", r.message);
            }
        }
    }

    #[test]
    fn a_request_split_anywhere_reads_the_same(at in any::<Index>()) {
        // Lines are read whole however the bytes arrive.
        let mut bytes = valid("add").to_string().into_bytes();
        bytes.push(b'\n');
        let i = at.index(bytes.len());
        let (a, b) = bytes.split_at(i);
        let mut r = BufReader::with_capacity(1, a.chain(b));
        prop_assert!(read_request(&mut r).is_ok());
    }
}

#[test]
fn unreadable_requests_are_refused_with_what_is_wrong() {
    let cases: [(&[u8], u32, &str); 6] = [
        (b"", 6, "empty attach request"),
        (b"{\"op\":\"add\"", 6, "unreadable attach request"),
        (&[b'{', 0xff, b'}'], 6, "not UTF-8 (byte 1)"),
        (br#"{"op":"frob"}"#, 6, "frob"),
        (
            br#"{"op":"add","containerId":"c","netns":"/n","namespace":"demo"}"#,
            6,
            "missing field `name`",
        ),
        (
            br#"{"op":"add","containerId":"c","netns":"","namespace":"demo","name":"w"}"#,
            4,
            "netns: must not be empty",
        ),
    ];
    for (line, code, needle) in cases {
        let r = parse_request(line).unwrap_err();
        assert_eq!(r.code, code, "{r:?}");
        assert!(r.message.contains(needle), "want {needle:?}: {r:?}");
    }
    // DEL after the sandbox is gone has no netns, and that is fine.
    let mut del = valid("del");
    del["netns"] = json!("");
    assert!(parse_request(del.to_string().as_bytes()).is_ok());
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

#[test]
fn an_endless_request_is_read_to_its_limit_and_no_further() {
    let mut src = Counting {
        inner: std::io::repeat(b'{'),
        read: 0,
    };
    let r = read_request(&mut BufReader::new(&mut src)).unwrap_err();
    assert_eq!(r.code, 6);
    assert!(
        r.message
            .contains(&format!("longer than {MAX_REQUEST_BYTES} bytes")),
        "{r:?}"
    );
    // The line limit plus at most one buffer the reader had already filled.
    assert!(
        src.read <= MAX_REQUEST_BYTES + 1 + 8 * 1024,
        "{} bytes",
        src.read
    );
}
