//! A raw AF_PACKET capture inside one namespace on one interface: counts UDP
//! packets on a port range, classifies WireGuard messages, and looks for a
//! marker byte string anywhere in any frame. Used to show that app payloads
//! cross the WAN only encrypted.

use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::net::if_::if_nametoindex;
use nix::sys::socket::{
    recvfrom, setsockopt, socket, sockopt, AddressFamily, LinkAddr, SockFlag, SockProtocol,
    SockType,
};
use nix::sys::time::TimeVal;

use crate::netns::spawn_in_netns;

/// What a capture saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames seen on the interface (both directions).
    pub frames: u64,
    /// IPv4 UDP packets with a source or destination port in the range.
    pub udp_packets: u64,
    /// Their UDP payload bytes.
    pub udp_bytes: u64,
    /// WireGuard handshake initiations (type 1) among them.
    pub wg_initiations: u64,
    /// WireGuard handshake responses (type 2).
    pub wg_responses: u64,
    /// WireGuard cookie replies (type 3).
    pub wg_cookies: u64,
    /// WireGuard transport data messages (type 4).
    pub wg_data: u64,
    /// Frames containing the marker anywhere.
    pub marker_frames: u64,
    /// WireGuard data messages by (source, destination) IPv4 address: who
    /// sends encrypted traffic straight to whom.
    pub wg_data_flows: std::collections::BTreeMap<(std::net::Ipv4Addr, std::net::Ipv4Addr), u64>,
}

impl CaptureStats {
    /// Whether the marker was seen at all.
    pub fn marker_seen(&self) -> bool {
        self.marker_frames > 0
    }
}

/// What to capture.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Namespace to capture in.
    pub netns: String,
    /// Interface inside it.
    pub iface: String,
    /// UDP ports of interest (source or destination).
    pub udp_ports: RangeInclusive<u16>,
    /// Byte string to look for in every frame.
    pub marker: Option<Vec<u8>>,
}

/// A running capture; [`Capture::stop`] returns the counts.
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<CaptureStats>>>,
}

impl Capture {
    /// Opens the socket inside the namespace and starts counting; returns once
    /// the socket is open, so traffic sent afterwards is seen.
    pub fn start(cfg: CaptureConfig) -> Result<Capture> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let ns = cfg.netns.clone();
        let handle = spawn_in_netns(&ns, move || {
            let opened = (|| -> Result<_> {
                let ifindex = if_nametoindex(cfg.iface.as_str())
                    .with_context(|| format!("no interface {} in netns {}", cfg.iface, cfg.netns))?
                    as usize;
                let fd = socket(
                    AddressFamily::Packet,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::EthAll,
                )
                .context("AF_PACKET socket")?;
                // Large buffer so bursts are not dropped while we parse; root may force it.
                let _ = setsockopt(&fd, sockopt::RcvBufForce, &(32 << 20));
                setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000))?;
                Ok((ifindex, fd))
            })();
            let (ifindex, fd) = match opened {
                Ok(v) => {
                    let _ = tx.send(Ok(()));
                    v
                }
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let mut stats = CaptureStats::default();
            let mut buf = vec![0u8; 65536];
            let mut drain_rounds = 0;
            loop {
                match recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
                    Ok((n, Some(from))) if from.ifindex() == ifindex => {
                        count_frame(&buf[..n.min(buf.len())], &cfg, &mut stats);
                        continue;
                    }
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
                        if stop2.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    Err(e) => return Err(anyhow!("capture recv: {e}")),
                }
                // After stop is requested, keep reading until the queue is empty.
                if stop2.load(Ordering::SeqCst) {
                    drain_rounds += 1;
                    if drain_rounds > 1 {
                        break;
                    }
                }
            }
            Ok(stats)
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .context("capture thread did not start")??;
        Ok(Capture {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the capture (after draining what is queued) and returns the counts.
    pub fn stop(mut self) -> Result<CaptureStats> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .context("capture already stopped")?
            .join()
            .map_err(|_| anyhow!("capture thread panicked"))?
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() || hay.len() < needle.len() {
        return needle.is_empty();
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            None => return false,
            Some(p) => {
                let at = i + p;
                if &hay[at..at + needle.len()] == needle {
                    return true;
                }
                i = at + 1;
            }
        }
    }
    false
}

/// Classifies one Ethernet frame into `stats`.
pub fn count_frame(frame: &[u8], cfg: &CaptureConfig, stats: &mut CaptureStats) {
    stats.frames += 1;
    if let Some(m) = &cfg.marker {
        if contains(frame, m) {
            stats.marker_frames += 1;
        }
    }
    if frame.len() < 14 {
        return;
    }
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([frame[off], frame[off + 1]]);
    off += 2;
    while ethertype == 0x8100 && frame.len() >= off + 4 {
        ethertype = u16::from_be_bytes([frame[off + 2], frame[off + 3]]);
        off += 4;
    }
    if ethertype != 0x0800 || frame.len() < off + 20 {
        return;
    }
    let ip = &frame[off..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[9] != 17 || ihl < 20 || ip.len() < ihl + 8 {
        return;
    }
    let udp = &ip[ihl..];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    if !cfg.udp_ports.contains(&sport) && !cfg.udp_ports.contains(&dport) {
        return;
    }
    let payload = &udp[8..];
    stats.udp_packets += 1;
    stats.udp_bytes += payload.len() as u64;
    if payload.len() >= 4 && payload[1..4] == [0, 0, 0] {
        match payload[0] {
            1 => stats.wg_initiations += 1,
            2 => stats.wg_responses += 1,
            3 => stats.wg_cookies += 1,
            4 => {
                stats.wg_data += 1;
                let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
                let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
                *stats.wg_data_flows.entry((src, dst)).or_default() += 1;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_frame(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip.extend_from_slice(&sport.to_be_bytes());
        ip.extend_from_slice(&dport.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0]);
        ip.extend_from_slice(payload);
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn classifies_wireguard_and_marker() {
        let cfg = CaptureConfig {
            netns: String::new(),
            iface: String::new(),
            udp_ports: 51820..=51830,
            marker: Some(b"SECRET".to_vec()),
        };
        let mut s = CaptureStats::default();
        count_frame(
            &udp_frame(51820, 40000, &[4, 0, 0, 0, 1, 2, 3]),
            &cfg,
            &mut s,
        );
        count_frame(&udp_frame(40000, 51821, &[1, 0, 0, 0, 9]), &cfg, &mut s);
        count_frame(&udp_frame(1, 2, b"xxSECRETxx"), &cfg, &mut s);
        assert_eq!(s.frames, 3);
        assert_eq!(s.udp_packets, 2);
        assert_eq!((s.wg_data, s.wg_initiations), (1, 1));
        assert_eq!(s.marker_frames, 1);
        assert!(contains(b"abcabd", b"abd"));
        assert!(!contains(b"abcab", b"abd"));
    }
}
