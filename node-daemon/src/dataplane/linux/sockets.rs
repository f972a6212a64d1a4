//! Closing a workload's TCP connections to destinations it lost.
//!
//! When a path goes away (a cross-app allow withdrawn: the link, the
//! carried address and the workload's route for it are removed), an open
//! connection over it would meet "no route" inside the workload and
//! retransmit for ~15 minutes: the kernel treats that as a soft error. The
//! policy table cannot reset it either, since no packet leaves. So the
//! daemon closes such sockets itself, as the kernel's `SOCK_DESTROY` allows
//! (what `ss -K` does; Cilium does the same for removed service backends):
//! the application sees ECONNABORTED at once.
//!
//! Talks `NETLINK_SOCK_DIAG` directly (the structures are small and fixed:
//! `inet_diag_req_v2`, `inet_diag_msg`), in the calling thread's netns.

use std::io;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// Every TCP state but LISTEN (a listener has no destination).
const STATES: u32 = !(1 << 10);
const NLMSG_HDRLEN: usize = 16;
/// `inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
const REQ_LEN: usize = 8 + SOCKID_LEN;

/// One TCP socket as `sock_diag` identifies it (the raw `inet_diag_sockid`,
/// which a destroy request must repeat exactly) and its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// The raw `inet_diag_sockid`.
    pub id: [u8; SOCKID_LEN],
    /// Remote address.
    pub dst: Ipv4Addr,
}

/// The destination address in a raw `inet_diag_sockid`.
fn dst_of(id: &[u8; SOCKID_LEN]) -> Ipv4Addr {
    Ipv4Addr::new(id[20], id[21], id[22], id[23])
}

/// A request: netlink header plus `inet_diag_req_v2` for IPv4 TCP.
fn request(kind: u16, flags: u16, seq: u32, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + REQ_LEN) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(libc::AF_INET as u8);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(0); // no extensions
    m.push(0);
    m.extend_from_slice(&STATES.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

/// Splits a netlink datagram into (type, payload) messages. Pure.
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        out.push((kind, &buf[at + NLMSG_HDRLEN..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// The error code of an `NLMSG_ERROR` payload (0 = an acknowledgement).
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i32::from_ne_bytes)
}

/// A `NETLINK_SOCK_DIAG` socket of the calling thread's netns.
struct Netlink(netlink_sys::Socket);

impl Netlink {
    fn open() -> io::Result<Netlink> {
        let s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_SOCK_DIAG)?;
        s.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(Netlink(s))
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.0.send(msg, 0).map(drop)
    }

    /// One whole datagram.
    fn recv(&self) -> io::Result<Vec<u8>> {
        self.0.recv_from_full().map(|(b, _)| b)
    }
}

/// The IPv4 TCP sockets of the calling thread's netns (listeners left out).
pub fn tcp_sockets() -> io::Result<Vec<TcpSocket>> {
    let nl = Netlink::open()?;
    nl.send(&request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        &[0; SOCKID_LEN],
    ))?;
    let mut out = Vec::new();
    loop {
        let buf = nl.recv()?;
        for (kind, payload) in messages(&buf) {
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    return Err(io::Error::from_raw_os_error(-error_code(payload)));
                }
                // inet_diag_msg: family, state, timer, retrans, then the id.
                SOCK_DIAG_BY_FAMILY if payload.len() >= 4 + SOCKID_LEN => {
                    let mut id = [0u8; SOCKID_LEN];
                    id.copy_from_slice(&payload[4..4 + SOCKID_LEN]);
                    out.push(TcpSocket {
                        dst: dst_of(&id),
                        id,
                    });
                }
                _ => {}
            }
        }
        if buf.is_empty() {
            return Ok(out);
        }
    }
}

/// Closes (`SOCK_DESTROY`) every TCP socket of the calling thread's netns
/// whose destination lies in `lost`; returns how many it closed. A socket
/// that went away meanwhile is not an error.
pub fn close_tcp_to(lost: &[Ipv4Net]) -> io::Result<usize> {
    if lost.is_empty() {
        return Ok(0);
    }
    let victims: Vec<TcpSocket> = tcp_sockets()?
        .into_iter()
        .filter(|s| lost.iter().any(|n| n.contains(&s.dst)))
        .collect();
    let nl = Netlink::open()?;
    let mut closed = 0;
    for (i, s) in victims.iter().enumerate() {
        nl.send(&request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            i as u32 + 2,
            &s.id,
        ))?;
        let buf = nl.recv()?;
        match messages(&buf).first() {
            Some((NLMSG_ERROR, p)) if error_code(p) == 0 => closed += 1,
            Some((NLMSG_ERROR, p)) if -error_code(p) == libc::ENOENT => {}
            Some((NLMSG_ERROR, p)) => {
                return Err(io::Error::from_raw_os_error(-error_code(p)));
            }
            _ => {}
        }
    }
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn requests_and_replies_have_the_kernel_layout() {
        let mut id = [0u8; SOCKID_LEN];
        id[20..24].copy_from_slice(&[10, 151, 1, 2]);
        let m = request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 7, &id);
        assert_eq!(m.len(), 72);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 72);
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            SOCK_DESTROY
        );
        assert_eq!(
            (m[16], m[17]),
            (libc::AF_INET as u8, libc::IPPROTO_TCP as u8)
        );
        assert_eq!(&m[24..], &id);
        assert_eq!(dst_of(&id), Ipv4Addr::new(10, 151, 1, 2));
        // Two messages back to back, the first padded to 4 bytes.
        let mut two = Vec::new();
        for (kind, body) in [(NLMSG_ERROR, vec![0u8; 5]), (NLMSG_DONE, vec![])] {
            let len = (NLMSG_HDRLEN + body.len()) as u32;
            two.extend_from_slice(&len.to_ne_bytes());
            two.extend_from_slice(&kind.to_ne_bytes());
            two.extend_from_slice(&[0u8; 10]);
            two.extend_from_slice(&body);
            while two.len() % 4 != 0 {
                two.push(0);
            }
        }
        let kinds: Vec<u16> = messages(&two).iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [NLMSG_ERROR, NLMSG_DONE]);
    }

    /// Real sockets: a connection to a "lost" destination is aborted, one
    /// elsewhere is untouched. Needs CAP_NET_ADMIN (root); runs in this
    /// process's netns on loopback addresses of its own.
    #[test]
    fn only_connections_to_lost_destinations_are_closed() {
        let l1 = TcpListener::bind("127.0.0.7:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.8:0").unwrap();
        let mut lost = TcpStream::connect(l1.local_addr().unwrap()).unwrap();
        let mut kept = TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (_a1, _) = l1.accept().unwrap();
        let (mut a2, _) = l2.accept().unwrap();
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "SOCK_DESTROY needs CAP_NET_ADMIN: run the tests as root under CI"
            );
            println!("SKIPPED: SOCK_DESTROY needs CAP_NET_ADMIN (not root)");
            return;
        }
        let closed = close_tcp_to(&["127.0.0.7/32".parse().unwrap()]).expect("close_tcp_to");
        // Both ends of the lost connection live in this netns.
        assert!(closed >= 1, "{closed}");
        let err = lost
            .write_all(b"x")
            .and_then(|()| lost.read(&mut [0u8; 1]).map(drop))
            .expect_err("the lost connection is closed");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        kept.write_all(b"y").unwrap();
        let mut b = [0u8; 1];
        a2.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"y", "the other connection is untouched");
    }
}
