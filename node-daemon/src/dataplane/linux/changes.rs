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
//!
//! Counters moving is not announced either, so a third socket answers
//! "did any packet move in this netns since then?" ([`Subscription::packets`]):
//! one dump of the links' packet counters, summed. Every packet a counter of ours counts (policy,
//! per-peer traffic, new connections) crosses a link of the netns, so an
//! unchanged sum means unchanged counters, and the far dearer nftables
//! listing can be skipped.

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

/// The two notification sockets of one netns, and one for link dumps.
pub(crate) struct Subscription {
    route: Socket,
    nft: Socket,
    dump: Socket,
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
            dump: {
                let mut s = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
                s.bind_auto().context("bind netlink socket")?;
                s
            },
        })
    }

    /// The notification sockets' fds, to wait on (see [`super::notify`]).
    pub(crate) fn fds(&self) -> [std::os::fd::BorrowedFd<'_>; 2] {
        use std::os::fd::AsFd;
        [self.route.as_fd(), self.nft.as_fd()]
    }

    /// Packets received and sent over every link of the netns, summed.
    pub(crate) fn packets(&self) -> Result<u64> {
        packets(&self.dump)
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

/// One `RTM_GETSTATS` dump on `s` asking only for each link's 64-bit
/// counters (a link dump would carry, and make us parse, every attribute
/// of every link), summing received and sent packets.
fn packets(s: &Socket) -> Result<u64> {
    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
    };
    use netlink_packet_route::stats::{StatsAttribute, StatsFilterMask, StatsHeader, StatsMessage};
    use netlink_packet_route::RouteNetlinkMessage;

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut ask = StatsMessage::default();
    ask.header = StatsHeader::default();
    ask.header.filter_mask = StatsFilterMask::Link64;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetStats(ask)),
    );
    req.finalize();
    let mut out = vec![0u8; req.buffer_len()];
    req.serialize(&mut out);
    s.send(&out, 0).context("send stats dump request")?;
    let mut sum = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let n = s.recv(&mut buf, 0).context("receive stats dump")?;
        let mut at = 0;
        while at < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..n])
                .map_err(|e| anyhow::anyhow!("parse stats dump: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(sum),
                NetlinkPayload::Error(e) => anyhow::bail!("stats dump: {e}"),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewStats(m)) => {
                    for a in m.attributes {
                        if let StatsAttribute::Link64(st) = a {
                            sum = sum.wrapping_add(st.rx_packets).wrapping_add(st.tx_packets);
                        }
                    }
                }
                _ => {}
            }
            if len == 0 {
                anyhow::bail!("stats dump: empty message");
            }
            // Messages start on 4-byte boundaries (NLMSG_ALIGN).
            at += (len + 3) & !3;
        }
    }
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
    fn the_link_dump_counts_a_datagram_over_loopback() {
        let mut s = Socket::new(NETLINK_ROUTE).unwrap();
        s.bind_auto().unwrap();
        let before = packets(&s).expect("link dump");
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 4];
        rx.recv(&mut buf).unwrap();
        let after = packets(&s).expect("link dump");
        // Sent and received on `lo`: two more, whatever else moved.
        assert!(after >= before + 2, "{before} -> {after}");
    }

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
