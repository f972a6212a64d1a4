//! The resolver's listening sockets. A socket belongs to the netns of the
//! thread that created it, for its whole life: the data plane calls
//! [`open`] on its own thread while that thread is inside the app netns, and
//! the sockets keep serving there after the thread has left.

use std::net::{SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result};
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrIn,
};

/// A resolver's UDP and TCP sockets, bound to the same address.
#[derive(Debug)]
pub struct Sockets {
    /// Queries over UDP.
    pub udp: UdpSocket,
    /// Queries over TCP (listening).
    pub tcp: TcpListener,
}

fn bound(kind: SockType, addr: SocketAddrV4) -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        kind,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("socket")?;
    // Bind even while the tunnel address is not (or no longer) on the
    // interface: packets arrive once it is, with no rebind on our side.
    setsockopt(&fd, sockopt::IpFreebind, &true).context("IP_FREEBIND")?;
    if kind == SockType::Stream {
        // A restarted resolver may rebind while old connections linger.
        setsockopt(&fd, sockopt::ReuseAddr, &true).context("SO_REUSEADDR")?;
    }
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).with_context(|| format!("bind {addr}"))?;
    Ok(fd)
}

/// Opens both sockets on `addr` in the calling thread's netns.
pub fn open(addr: SocketAddrV4) -> Result<Sockets> {
    let udp = UdpSocket::from(bound(SockType::Datagram, addr)?);
    let tcp = bound(SockType::Stream, addr)?;
    listen(&tcp, Backlog::new(64).context("backlog")?).context("listen")?;
    Ok(Sockets {
        udp,
        tcp: TcpListener::from(tcp),
    })
}
