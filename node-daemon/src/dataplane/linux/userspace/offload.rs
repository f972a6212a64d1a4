//! TUN offloads, as pure functions over packet bytes.
//!
//! With `IFF_VNET_HDR` every packet on the TUN fd carries a virtio-net
//! header. Reading, the kernel hands over TCP super-packets of up to 64 KiB
//! (TSO) and packets whose checksum it left partial; [`Tso`] cuts a
//! super-packet into the segments GotaTun encrypts one by one, and
//! [`finish_checksum`] completes a partial checksum. Writing, [`coalesce`]
//! joins consecutive segments of one TCP flow into one super-packet (GRO),
//! so the app netns' stack handles one packet where it would handle dozens.
//! The kernel's own WireGuard gets the same effect from GSO/GRO of its skbs.
//!
//! Hand-written: no maintained Rust crate segments or coalesces for a TUN fd
//! (wireguard-go and Tailscale do it in their Go TUN layers); the rules
//! follow the kernel's `tcp_gso_segment` and `tcp_gro_receive`.

use std::fmt;
use std::ops::DerefMut;

/// Bytes of the virtio-net header before each packet.
pub(crate) const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start +
/// csum_offset` holds only the pseudo-header sum.
pub(crate) const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_*`.
pub(crate) const GSO_NONE: u8 = 0;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_TCPV6: u8 = 4;
/// Set on a GSO type when the segments carry ECN marks.
pub(crate) const GSO_ECN: u8 = 0x80;

/// Largest super-packet built when coalescing (IPv4 total length limit).
const MAX_COALESCED: usize = 65_535;
/// Most segments joined into one super-packet.
pub(crate) const MAX_SEGMENTS: usize = 64;

const TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// The virtio-net header (`struct virtio_net_hdr`), in the host's byte
/// order as the TUN driver uses it unless told otherwise.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub(crate) fn parse(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }

    pub(crate) fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// Why a packet read from the TUN could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OffloadError {
    /// The header or the packet is not what the kernel should produce.
    Malformed(&'static str),
    /// A GSO type this device never enables.
    Unsupported(u8),
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffloadError::Malformed(why) => write!(f, "malformed offload packet: {why}"),
            OffloadError::Unsupported(t) => write!(f, "unsupported GSO type {t:#x}"),
        }
    }
}

// ------------------------------------------------------------- checksums

/// Adds `data` to a running ones'-complement sum, as 16-bit big-endian
/// words (`data` must start at an even offset of the summed region). Words
/// are taken four bytes at a time: 2^16 = 1 (mod 0xffff), so a 32-bit
/// big-endian word adds the same as its two halves.
pub(crate) fn csum_add(mut acc: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let r = words.remainder();
    if r.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([r[0], r[1]]));
    }
    if r.len() % 2 == 1 {
        acc += u64::from(r[r.len() - 1]) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits (not complemented).
pub(crate) fn csum_fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum of a TCP/UDP segment of `l4_len` bytes.
fn pseudo_sum(pkt: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
    csum_add(0, addrs) + u64::from(proto) + l4_len as u64
}

/// Completes the checksum the kernel left partial: the field holds the
/// pseudo-header sum, so summing from `csum_start` to the end and
/// complementing gives the final value. A result of 0 is sent as 0xffff
/// (the same value in ones' complement; 0 means "no checksum" for UDP).
pub(crate) fn finish_checksum(pkt: &mut [u8], h: &VnetHdr) -> Result<(), OffloadError> {
    if h.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(h.csum_start);
    let field = start + usize::from(h.csum_offset);
    if field + 2 > pkt.len() {
        return Err(OffloadError::Malformed("checksum offset past the packet"));
    }
    let mut c = !csum_fold(csum_add(0, &pkt[start..]));
    if c == 0 {
        c = 0xffff;
    }
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

// ------------------------------------------------------------ IP and TCP

/// Where the parts of a TCP packet are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpPacket {
    v6: bool,
    /// Offset of the TCP header.
    l4: usize,
    /// Offset of the payload.
    data: usize,
}

impl TcpPacket {
    /// A plain TCP packet: IPv4 (any header length) or IPv6 with TCP as the
    /// first next header, and the IP length matching the bytes present.
    fn parse(pkt: &[u8]) -> Option<TcpPacket> {
        let (v6, l4) = match pkt.first()? >> 4 {
            4 => {
                let ihl = usize::from(pkt[0] & 0x0f) * 4;
                if ihl < 20 || pkt.len() < ihl || pkt[9] != TCP {
                    return None;
                }
                if usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len() {
                    return None;
                }
                // Fragments are never TCP segments we can touch.
                if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
                    return None;
                }
                (false, ihl)
            }
            6 => {
                if pkt.len() < 40 || pkt[6] != TCP {
                    return None;
                }
                if usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40 != pkt.len() {
                    return None;
                }
                (true, 40)
            }
            _ => return None,
        };
        let doff = usize::from(*pkt.get(l4 + 12)? >> 4) * 4;
        if doff < 20 || pkt.len() < l4 + doff {
            return None;
        }
        Some(TcpPacket {
            v6,
            l4,
            data: l4 + doff,
        })
    }

    fn seq(&self, pkt: &[u8]) -> u32 {
        u32::from_be_bytes(pkt[self.l4 + 4..self.l4 + 8].try_into().expect("4 bytes"))
    }

    fn flags(&self, pkt: &[u8]) -> u8 {
        pkt[self.l4 + 13]
    }

    fn checksum_ok(&self, pkt: &[u8]) -> bool {
        let l4_len = pkt.len() - self.l4;
        csum_fold(pseudo_sum(pkt, self.v6, TCP, l4_len) + csum_add(0, &pkt[self.l4..])) == 0xffff
    }
}

/// Sets the IP length fields for a packet of `total` bytes; IPv4 also gets
/// its header checksum again.
fn set_ip_length(pkt: &mut [u8], v6: bool, l4: usize, total: usize) {
    if v6 {
        pkt[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    } else {
        pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        pkt[10..12].copy_from_slice(&[0, 0]);
        let c = !csum_fold(csum_add(0, &pkt[..l4]));
        pkt[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

// ------------------------------------------------------------------- TSO

/// A TCP super-packet read from the TUN, cut into segments of `gso_size`
/// payload bytes the way the kernel's `tcp_gso_segment` would: each gets the
/// headers of the original with its own sequence number, IP length and ID,
/// FIN and PSH only on the last, CWR only on the first, and full checksums.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tso {
    tcp: TcpPacket,
    seg: usize,
    payload: usize,
}

impl Tso {
    /// Checks `pkt` (without its virtio-net header) against `h`.
    pub(crate) fn new(pkt: &[u8], h: &VnetHdr) -> Result<Tso, OffloadError> {
        let want_v6 = match h.gso_type & !GSO_ECN {
            GSO_TCPV4 => false,
            GSO_TCPV6 => true,
            t => return Err(OffloadError::Unsupported(t)),
        };
        let tcp = TcpPacket::parse(pkt).ok_or(OffloadError::Malformed("not a TCP packet"))?;
        if tcp.v6 != want_v6 {
            return Err(OffloadError::Malformed(
                "IP version differs from the GSO type",
            ));
        }
        let seg = usize::from(h.gso_size);
        if seg == 0 {
            return Err(OffloadError::Malformed("GSO size 0"));
        }
        Ok(Tso {
            tcp,
            seg,
            payload: pkt.len() - tcp.data,
        })
    }

    /// How many segments.
    pub(crate) fn count(&self) -> usize {
        self.payload.div_ceil(self.seg).max(1)
    }

    /// Bytes of the largest segment.
    pub(crate) fn max_segment_len(&self) -> usize {
        self.tcp.data + self.seg.min(self.payload)
    }

    /// Writes segment `i` of `pkt` into `out` (at least
    /// [`Tso::max_segment_len`] bytes) and returns its length.
    pub(crate) fn segment(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> usize {
        let TcpPacket { v6, l4, data } = self.tcp;
        let start = i * self.seg;
        let len = self.seg.min(self.payload - start);
        let total = data + len;
        out[..data].copy_from_slice(&pkt[..data]);
        out[data..total].copy_from_slice(&pkt[data + start..data + start + len]);
        let out = &mut out[..total];
        if !v6 {
            let id = u16::from_be_bytes([pkt[4], pkt[5]]).wrapping_add(i as u16);
            out[4..6].copy_from_slice(&id.to_be_bytes());
        }
        set_ip_length(out, v6, l4, total);
        let seq = self.tcp.seq(pkt).wrapping_add(start as u32);
        out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = self.tcp.flags(pkt);
        if i + 1 < self.count() {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        out[l4 + 13] = flags;
        out[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let c = !csum_fold(pseudo_sum(out, v6, TCP, total - l4) + csum_add(0, &out[l4..]));
        out[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        total
    }
}

// ------------------------------------------------------------------- GRO

/// Consecutive packets to write as one: `count` packets from `first`, with
/// `hdr` before them. For `count > 1` the first packet's headers have been
/// rewritten for the whole, and the others are written from `data_offset`
/// (their payload only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Write {
    pub first: usize,
    pub count: usize,
    pub hdr: VnetHdr,
    pub data_offset: usize,
}

/// A TCP segment that may start or join a super-packet: only ACK (and PSH),
/// a payload, a correct checksum (joined segments are not checked again by
/// the receiving stack, so a bad one is left for it to drop on its own).
fn joinable(pkt: &[u8]) -> Option<TcpPacket> {
    let t = TcpPacket::parse(pkt)?;
    let flags = t.flags(pkt);
    let urgent = pkt[t.l4 + 18..t.l4 + 20] != [0, 0];
    let ok = flags & !TCP_PSH == TCP_ACK
        && flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG) == 0
        && !urgent
        && pkt.len() > t.data
        && (t.v6 || t.l4 == 20)
        && t.checksum_ok(pkt);
    ok.then_some(t)
}

/// Whether `next` continues the flow of `first` right after `last`:
/// the same IP and TCP headers but for length, ID, checksums, sequence and
/// PSH, and the sequence number where `last` ends.
fn continues(
    first: &[u8],
    ft: &TcpPacket,
    last: &[u8],
    lt: &TcpPacket,
    next: &[u8],
    nt: &TcpPacket,
) -> bool {
    if nt.v6 != ft.v6 || nt.data != ft.data {
        return false;
    }
    let same = |r: std::ops::Range<usize>| first[r.clone()] == next[r];
    let ip_same = if ft.v6 {
        same(0..4) && same(6..40)
    } else {
        let df_same = first[6] & 0xe0 == next[6] & 0xe0;
        let id = |p: &[u8]| u16::from_be_bytes([p[4], p[5]]);
        // A DF packet's ID means nothing (RFC 6864); others must count up.
        let id_ok = next[6] & 0x40 != 0 || id(next) == id(last).wrapping_add(1);
        same(0..2) && df_same && id_ok && same(8..10) && same(12..20)
    };
    let l4 = ft.l4;
    let end_of_last = lt.seq(last).wrapping_add((last.len() - lt.data) as u32);
    ip_same
        && same(l4..l4 + 4) // ports
        && nt.seq(next) == end_of_last
        && same(l4 + 8..l4 + 13) // ack, data offset
        && nt.flags(next) & !TCP_PSH == ft.flags(first) & !TCP_PSH
        && same(l4 + 14..l4 + 16) // window
        && same(l4 + 20..ft.data) // options, timestamps included
}

/// Groups `pkts` (IP packets to write to the TUN, in order) into writes,
/// joining runs of consecutive segments of one TCP flow as `tcp_gro_receive`
/// would: equal-sized segments, the last may be shorter, a PSH ends the run.
/// The first packet of each joined run is rewritten in place to head the
/// super-packet (lengths, PSH, the pseudo-header checksum the kernel
/// completes, as with `NEEDS_CSUM`).
pub(crate) fn coalesce<P: DerefMut<Target = [u8]>>(pkts: &mut [P]) -> Vec<Write> {
    let mut writes = Vec::new();
    let mut i = 0;
    while i < pkts.len() {
        let mut count = 1;
        if let Some(ft) = joinable(&pkts[i][..]) {
            let first = &pkts[i][..];
            let seg = first.len() - ft.data;
            let mut total = first.len();
            let mut push = ft.flags(first) & TCP_PSH != 0;
            let (mut last_i, mut lt) = (i, ft);
            let mut closed = push;
            while !closed && i + count < pkts.len() && count < MAX_SEGMENTS {
                let next = &pkts[i + count][..];
                let Some(nt) = joinable(next) else { break };
                let len = next.len() - nt.data;
                if len > seg
                    || total + len > MAX_COALESCED
                    || !continues(first, &ft, &pkts[last_i][..], &lt, next, &nt)
                {
                    break;
                }
                total += len;
                push |= nt.flags(next) & TCP_PSH != 0;
                closed = len < seg || nt.flags(next) & TCP_PSH != 0;
                last_i = i + count;
                lt = nt;
                count += 1;
            }
            if count > 1 {
                let head = &mut pkts[i][..];
                let TcpPacket { v6, l4, data } = ft;
                set_ip_length(head, v6, l4, total);
                if push {
                    head[l4 + 13] |= TCP_PSH;
                }
                let partial = csum_fold(pseudo_sum(head, v6, TCP, total - l4));
                head[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
                writes.push(Write {
                    first: i,
                    count,
                    hdr: VnetHdr {
                        flags: F_NEEDS_CSUM,
                        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                        hdr_len: data as u16,
                        gso_size: seg as u16,
                        csum_start: l4 as u16,
                        csum_offset: 16,
                    },
                    data_offset: data,
                });
                i += count;
                continue;
            }
        }
        writes.push(Write {
            first: i,
            count: 1,
            hdr: VnetHdr::default(),
            data_offset: 0,
        });
        i += 1;
    }
    writes
}

#[cfg(test)]
mod tests;
