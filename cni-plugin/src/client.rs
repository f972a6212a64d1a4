//! Talks to the node daemon's attach socket: one JSON line each way. The
//! answer is read up to [`MAX_RESPONSE_BYTES`] and checked before any of it
//! reaches the runtime's result.

use std::io::{BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use weft_api::attach::{codes, read_line, AttachRequest, AttachResponse, MAX_RESPONSE_BYTES};

use crate::error::CniError;

/// How long the daemon may take to attach (it may wait for its MeshNode).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Why there is no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TalkError {
    /// Nothing listens at the socket: the request was never delivered.
    Unreachable(String),
    /// The daemon was asked but gave no usable answer.
    Failed(CniError),
}

impl TalkError {
    /// The CNI error to report (unreachable: try again later).
    pub fn into_cni(self) -> CniError {
        match self {
            TalkError::Unreachable(msg) => CniError::new(codes::TRY_AGAIN_LATER, msg),
            TalkError::Failed(e) => e,
        }
    }
}

/// Sends `req` to the daemon at `socket` and reads its answer.
pub fn talk(socket: &str, req: &AttachRequest) -> Result<AttachResponse, TalkError> {
    let s = UnixStream::connect(socket).map_err(|e| {
        TalkError::Unreachable(format!("Weft node daemon not reachable at {socket}: {e}"))
    })?;
    let broke = |e: std::io::Error| {
        TalkError::Failed(CniError::new(
            codes::TRY_AGAIN_LATER,
            format!("Weft node daemon at {socket} broke off: {e}"),
        ))
    };
    s.set_read_timeout(Some(TIMEOUT)).map_err(broke)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(broke)?;
    let mut line = serde_json::to_vec(req).map_err(|e| {
        TalkError::Failed(CniError::decode(format!("cannot encode the request: {e}")))
    })?;
    line.push(b'\n');
    (&s).write_all(&line).map_err(broke)?;
    read_answer(&s, socket).map_err(TalkError::Failed)
}

/// Reads one answer line from the daemon at `socket` (at most
/// [`MAX_RESPONSE_BYTES`]: nothing past that is read) and checks it.
pub fn read_answer(r: impl Read, socket: &str) -> Result<AttachResponse, CniError> {
    let answer = read_line(&mut BufReader::new(r), MAX_RESPONSE_BYTES).map_err(|e| {
        CniError::new(
            codes::TRY_AGAIN_LATER,
            format!("no answer from the Weft node daemon at {socket}: {e}"),
        )
    })?;
    if answer.trim_ascii().is_empty() {
        return Err(CniError::new(
            codes::TRY_AGAIN_LATER,
            format!("Weft node daemon at {socket} closed the connection without an answer"),
        ));
    }
    parse_response(&answer).map_err(|e| {
        CniError::decode(format!(
            "unreadable answer from the Weft node daemon at {socket}: {e}"
        ))
    })
}

fn ipv4_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ip, len)| {
        ip.parse::<Ipv4Addr>().is_ok()
            && !len.starts_with('+')
            && len.parse::<u8>().is_ok_and(|l| l <= 32)
    })
}

fn mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses one answer line: JSON of [`AttachResponse`] whose fields can go
/// into a CNI result as they are. The error names the field.
pub fn parse_response(line: &[u8]) -> Result<AttachResponse, String> {
    let text =
        std::str::from_utf8(line).map_err(|e| format!("not UTF-8 (byte {})", e.valid_up_to()))?;
    let r: AttachResponse = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let show = |s: &str| format!("{:?}", weft_api::validation::printable(s, 80));
    match &r {
        AttachResponse::Attached(a) => {
            let ifname_ok = !a.interface.is_empty()
                && a.interface.len() <= 15
                && a.interface
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ifname_ok {
                return Err(format!(
                    "interface: {} is not an interface name",
                    show(&a.interface)
                ));
            }
            if !mac(&a.mac) {
                return Err(format!("mac: {} is not a MAC address", show(&a.mac)));
            }
            if !ipv4_cidr(&a.address) {
                return Err(format!("address: {} is not an IPv4 CIDR", show(&a.address)));
            }
            if a.gateway.parse::<Ipv4Addr>().is_err() {
                return Err(format!(
                    "gateway: {} is not an IPv4 address",
                    show(&a.gateway)
                ));
            }
            if let Some((i, bad)) = a.routes.iter().enumerate().find(|(_, r)| !ipv4_cidr(r)) {
                return Err(format!("routes[{i}]: {} is not an IPv4 CIDR", show(bad)));
            }
        }
        AttachResponse::Error { code: 0, .. } => {
            return Err("code: 0 is not an error code".into());
        }
        _ => {}
    }
    Ok(r)
}
