//! The UDP side of a userspace device: GotaTun's own socket (recvmmsg with
//! UDP GRO, sendmmsg), bound in the node netns whatever netns the runtime
//! thread binding it sits in.
//!
//! GotaTun binds again on every change of key or port, on whichever runtime
//! thread runs the change, so "create the device from a thread in the node
//! netns" is not enough: the factory enters the node netns for each bind.
//!
//! Sending, [`GsoSend`] adds UDP GSO to GotaTun's batches: the encrypted
//! segments of one TUN super-packet leave as one send of up to 64 KiB
//! (`UDP_SEGMENT`), so the node's stack, its links and the peer's stack (with
//! UDP GRO, which GotaTun turns on) handle one packet instead of dozens.

use std::fs::File;
use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gotatun::packet::Packet;
use gotatun::udp::socket::{SockOpt, UdpSocket};
use gotatun::udp::{UdpRecv, UdpSend, UdpTransportFactory, UdpTransportFactoryParams};
use nix::sys::socket::{setsockopt, sockopt, ControlMessage, MsgFlags, SockaddrStorage};
use tokio::io::Interest;

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
    type Send = GsoSend;
    type Recv = UdpSocket;

    async fn bind(&mut self, p: &UdpTransportFactoryParams) -> io::Result<(GsoSend, UdpSocket)> {
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
        let send = GsoSend {
            socket: s.clone(),
            gso: Arc::new(AtomicBool::new(true)),
        };
        Ok((send, s))
    }
}

/// Most segments in one GSO send (the kernel takes 64 everywhere).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (a UDP datagram's limit).
const GSO_MAX_BYTES: usize = 65_000;

/// GotaTun's socket, sending runs of equal-sized packets to one peer as one
/// GSO send.
#[derive(Clone)]
pub(crate) struct GsoSend {
    socket: UdpSocket,
    /// Off for good once the kernel refused a GSO send (a link without
    /// checksum offload answers EIO): GotaTun's own batched sends then.
    gso: Arc<AtomicBool>,
}

/// Runs of `packets` to send as one: consecutive packets to one
/// destination, all as long as the first but the last, which may be shorter
/// (the only shape GSO can describe). (start, count, segment size).
fn gso_runs(packets: &[(Packet, SocketAddr)]) -> Vec<(usize, usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < packets.len() {
        let (first, dst) = (&packets[i].0, packets[i].1);
        let seg = first.len();
        let (mut n, mut bytes) = (1, seg);
        while i + n < packets.len() && n < GSO_MAX_SEGMENTS {
            let (p, d) = (&packets[i + n].0, packets[i + n].1);
            if d != dst || p.len() > seg || p.is_empty() || bytes + p.len() > GSO_MAX_BYTES {
                break;
            }
            n += 1;
            bytes += p.len();
            if p.len() < seg {
                break;
            }
        }
        runs.push((i, n, seg));
        i += n;
    }
    runs
}

impl GsoSend {
    /// One sendmsg of `packets` as GSO segments of `seg` bytes.
    async fn send_run(&self, packets: &[(Packet, SocketAddr)], seg: usize) -> io::Result<()> {
        let socket = self.socket.socket();
        let fd = socket.as_raw_fd();
        let dst = SockaddrStorage::from(packets[0].1);
        let iov: Vec<IoSlice<'_>> = packets.iter().map(|(p, _)| IoSlice::new(&p[..])).collect();
        let seg = seg as u16;
        socket
            .async_io(Interest::WRITABLE, || {
                let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
                let cmsgs: &[ControlMessage<'_>] = if iov.len() > 1 { &cmsg } else { &[] };
                nix::sys::socket::sendmsg(fd, &iov, cmsgs, MsgFlags::MSG_DONTWAIT, Some(&dst))
                    .map_err(io::Error::from)
            })
            .await
            .map(drop)
    }
}

impl UdpSend for GsoSend {
    type SendManyBuf = <UdpSocket as UdpSend>::SendManyBuf;

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        self.socket.send_to(packet, destination).await
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        self.socket.max_number_of_packets_to_send()
    }

    async fn send_many_to(
        &self,
        buf: &mut Self::SendManyBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        let runs = gso_runs(packets);
        if !self.gso.load(Ordering::Relaxed) || runs.iter().all(|r| r.1 == 1) {
            return self.socket.send_many_to(buf, packets).await;
        }
        for (start, n, seg) in runs {
            let run = &packets[start..start + n];
            match self.send_run(run, seg).await {
                Ok(()) => {}
                Err(e) if n > 1 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                    tracing::info!(error = %e, "UDP GSO refused; sending without it");
                    self.gso.store(false, Ordering::Relaxed);
                    let mut rest: Vec<_> = packets.drain(start..).collect();
                    packets.clear();
                    return self.socket.send_many_to(buf, &mut rest).await;
                }
                // A peer that cannot be reached now must not stop the others.
                Err(e) => tracing::trace!(error = %e, "UDP send failed"),
            }
        }
        packets.clear();
        Ok(())
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        self.socket.local_addr().map(Some)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        UdpSend::set_fwmark(&self.socket, mark)
    }
}

#[cfg(test)]
mod tests {
    use gotatun::packet::PacketBufPool;

    use super::*;

    fn pkts(spec: &[(usize, u16)]) -> Vec<(Packet, SocketAddr)> {
        let pool: PacketBufPool = PacketBufPool::new(spec.len());
        spec.iter()
            .map(|(len, port)| {
                let mut p = pool.get();
                p.truncate(*len);
                (p, SocketAddr::from(([192, 0, 2, 1], *port)))
            })
            .collect()
    }

    #[test]
    fn runs_are_equal_sizes_to_one_peer_with_a_shorter_last() {
        let p = pkts(&[
            (1452, 1),
            (1452, 1),
            (900, 1),
            (1452, 1),
            (1452, 2),
            (1452, 2),
            (1500, 2),
        ]);
        assert_eq!(
            gso_runs(&p),
            [(0, 3, 1452), (3, 1, 1452), (4, 2, 1452), (6, 1, 1500)]
        );
    }

    #[test]
    fn runs_stay_within_what_one_datagram_may_carry() {
        let p = pkts(&[(1452, 1); 100]);
        let runs = gso_runs(&p);
        assert!(runs
            .iter()
            .all(|r| r.1 * 1452 <= GSO_MAX_BYTES && r.1 <= GSO_MAX_SEGMENTS));
        assert_eq!(runs.iter().map(|r| r.1).sum::<usize>(), 100);
        let small = pkts(&[(100, 1); 100]);
        assert_eq!(gso_runs(&small)[0].1, GSO_MAX_SEGMENTS);
    }
}
