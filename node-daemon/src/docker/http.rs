//! Just enough HTTP/1.1 to talk to the Docker engine over its unix socket:
//! one-shot `GET`s (`Connection: close`, body read to EOF) and one streaming
//! `GET /events` (chunked). The byte-level parsing ([`parse_head`],
//! [`ChunkedDecoder`], [`LineBuffer`]) is pure and fed by whatever the
//! socket delivers, so a read timeout can interrupt it anywhere.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Largest response head or non-streaming body accepted (a misbehaving peer
/// must not make the daemon allocate without bound).
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;
/// A chunk-size or trailer line longer than this is garbage.
const MAX_LINE: usize = 4096;

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

/// Parses a response head (everything before the blank line); `None` until
/// `buf` holds the whole head. Returns the head and the head's length.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut head = Head {
        status,
        chunked: false,
        content_length: None,
    };
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = v
                .split(',')
                .any(|e| e.trim().eq_ignore_ascii_case("chunked"));
        } else if k.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?);
        }
    }
    Ok(Some((head, end + 4)))
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

/// Decodes `Transfer-Encoding: chunked` incrementally.
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

    /// Feeds raw bytes, appending the decoded body to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !data.is_empty() {
            match &mut self.state {
                ChunkState::Size(line) => {
                    let b = data[0];
                    data = &data[1..];
                    if b != b'\n' {
                        line.push(b);
                        if line.len() > MAX_LINE {
                            return Err("chunk-size line too long".into());
                        }
                        continue;
                    }
                    let text = String::from_utf8_lossy(line);
                    let hex = text.trim_end_matches('\r');
                    let hex = hex.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| format!("bad chunk size {hex:?}"))?;
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
                        line.push(b);
                        if line.len() > MAX_LINE {
                            return Err("trailer line too long".into());
                        }
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
/// JSON event per line, but chunks need not align with lines).
#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Appends `data` and returns every completed, non-blank line.
    pub fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        self.partial.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let line = line.trim_ascii().to_vec();
            if !line.is_empty() {
                out.push(line);
            }
        }
        out
    }
}

/// A complete response: decodes the body of a `Connection: close` response.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let (head, n) = parse_head(raw)?.ok_or("connection closed before the response head")?;
    let rest = &raw[n..];
    let body = if head.chunked {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        d.feed(rest, &mut out)?;
        if !d.done() {
            return Err("connection closed inside a chunked body".into());
        }
        out
    } else if let Some(len) = head.content_length {
        if rest.len() < len {
            return Err(format!(
                "connection closed after {} of {len} body bytes",
                rest.len()
            ));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok((head.status, body))
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
    let what = |e: io::Error| format!("{}: GET {path}: {e}", socket.display());
    let mut s = connect(socket, timeout).map_err(what)?;
    s.write_all(request(path, true).as_bytes()).map_err(what)?;
    // Read until the response is complete (or the engine closes), so a
    // peer that keeps the connection open does not cost a timeout.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).map_err(what)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_BODY + MAX_HEAD {
            return Err(format!(
                "{}: GET {path}: response too large",
                socket.display()
            ));
        }
        if complete(&raw) {
            break;
        }
    }
    parse_response(&raw).map_err(|e| format!("{}: GET {path}: {e}", socket.display()))
}

/// Whether `raw` holds a whole response whose end is known without EOF.
fn complete(raw: &[u8]) -> bool {
    let Ok(Some((head, n))) = parse_head(raw) else {
        return false;
    };
    if head.chunked {
        let mut d = ChunkedDecoder::default();
        d.feed(&raw[n..], &mut Vec::new()).is_ok() && d.done()
    } else {
        head.content_length.is_some_and(|len| raw.len() - n >= len)
    }
}

/// A streaming `GET` whose body is a sequence of lines.
#[derive(Debug)]
pub struct LineStream {
    stream: UnixStream,
    head: Option<Head>,
    raw: Vec<u8>,
    chunks: ChunkedDecoder,
    lines: LineBuffer,
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
            head: None,
            raw: Vec::new(),
            chunks: ChunkedDecoder::default(),
            lines: LineBuffer::default(),
            what,
        })
    }

    /// Whether the response head arrived with status 200 (the engine sends
    /// it at once, before any event).
    pub fn ready(&self) -> bool {
        self.head.as_ref().is_some_and(|h| h.status == 200)
    }

    /// Reads what is available (waiting at most one tick) and returns the
    /// completed lines; an error when the stream ended or broke.
    pub fn poll(&mut self) -> Result<Vec<Vec<u8>>, String> {
        let mut buf = [0u8; 16 * 1024];
        let n = match self.stream.read(&mut buf) {
            Ok(0) => return Err(format!("{}: the engine closed the stream", self.what)),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Vec::new())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Vec::new()),
            Err(e) => return Err(format!("{}: {e}", self.what)),
        };
        let mut data = &buf[..n];
        let pending;
        if self.head.is_none() {
            self.raw.extend_from_slice(data);
            let Some((head, len)) =
                parse_head(&self.raw).map_err(|e| format!("{}: {e}", self.what))?
            else {
                return Ok(Vec::new());
            };
            if head.status != 200 {
                let body = String::from_utf8_lossy(&self.raw[len..]).trim().to_string();
                return Err(format!("{}: HTTP {}: {body}", self.what, head.status));
            }
            pending = self.raw.split_off(len);
            self.raw.clear();
            self.head = Some(head);
            data = &pending;
        }
        let chunked = self.head.as_ref().is_some_and(|h| h.chunked);
        let mut body = Vec::new();
        if chunked {
            self.chunks
                .feed(data, &mut body)
                .map_err(|e| format!("{}: {e}", self.what))?;
        } else {
            body.extend_from_slice(data);
        }
        let lines = self.lines.push(&body);
        if chunked && self.chunks.done() {
            return Err(format!("{}: the engine ended the stream", self.what));
        }
        Ok(lines)
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
        assert!(l.push(b"{\"a\"").is_empty());
        assert_eq!(
            l.push(b":1}\n\n{\"b\":2}\r\n{"),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
        assert_eq!(l.push(b"}\n"), vec![b"{}".to_vec()]);
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
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n["));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ));
        assert!(!complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]"
        ));
        assert!(!complete(b"HTTP/1.0 200 OK\r\n\r\nuntil EOF"));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query(r#"{"label":["weft.dev/app"]}"#),
            "%7B%22label%22%3A%5B%22weft.dev%2Fapp%22%5D%7D"
        );
    }
}
