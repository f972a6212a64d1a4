//! Talks to the node daemon's attach socket: one JSON line each way.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use weft_api::attach::{codes, AttachRequest, AttachResponse};

use crate::error::CniError;

/// How long the daemon may take to attach (it may wait for its MeshNode).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `req` to the daemon at `socket` and reads its answer.
pub fn talk(socket: &str, req: &AttachRequest) -> Result<AttachResponse, CniError> {
    let down = |e: std::io::Error| {
        CniError::new(
            codes::TRY_AGAIN_LATER,
            format!("Weft node daemon not reachable at {socket}: {e}"),
        )
    };
    let mut s = UnixStream::connect(socket).map_err(down)?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(down)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(down)?;
    let mut line = serde_json::to_string(req).map_err(|e| CniError::decode(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(down)?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).map_err(down)?;
    if answer.trim().is_empty() {
        return Err(CniError::new(
            codes::TRY_AGAIN_LATER,
            format!("Weft node daemon at {socket} closed the connection without an answer"),
        ));
    }
    serde_json::from_str(&answer)
        .map_err(|e| CniError::decode(format!("unreadable answer from the Weft node daemon: {e}")))
}
