//! The TUN side of a userspace device: a TUN link created directly in the
//! app netns, read and written by GotaTun through its `IpRecv`/`IpSend`
//! traits.
//!
//! Hand-written rather than GotaTun's `tun` feature (the `tun` crate):
//! - the link must be created inside the app netns while the UDP sockets stay
//!   in the node netns; opening `/dev/net/tun` from a thread that is in the
//!   app netns does exactly that, with no link move afterwards;
//! - that crate's device polls the link's MTU by name every 3 s from the
//!   netns it was made in (200 wake-ups a minute per app at rest); here the
//!   data plane, which sets the MTU, tells the device directly;
//! - the fd stays ours for the offloads planned on this path (vnet headers,
//!   TSO), which neither crate offers.
//!
//! `unsafe` here: the TUNSETIFF ioctl (no safe wrapper exists) and
//! registering the fd with tokio's reactor.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use nix::errno::Errno;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

/// Packets read per `recv` call at most: one wake-up of the reading task
/// takes what the kernel has queued, without starving the sender.
const READ_BATCH: usize = 32;

nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);

/// Creates the TUN link `name` (IFF_TUN, no packet info) in the calling
/// thread's netns. The link lives as long as the returned fd.
pub(crate) fn open(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must have 1 to 15 bytes"),
        ));
    }
    let fd = nix::fcntl::open(
        "/dev/net/tun",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| io::Error::other(format!("open /dev/net/tun: {e}")))?;
    // SAFETY: an all-zero ifreq is a valid value of that plain C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: `fd` is an open /dev/net/tun fd and `req` a valid ifreq that
    // outlives the call.
    unsafe { tun_set_iff(fd.as_raw_fd(), &req) }
        .map_err(|e| io::Error::other(format!("create TUN {name}: {e}")))?;
    Ok(fd)
}

/// A TUN fd as GotaTun's IP transport (one per device; GotaTun clones it
/// for its reading and its writing side).
pub(crate) struct Tun {
    fd: Arc<AsyncFd<OwnedFd>>,
    mtu: watch::Receiver<u16>,
    /// Packets of the current `recv` batch.
    batch: Vec<Packet<Ip>>,
}

impl Tun {
    /// Wraps `fd`; must be called within the runtime that will drive it.
    /// `mtu` carries the link's MTU as the data plane sets it.
    pub(crate) fn new(fd: OwnedFd, mtu: watch::Receiver<u16>) -> io::Result<Self> {
        Ok(Tun {
            // SAFETY: an OwnedFd stays open, and names the same file, for
            // as long as the AsyncFd that owns it.
            fd: Arc::new(
                unsafe {
                    AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
                }
                .map_err(|e| e.into_parts().1)?,
            ),
            mtu,
            batch: Vec::with_capacity(READ_BATCH),
        })
    }

    /// One non-blocking read into a pool buffer.
    fn read_one(&self, pool: &PacketBufPool) -> io::Result<Packet<[u8]>> {
        let mut packet = pool.get();
        let n = nix::unistd::read(self.fd.get_ref().as_fd(), &mut packet[..])
            .map_err(io::Error::from)?;
        packet.truncate(n);
        Ok(packet)
    }
}

impl Clone for Tun {
    fn clone(&self) -> Self {
        Tun {
            fd: self.fd.clone(),
            mtu: self.mtu.clone(),
            batch: Vec::with_capacity(READ_BATCH),
        }
    }
}

impl IpSend for Tun {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        let bytes = packet.into_bytes();
        loop {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|fd| {
                nix::unistd::write(fd.get_ref().as_fd(), &bytes[..]).map_err(io::Error::from)
            }) {
                Ok(r) => return r.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}

impl IpRecv for Tun {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        self.batch.clear();
        while self.batch.is_empty() {
            let mut ready = self.fd.readable().await?;
            while self.batch.len() < READ_BATCH {
                match self.read_one(pool) {
                    Ok(p) => match p.try_into_ip() {
                        Ok(ip) => self.batch.push(ip),
                        // Shorter than an IP header: nothing to send.
                        Err(_) => continue,
                    },
                    Err(e) if e.raw_os_error() == Some(Errno::EAGAIN as i32) => {
                        ready.clear_ready();
                        break;
                    }
                    Err(e) => {
                        if self.batch.is_empty() {
                            return Err(e);
                        }
                        break;
                    }
                }
            }
        }
        Ok(self.batch.drain(..))
    }

    fn mtu(&self) -> MtuWatcher {
        MtuWatcher::from(self.mtu.clone())
    }
}
