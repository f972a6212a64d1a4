//! Traffic generators and probes between namespaces: ping, a checked TCP
//! transfer, a UDP echo probe for time-to-first-packet, and iperf3.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::netns::{exec_in, spawn_in_netns};
use crate::procs::Proc;

/// Outcome of a ping run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingResult {
    /// At least one reply came back.
    pub ok: bool,
    /// Echo requests sent.
    pub transmitted: u32,
    /// Replies received.
    pub received: u32,
    /// Fraction lost, 0.0..=1.0.
    pub loss: f64,
    /// Average round-trip time, if any reply came back.
    pub rtt_avg_ms: Option<f64>,
    /// Each reply's round-trip time, in order.
    pub rtts_ms: Vec<f64>,
    /// Raw output, for diagnostics.
    pub output: String,
}

/// Pings `addr` from inside `from_netns` (iputils ping, 0.2 s apart, giving up
/// after `timeout`).
pub fn ping(from_netns: &str, addr: Ipv4Addr, count: u32, timeout: Duration) -> Result<PingResult> {
    let deadline = timeout.as_secs().max(1).to_string();
    let out = exec_in(
        from_netns,
        "ping",
        &[
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "-w",
            &deadline,
            &addr.to_string(),
        ],
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(parse_ping(&text))
}

/// Parses iputils ping's summary lines.
pub fn parse_ping(text: &str) -> PingResult {
    let mut r = PingResult {
        output: text.to_string(),
        ..Default::default()
    };
    for line in text.lines() {
        if let Some(t) = line
            .split_once(" time=")
            .filter(|(head, _)| head.contains("bytes from"))
            .and_then(|(_, t)| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
        {
            r.rtts_ms.push(t);
        } else if line.contains("packets transmitted") {
            let nums: Vec<u32> = line
                .split(',')
                .filter_map(|part| part.split_whitespace().next().and_then(|n| n.parse().ok()))
                .collect();
            if nums.len() >= 2 {
                r.transmitted = nums[0];
                r.received = nums[1];
            }
        } else if let Some(rest) = line
            .split(" = ")
            .nth(1)
            .filter(|_| line.starts_with("rtt") || line.starts_with("round-trip"))
        {
            r.rtt_avg_ms = rest.split('/').nth(1).and_then(|v| v.trim().parse().ok());
        }
    }
    r.ok = r.received > 0;
    r.loss = if r.transmitted == 0 {
        1.0
    } else {
        1.0 - f64::from(r.received) / f64::from(r.transmitted)
    };
    r
}

impl PingResult {
    /// The median round-trip time of the replies, if any came back.
    pub fn rtt_p50_ms(&self) -> Option<f64> {
        (!self.rtts_ms.is_empty()).then(|| median(&self.rtts_ms))
    }
}

/// Pings once per attempt until a reply comes back; returns the time it took.
pub fn ping_until_ok(from_netns: &str, addr: Ipv4Addr, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    crate::wait_for(
        &format!("a ping reply from {addr} (from {from_netns})"),
        timeout,
        Duration::from_millis(10),
        || {
            Ok(ping(from_netns, addr, 1, Duration::from_secs(1))?
                .ok
                .then(|| start.elapsed()))
        },
    )
}

/// A position-dependent 64-bit checksum (FNV-style over little-endian words)
/// that tolerates arbitrary chunking of the stream.
#[derive(Clone, Debug)]
pub struct StreamHash {
    h: u64,
    carry: [u8; 8],
    carry_len: usize,
    /// Bytes hashed so far.
    pub len: u64,
}

impl Default for StreamHash {
    fn default() -> Self {
        StreamHash {
            h: 0xcbf2_9ce4_8422_2325,
            carry: [0; 8],
            carry_len: 0,
            len: 0,
        }
    }
}

impl StreamHash {
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(5);
    }

    /// Feeds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.carry_len > 0 {
            let take = (8 - self.carry_len).min(data.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&data[..take]);
            self.carry_len += take;
            data = &data[take..];
            if self.carry_len < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.carry);
            self.word(w);
            self.carry_len = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.word(w);
        }
        let rest = chunks.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
    }

    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u64 {
        let mut s = self.clone();
        if s.carry_len > 0 {
            let mut last = [0u8; 8];
            last[..s.carry_len].copy_from_slice(&s.carry[..s.carry_len]);
            s.word(u64::from_le_bytes(last));
        }
        s.word(s.len);
        s.h
    }
}

/// Result of a checked TCP transfer.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// Bytes received and verified.
    pub bytes: u64,
    /// Wall time from connect to the last byte received.
    pub elapsed: Duration,
    /// Goodput in Mbit/s.
    pub mbit_per_s: f64,
}

/// Options of [`tcp_transfer_opts`].
#[derive(Clone, Debug)]
pub struct TransferOpts {
    /// Bytes to send.
    pub bytes: u64,
    /// TCP port of the listener.
    pub port: u16,
    /// Payload pattern repeated over the stream (default: pseudo-random bytes).
    pub fill: Option<Vec<u8>>,
    /// Overall deadline.
    pub timeout: Duration,
}

/// Sends `bytes` over TCP from `from_netns` to a listener on `addr` inside
/// `to_netns`, and checks count and checksum end to end.
pub fn tcp_transfer(
    from_netns: &str,
    to_netns: &str,
    addr: Ipv4Addr,
    bytes: u64,
) -> Result<Transfer> {
    tcp_transfer_opts(
        from_netns,
        to_netns,
        addr,
        &TransferOpts {
            bytes,
            port: 18080,
            fill: None,
            timeout: Duration::from_secs(60),
        },
    )
}

fn payload_block(fill: &Option<Vec<u8>>) -> Vec<u8> {
    const BLOCK: usize = 256 * 1024;
    match fill {
        Some(p) if !p.is_empty() => p.iter().copied().cycle().take(BLOCK).collect(),
        _ => {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut v = Vec::with_capacity(BLOCK);
            while v.len() < BLOCK {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.extend_from_slice(&x.to_le_bytes());
            }
            v
        }
    }
}

/// [`tcp_transfer`] with options.
pub fn tcp_transfer_opts(
    from_netns: &str,
    to_netns: &str,
    addr: Ipv4Addr,
    o: &TransferOpts,
) -> Result<Transfer> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let port = o.port;
    let timeout = o.timeout;
    let abort = Arc::new(AtomicBool::new(false));
    let abort2 = abort.clone();
    let server: JoinHandle<Result<(u64, u64)>> = spawn_in_netns(to_netns, move || {
        let listener = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow!("bind :{port}: {e}")));
                bail!("bind :{port}: {e}");
            }
        };
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(Ok(()));
        let start = Instant::now();
        let (mut s, _) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(!abort2.load(Ordering::SeqCst), "client gave up");
                    ensure!(!crate::interrupted(), "interrupted by signal");
                    ensure!(
                        start.elapsed() < timeout,
                        "no connection within {timeout:?}"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut h = StreamHash::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = s.read(&mut buf).context("receive")?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            ensure!(
                start.elapsed() < timeout,
                "transfer did not finish within {timeout:?}"
            );
        }
        let len = h.len;
        s.write_all(&h.finish().to_le_bytes())?;
        Ok((len, h.finish()))
    })?;
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = server.join();
            return Err(e);
        }
        Err(_) => bail!("listener thread did not start"),
    }
    let dst = SocketAddr::V4(SocketAddrV4::new(addr, port));
    let bytes = o.bytes;
    let fill = o.fill.clone();
    let client = spawn_in_netns(from_netns, move || -> Result<(u64, Duration)> {
        let block = payload_block(&fill);
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
            .with_context(|| format!("connect {dst}"))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let start = Instant::now();
        let mut h = StreamHash::default();
        let mut left = bytes;
        while left > 0 {
            let n = (block.len() as u64).min(left) as usize;
            s.write_all(&block[..n]).context("send")?;
            h.update(&block[..n]);
            left -= n as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut sum = [0u8; 8];
        s.read_exact(&mut sum)
            .context("reading the receiver's checksum")?;
        let elapsed = start.elapsed();
        ensure!(
            u64::from_le_bytes(sum) == h.finish(),
            "checksum mismatch: receiver {:016x}, sender {:016x}",
            u64::from_le_bytes(sum),
            h.finish()
        );
        Ok((h.finish(), elapsed))
    })?;
    let client_res = client.join().map_err(|_| anyhow!("client thread panicked"));
    // A client that never connected must not leave the listener waiting.
    abort.store(true, Ordering::SeqCst);
    let client_res = client_res?;
    let server_res = server
        .join()
        .map_err(|_| anyhow!("server thread panicked"))?;
    let (sent_sum, elapsed) = client_res.context("TCP client")?;
    let (received, recv_sum) = server_res.context("TCP server")?;
    ensure!(
        received == bytes,
        "received {received} bytes, expected {bytes}"
    );
    ensure!(recv_sum == sent_sum, "checksum mismatch");
    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(Transfer {
        bytes: received,
        elapsed,
        mbit_per_s: received as f64 * 8.0 / secs / 1e6,
    })
}

/// A UDP echo server inside a namespace (stopped on drop).
#[derive(Debug)]
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<u64>>>,
}

impl UdpEcho {
    /// Starts echoing datagrams on 0.0.0.0:`port` inside `netns`. The socket
    /// is bound to the wildcard address, so it can be started before the
    /// namespace has its app address.
    pub fn start(netns: &str, port: u16) -> Result<UdpEcho> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let handle = spawn_in_netns(netns, move || {
            let sock = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("bind udp :{port}: {e}")));
                    return Err(e.into());
                }
            };
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            let _ = tx.send(Ok(()));
            let mut buf = [0u8; 2048];
            let mut n_echoed = 0;
            while !stop2.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                    n_echoed += 1;
                }
            }
            Ok(n_echoed)
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .context("UDP echo did not start")??;
        Ok(UdpEcho {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the server; returns how many datagrams it echoed.
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take() {
            Some(h) => h.join().map_err(|_| anyhow!("echo thread panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// From inside `from_netns`, sends a datagram to `dst` every `interval`
/// (~5 ms) until one is echoed back; returns the time from the call to the
/// first echo. Send errors (no route yet) just count as "not yet".
pub fn udp_probe_until_ok(
    from_netns: &str,
    dst: SocketAddrV4,
    interval: Duration,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    spawn_in_netns(from_netns, move || {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        sock.set_read_timeout(Some(interval))?;
        let mut buf = [0u8; 64];
        let mut seq: u64 = 0;
        let nonce = (std::process::id() as u64) << 32 ^ start.elapsed().as_nanos() as u64;
        loop {
            ensure!(!crate::interrupted(), "interrupted by signal");
            ensure!(
                start.elapsed() < timeout,
                "no UDP echo from {dst} within {timeout:?}"
            );
            seq += 1;
            let mut msg = [0u8; 16];
            msg[..8].copy_from_slice(&nonce.to_le_bytes());
            msg[8..].copy_from_slice(&seq.to_le_bytes());
            if sock.send_to(&msg, dst).is_err() {
                std::thread::sleep(interval);
                continue;
            }
            let deadline = Instant::now() + interval;
            while Instant::now() < deadline {
                match sock.recv_from(&mut buf) {
                    Ok((16, _)) if buf[..8] == nonce.to_le_bytes() => return Ok(start.elapsed()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    })?
    .join()
    .map_err(|_| anyhow!("probe thread panicked"))?
}

/// From inside `from_netns`, tries a TCP connect to `dst` every `interval`
/// until one succeeds (the far side needs a listener); returns the time taken.
pub fn tcp_probe_until_ok(
    from_netns: &str,
    dst: SocketAddrV4,
    interval: Duration,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    spawn_in_netns(from_netns, move || loop {
        ensure!(!crate::interrupted(), "interrupted by signal");
        ensure!(
            start.elapsed() < timeout,
            "no TCP connection to {dst} within {timeout:?}"
        );
        if TcpStream::connect_timeout(&SocketAddr::V4(dst), interval.max(Duration::from_millis(5)))
            .is_ok()
        {
            return Ok(start.elapsed());
        }
        std::thread::sleep(interval);
    })?
    .join()
    .map_err(|_| anyhow!("probe thread panicked"))?
}

/// Whether `iperf3` is installed.
pub fn have_iperf3() -> bool {
    which("iperf3").is_some()
}

/// Finds a program on $PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// One iperf3 TCP measurement: a one-shot server (`-s -1`) in `server_netns`,
/// a client (`-c ADDR -t SECS -J`) in `client_netns`; returns Mbit/s received.
pub fn iperf3_tcp(
    client_netns: &str,
    server_netns: &str,
    addr: Ipv4Addr,
    secs: u32,
    log_dir: &Path,
) -> Result<f64> {
    let iperf = which("iperf3").context("iperf3 is not installed")?;
    let port = "5201";
    // A one-shot server (-1) from the previous run may still hold the port for
    // a moment after its client finished; a new server would fail to bind.
    let listening = || -> Result<bool> {
        let out = exec_in(server_netns, "ss", &["-Hltn", "sport", "=", ":5201"])?;
        Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
    };
    let free_by = Instant::now() + Duration::from_secs(10);
    while listening()? {
        if Instant::now() > free_by {
            bail!("port {port} is still taken in {server_netns} by an earlier iperf3 server");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut server = Proc::spawn(
        "iperf3-server",
        &iperf,
        &["-s".into(), "-1".into(), "-p".into(), port.into()],
        &[],
        Some(server_netns),
        &log_dir.join("iperf3-server.log"),
    )?;
    let up_by = Instant::now() + Duration::from_secs(10);
    while !listening()? {
        if Instant::now() > up_by {
            bail!("iperf3 server did not start listening in {server_netns}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    let out = loop {
        crate::check_interrupt()?;
        let out = exec_in(
            client_netns,
            iperf.to_str().context("path")?,
            &[
                "-c",
                &addr.to_string(),
                "-p",
                port,
                "-t",
                &secs.to_string(),
                "-J",
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break text;
        }
        if start.elapsed() > Duration::from_secs(5) || !text.contains("connect") {
            bail!(
                "iperf3 client failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    server.wait_timeout(Duration::from_secs(3));
    let v: serde_json::Value = serde_json::from_str(&out).context("parse iperf3 JSON")?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON lacks end.sum_received")?;
    Ok(bps / 1e6)
}

/// Median of a non-empty list.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of a non-empty list (NaN if empty).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_output() {
        let r = parse_ping(
            "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.057 ms\n64 bytes from 10.0.0.2: icmp_seq=3 ttl=64 time=0.036 ms\n\n--- 10.0.0.2 ping statistics ---\n3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms\nrtt min/avg/max/mdev = 0.036/0.045/0.057/0.008 ms\n",
        );
        assert!(r.ok);
        assert_eq!((r.transmitted, r.received), (3, 2));
        assert_eq!(r.rtt_avg_ms, Some(0.045));
        assert_eq!(r.rtts_ms, [0.057, 0.036]);
        assert_eq!(r.rtt_p50_ms(), Some(median(&[0.057, 0.036])));
        let r = parse_ping(
            "1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms\n",
        );
        assert!(!r.ok);
        assert_eq!(r.loss, 1.0);
    }

    #[test]
    fn hash_ignores_chunking() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut a = StreamHash::default();
        a.update(&data);
        let mut b = StreamHash::default();
        for c in data.chunks(3) {
            b.update(c);
        }
        assert_eq!(a.finish(), b.finish());
        let mut c = StreamHash::default();
        c.update(&data[1..]);
        assert_ne!(a.finish(), c.finish());
    }

    #[test]
    fn percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert_eq!(
            percentile(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 95.0),
            10.0
        );
    }
}
