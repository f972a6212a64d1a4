//! The node's own resolvers, and passing a query on to them.
//!
//! A workload that uses the app's resolver sends it every name, not only
//! `.weft` ones (resolv.conf cannot split by domain), so names outside
//! `.weft` go to the resolvers the node itself uses: the `nameserver` lines
//! of its resolv.conf, as Docker's embedded DNS does. The sockets for that
//! are opened by the resolver runtime's threads, which stay in the daemon's
//! own (node) netns: that is where those addresses route (127.0.0.53 of a
//! systemd-resolved host included), never the app netns, which only routes
//! the app's range.
//!
//! The query bytes are passed on untouched (the client's EDNS size, DO bit,
//! id), and the first answer whose id matches comes back as it is, so
//! truncation and DNSSEC stay between the client and the real resolver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets per query before the next is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// glibc uses the first three `nameserver` lines (MAXNS) and ignores more.
const MAXNS: usize = 3;

/// The `nameserver` addresses of a resolv.conf text, in order (port 53).
/// Pure. Link-local IPv6 addresses with a zone (`fe80::1%eth0`) are skipped:
/// the zone names an interface of the node netns we do not resolve here.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        out.push(SocketAddr::new(addr, 53));
        if out.len() == MAXNS {
            break;
        }
    }
    out
}

/// The node's resolvers, re-read when the file changes (a DHCP renewal or
/// systemd-resolved rewrites it while the daemon runs).
#[derive(Debug)]
pub struct Upstreams {
    path: PathBuf,
    seen: RwLock<Option<(SystemTime, u64)>>,
    servers: RwLock<Arc<Vec<SocketAddr>>>,
}

impl Upstreams {
    /// Upstreams from the resolv.conf at `path` (read by [`Self::refresh`]).
    pub fn new(path: &Path) -> Upstreams {
        Upstreams {
            path: path.to_path_buf(),
            seen: RwLock::new(None),
            servers: RwLock::new(Arc::new(Vec::new())),
        }
    }

    /// Re-reads the file when its modification time or size changed. A
    /// missing or unreadable file means no upstream (what glibc would use
    /// then, the node netns' own 127.0.0.1, is rarely a resolver).
    pub fn refresh(&self) {
        let meta = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if meta.is_some() && *self.seen.read().expect("lock") == meta {
            return;
        }
        let servers = std::fs::read_to_string(&self.path)
            .map(|t| parse_resolv_conf(&t))
            .unwrap_or_default();
        if servers.is_empty() {
            tracing::warn!(path = %self.path.display(), "no nameserver for names outside .weft: the app resolvers answer them SERVFAIL");
        } else {
            tracing::info!(path = %self.path.display(), ?servers, "app resolvers forward names outside .weft here");
        }
        *self.servers.write().expect("lock") = Arc::new(servers);
        *self.seen.write().expect("lock") = meta;
    }

    /// The current list.
    pub fn servers(&self) -> Arc<Vec<SocketAddr>> {
        self.servers.read().expect("lock").clone()
    }
}

fn unspecified_for(server: &SocketAddr) -> SocketAddr {
    match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// Whether `reply` answers `query`: a response (QR set) with the same id.
fn answers(query: &[u8], reply: &[u8]) -> bool {
    reply.len() >= 12 && query.len() >= 2 && reply[..2] == query[..2] && reply[2] & 0x80 != 0
}

/// Sends `query` over UDP to each server in turn, from a fresh socket each
/// (a random source port per query, as a stub resolver does); the first
/// matching answer wins.
pub async fn forward_udp(servers: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for server in servers {
        let attempt = async {
            let sock = UdpSocket::bind(unspecified_for(server)).await.ok()?;
            // connect(): only datagrams from the server itself are received.
            sock.connect(server).await.ok()?;
            sock.send(query).await.ok()?;
            let mut buf = vec![0u8; 65535];
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                if answers(query, &buf[..n]) {
                    buf.truncate(n);
                    return Some(buf);
                }
            }
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Some(reply)) => return Some(reply),
            _ => tracing::debug!(%server, "upstream did not answer over UDP"),
        }
    }
    None
}

/// The same over TCP (a client that got a truncated answer asks again
/// over TCP; so do we).
pub async fn forward_tcp(servers: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(query.len()).ok()?;
    for server in servers {
        let attempt = async {
            let mut s = TcpStream::connect(server).await.ok()?;
            let mut framed = Vec::with_capacity(query.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(query);
            s.write_all(&framed).await.ok()?;
            let n = s.read_u16().await.ok()?;
            let mut buf = vec![0u8; usize::from(n)];
            s.read_exact(&mut buf).await.ok()?;
            answers(query, &buf).then_some(buf)
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Some(reply)) => return Some(reply),
            _ => tracing::debug!(%server, "upstream did not answer over TCP"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines_in_order_at_most_three() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\n  nameserver\t127.0.0.53  \noptions ndots:5\nnameserver fe80::1%eth0\nnameserver 2001:db8::1\nnameserver bogus\nnameserver 10.0.0.9\nnameserver 10.0.0.10\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "127.0.0.53:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
            ]
        );
        assert!(parse_resolv_conf("").is_empty());
        assert!(parse_resolv_conf("domain x\n#nameserver 1.2.3.4\n").is_empty());
    }

    #[test]
    fn only_responses_with_the_same_id_count() {
        let q = [0xab, 0xcd, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let mut r = q;
        r[2] |= 0x80;
        assert!(answers(&q, &r));
        assert!(!answers(&q, &q), "a query is not an answer");
        let mut other = r;
        other[1] = 0;
        assert!(!answers(&q, &other));
        assert!(!answers(&q, &r[..11]));
    }

    #[test]
    fn upstreams_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        let u = Upstreams::new(&path);
        u.refresh();
        assert!(u.servers().is_empty());
        std::fs::write(&path, "nameserver 10.0.0.2\n").unwrap();
        u.refresh();
        assert_eq!(*u.servers(), vec!["10.0.0.2:53".parse().unwrap()]);
        std::fs::write(&path, "nameserver 10.0.0.3\nnameserver 10.0.0.4\n").unwrap();
        u.refresh();
        assert_eq!(u.servers().len(), 2);
    }
}
