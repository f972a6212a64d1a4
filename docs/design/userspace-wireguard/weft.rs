//! Weft-style transports for gotatun: a TUN opened directly inside the app
//! netns (our own IpSend/IpRecv on a non-blocking fd), and a UDP factory that
//! binds gotatun's own UdpSocket (recvmmsg+GRO, sendmmsg) inside the node
//! netns, whatever netns the runtime thread is in.

use std::fs::File;
use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use gotatun::udp::socket::{SockOpt, UdpSocket};
use gotatun::udp::{UdpRecv, UdpTransportFactory, UdpTransportFactoryParams};
use tokio::io::unix::AsyncFd;

/// Runs `f` with the calling thread in netns `ns`, then switches back.
pub fn within<T>(ns: &File, f: impl FnOnce() -> T) -> T {
    let orig = File::open("/proc/thread-self/ns/net").expect("own netns");
    assert_eq!(unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
    let r = f();
    if unsafe { libc::setns(orig.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        std::process::abort();
    }
    r
}

/// Opens /dev/net/tun and creates `name` (IFF_TUN|IFF_NO_PI) in the calling
/// thread's netns.
pub fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    const TUNSETIFF: libc::c_ulong = 0x400454ca;
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A TUN fd as gotatun's IP transport.
#[derive(Clone)]
pub struct Tun {
    fd: Arc<AsyncFd<OwnedFd>>,
    mtu: MtuWatcher,
}

impl Tun {
    pub fn new(fd: OwnedFd, mtu: MtuWatcher) -> io::Result<Self> {
        Ok(Tun { fd: Arc::new(AsyncFd::new(fd)?), mtu })
    }
}

impl IpSend for Tun {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        let bytes = packet.into_bytes();
        loop {
            let mut g = self.fd.writable().await?;
            let r = g.try_io(|fd| {
                let n = unsafe {
                    libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len())
                };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
            });
            if let Ok(r) = r {
                return r;
            }
        }
    }
}

impl IpRecv for Tun {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        let mut packet = pool.get();
        loop {
            let mut g = self.fd.readable().await?;
            let r = g.try_io(|fd| {
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), packet.as_mut_ptr().cast(), packet.len())
                };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
            });
            match r {
                Ok(Ok(n)) => {
                    packet.truncate(n);
                    break;
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        let ip = packet
            .try_into_ip()
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(std::iter::once(ip))
    }

    fn mtu(&self) -> MtuWatcher {
        self.mtu.clone()
    }
}

/// Binds gotatun's UdpSocket in the node netns (dual-stack `[::]:port`).
pub struct NodeUdp {
    pub node_ns: Arc<File>,
    pub buffer: usize,
}

impl UdpTransportFactory for NodeUdp {
    type Send = UdpSocket;
    type Recv = UdpSocket;

    async fn bind(&mut self, p: &UdpTransportFactoryParams) -> io::Result<(UdpSocket, UdpSocket)> {
        let opts = SockOpt {
            fwmark: p.fwmark,
            recv_buffer_size: Some(self.buffer),
            send_buffer_size: Some(self.buffer),
            only_v6: Some(false),
        };
        let addr = (p.addr.unwrap_or(Ipv6Addr::UNSPECIFIED.into()), p.port).into();
        let s = within(&self.node_ns, || UdpSocket::bind(addr, opts))?;
        let _ = s.enable_udp_gro();
        Ok((s.clone(), s))
    }
}
