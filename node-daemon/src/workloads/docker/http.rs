//! Just enough HTTP/1.1 to talk to the Docker engine over its unix socket:
//! one-shot `GET`s (`Connection: close`) and one streaming `GET /events`
//! (chunked, one JSON event per line). The byte-level parsing
//! ([`parse_head`], [`ChunkedDecoder`], [`LineBuffer`], [`StreamDecoder`],
//! [`read_response`]) is pure and fed by whatever the socket delivers, so a
//! read timeout can interrupt it anywhere. Everything is bounded: a head, a
//! body, a chunk-size line and an event line each have a limit, past which
//! reading stops with an error (the watcher then starts a new session).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use weft_api::validation::printable;

/// Largest response head (status line and headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest non-streaming body accepted: a listing of thousands of
/// containers, or one container's details, is far smaller.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// A chunk-size or trailer line longer than this is garbage.
pub const MAX_LINE: usize = 4096;
/// Longest event line: an event carries the container's labels, which
/// Kubernetes caps (with annotations) at 256 KiB.
pub const MAX_EVENT_LINE: usize = 1024 * 1024;

/// What one read asks the socket for.
const READ_SIZE: usize = 16 * 1024;

/// A parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Status code (200, 404...).
    pub status: u16,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Content-Length`, if given.
    pub content_length: Option<usize>,
}

/// Peer text quoted in a message: one line, at most 80 characters.
fn quote(bytes: &[u8]) -> String {
    format!("{:?}", printable(&String::from_utf8_lossy(bytes), 80))
}

/// Parses a response head (everything before the blank line); `None` until
/// `buf` holds the whole head. Returns the head and the head's length.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let window = &buf[..buf.len().min(MAX_HEAD + 4)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= MAX_HEAD + 4 {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!(
            "not an HTTP/1.x response: {}",
            quote(status_line.as_bytes())
        ));
    }
    let status = parts
        .next()
        .filter(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {}", quote(status_line.as_bytes())))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
    };
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .filter(|(k, _)| !k.is_empty() && !k.bytes().any(|b| b.is_ascii_whitespace()))
            .ok_or_else(|| format!("bad header line {}", quote(l.as_bytes())))?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = v
                .split(',')
                .any(|e| e.trim().eq_ignore_ascii_case("chunked"));
        } else if k.eq_ignore_ascii_case("content-length") {
            let len = Some(v)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| format!("bad Content-Length {}", quote(v.as_bytes())))?;
            if head.content_length.is_some_and(|l| l != len) {
                return Err("conflicting Content-Length headers".into());
            }
            head.content_length = Some(len);
        }
    }
    Ok(Some((head, end + 4)))
}

/// A chunk size: 1 to 16 hex digits (so it fits 64 bits), then an
/// optional `;extension`.
fn chunk_size(line: &[u8]) -> Result<usize, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let hex = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let bad = || format!("bad chunk size {}", quote(hex));
    if hex.is_empty() || hex.len() > 16 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let text = std::str::from_utf8(hex).map_err(|_| bad())?;
    usize::from_str_radix(text, 16).map_err(|_| bad())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    Size(Vec<u8>),
    /// Inside a chunk: bytes left.
    Data(usize),
    /// The CRLF after a chunk's data: bytes left to skip.
    DataEnd(u8),
    /// After the last (empty) chunk: trailer lines until a blank one.
    Trailer(Vec<u8>),
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally. Holds at most one
/// chunk-size or trailer line ([`MAX_LINE`]); chunk data passes through.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size(Vec::new()),
        }
    }
}

impl ChunkedDecoder {
    /// Whether the terminating chunk (and trailer) was read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Bytes held back (a partial chunk-size or trailer line).
    pub fn buffered(&self) -> usize {
        match &self.state {
            ChunkState::Size(l) | ChunkState::Trailer(l) => l.len(),
            _ => 0,
        }
    }

    /// Feeds raw bytes, appending the decoded body to `out` (at most as
    /// many bytes as fed).
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !data.is_empty() {
            match &mut self.state {
                ChunkState::Size(line) => {
                    let b = data[0];
                    data = &data[1..];
                    if b != b'\n' {
                        if line.len() >= MAX_LINE {
                            return Err(format!("chunk-size line longer than {MAX_LINE} bytes"));
                        }
                        line.push(b);
                        continue;
                    }
                    let size = chunk_size(line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailer(Vec::new())
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let n = (*left).min(data.len());
                    out.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    *left -= n;
                    if *left == 0 {
                        self.state = ChunkState::DataEnd(2);
                    }
                }
                ChunkState::DataEnd(left) => {
                    let want = if *left == 2 { b'\r' } else { b'\n' };
                    // Tolerate a bare LF after the data.
                    if *left == 2 && data[0] == b'\n' {
                        data = &data[1..];
                        self.state = ChunkState::Size(Vec::new());
                        continue;
                    }
                    if data[0] != want {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    data = &data[1..];
                    *left -= 1;
                    if *left == 0 {
                        self.state = ChunkState::Size(Vec::new());
                    }
                }
                ChunkState::Trailer(line) => {
                    let b = data[0];
                    data = &data[1..];
                    if b != b'\n' {
                        if line.len() >= MAX_LINE {
                            return Err(format!("trailer line longer than {MAX_LINE} bytes"));
                        }
                        line.push(b);
                        continue;
                    }
                    if line.iter().all(|c| *c == b'\r') {
                        self.state = ChunkState::Done;
                    } else {
                        line.clear();
                    }
                }
                ChunkState::Done => return Ok(()),
            }
        }
        Ok(())
    }
}

/// Splits a byte stream into `\n`-terminated lines (the engine writes one
/// JSON event per line, but chunks need not align with lines). Holds at
/// most one partial line of at most its limit.
#[derive(Debug)]
pub struct LineBuffer {
    partial: Vec<u8>,
    max: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        LineBuffer::with_limit(MAX_EVENT_LINE)
    }
}

impl LineBuffer {
    /// Lines of at most `max` bytes (before the `\n`).
    pub fn with_limit(max: usize) -> Self {
        LineBuffer {
            partial: Vec::new(),
            max,
        }
    }

    /// Bytes of the partial line held.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Appends `data` and returns every completed, non-blank line; a line
    /// longer than the limit is an error (and is dropped).
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let newline = data.iter().position(|b| *b == b'\n');
            let piece = &data[..newline.unwrap_or(data.len())];
            data = &data[newline.map_or(data.len(), |i| i + 1)..];
            if self.partial.len() + piece.len() > self.max {
                self.partial = Vec::new();
                return Err(format!("event line longer than {} bytes", self.max));
            }
            self.partial.extend_from_slice(piece);
            if newline.is_some() {
                let line = std::mem::take(&mut self.partial);
                let line = line.trim_ascii();
                if !line.is_empty() {
                    out.push(line.to_vec());
                }
            }
        }
        Ok(out)
    }
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map_err(|e| e.to_string()),
        }
    }
}

/// Reads a whole response from `r` (a `Connection: close` exchange): by
/// `Content-Length`, chunks, or to EOF. Reads at most [`MAX_HEAD`] +
/// [`MAX_BODY`] and one buffer more before it gives up.
pub fn read_response(r: &mut impl Read) -> Result<(u16, Vec<u8>), String> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut raw = Vec::new();
    let (head, rest) = loop {
        let n = read_some(r, &mut buf)?;
        if n == 0 {
            return Err(if raw.is_empty() {
                "connection closed before the response head".into()
            } else {
                "connection closed inside the response head".into()
            });
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some((head, len)) = parse_head(&raw)? {
            break (head, raw.split_off(len));
        }
    };
    let too_large = || format!("response body larger than {MAX_BODY} bytes");
    let body = if head.chunked {
        let mut d = ChunkedDecoder::default();
        let mut body = Vec::new();
        d.feed(&rest, &mut body)?;
        while !d.done() {
            if body.len() > MAX_BODY {
                return Err(too_large());
            }
            let n = read_some(r, &mut buf)?;
            if n == 0 {
                return Err("connection closed inside a chunked body".into());
            }
            d.feed(&buf[..n], &mut body)?;
        }
        body
    } else if let Some(len) = head.content_length {
        if len > MAX_BODY {
            return Err(format!("Content-Length {len} is larger than {MAX_BODY}"));
        }
        let mut body = rest;
        while body.len() < len {
            let n = read_some(r, &mut buf)?;
            if n == 0 {
                return Err(format!(
                    "connection closed after {} of {len} body bytes",
                    body.len()
                ));
            }
            body.extend_from_slice(&buf[..n]);
        }
        body.truncate(len);
        body
    } else {
        let mut body = rest;
        loop {
            if body.len() > MAX_BODY {
                return Err(too_large());
            }
            let n = read_some(r, &mut buf)?;
            if n == 0 {
                break body;
            }
            body.extend_from_slice(&buf[..n]);
        }
    };
    if body.len() > MAX_BODY {
        return Err(too_large());
    }
    Ok((head.status, body))
}

/// A complete response already in memory (see [`read_response`]).
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    read_response(&mut &raw[..])
}

/// `%`-encodes a query value (everything but unreserved characters).
pub fn encode_query(v: &str) -> String {
    let mut s = String::with_capacity(v.len() * 3);
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn request(path: &str, close: bool) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: weft-node-daemon\r\nAccept: application/json\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
}

fn connect(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// `GET path` on the engine's socket: status code and body.
pub fn get(socket: &Path, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    let what = |e: String| format!("{}: GET {path}: {e}", socket.display());
    let mut s = connect(socket, timeout).map_err(|e| what(e.to_string()))?;
    s.write_all(request(path, true).as_bytes())
        .map_err(|e| what(e.to_string()))?;
    // Reads until the response is complete (or the engine closes), so a
    // peer that keeps the connection open does not cost a timeout.
    read_response(&mut s).map_err(what)
}

/// The pure side of a streaming response: head, chunks, lines.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    head: Option<Head>,
    raw: Vec<u8>,
    chunks: ChunkedDecoder,
    lines: LineBuffer,
}

impl StreamDecoder {
    /// Whether the head arrived with status 200.
    pub fn ready(&self) -> bool {
        self.head.as_ref().is_some_and(|h| h.status == 200)
    }

    /// Bytes held: the partial head, chunk-size line and event line.
    pub fn buffered(&self) -> usize {
        self.raw.len() + self.chunks.buffered() + self.lines.buffered()
    }

    /// Feeds what the socket delivered; returns the completed lines. An
    /// error (bad head, non-200 status, bad chunk, overlong line, the end
    /// of the body) ends the stream.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let pending;
        let mut data = data;
        if self.head.is_none() {
            self.raw.extend_from_slice(data);
            let Some((head, len)) = parse_head(&self.raw)? else {
                return Ok(Vec::new());
            };
            if head.status != 200 {
                return Err(format!(
                    "HTTP {}: {}",
                    head.status,
                    quote(self.raw[len..].trim_ascii())
                ));
            }
            pending = self.raw.split_off(len);
            self.raw = Vec::new();
            self.head = Some(head);
            data = &pending;
        }
        let chunked = self.head.as_ref().is_some_and(|h| h.chunked);
        let lines = if chunked {
            let mut body = Vec::new();
            self.chunks.feed(data, &mut body)?;
            self.lines.push(&body)?
        } else {
            self.lines.push(data)?
        };
        if chunked && self.chunks.done() {
            return Err("the engine ended the stream".into());
        }
        Ok(lines)
    }
}

/// A streaming `GET` whose body is a sequence of lines.
#[derive(Debug)]
pub struct LineStream {
    stream: UnixStream,
    decoder: StreamDecoder,
    what: String,
}

impl LineStream {
    /// Sends the request; `poll` then waits at most `tick` per call.
    pub fn open(socket: &Path, path: &str, tick: Duration) -> Result<LineStream, String> {
        let what = format!("{}: GET {path}", socket.display());
        let mut stream = connect(socket, tick).map_err(|e| format!("{what}: {e}"))?;
        stream
            .write_all(request(path, false).as_bytes())
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(LineStream {
            stream,
            decoder: StreamDecoder::default(),
            what,
        })
    }

    /// Whether the response head arrived with status 200 (the engine sends
    /// it at once, before any event).
    pub fn ready(&self) -> bool {
        self.decoder.ready()
    }

    /// Reads what is available (waiting at most one tick) and returns the
    /// completed lines; an error when the stream ended or broke.
    pub fn poll(&mut self) -> Result<Vec<Vec<u8>>, String> {
        let mut buf = [0u8; READ_SIZE];
        let n = match self.stream.read(&mut buf) {
            Ok(0) => return Err(format!("{}: the engine closed the stream", self.what)),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(format!("{}: {e}", self.what)),
        };
        self.decoder
            .feed(&buf[..n])
            .map_err(|e| format!("{}: {e}", self.what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_once_complete() {
        let raw = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\ntransfer-encoding: chunked\r\n\r\nrest";
        assert_eq!(parse_head(&raw[..20]).unwrap(), None);
        let (h, n) = parse_head(raw).unwrap().unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                chunked: true,
                content_length: None
            }
        );
        assert_eq!(&raw[n..], b"rest");
        assert!(parse_head(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let body = b"1a\r\n{\"Action\":\"start\",\"id\":1}\n\r\n5;ext=1\r\n\n{}\n\n\r\n0\r\nX-T: 1\r\n\r\n";
        let want = b"{\"Action\":\"start\",\"id\":1}\n\n{}\n\n";
        for split in 1..body.len() {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            for piece in body.chunks(split) {
                d.feed(piece, &mut out).unwrap();
            }
            assert_eq!(out, want, "split every {split} bytes");
            assert!(d.done());
        }
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(b"zz\r\n", &mut Vec::new()).is_err());
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(b"2\r\nabXY", &mut Vec::new()).is_err());
    }

    #[test]
    fn lines_are_reassembled_across_pushes() {
        let mut l = LineBuffer::default();
        assert!(l.push(b"{\"a\"").unwrap().is_empty());
        assert_eq!(
            l.push(b":1}\n\n{\"b\":2}\r\n{").unwrap(),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
        assert_eq!(l.push(b"}\n").unwrap(), vec![b"{}".to_vec()]);
    }

    #[test]
    fn whole_responses_by_length_chunks_or_eof() {
        let (s, b) =
            parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhello world")
                .unwrap();
        assert_eq!((s, b.as_slice()), (404, &b"hello"[..]));
        let (s, b) = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"[]"[..]));
        let (_, b) = parse_response(b"HTTP/1.0 200 OK\r\n\r\nall of it").unwrap();
        assert_eq!(b, b"all of it");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                .is_err()
        );
        assert!(parse_response(b"").is_err());
    }

    #[test]
    fn what_is_not_plain_http_is_an_error() {
        for bad in [
            &b"HTTP/1.1 +20 OK\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        for size in ["+5", "-5", "0x5", "", "11111111111111111"] {
            let mut d = ChunkedDecoder::default();
            let input = format!("{size}\r\nhello\r\n");
            assert!(
                d.feed(input.as_bytes(), &mut Vec::new()).is_err(),
                "{size:?}"
            );
        }
        // The largest size that fits is a size, not an overflow.
        let mut d = ChunkedDecoder::default();
        d.feed(b"ffffffffffffffff\r\nabc", &mut Vec::new()).unwrap();
        assert!(!d.done());
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n";
        assert!(parse_response(huge).unwrap_err().contains("larger than"));
    }

    #[test]
    fn heads_and_lines_stop_at_their_limits() {
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.resize(MAX_HEAD + 4, b'a');
        assert!(parse_head(&head).unwrap_err().contains("longer than"));
        head.truncate(MAX_HEAD);
        assert_eq!(parse_head(&head).unwrap(), None, "still within the limit");
        let mut l = LineBuffer::with_limit(4);
        assert_eq!(l.push(b"1234\n").unwrap(), vec![b"1234".to_vec()]);
        assert!(l.push(b"12345").is_err());
        assert_eq!(l.buffered(), 0, "the overlong line is dropped");
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(&[b'1'; MAX_LINE + 1], &mut Vec::new()).is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query(r#"{"label":["weft.dev/app"]}"#),
            "%7B%22label%22%3A%5B%22weft.dev%2Fapp%22%5D%7D"
        );
    }
}
