//! Property tests of the Docker client's parsers: response heads, chunked
//! bodies, whole responses, the event stream and the engine's JSON.
//! Arbitrary bytes and damaged recorded answers give a value or an error,
//! never a panic, and nothing holds more than its limit; endless answers
//! are read to their limit and no further.

use std::io::Read;

use proptest::prelude::*;
use proptest::sample::Index;
use weft_node_daemon::workloads::docker::api;
use weft_node_daemon::workloads::docker::http::{
    parse_head, parse_response, read_response, ChunkedDecoder, LineBuffer, StreamDecoder, MAX_BODY,
    MAX_EVENT_LINE, MAX_HEAD, MAX_LINE,
};

const INSPECT: &str = include_str!("../src/workloads/docker/testdata/inspect-running.json");
const LIST: &str = include_str!("../src/workloads/docker/testdata/containers.json");
const EVENTS: &str = include_str!("../src/workloads/docker/testdata/events.jsonl");

/// What one socket read may deliver at most.
const READ_SIZE: usize = 16 * 1024;
/// Longest message a parser may produce (messages reach the MeshNode status).
const MAX_ERROR: usize = 600;

fn check_error(e: &str) {
    assert!(!e.is_empty());
    assert!(
        e.chars().count() <= MAX_ERROR,
        "{} chars: {e:.200}",
        e.len()
    );
}

/// `body` as chunks of the given sizes (cycled), then the last chunk.
fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
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

fn edits() -> impl Strategy<Value = Vec<(Index, u8, u8)>> {
    prop::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..8)
}

/// Recorded and typical answers: by length, chunked, to EOF.
fn responses() -> Vec<Vec<u8>> {
    vec![
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{INSPECT}",
            INSPECT.len()
        )
        .into_bytes(),
        [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            &chunked(LIST.as_bytes(), &[7, 100]),
        ]
        .concat(),
        b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container\"}".to_vec(),
    ]
}

/// Delivers `data` in pieces of the given sizes (cycled), as a socket might.
struct Pieces<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    i: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.sizes[self.i % self.sizes.len()]
            .max(1)
            .min(buf.len())
            .min(self.data.len());
        self.i += 1;
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_head_bytes_parse_or_fail_within_bounds(buf in prop::collection::vec(any::<u8>(), 0..600)) {
        match parse_head(&buf) {
            Ok(Some((_, n))) => prop_assert!(n <= buf.len() && n <= MAX_HEAD + 4),
            Ok(None) => {}
            Err(e) => check_error(&e),
        }
    }

    #[test]
    fn damaged_heads_parse_or_fail(which in 0usize..3, edits in edits()) {
        let raw = mutate(responses()[which].clone(), &edits);
        if let Err(e) = parse_head(&raw) {
            check_error(&e);
        }
    }

    #[test]
    fn chunked_bodies_decode_to_what_was_encoded_however_split(
        body in prop::collection::vec(any::<u8>(), 0..3000),
        sizes in prop::collection::vec(1usize..400, 1..6),
        piece in 1usize..64,
    ) {
        let enc = chunked(&body, &sizes);
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        for p in enc.chunks(piece) {
            d.feed(p, &mut out).unwrap();
        }
        prop_assert!(d.done());
        prop_assert_eq!(out, body);
    }

    #[test]
    fn any_chunked_bytes_decode_or_fail_holding_no_more_than_a_line(
        data in prop::collection::vec(any::<u8>(), 0..2000),
        piece in 1usize..300,
    ) {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        for p in data.chunks(piece) {
            if let Err(e) = d.feed(p, &mut out) {
                check_error(&e);
                break;
            }
            prop_assert!(d.buffered() <= MAX_LINE);
        }
        prop_assert!(out.len() <= data.len());
    }

    #[test]
    fn damaged_chunked_bodies_decode_or_fail(
        body in prop::collection::vec(any::<u8>(), 0..500),
        edits in edits(),
    ) {
        let enc = mutate(chunked(&body, &[13, 1, 200]), &edits);
        let mut out = Vec::new();
        if let Err(e) = ChunkedDecoder::default().feed(&enc, &mut out) {
            check_error(&e);
        }
        prop_assert!(out.len() <= enc.len());
    }

    #[test]
    fn any_response_bytes_read_or_fail_within_bounds(raw in prop::collection::vec(any::<u8>(), 0..800)) {
        match parse_response(&raw) {
            Ok((_, body)) => prop_assert!(body.len() <= raw.len() && body.len() <= MAX_BODY),
            Err(e) => check_error(&e),
        }
    }

    #[test]
    fn damaged_responses_read_or_fail(which in 0usize..3, edits in edits()) {
        let raw = mutate(responses()[which].clone(), &edits);
        match parse_response(&raw) {
            Ok((_, body)) => prop_assert!(body.len() <= raw.len()),
            Err(e) => check_error(&e),
        }
    }

    #[test]
    fn responses_read_the_same_however_the_socket_delivers_them(
        which in 0usize..3,
        sizes in prop::collection::vec(1usize..5000, 1..5),
    ) {
        let raw = &responses()[which];
        let whole = parse_response(raw).unwrap();
        let mut r = Pieces { data: raw, sizes, i: 0 };
        prop_assert_eq!(read_response(&mut r).unwrap(), whole);
    }

    #[test]
    fn engine_json_parses_or_fails_with_a_bounded_message(
        which in 0usize..3,
        edits in edits(),
        junk in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let recorded = [INSPECT, LIST, EVENTS.lines().nth(1).unwrap()][which];
        for input in [mutate(recorded.as_bytes().to_vec(), &edits), junk.clone()] {
            match api::parse_inspect(&input) {
                Ok(c) => {
                    if let Some(Err(e)) = api::to_workload(&c) {
                        check_error(&e);
                    }
                }
                Err(e) => check_error(&e),
            }
            if let Err(e) = api::parse_list(&input) {
                check_error(&e);
            }
            if let Err(e) = api::parse_event(&input) {
                check_error(&e);
            }
        }
    }

    #[test]
    fn any_event_stream_bytes_give_lines_within_the_limit(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        piece in 1usize..500,
        with_head in any::<bool>(),
    ) {
        let mut d = StreamDecoder::default();
        let head: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let input = if with_head { [head, &data].concat() } else { data };
        for p in input.chunks(piece) {
            match d.feed(p) {
                Ok(lines) => {
                    for l in lines {
                        prop_assert!(!l.is_empty() && l.len() <= MAX_EVENT_LINE);
                        if let Err(e) = api::parse_event(&l) {
                            check_error(&e);
                        }
                    }
                }
                Err(e) => {
                    check_error(&e);
                    break;
                }
            }
            prop_assert!(d.buffered() < MAX_HEAD + 4 + piece + MAX_LINE + MAX_EVENT_LINE);
        }
    }

    #[test]
    fn recorded_events_come_out_whole_however_chunked_and_split(
        sizes in prop::collection::vec(1usize..300, 1..5),
        piece in 1usize..200,
    ) {
        let mut d = StreamDecoder::default();
        let mut input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut enc = chunked(EVENTS.as_bytes(), &sizes);
        enc.truncate(enc.len() - 5); // the stream goes on: no last chunk
        input.extend_from_slice(&enc);
        let mut lines = Vec::new();
        for p in input.chunks(piece) {
            lines.extend(d.feed(p).unwrap());
        }
        let want: Vec<Vec<u8>> = EVENTS.lines().map(|l| l.as_bytes().to_vec()).collect();
        prop_assert_eq!(lines, want);
    }

    #[test]
    fn line_buffers_never_hold_more_than_their_limit(
        pushes in prop::collection::vec(
            // About one byte in ten is a newline.
            prop::collection::vec(any::<u8>(), 0..200)
                .prop_map(|v| v.into_iter().map(|b| if b < 26 { b'\n' } else { b }).collect::<Vec<u8>>()),
            0..20,
        ),
        max in 1usize..100,
    ) {
        let mut l = LineBuffer::with_limit(max);
        for p in pushes {
            match l.push(&p) {
                Ok(lines) => prop_assert!(lines.iter().all(|x| x.len() <= max)),
                Err(e) => check_error(&e),
            }
            prop_assert!(l.buffered() <= max);
        }
    }
}

proptest! {
    // Long strings cost time: fewer cases.
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_strings_of_any_size_stay_out_of_messages(
        field in prop::sample::select(vec!["Name", "Id", "NetworkMode", "Running", "Labels"]),
        len in 0usize..20_000,
    ) {
        let mut v: serde_json::Value = serde_json::from_str(INSPECT).unwrap();
        let s = serde_json::Value::from("\u{1b}x".repeat(len));
        match field {
            "NetworkMode" => v["HostConfig"]["NetworkMode"] = s,
            "Running" => v["State"]["Running"] = s,
            "Labels" => v["Config"]["Labels"]["weft.dev/app"] = s,
            f => v[f] = s,
        }
        let with_host = {
            let mut h = v.clone();
            h["HostConfig"]["NetworkMode"] = "host".into();
            h
        };
        for input in [v, with_host] {
            match api::parse_inspect(input.to_string().as_bytes()) {
                Ok(c) => {
                    if let Some(Err(e)) = api::to_workload(&c) {
                        check_error(&e);
                        prop_assert!(!e.chars().any(char::is_control), "{e:.100}");
                    }
                }
                Err(e) => check_error(&e),
            }
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

/// `prefix`, then `byte` without end.
fn endless(prefix: &'static [u8], byte: u8) -> Counting<impl Read> {
    Counting {
        inner: prefix.chain(std::io::repeat(byte)),
        read: 0,
    }
}

#[test]
fn endless_responses_are_read_to_their_limit_and_no_further() {
    let head_only = b"HTTP/1.1 200 OK\r\nX-Endless: ";
    let to_eof = b"HTTP/1.1 200 OK\r\n\r\n";
    let one_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n";
    let size_line = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: [(&'static [u8], u8, &str, usize); 4] = [
        (head_only, b'a', "response head longer than", MAX_HEAD + 4),
        (
            to_eof,
            b'x',
            "response body larger than",
            to_eof.len() + MAX_BODY,
        ),
        (
            one_chunk,
            b'x',
            "response body larger than",
            one_chunk.len() + MAX_BODY,
        ),
        (
            size_line,
            b'1',
            "chunk-size line longer than",
            size_line.len() + MAX_LINE,
        ),
    ];
    for (prefix, byte, want, limit) in cases {
        let mut r = endless(prefix, byte);
        let e = read_response(&mut r).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
        // The limit plus at most what the last read brought.
        assert!(r.read <= limit + READ_SIZE, "{want}: read {} bytes", r.read);
    }
    // A declared length past the limit is refused before any of it is read.
    let mut r = endless(
        b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n",
        b'x',
    );
    assert!(read_response(&mut r).unwrap_err().contains("larger than"));
    assert!(r.read <= READ_SIZE, "read {} bytes", r.read);
}

#[test]
fn an_endless_event_line_is_cut_off_at_its_limit() {
    let mut d = StreamDecoder::default();
    d.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n")
        .unwrap();
    assert!(d.ready());
    let block = [b'x'; READ_SIZE];
    let mut fed = 0;
    let e = loop {
        match d.feed(&block) {
            Ok(lines) => assert!(lines.is_empty()),
            Err(e) => break e,
        }
        fed += block.len();
        assert!(
            d.buffered() <= MAX_EVENT_LINE,
            "{} bytes held",
            d.buffered()
        );
        assert!(fed <= 2 * MAX_EVENT_LINE, "still reading after {fed} bytes");
    };
    assert!(
        e.contains(&format!("event line longer than {MAX_EVENT_LINE} bytes")),
        "{e}"
    );
    assert!(fed <= MAX_EVENT_LINE);
}
