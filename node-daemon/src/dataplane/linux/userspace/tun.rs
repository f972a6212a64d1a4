//! The TUN side of a userspace device: a TUN link created directly in the
//! app netns, read and written by GotaTun through its `IpRecv`/`IpSend`
//! traits, with the kernel's offloads on (see [`super::offload`]): reads
//! take TCP super-packets of up to 64 KiB and cut them into segments,
//! writes join a flow's segments into super-packets again. A single writer
//! task drains what is queued and writes it joined, so the batch boundary
//! GotaTun's per-packet `send` does not give is where the queue runs dry.
//!
//! Hand-written rather than GotaTun's `tun` feature (the `tun` crate):
//! - the link must be created inside the app netns while the UDP sockets stay
//!   in the node netns; opening `/dev/net/tun` from a thread that is in the
//!   app netns does exactly that, with no link move afterwards;
//! - that crate's device polls the link's MTU by name every 3 s from the
//!   netns it was made in (200 wake-ups a minute per app at rest); here the
//!   data plane, which sets the MTU, tells the device directly;
//! - neither that crate nor GotaTun offers the offloads (virtio-net
//!   headers, TSO and GRO).
//!
//! `unsafe` here: the TUNSETIFF and TUNSETOFFLOAD ioctls (no safe wrapper
//! exists) and registering the fd with tokio's reactor.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use nix::errno::Errno;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, watch};

use super::offload::{self, Tso, VnetHdr, GSO_NONE, VNET_HDR_LEN};

/// Packets read per `recv` call at most (a super-packet counts as all its
/// segments): one wake-up of the reading task takes what the kernel has
/// queued, without starving the sender.
const READ_BATCH: usize = 64;
/// Packets queued for the writer task; the writer takes up to this many at
/// once and joins what it can.
const WRITE_QUEUE: usize = 256;
/// Largest packet the kernel hands over with TSO on (64 KiB and headers).
const MAX_READ: usize = 65_536 + 256;

/// TUNSETOFFLOAD flags: checksums may be left partial, TCP over IPv4 and
/// IPv6 may come as super-packets.
const TUN_F_CSUM: libc::c_int = 0x01;
const TUN_F_TSO4: libc::c_int = 0x02;
const TUN_F_TSO6: libc::c_int = 0x04;

nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    tun_set_offload,
    nix::request_code_write!(b'T', 208, std::mem::size_of::<libc::c_uint>())
);

/// Creates the TUN link `name` (IFF_TUN, no packet info, virtio-net
/// headers, TSO) in the calling thread's netns. The link lives as long as
/// the returned fd.
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
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: `fd` is an open /dev/net/tun fd and `req` a valid ifreq that
    // outlives the call.
    unsafe { tun_set_iff(fd.as_raw_fd(), &req) }
        .map_err(|e| io::Error::other(format!("create TUN {name}: {e}")))?;
    // SAFETY: `fd` is the TUN fd just attached; the argument is a plain int.
    if let Err(e) = unsafe { tun_set_offload(fd.as_raw_fd(), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) }
    {
        // Still correct without: every packet then comes whole and checked.
        tracing::warn!(interface = name, error = %e, "TUN offloads unavailable");
    }
    Ok(fd)
}

/// A TUN fd as GotaTun's IP transport (one per device; GotaTun clones it
/// for its reading and its writing side).
pub(crate) struct Tun {
    fd: Arc<AsyncFd<OwnedFd>>,
    mtu: watch::Receiver<u16>,
    /// To the writer task.
    tx: mpsc::Sender<Packet<[u8]>>,
    /// Packets of the current `recv` batch.
    batch: Vec<Packet<Ip>>,
}

thread_local! {
    /// Where a super-packet is put together when it does not fit a pool
    /// buffer: one per runtime thread, not one per device (a read and its
    /// cutting never wait, so no other device can use it meanwhile).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Tun {
    /// Wraps `fd` and starts its writer task; must be called within the
    /// runtime that will drive it. `mtu` carries the link's MTU as the data
    /// plane sets it.
    pub(crate) fn new(fd: OwnedFd, mtu: watch::Receiver<u16>) -> io::Result<Self> {
        // SAFETY: an OwnedFd stays open, and names the same file, for as
        // long as the AsyncFd that owns it.
        let fd = Arc::new(
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|e| e.into_parts().1)?,
        );
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(fd.clone(), rx));
        Ok(Tun {
            fd,
            mtu,
            tx,
            batch: Vec::with_capacity(READ_BATCH),
        })
    }

    /// One non-blocking read: its packet, or the segments of its
    /// super-packet, go to the batch. Packets the kernel should never hand
    /// over are dropped here.
    fn read_one(&mut self, pool: &PacketBufPool) -> io::Result<()> {
        SCRATCH.with_borrow_mut(|scratch| self.read_with(pool, scratch))
    }

    fn read_with(&mut self, pool: &PacketBufPool, scratch: &mut Vec<u8>) -> io::Result<()> {
        let mut hdr = [0u8; VNET_HDR_LEN];
        let mut packet = pool.get();
        let room = packet.len();
        if scratch.len() < MAX_READ {
            scratch.resize(MAX_READ, 0);
        }
        // A packet larger than a pool buffer runs on into the scratch
        // buffer, past the room its head is copied to below.
        let n = nix::sys::uio::readv(
            self.fd.get_ref().as_fd(),
            &mut [
                IoSliceMut::new(&mut hdr),
                IoSliceMut::new(&mut packet[..]),
                IoSliceMut::new(&mut scratch[room..]),
            ],
        )
        .map_err(io::Error::from)?;
        let Some(len) = n.checked_sub(VNET_HDR_LEN) else {
            return Ok(());
        };
        let h = VnetHdr::parse(&hdr);
        if h.gso_type == GSO_NONE {
            if len > room {
                tracing::debug!(len, "TUN packet larger than any MTU: dropped");
                return Ok(());
            }
            packet.truncate(len);
            if let Err(e) = offload::finish_checksum(&mut packet[..], &h) {
                tracing::debug!(error = %e, "TUN packet dropped");
                return Ok(());
            }
            // Shorter than an IP header: nothing to send.
            if let Ok(ip) = packet.try_into_ip() {
                self.batch.push(ip);
            }
            return Ok(());
        }
        let whole: &[u8] = if len <= room {
            &packet[..len]
        } else {
            scratch[..room].copy_from_slice(&packet[..]);
            &scratch[..len]
        };
        let tso = match Tso::new(whole, &h) {
            Ok(t) if t.max_segment_len() <= room => t,
            Ok(_) => {
                tracing::debug!(
                    gso_size = h.gso_size,
                    "TUN super-packet with segments larger than any MTU: dropped"
                );
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(error = %e, "TUN super-packet dropped");
                return Ok(());
            }
        };
        for i in 0..tso.count() {
            let mut seg = pool.get();
            let n = tso.segment(whole, i, &mut seg[..]);
            seg.truncate(n);
            if let Ok(ip) = seg.try_into_ip() {
                self.batch.push(ip);
            }
        }
        Ok(())
    }
}

/// Writes what is queued, joined where it can be, until every sender is
/// gone. A write error drops that write only: the link may be going away,
/// which the data plane handles.
async fn write_loop(fd: Arc<AsyncFd<OwnedFd>>, mut rx: mpsc::Receiver<Packet<[u8]>>) {
    let mut batch = Vec::with_capacity(WRITE_QUEUE);
    while rx.recv_many(&mut batch, WRITE_QUEUE).await > 0 {
        for w in offload::coalesce(&mut batch) {
            let hdr = w.hdr.to_bytes();
            let mut iov = [IoSlice::new(&[]); offload::MAX_SEGMENTS + 1];
            iov[0] = IoSlice::new(&hdr);
            iov[1] = IoSlice::new(&batch[w.first][..]);
            for (slot, p) in iov[2..]
                .iter_mut()
                .zip(&batch[w.first + 1..w.first + w.count])
            {
                *slot = IoSlice::new(&p[w.data_offset..]);
            }
            if let Err(e) = write_all(&fd, &iov[..w.count + 1]).await {
                tracing::debug!(error = %e, "TUN write failed; packet dropped");
            }
        }
        batch.clear();
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, iov: &[IoSlice<'_>]) -> io::Result<()> {
    loop {
        let mut ready = fd.writable().await?;
        match ready
            .try_io(|fd| nix::sys::uio::writev(fd.get_ref().as_fd(), iov).map_err(io::Error::from))
        {
            Ok(r) => return r.map(drop),
            Err(_would_block) => continue,
        }
    }
}

impl Clone for Tun {
    fn clone(&self) -> Self {
        Tun {
            fd: self.fd.clone(),
            mtu: self.mtu.clone(),
            tx: self.tx.clone(),
            batch: Vec::with_capacity(READ_BATCH),
        }
    }
}

impl IpSend for Tun {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        self.tx
            .send(packet.into_bytes())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the TUN writer has stopped"))
    }
}

impl IpRecv for Tun {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        self.batch.clear();
        while self.batch.is_empty() {
            let fd = self.fd.clone();
            let mut ready = fd.readable().await?;
            while self.batch.len() < READ_BATCH {
                match self.read_one(pool) {
                    Ok(()) => {}
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
