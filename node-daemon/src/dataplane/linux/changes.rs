//! Whether anything changed in an app netns since the last look, from the
//! kernel's own change notifications, so a pass reads an app netns again
//! only when it changed instead of dumping every app's links, routes,
//! addresses and nftables tables on every pass (at 200 apps that read was
//! most of the daemon's idle CPU).
//!
//! Each app netns gets two netlink sockets, opened inside it (a netlink
//! socket reports the namespace it was created in): rtnetlink with the link,
//! IPv4 address and IPv4 route groups, and nfnetlink with the nftables group
//! (rule, chain, table changes; counters moving send nothing). A pass only
//! drains them without waiting: any message, or an overflow of the socket's
//! queue, means "read this netns again". The messages are not parsed: that
//! something changed is all a pass needs, and the read that follows sees
//! what. Sockets come from `netlink-sys` (already under rtnetlink).
//!
//! What the sockets cannot see (the WireGuard configuration, which the
//! kernel and GotaTun never announce) is handled by the caller: its own
//! writes invalidate, and a periodic re-read stays the safety net.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE};
use netlink_sys::{Socket, SocketAddr};

/// rtnetlink groups: links, IPv4 addresses, IPv4 routes.
const ROUTE_GROUPS: [u32; 3] = [
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_IPV4_IFADDR,
    libc::RTNLGRP_IPV4_ROUTE,
];

/// Receive queue of each socket: a burst of our own writes (hundreds of
/// routes for a big app) fits; past it the kernel reports an overflow,
/// which counts as a change anyway.
const RCVBUF: usize = 256 * 1024;

/// What changed in one netns since the last [`Subscription::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Changed {
    /// Links, addresses or routes.
    pub links: bool,
    /// nftables tables, chains or rules.
    pub nft: bool,
}

/// The two notification sockets of one netns.
pub(crate) struct Subscription {
    route: Socket,
    nft: Socket,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

fn socket(protocol: isize, groups: &[u32]) -> Result<Socket> {
    let mut s = Socket::new(protocol).context("netlink socket")?;
    s.bind(&SocketAddr::new(0, 0))
        .context("bind netlink socket")?;
    for g in groups {
        s.add_membership(*g)
            .with_context(|| format!("join netlink group {g}"))?;
    }
    s.set_non_blocking(true).context("non-blocking")?;
    // Best effort: the default queue only makes overflows (= re-reads) likelier.
    let _ = s.set_rx_buf_sz(RCVBUF);
    Ok(s)
}

impl Subscription {
    /// Subscribes to the calling thread's current netns.
    pub(crate) fn here() -> Result<Self> {
        Ok(Subscription {
            route: socket(NETLINK_ROUTE, &ROUTE_GROUPS)?,
            nft: socket(NETLINK_NETFILTER, &[libc::NFNLGRP_NFTABLES as u32])?,
        })
    }

    /// Drains both sockets without waiting.
    pub(crate) fn take(&self) -> Changed {
        Changed {
            links: drain(&self.route),
            nft: drain(&self.nft),
        }
    }
}

/// Whether `s` had anything queued (or lost something: an overflow, an
/// error), emptying its queue.
fn drain(s: &Socket) -> bool {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut any = false;
    // Bounded: a writer faster than us cannot keep the pass here forever.
    for _ in 0..1024 {
        buf.clear();
        match s.recv(&mut buf, 0) {
            Ok(0) => return any,
            Ok(_) => any = true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return any,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // ENOBUFS (messages were dropped) or anything else: the netns
            // may have changed in ways we did not see.
            Err(_) => any = true,
        }
    }
    true
}

/// A deterministic spread of `base` by up to a quarter of it, from `key`:
/// re-reads of apps created together do not all fall on the same pass.
pub(crate) fn spread(base: Duration, key: &str) -> Duration {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    base + base.mul_f64((h % 1000) as f64 / 4000.0)
}

/// Whether a read made at `at` is older than `max` now.
pub(crate) fn stale(at: Instant, max: Duration) -> bool {
    at.elapsed() >= max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_stays_within_a_quarter_and_differs_by_key() {
        let base = Duration::from_secs(20);
        let a = spread(base, "weft-n1-aaaaaaaaaa");
        let b = spread(base, "weft-n1-bbbbbbbbbb");
        for d in [a, b] {
            assert!(d >= base && d < base + base / 4, "{d:?}");
        }
        assert_ne!(a, b);
        assert_eq!(a, spread(base, "weft-n1-aaaaaaaaaa"), "stable per key");
    }
}
