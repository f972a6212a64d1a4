//! The gap a daemon restart leaves in an app's traffic: a UDP stream with a
//! sequence number (one datagram every [`INTERVAL`]) from a workload on one
//! node to an echo in a workload on another, running while the second
//! node's daemon is stopped (SIGTERM) and started again, as a crash loop or
//! a DaemonSet rollout does. Reported: datagrams sent and echoed, and the
//! longest time without an echo (the outage a user sees).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::cluster::Cluster;
use crate::netns::spawn_in_netns;
use crate::traffic::UdpEcho;

/// Time between datagrams.
pub const INTERVAL: Duration = Duration::from_millis(5);
/// Port of the echo.
pub const PORT: u16 = 7420;

/// What one restart cost.
#[derive(Clone, Debug, Default)]
pub struct Gap {
    /// Datagrams sent.
    pub sent: u64,
    /// Echoes received.
    pub echoed: u64,
    /// The longest time between two echoes, across the restart.
    pub longest_silence: Duration,
    /// From the stop signal to the restarted daemon running.
    pub restart_took: Duration,
}

impl Gap {
    /// Datagrams (or their echoes) lost.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.echoed)
    }
}

/// Streams from `from_netns` to `to` (an echo started in `to_netns`),
/// restarts node `node`'s daemon after `before`, and keeps streaming for
/// `after` once it runs again.
pub fn measure(
    c: &mut Cluster,
    node: usize,
    from_netns: &str,
    to_netns: &str,
    to: Ipv4Addr,
    before: Duration,
    after: Duration,
) -> Result<Gap> {
    let echo = UdpEcho::start(to_netns, PORT)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let dst = SocketAddrV4::new(to, PORT);
    let stream = spawn_in_netns(from_netns, move || {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        sock.set_nonblocking(true)?;
        let mut sent = 0u64;
        let mut seen = std::collections::BTreeSet::new();
        let mut last_echo: Option<Instant> = None;
        let mut longest = Duration::ZERO;
        let mut buf = [0u8; 64];
        let mut next = Instant::now();
        while !stop2.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= next {
                sent += 1;
                // Send errors (no route while the device is away) count as
                // sent and lost.
                let _ = sock.send_to(&sent.to_le_bytes(), dst);
                next += INTERVAL;
            }
            while let Ok((8, _)) = sock.recv_from(&mut buf) {
                let seq = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
                if seen.insert(seq) {
                    let t = Instant::now();
                    if let Some(l) = last_echo {
                        longest = longest.max(t - l);
                    }
                    last_echo = Some(t);
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        // Late echoes of the last datagrams.
        std::thread::sleep(Duration::from_millis(200));
        while let Ok((8, _)) = sock.recv_from(&mut buf) {
            seen.insert(u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()));
        }
        Ok((sent, seen.len() as u64, longest))
    })?;
    let result = (|| -> Result<Duration> {
        crate::sleep(before)?;
        let started = Instant::now();
        c.restart_daemon(node)?;
        let took = started.elapsed();
        crate::sleep(after)?;
        Ok(took)
    })();
    stop.store(true, Ordering::SeqCst);
    let (sent, echoed, longest) = stream
        .join()
        .map_err(|_| anyhow!("stream thread panicked"))??;
    echo.stop()?;
    Ok(Gap {
        sent,
        echoed,
        longest_silence: longest,
        restart_took: result?,
    })
}
