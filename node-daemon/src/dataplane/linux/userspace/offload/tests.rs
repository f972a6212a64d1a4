use proptest::prelude::*;

use super::*;

/// Ones'-complement sum the slow, obvious way (16-bit words, odd byte padded).
fn naive_sum(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    for c in data.chunks(2) {
        let w = u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
        acc += w;
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn ipv4_header_ok(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    csum_fold(csum_add(0, &p[..ihl])) == 0xffff
}

struct Tcp<'a> {
    v6: bool,
    seq: u32,
    flags: u8,
    id: u16,
    df: bool,
    sport: u16,
    options: &'a [u8],
    payload: &'a [u8],
}

impl Default for Tcp<'_> {
    fn default() -> Self {
        Tcp {
            v6: false,
            seq: 1000,
            flags: TCP_ACK,
            id: 7,
            df: true,
            sport: 40000,
            // NOP NOP timestamps (TSval 1, TSecr 2)
            options: &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            payload: b"",
        }
    }
}

/// A TCP packet with correct checksums.
fn tcp(t: &Tcp) -> Vec<u8> {
    let l4 = if t.v6 { 40 } else { 20 };
    let doff = 20 + t.options.len();
    let total = l4 + doff + t.payload.len();
    let mut p = vec![0u8; total];
    if t.v6 {
        p[0] = 0x60;
        p[6] = TCP;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        p[0] = 0x45;
        p[4..6].copy_from_slice(&t.id.to_be_bytes());
        p[6] = if t.df { 0x40 } else { 0 };
        p[8] = 64;
        p[9] = TCP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    }
    set_ip_length(&mut p, t.v6, l4, total);
    p[l4..l4 + 2].copy_from_slice(&t.sport.to_be_bytes());
    p[l4 + 2..l4 + 4].copy_from_slice(&5201u16.to_be_bytes());
    p[l4 + 4..l4 + 8].copy_from_slice(&t.seq.to_be_bytes());
    p[l4 + 8..l4 + 12].copy_from_slice(&77u32.to_be_bytes());
    p[l4 + 12] = ((doff / 4) as u8) << 4;
    p[l4 + 13] = t.flags;
    p[l4 + 14..l4 + 16].copy_from_slice(&512u16.to_be_bytes());
    p[l4 + 20..l4 + doff].copy_from_slice(t.options);
    p[l4 + doff..].copy_from_slice(t.payload);
    let c = !csum_fold(pseudo_sum(&p, t.v6, TCP, total - l4) + csum_add(0, &p[l4..]));
    p[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    p
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Cuts `pkt` with `gso_size` as the kernel would hand it over.
fn split(pkt: &[u8], v6: bool, gso_size: u16) -> Vec<Vec<u8>> {
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: 0,
        gso_size,
        csum_start: if v6 { 40 } else { 20 },
        csum_offset: 16,
    };
    let tso = Tso::new(pkt, &h).unwrap();
    (0..tso.count())
        .map(|i| {
            let mut out = vec![0u8; tso.max_segment_len()];
            let n = tso.segment(pkt, i, &mut out);
            out.truncate(n);
            out
        })
        .collect()
}

/// The bytes a joined write puts on the TUN after its virtio-net header.
fn written(pkts: &[Vec<u8>], w: &Write) -> Vec<u8> {
    let mut out = pkts[w.first].clone();
    for p in &pkts[w.first + 1..w.first + w.count] {
        out.extend_from_slice(&p[w.data_offset..]);
    }
    out
}

#[test]
fn sums_match_rfc1071_and_the_naive_sum() {
    assert_eq!(
        csum_fold(csum_add(
            0,
            &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]
        )),
        0xddf2
    );
    let data = payload(1001);
    for n in [0, 1, 2, 3, 4, 5, 63, 64, 65, 1000, 1001] {
        assert_eq!(
            csum_fold(csum_add(0, &data[..n])),
            naive_sum(&data[..n]),
            "{n} bytes"
        );
    }
}

#[test]
fn vnet_header_round_trips() {
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV6,
        hdr_len: 72,
        gso_size: 1368,
        csum_start: 40,
        csum_offset: 16,
    };
    assert_eq!(VnetHdr::parse(&h.to_bytes()), h);
}

#[test]
fn a_partial_checksum_is_completed() {
    for v6 in [false, true] {
        let good = tcp(&Tcp {
            v6,
            payload: &payload(333),
            ..Default::default()
        });
        let l4 = if v6 { 40 } else { 20 };
        let mut partial = good.clone();
        let ph = csum_fold(pseudo_sum(&partial, v6, TCP, good.len() - l4));
        partial[l4 + 16..l4 + 18].copy_from_slice(&ph.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: l4 as u16,
            csum_offset: 16,
            ..Default::default()
        };
        finish_checksum(&mut partial, &h).unwrap();
        assert_eq!(partial, good, "v6={v6}");
    }
    let mut short = vec![0x45u8; 30];
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..Default::default()
    };
    assert!(finish_checksum(&mut short, &h).is_err());
}

#[test]
fn a_super_packet_is_cut_like_the_kernel_cuts_it() {
    for v6 in [false, true] {
        let data = payload(10_000);
        let flags = TCP_ACK | TCP_PSH | TCP_CWR | TCP_FIN;
        let sup = tcp(&Tcp {
            v6,
            seq: u32::MAX - 3000, // the sequence number wraps inside
            flags,
            payload: &data,
            ..Default::default()
        });
        let segs = split(&sup, v6, 1400);
        assert_eq!(segs.len(), 8);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let t = TcpPacket::parse(s).expect("a TCP packet");
            assert!(t.checksum_ok(s), "segment {i} TCP checksum");
            if !v6 {
                assert!(ipv4_header_ok(s), "segment {i} IPv4 checksum");
                assert_eq!(u16::from_be_bytes([s[4], s[5]]), 7 + i as u16);
            }
            assert_eq!(t.seq(s), (u32::MAX - 3000).wrapping_add(1400 * i as u32));
            let f = t.flags(s);
            let last = i + 1 == segs.len();
            assert_eq!(
                f & (TCP_PSH | TCP_FIN) != 0,
                last,
                "segment {i} flags {f:#x}"
            );
            assert_eq!(f & TCP_CWR != 0, i == 0, "segment {i} flags {f:#x}");
            assert_eq!(s.len() - t.data, if last { 200 } else { 1400 });
            joined.extend_from_slice(&s[t.data..]);
        }
        assert_eq!(joined, data);
    }
}

#[test]
fn bad_super_packets_are_refused() {
    let sup = tcp(&Tcp {
        payload: &payload(3000),
        ..Default::default()
    });
    let h = VnetHdr {
        gso_type: GSO_TCPV4,
        gso_size: 1400,
        ..Default::default()
    };
    assert!(Tso::new(&sup, &VnetHdr { gso_size: 0, ..h }).is_err());
    assert!(Tso::new(
        &sup,
        &VnetHdr {
            gso_type: GSO_TCPV6,
            ..h
        }
    )
    .is_err());
    assert_eq!(
        Tso::new(&sup, &VnetHdr { gso_type: 3, ..h }).unwrap_err(),
        OffloadError::Unsupported(3)
    );
    assert!(
        Tso::new(&sup[..100], &h).is_err(),
        "IP length past the bytes read"
    );
    assert!(Tso::new(&sup, &h).is_ok());
}

#[test]
fn segments_of_one_flow_are_joined_back() {
    for v6 in [false, true] {
        let data = payload(20_000);
        let sup = tcp(&Tcp {
            v6,
            flags: TCP_ACK | TCP_PSH,
            payload: &data,
            ..Default::default()
        });
        let mut segs = split(&sup, v6, 1380);
        let n = segs.len();
        let writes = coalesce(&mut segs);
        assert_eq!(writes.len(), 1, "{writes:?}");
        let w = writes[0];
        assert_eq!((w.first, w.count), (0, n));
        let l4 = if v6 { 40 } else { 20 };
        assert_eq!(w.hdr.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(w.hdr.gso_size, 1380);
        assert_eq!((w.hdr.csum_start, w.hdr.csum_offset), (l4 as u16, 16));
        assert_eq!(usize::from(w.hdr.hdr_len), w.data_offset);
        let mut out = written(&segs, &w);
        // What the kernel does with NEEDS_CSUM gives the original back.
        finish_checksum(&mut out, &w.hdr).unwrap();
        if !v6 {
            assert!(ipv4_header_ok(&out));
            // The IDs were the split's; the head keeps the first one.
            assert_eq!(out[..20], sup[..20]);
        }
        assert_eq!(out, sup, "v6={v6}");
    }
}

#[test]
fn runs_end_where_the_kernel_would_end_them() {
    let data = payload(1000);
    let seg = |seq: u32, flags: u8, len: usize| {
        tcp(&Tcp {
            seq,
            flags,
            id: (seq / 100) as u16,
            payload: &data[..len],
            ..Default::default()
        })
    };
    // A PSH closes a run, a shorter segment closes it, a larger one may not join.
    let mut pkts = vec![
        seg(0, TCP_ACK, 100),
        seg(100, TCP_ACK | TCP_PSH, 100),
        seg(200, TCP_ACK, 100),
        seg(300, TCP_ACK, 50),
        seg(350, TCP_ACK, 50),
        seg(400, TCP_ACK, 100),
    ];
    let w: Vec<(usize, usize)> = coalesce(&mut pkts)
        .iter()
        .map(|w| (w.first, w.count))
        .collect();
    assert_eq!(w, [(0, 2), (2, 2), (4, 1), (5, 1)]);
}

#[test]
fn only_true_continuations_are_joined() {
    let data = payload(200);
    let base = Tcp {
        payload: &data[..100],
        ..Default::default()
    };
    let first = tcp(&base);
    let next = |t: Tcp| vec![first.clone(), tcp(&t)];
    let cont = Tcp {
        seq: 1100,
        id: 8,
        ..base
    };
    let joined = |mut pkts: Vec<Vec<u8>>| coalesce(&mut pkts).len() == 1;
    assert!(joined(next(Tcp { ..cont })), "the plain continuation joins");
    assert!(!joined(next(Tcp { seq: 1101, ..cont })), "a sequence gap");
    assert!(!joined(next(Tcp { sport: 1, ..cont })), "another flow");
    assert!(
        !joined(next(Tcp {
            flags: TCP_ACK | TCP_FIN,
            ..cont
        })),
        "FIN"
    );
    assert!(
        !joined(next(Tcp {
            flags: TCP_ACK | TCP_SYN,
            ..cont
        })),
        "SYN"
    );
    assert!(
        !joined(next(Tcp {
            flags: TCP_ACK | TCP_CWR,
            ..cont
        })),
        "CWR"
    );
    assert!(
        !joined(next(Tcp {
            payload: b"",
            ..cont
        })),
        "a bare ACK"
    );
    let other_ts = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 2];
    assert!(
        !joined(next(Tcp {
            options: &other_ts,
            ..cont
        })),
        "another timestamp"
    );
    assert!(
        !joined(next(Tcp { v6: true, ..cont })),
        "another IP version"
    );
    // IDs: a DF packet's ID does not matter, others must count up.
    assert!(joined(next(Tcp { id: 500, ..cont })));
    let no_df = Tcp { df: false, ..base };
    let first_no_df = tcp(&no_df);
    let mut pkts = vec![
        first_no_df.clone(),
        tcp(&Tcp {
            seq: 1100,
            id: 500,
            ..no_df
        }),
    ];
    assert_eq!(coalesce(&mut pkts).len(), 2, "IDs out of order without DF");
    let mut pkts = vec![
        first_no_df,
        tcp(&Tcp {
            seq: 1100,
            id: 8,
            ..no_df
        }),
    ];
    assert_eq!(coalesce(&mut pkts).len(), 1, "IDs in order without DF");
    // A corrupt checksum is left for the stack to drop.
    let mut bad = tcp(&cont);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert!(!joined(vec![first.clone(), bad]), "a bad checksum");
    // Not TCP at all.
    let mut udp = first.clone();
    udp[9] = 17;
    let mut pkts = vec![udp, tcp(&cont)];
    assert_eq!(coalesce(&mut pkts).len(), 2);
}

#[test]
fn unjoined_packets_are_written_untouched() {
    let data = payload(100);
    let a = tcp(&Tcp {
        payload: &data,
        ..Default::default()
    });
    let b = tcp(&Tcp {
        sport: 2,
        payload: &data,
        ..Default::default()
    });
    let mut pkts = vec![a.clone(), b.clone(), a.clone()];
    let writes = coalesce(&mut pkts);
    assert_eq!(writes.len(), 3);
    assert!(writes
        .iter()
        .all(|w| w.count == 1 && w.hdr == VnetHdr::default()));
    assert_eq!(pkts, [a.clone(), b, a]);
}

proptest! {
    /// Cutting any super-packet and joining its segments gives it back.
    #[test]
    fn cut_then_join_is_the_identity(len in 1usize..20_000, mss in 536u16..1448, v6: bool, seq: u32) {
        let data = payload(len);
        let sup = tcp(&Tcp { v6, seq, flags: TCP_ACK | TCP_PSH, payload: &data, ..Default::default() });
        let mut segs = split(&sup, v6, mss);
        let mut bytes = Vec::new();
        for s in &segs {
            let t = TcpPacket::parse(s).unwrap();
            prop_assert!(t.checksum_ok(s));
            bytes.extend_from_slice(&s[t.data..]);
        }
        prop_assert_eq!(&bytes, &data);
        let writes = coalesce(&mut segs);
        let mut again = Vec::new();
        for w in &writes {
            let mut out = written(&segs, w);
            finish_checksum(&mut out, &w.hdr).unwrap();
            let t = TcpPacket::parse(&out).unwrap();
            prop_assert!(t.checksum_ok(&out));
            again.extend_from_slice(&out[t.data..]);
        }
        prop_assert_eq!(&again, &data);
        if segs.len() <= MAX_SEGMENTS {
            prop_assert_eq!(writes.len(), 1);
        }
    }
}
