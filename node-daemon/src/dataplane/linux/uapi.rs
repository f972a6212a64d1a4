//! The WireGuard cross-platform UAPI text protocol, spoken over a stream we
//! own (one end of a socketpair whose other end boringtun serves). Requests
//! are strictly one at a time: boringtun reads each request with a fresh
//! buffer, so pipelining would lose data.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;

use crate::keys;

/// How long one UAPI exchange may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A UAPI client on a connected stream.
#[derive(Debug)]
pub(crate) struct Uapi {
    stream: UnixStream,
}

/// One peer as read back by `get=1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UapiPeer {
    /// base64 public key.
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Ipv4Net>,
    pub persistent_keepalive: u16,
    /// Seconds since the last handshake (boringtun's meaning of
    /// `last_handshake_time_sec`).
    pub handshake_age: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The device as read back by `get=1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UapiDevice {
    /// base64 public key.
    pub public_key: String,
    pub listen_port: u16,
    pub peers: Vec<UapiPeer>,
}

impl Uapi {
    pub(crate) fn new(stream: UnixStream) -> Result<Self> {
        stream
            .set_read_timeout(Some(TIMEOUT))
            .context("uapi read timeout")?;
        stream
            .set_write_timeout(Some(TIMEOUT))
            .context("uapi write timeout")?;
        Ok(Uapi { stream })
    }

    /// Closes both directions; boringtun sees a hang-up and stops the device.
    pub(crate) fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Sends one request and returns the response lines before `errno=`,
    /// failing when errno is not 0.
    fn exchange(&mut self, request: &str) -> Result<Vec<String>> {
        self.stream
            .write_all(request.as_bytes())
            .context("uapi write")?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // The response ends with "errno=N\n\n".
        loop {
            let n = self.stream.read(&mut chunk).context("uapi read")?;
            if n == 0 {
                bail!("uapi stream closed by the device");
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.ends_with(b"\n\n") {
                break;
            }
        }
        let text = String::from_utf8(buf).map_err(|_| anyhow!("uapi response is not UTF-8"))?;
        let mut lines = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(code) = line.strip_prefix("errno=") {
                let code: i32 = code
                    .trim()
                    .parse()
                    .map_err(|_| anyhow!("bad uapi errno line {line:?}"))?;
                if code != 0 {
                    bail!("uapi error: {}", std::io::Error::from_raw_os_error(code));
                }
                return Ok(lines);
            }
            lines.push(line.to_string());
        }
        bail!("uapi response without errno")
    }

    /// `set=1` with the given `key=value` lines.
    pub(crate) fn set(&mut self, lines: &[String]) -> Result<()> {
        let mut req = String::from("set=1\n");
        for l in lines {
            req.push_str(l);
            req.push('\n');
        }
        req.push('\n');
        self.exchange(&req).map(|_| ())
    }

    /// `get=1`, parsed.
    pub(crate) fn get(&mut self) -> Result<UapiDevice> {
        parse_get(&self.get_lines()?)
    }

    /// `get=1`, as the device's `key=value` lines.
    pub(crate) fn get_lines(&mut self) -> Result<Vec<String>> {
        self.exchange("get=1\n\n")
    }
}

/// Parses `get=1` output. Accepts both boringtun's `own_public_key=` and the
/// reference implementations' `private_key=` (public key derived).
pub(crate) fn parse_get(lines: &[String]) -> Result<UapiDevice> {
    let mut dev = UapiDevice::default();
    let mut peer: Option<UapiPeer> = None;
    for line in lines {
        let Some((k, v)) = line.split_once('=') else {
            bail!("bad uapi line {line:?}")
        };
        match (k, peer.as_mut()) {
            ("public_key", _) => {
                if let Some(p) = peer.take() {
                    dev.peers.push(p);
                }
                let pk = keys::public_hex_to_b64(v)
                    .ok_or_else(|| anyhow!("bad peer key in uapi output"))?;
                peer = Some(UapiPeer {
                    public_key: pk,
                    ..Default::default()
                });
            }
            ("own_public_key", None) => {
                dev.public_key = keys::public_hex_to_b64(v)
                    .ok_or_else(|| anyhow!("bad own key in uapi output"))?;
            }
            ("private_key", None) => {
                dev.public_key = public_from_private_hex(v)
                    .ok_or_else(|| anyhow!("bad private key in uapi output"))?;
            }
            ("listen_port", None) => dev.listen_port = v.parse().context("listen_port")?,
            ("endpoint", Some(p)) => p.endpoint = Some(v.parse().context("endpoint")?),
            ("allowed_ip", Some(p)) => {
                // IPv6 entries are not ours; ignore them.
                if let Ok(n) = v.parse::<Ipv4Net>() {
                    p.allowed_ips.push(n);
                }
            }
            ("persistent_keepalive_interval", Some(p)) => {
                p.persistent_keepalive = v.parse().context("keepalive")?
            }
            ("last_handshake_time_sec", Some(p)) => {
                p.handshake_age = Some(v.parse().context("handshake")?)
            }
            ("rx_bytes", Some(p)) => p.rx_bytes = v.parse().context("rx_bytes")?,
            ("tx_bytes", Some(p)) => p.tx_bytes = v.parse().context("tx_bytes")?,
            _ => {} // fwmark, protocol_version, nsec, preshared_key...
        }
    }
    if let Some(p) = peer.take() {
        dev.peers.push(p);
    }
    for p in &mut dev.peers {
        p.allowed_ips.sort();
    }
    dev.peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    Ok(dev)
}

fn public_from_private_hex(h: &str) -> Option<String> {
    use base64::Engine;
    if h.len() != 64 {
        return None;
    }
    let mut b = [0u8; 32];
    for (i, out) in b.iter_mut().enumerate() {
        *out = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let secret = x25519_dalek::StaticSecret::from(b);
    Some(
        base64::engine::general_purpose::STANDARD
            .encode(x25519_dalek::PublicKey::from(&secret).as_bytes()),
    )
}

/// Lines that add a peer (after removing any previous one: boringtun cannot
/// modify a peer in place and panics when asked to).
pub(crate) fn peer_lines(
    public_key_b64: &str,
    endpoint: Option<SocketAddr>,
    allowed_ips: &[Ipv4Net],
    keepalive: u16,
) -> Result<Vec<String>> {
    let hex = keys::public_b64_to_hex(public_key_b64)
        .ok_or_else(|| anyhow!("peer public key is not a 32-byte base64 key"))?;
    let mut l = vec![
        format!("public_key={hex}"),
        "replace_allowed_ips=true".to_string(),
    ];
    if let Some(e) = endpoint {
        l.push(format!("endpoint={e}"));
    }
    // 0 means "off": leave the line out (boringtun would arm a 0s timer).
    if keepalive > 0 {
        l.push(format!("persistent_keepalive_interval={keepalive}"));
    }
    for a in allowed_ips {
        l.push(format!("allowed_ip={a}"));
    }
    Ok(l)
}

/// Lines that remove a peer (absent is fine).
pub(crate) fn remove_peer_lines(public_key_b64: &str) -> Result<Vec<String>> {
    let hex = keys::public_b64_to_hex(public_key_b64)
        .ok_or_else(|| anyhow!("peer public key is not a 32-byte base64 key"))?;
    Ok(vec![format!("public_key={hex}"), "remove=true".to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boringtun_get_output() {
        let k = crate::keys::PrivateKey::generate();
        let own = keys::public_b64_to_hex(&k.public_key()).unwrap();
        let p = crate::keys::PrivateKey::generate();
        let ph = keys::public_b64_to_hex(&p.public_key()).unwrap();
        let lines: Vec<String> = [
            format!("own_public_key={own}"),
            "listen_port=51820".into(),
            format!("public_key={ph}"),
            "persistent_keepalive_interval=25".into(),
            "endpoint=192.0.2.2:51820".into(),
            "allowed_ip=10.2.0.0/24".into(),
            "allowed_ip=10.1.0.0/24".into(),
            "allowed_ip=fd00::/64".into(),
            "last_handshake_time_sec=3".into(),
            "last_handshake_time_nsec=12".into(),
            "rx_bytes=10".into(),
            "tx_bytes=20".into(),
        ]
        .into();
        let d = parse_get(&lines).unwrap();
        assert_eq!(d.public_key, k.public_key());
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 1);
        let peer = &d.peers[0];
        assert_eq!(peer.public_key, p.public_key());
        assert_eq!(
            peer.allowed_ips,
            vec![
                "10.1.0.0/24".parse().unwrap(),
                "10.2.0.0/24".parse().unwrap()
            ]
        );
        assert_eq!(peer.endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        assert_eq!(
            (
                peer.persistent_keepalive,
                peer.handshake_age,
                peer.rx_bytes,
                peer.tx_bytes
            ),
            (25, Some(3), 10, 20)
        );
    }

    #[test]
    fn private_key_line_gives_the_public_key() {
        let k = crate::keys::PrivateKey::generate();
        let d = parse_get(&[format!("private_key={}", k.to_hex())]).unwrap();
        assert_eq!(d.public_key, k.public_key());
    }
}
