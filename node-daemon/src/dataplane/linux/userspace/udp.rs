//! The UDP side of a userspace device: GotaTun's own socket (recvmmsg with
//! UDP GRO, sendmmsg), bound in the node netns whatever netns the runtime
//! thread binding it sits in.
//!
//! GotaTun binds again on every change of key or port, on whichever runtime
//! thread runs the change, so "create the device from a thread in the node
//! netns" is not enough: the factory enters the node netns for each bind.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;

use gotatun::udp::socket::{SockOpt, UdpSocket};
use gotatun::udp::{UdpRecv, UdpTransportFactory, UdpTransportFactoryParams};
use nix::sys::socket::{setsockopt, sockopt};

use super::super::netns;

/// Receive and send buffer of each socket. The 208 KiB default overflows
/// under a single TCP stream (drops counted as UdpRcvbufErrors, each one a
/// retransmit through the tunnel).
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;

/// Binds each device's socket in the node netns.
pub(crate) struct NodeUdp {
    pub node_ns: Arc<File>,
}

impl NodeUdp {
    fn bind_in_node(&self, p: &UdpTransportFactoryParams) -> io::Result<UdpSocket> {
        let opts = |only_v6| SockOpt {
            fwmark: p.fwmark,
            recv_buffer_size: Some(SOCKET_BUFFER),
            send_buffer_size: Some(SOCKET_BUFFER),
            only_v6,
        };
        netns::within(&self.node_ns, || {
            // Dual-stack where the node has IPv6, IPv4 only where it has not.
            let v6 = SocketAddr::from((p.addr.unwrap_or(Ipv6Addr::UNSPECIFIED.into()), p.port));
            Ok(match UdpSocket::bind(v6, opts(Some(false))) {
                Ok(s) => s,
                Err(e) if p.addr.is_none() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, p.port).into(), opts(None))?
                }
                Err(e) => return Err(e.into()),
            })
        })
        .map_err(|e| io::Error::other(format!("{e:#}")))
    }
}

impl UdpTransportFactory for NodeUdp {
    type Send = UdpSocket;
    type Recv = UdpSocket;

    async fn bind(&mut self, p: &UdpTransportFactoryParams) -> io::Result<(UdpSocket, UdpSocket)> {
        let s = self.bind_in_node(p)?;
        // Past net.core.{r,w}mem_max too: the daemon has CAP_NET_ADMIN, and
        // host-wide sysctls are not ours to raise. Without the capability the
        // capped sizes from the bind stay.
        let fd = s.socket().as_fd();
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER);
        let _ = setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER);
        if let Err(e) = s.enable_udp_gro() {
            tracing::debug!(error = %e, "UDP GRO unavailable");
        }
        Ok((s.clone(), s))
    }
}
