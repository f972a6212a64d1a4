//! wgbench: run one boringtun 0.7 or gotatun 0.10 device (for throughput
//! tests driven by bench.sh), or N idle devices in one process (memory/CPU).
//!
//!   wgbench bt <ifname> <port> <priv_hex> <peer_pub_hex> <endpoint> <allowed_cidr>
//!   wgbench gt <ifname> <port> <priv_hex> <peer_pub_hex> <endpoint> <allowed_cidr> [workers]
//!   wgbench idle-bt <n> [secs]
//!   wgbench idle-gt <n> [workers] [secs]
//!   wgbench pub <priv_hex>

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

mod weft;

use boringtun::device::{DeviceConfig, DeviceHandle};
use gotatun::device::{DefaultDeviceTransports, Device, DeviceBuilder, Peer};
use gotatun::x25519::{PublicKey, StaticSecret};

fn hex32(s: &str) -> [u8; 32] {
    let v = hex::decode(s).expect("hex");
    v.try_into().expect("32 bytes")
}

fn rand32() -> [u8; 32] {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    b
}

fn pub_of(private: &[u8; 32]) -> [u8; 32] {
    *PublicKey::from(&StaticSecret::from(*private)).as_bytes()
}

/// One UAPI exchange on our end of a boringtun socketpair.
fn uapi(stream: &mut UnixStream, req: &str) -> String {
    stream.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "uapi closed");
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(b"\n\n") {
            break;
        }
    }
    let s = String::from_utf8(buf).unwrap();
    assert!(s.contains("errno=0"), "uapi error: {s}");
    s
}

/// Starts a boringtun device as Weft does (2 threads, uapi_fd socketpair).
fn bt_start(ifname: &str) -> (DeviceHandle, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let config = DeviceConfig {
        n_threads: 2,
        use_connected_socket: false,
        use_multi_queue: false,
        uapi_fd: theirs.into_raw_fd(),
    };
    let h = DeviceHandle::new(ifname, config).expect("boringtun device");
    (h, ours)
}

fn bt_set(
    s: &mut UnixStream,
    port: u16,
    private: &[u8; 32],
    peer: &[u8; 32],
    endpoint: &str,
    allowed: &str,
) {
    let req = format!(
        "set=1\nprivate_key={}\nlisten_port={port}\npublic_key={}\nendpoint={endpoint}\nallowed_ip={allowed}\n\n",
        hex::encode(private),
        hex::encode(peer)
    );
    uapi(s, &req);
}

type GtDevice = Device<DefaultDeviceTransports>;

async fn gt_start(
    ifname: &str,
    port: u16,
    private: &[u8; 32],
    peer: &[u8; 32],
    endpoint: &str,
    allowed: &str,
) -> GtDevice {
    let peer = Peer::new(PublicKey::from(*peer))
        .with_endpoint(endpoint.parse::<SocketAddr>().unwrap())
        .with_allowed_ip(allowed.parse::<ipnetwork::IpNetwork>().unwrap());
    DeviceBuilder::new()
        .with_default_udp()
        .create_tun(ifname)
        .expect("tun")
        .with_private_key(StaticSecret::from(*private))
        .with_listen_port(port)
        .with_peer(peer)
        .build()
        .await
        .expect("gotatun device")
}

fn proc_status() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .filter(|l| {
            l.starts_with("VmRSS")
                || l.starts_with("VmHWM")
                || l.starts_with("Threads")
                || l.starts_with("RssAnon")
                || l.starts_with("VmSize")
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// utime+stime of this process in seconds.
fn cpu_secs() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn idle_report(what: &str, n: usize, secs: u64, started: Instant) {
    eprintln!("{what}: {n} devices up in {:?}", started.elapsed());
    std::thread::sleep(Duration::from_secs(3));
    let c0 = cpu_secs();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = cpu_secs();
    let el = t0.elapsed().as_secs_f64();
    println!(
        "{what} n={n}: {} ; idle CPU {:.2}% of one core over {:.0}s",
        proc_status(),
        100.0 * (c1 - c0) / el,
        el
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args[1].as_str() {
        "pub" => println!("{}", hex::encode(pub_of(&hex32(&args[2])))),
        "bt" => {
            let port: u16 = args[3].parse().unwrap();
            let (_h, mut s) = bt_start(&args[2]);
            bt_set(&mut s, port, &hex32(&args[4]), &hex32(&args[5]), &args[6], &args[7]);
            println!("READY");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "gt" => {
            let port: u16 = args[3].parse().unwrap();
            let workers: usize = args.get(8).map(|w| w.parse().unwrap()).unwrap_or(2);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _d = gt_start(
                    &args[2],
                    port,
                    &hex32(&args[4]),
                    &hex32(&args[5]),
                    &args[6],
                    &args[7],
                )
                .await;
                println!("READY");
                std::future::pending::<()>().await;
            });
        }
        "gtw" => {
            // gtw <node_ns> <app_ns> <ifname> <port> <priv> <peerpub> <endpoint> <allowed> [workers]
            let node = std::sync::Arc::new(std::fs::File::open(&args[2]).unwrap());
            let app = std::fs::File::open(&args[3]).unwrap();
            let port: u16 = args[5].parse().unwrap();
            let workers: usize = args.get(10).map(|w| w.parse().unwrap()).unwrap_or(2);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let fd = weft::within(&app, || weft::open_tun(&args[4])).expect("tun");
                let tun = weft::Tun::new(fd, gotatun::tun::MtuWatcher::new(1420)).unwrap();
                let peer = Peer::new(PublicKey::from(hex32(&args[7])))
                    .with_endpoint(args[8].parse::<SocketAddr>().unwrap())
                    .with_allowed_ip(args[9].parse::<ipnetwork::IpNetwork>().unwrap());
                let mut b = DeviceBuilder::new()
                    .with_udp(weft::NodeUdp { node_ns: node, buffer: 4 << 20 })
                    .with_ip(tun.clone());
                if std::env::var_os("GT_UAPI").is_some() {
                    // `wg show` check: gotatun's own text-protocol server.
                    b = b.with_uapi(
                        gotatun::device::uapi::UapiServer::default_unix_socket(&args[4], None, None)
                            .unwrap(),
                    );
                }
                let dev = b
                    .with_private_key(StaticSecret::from(hex32(&args[6])))
                    .with_listen_port(port)
                    .with_peer(peer)
                    .build()
                    .await
                    .expect("gotatun device");
                println!("READY");
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let (port, peers) = dev
                        .read(async |d| (d.listen_port(), d.peers().await))
                        .await;
                    for p in peers {
                        eprintln!(
                            "stats: port={port} peer_endpoint={:?} handshake_age={:?} rx={} tx={}",
                            p.peer.endpoint, p.stats.last_handshake, p.stats.rx_bytes, p.stats.tx_bytes
                        );
                    }
                }
            });
        }
        "idle-bt" => {
            let n: usize = args[2].parse().unwrap();
            let secs: u64 = args.get(3).map(|w| w.parse().unwrap()).unwrap_or(20);
            println!("baseline: {}", proc_status());
            let t = Instant::now();
            let mut devs = Vec::new();
            for i in 0..n {
                let (h, mut s) = bt_start(&format!("b{i}"));
                let peer = pub_of(&rand32());
                bt_set(
                    &mut s,
                    (20000 + i) as u16,
                    &rand32(),
                    &peer,
                    &format!("10.99.{}.{}:51820", i / 250, i % 250 + 1),
                    &format!("10.200.{}.{}/32", i / 250, i % 250 + 1),
                );
                devs.push((h, s));
            }
            idle_report("boringtun", n, secs, t);
        }
        "idle-gt" => {
            let n: usize = args[2].parse().unwrap();
            let workers: usize = args.get(3).map(|w| w.parse().unwrap()).unwrap_or(2);
            let secs: u64 = args.get(4).map(|w| w.parse().unwrap()).unwrap_or(20);
            println!("baseline: {}", proc_status());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .unwrap();
            let t = Instant::now();
            let devs: Vec<GtDevice> = rt.block_on(async {
                let mut devs = Vec::new();
                for i in 0..n {
                    let peer = pub_of(&rand32());
                    devs.push(
                        gt_start(
                            &format!("g{i}"),
                            (20000 + i) as u16,
                            &rand32(),
                            &peer,
                            &format!("10.99.{}.{}:51820", i / 250, i % 250 + 1),
                            &format!("10.200.{}.{}/32", i / 250, i % 250 + 1),
                        )
                        .await,
                    );
                }
                devs
            });
            idle_report(&format!("gotatun({workers} workers)"), n, secs, t);
            // Orderly shutdown, timed.
            let t = Instant::now();
            rt.block_on(async {
                for d in devs {
                    d.stop().await;
                }
            });
            println!("gotatun: stopped {n} devices in {:?}", t.elapsed());
            std::thread::sleep(Duration::from_millis(500));
            let links = std::fs::read_to_string("/proc/self/net/dev").unwrap().lines().count() - 2;
            let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
            println!("after stop: {links} links left in netns (lo counts 1), {fds} fds open, {}", proc_status());
        }
        other => panic!("unknown command {other}"),
    }
}
