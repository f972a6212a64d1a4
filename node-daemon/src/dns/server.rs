//! Serving one app's resolver: a UDP and a TCP socket that were opened inside
//! the app netns (see [`super::sockets`]), served by tasks on the resolver
//! runtime. The tasks own everything they spawn (forwards, TCP connections),
//! so aborting them closes the sockets and frees the address at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::Message;
use ipnet::Ipv4Net;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::answer::{self, Outcome, Zone};
use super::upstream::{self, Upstreams};

/// Forwarded queries in flight per resolver; more are dropped (the client
/// retries), so a flood cannot exhaust the daemon's sockets.
const MAX_FORWARDS: usize = 256;
/// Open TCP connections per resolver.
const MAX_TCP: usize = 64;
/// An idle TCP connection is closed after this (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the serving tasks of one app share with the service.
#[derive(Debug)]
pub struct Shared {
    /// The names, swapped whole when they change (sockets stay).
    pub zone: RwLock<Arc<Zone>>,
    /// Who may ask: the app's range. Only the app's own workloads (local,
    /// or remote through its tunnel) come from it; anything else is dropped
    /// unanswered, even if some route brought it here.
    pub clients: Ipv4Net,
    /// Where names outside `.weft` go.
    pub upstreams: Arc<Upstreams>,
}

impl Shared {
    fn zone(&self) -> Arc<Zone> {
        self.zone.read().expect("lock").clone()
    }

    fn admits(&self, peer: &SocketAddr) -> bool {
        match peer.ip() {
            IpAddr::V4(a) => self.clients.contains(&a),
            IpAddr::V6(a) => a
                .to_ipv4_mapped()
                .is_some_and(|a| self.clients.contains(&a)),
        }
    }
}

/// Serves UDP queries on `sock` until aborted.
pub async fn serve_udp(sock: std::net::UdpSocket, shared: Arc<Shared>) {
    let sock = match UdpSocket::from_std(sock) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot serve DNS over UDP");
            return;
        }
    };
    let mut forwards: JoinSet<Option<(Vec<u8>, SocketAddr)>> = JoinSet::new();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            got = sock.recv_from(&mut buf) => {
                let Ok((n, peer)) = got else { continue };
                if !shared.admits(&peer) {
                    continue;
                }
                let Ok(req) = Message::from_vec(&buf[..n]) else { continue };
                match answer::answer(&shared.zone(), &req) {
                    Outcome::Reply(m) => {
                        if let Some(bytes) = answer::encode(&m, answer::udp_limit(&req)) {
                            let _ = sock.send_to(&bytes, peer).await;
                        }
                    }
                    Outcome::Forward if forwards.len() < MAX_FORWARDS => {
                        let query = buf[..n].to_vec();
                        let servers = shared.upstreams.servers();
                        forwards.spawn(async move {
                            let reply = match upstream::forward_udp(&servers, &query).await {
                                Some(r) => r,
                                None => answer::encode(&answer::server_failure(&req), answer::udp_limit(&req))?,
                            };
                            Some((reply, peer))
                        });
                    }
                    Outcome::Forward | Outcome::Ignore => {}
                }
            }
            Some(done) = forwards.join_next(), if !forwards.is_empty() => {
                if let Ok(Some((reply, peer))) = done {
                    let _ = sock.send_to(&reply, peer).await;
                }
            }
        }
    }
}

/// Accepts TCP connections on `listener` until aborted.
pub async fn serve_tcp(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot serve DNS over TCP");
            return;
        }
    };
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            got = listener.accept() => {
                let Ok((stream, peer)) = got else { continue };
                if !shared.admits(&peer) || conns.len() >= MAX_TCP {
                    continue; // dropped: closed
                }
                conns.spawn(serve_conn(stream, shared.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Answers length-prefixed queries on one connection, in order.
async fn serve_conn(mut s: TcpStream, shared: Arc<Shared>) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, s.read_u16()).await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        if tokio::time::timeout(TCP_IDLE, s.read_exact(&mut query))
            .await
            .is_err()
        {
            return;
        }
        let Ok(req) = Message::from_vec(&query) else {
            return;
        };
        let reply = match answer::answer(&shared.zone(), &req) {
            Outcome::Reply(m) => answer::encode(&m, usize::from(u16::MAX)),
            Outcome::Forward => {
                let servers = shared.upstreams.servers();
                match upstream::forward_tcp(&servers, &query).await {
                    Some(r) => Some(r),
                    None => answer::encode(&answer::server_failure(&req), usize::from(u16::MAX)),
                }
            }
            Outcome::Ignore => None,
        };
        let Some(reply) = reply else { continue };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&reply);
        if s.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_apps_range_may_ask() {
        let s = Shared {
            zone: RwLock::new(Arc::new(Zone::new("demo/web", &[]).unwrap())),
            clients: "10.100.0.0/16".parse().unwrap(),
            upstreams: Arc::new(Upstreams::new(std::path::Path::new("/nonexistent"))),
        };
        assert!(s.admits(&"10.100.3.4:5353".parse().unwrap()));
        // Another app's workload, even if a link routed it here.
        assert!(!s.admits(&"100.64.0.2:5353".parse().unwrap()));
        assert!(s.admits(&"[::ffff:10.100.0.9]:53".parse().unwrap()));
        assert!(!s.admits(&"[fd00::1]:53".parse().unwrap()));
    }
}
