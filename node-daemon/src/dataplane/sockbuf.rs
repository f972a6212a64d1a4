//! Enlarges the UDP socket buffers of an in-process WireGuard device.
//!
//! boringtun opens its UDP sockets itself and does not expose them, and the
//! default 208 KiB receive buffer overflows under load (drops, TCP
//! retransmits). Rather than raising host-wide defaults, we find our own
//! process's sockets bound to the device's port (socket inode in
//! /proc/thread-self/net/udp{,6} matched against /proc/self/fd) and set their
//! buffers with the *FORCE options (root may exceed rmem_max).
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::os::fd::RawFd;

/// Buffer size applied to each direction.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;

/// Inodes of UDP sockets bound to `port` in the calling thread's netns.
fn inodes_bound_to(port: u16) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for table in ["/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is "HEXADDR:HEXPORT"; inode is the 10th column.
            let (Some(local), Some(inode)) = (cols.get(1), cols.get(9)) else {
                continue;
            };
            let bound = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if bound == Some(port) {
                if let Ok(i) = inode.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Our file descriptors that are sockets with one of `inodes`. Each fd is
/// `fstat`ed directly rather than its `/proc/self/fd` link read: with a
/// few thousand fds (hundreds of devices) reading every link for every new
/// device was most of the daemon's time programming 200 apps.
fn fds_for(inodes: &BTreeSet<u64>) -> Vec<RawFd> {
    let mut fds = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return fds;
    };
    for e in rd.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        // SAFETY: `fstat` only writes into `st`; a closed (or reused) fd
        // makes it fail or describe another file, which the checks below
        // skip or match by inode as intended.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            continue;
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFSOCK && inodes.contains(&st.st_ino) {
            fds.push(fd);
        }
    }
    fds
}

fn set_force(fd: RawFd, opt: libc::c_int, bytes: usize) -> std::io::Result<()> {
    let v: libc::c_int = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: `fd` was just read from /proc/self/fd and refers to a socket of
    // this process; setsockopt only reads `size_of::<c_int>()` bytes from `&v`.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets send and receive buffers of this process's UDP sockets bound to
/// `port` (in the calling thread's netns). Returns how many sockets changed.
pub fn enlarge_udp_buffers(port: u16, bytes: usize) -> std::io::Result<usize> {
    let fds = fds_for(&inodes_bound_to(port));
    for fd in &fds {
        set_force(*fd, libc::SO_RCVBUFFORCE, bytes)?;
        set_force(*fd, libc::SO_SNDBUFFORCE, bytes)?;
    }
    Ok(fds.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn finds_and_enlarges_our_own_socket() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert!(fds_for(&inodes_bound_to(port)).contains(&s.as_raw_fd()));
        if nix::unistd::geteuid().is_root() {
            assert_eq!(enlarge_udp_buffers(port, 1 << 20).unwrap(), 1);
            let got = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::RcvBuf).unwrap();
            assert!(got >= 1 << 20, "kernel doubles the value: {got}");
        }
    }
}
