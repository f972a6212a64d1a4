//! Moving a workload between nodes (a migration, or one step of a canary
//! roll) and timing how soon packets reach it at its new place. Used by the
//! `migration` e2e test and by `weft-bench`.
//!
//! A move is what a scheduler does: the workload stops on one node (its
//! announcement is withdrawn and its namespace deleted) and a workload with
//! the same namespace, name and labels starts on another. Nobody touches
//! Weft: the daemon of the new node reports it, the operator plans the app
//! onto that node (and off the old one once nothing of the app runs there),
//! the other nodes get the new peer, and the new node attaches it.
//!
//! The address changes with the node: a workload's address comes from the
//! slice of the app range its node owns (peers route whole slices), so a
//! moved workload is reachable at a new address, which its node publishes in
//! MeshNode status (`status.workloads[].address`). Clients find it there, as
//! they would a rescheduled pod's new IP. The measured figure starts when the
//! new attachment exists (the workload's `weft0` has its address) and ends
//! when the first datagram from a client on another node arrives in the
//! workload; the client sends from the moment the address exists, i.e. with
//! a discovery that costs nothing, so the figure is Weft's own (peer set-up
//! and handshake), not the time status takes to travel.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::cluster::Cluster;
use crate::netns::spawn_in_netns;
use crate::traffic::udp_probe_until_ok;
use crate::workload::WORKLOAD_IFACE;

/// Namespace of the moving app.
pub const NS: &str = "mig";
/// Name of the moving app.
pub const APP: &str = "mover";
/// The label its workloads carry (and its selector).
pub const LABEL: (&str, &str) = ("tier", "mover");
/// Name of the workload that moves.
pub const MOVER: &str = "mover-0";
/// Name of the client workload (stays put).
pub const CLIENT: &str = "mover-client";
/// UDP port the moving workload answers on.
pub const PORT: u16 = 7400;
/// Manifest file of the app.
pub const FILE: &str = "mig-mover.yaml";

/// The app's manifest.
pub fn manifest() -> String {
    crate::scenario::app_manifest(APP, NS, &[LABEL], None)
}

/// A UDP echo in a workload namespace that notes when the first datagram
/// arrived (stopped on drop).
pub struct Receiver {
    stop: Arc<AtomicBool>,
    first: Arc<Mutex<Option<Instant>>>,
    count: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Receiver {
    /// Listens on 0.0.0.0:`port` in `netns` (before it has an address).
    pub fn start(netns: &str, port: u16) -> Result<Receiver> {
        let stop = Arc::new(AtomicBool::new(false));
        let first = Arc::new(Mutex::new(None));
        let count = Arc::new(AtomicU64::new(0));
        let (s, f, n) = (stop.clone(), first.clone(), count.clone());
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let handle = spawn_in_netns(netns, move || {
            let sock = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("bind udp :{port}: {e}")));
                    return Err(e.into());
                }
            };
            sock.set_read_timeout(Some(Duration::from_millis(20)))?;
            let _ = tx.send(Ok(()));
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                if let Ok((len, from)) = sock.recv_from(&mut buf) {
                    let now = Instant::now();
                    if let Ok(mut g) = f.lock() {
                        g.get_or_insert(now);
                    }
                    n.fetch_add(1, Ordering::SeqCst);
                    let _ = sock.send_to(&buf[..len], from);
                }
            }
            Ok(())
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .context("receiver did not start")??;
        Ok(Receiver {
            stop,
            first,
            count,
            handle: Some(handle),
        })
    }

    /// When the first datagram arrived, if one did.
    pub fn first(&self) -> Option<Instant> {
        self.first.lock().ok().and_then(|g| *g)
    }

    /// Datagrams received so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Polls (every millisecond, from inside `netns`) until the workload's
/// `weft0` has an IPv4 address; returns when that was seen and the address.
pub fn wait_attached(netns: &str, timeout: Duration) -> Result<(Instant, Ipv4Addr)> {
    let start = Instant::now();
    let netns_name = netns.to_string();
    spawn_in_netns(netns, move || loop {
        crate::check_interrupt()?;
        let found = nix::ifaddrs::getifaddrs()
            .context("getifaddrs")?
            .filter(|i| i.interface_name == WORKLOAD_IFACE)
            .find_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()));
        if let Some(a) = found {
            return Ok((Instant::now(), a));
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "{netns_name}: no address on {WORKLOAD_IFACE} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    })?
    .join()
    .map_err(|_| anyhow!("attachment watcher panicked"))?
}

/// What one move measured.
#[derive(Clone, Copy, Debug)]
pub struct Move {
    /// The workload's address at its new place.
    pub address: Ipv4Addr,
    /// From the announcement on the new node to the attachment.
    pub announce_to_attach: Duration,
    /// From the attachment to the first client datagram reaching it.
    pub attach_to_first_packet: Duration,
}

/// Starts the app with its client on node `client_node` and the mover on
/// `first_node`; returns once the client reaches the mover.
pub fn setup(c: &mut Cluster, client_node: usize, first_node: usize) -> Result<Move> {
    c.apply_manifest(FILE, &manifest())?;
    c.add_workload(client_node, CLIENT, NS, &[LABEL])?;
    c.wait_address(CLIENT, Duration::from_secs(60))?;
    arrive(c, first_node, Duration::from_secs(60))
}

/// Moves the mover to node `to`: stops it where it runs, starts it (same
/// namespace, name, labels) on `to`, and times its first packet from the
/// client.
pub fn move_to(c: &mut Cluster, to: usize, timeout: Duration) -> Result<Move> {
    c.remove_workload(MOVER); // withdrawn, namespace deleted
    arrive(c, to, timeout)
}

fn arrive(c: &mut Cluster, to: usize, timeout: Duration) -> Result<Move> {
    let announced = Instant::now();
    c.add_workload(to, MOVER, NS, &[LABEL])?;
    let netns = c.workload(MOVER).netns().to_string();
    let client = c.workload(CLIENT).netns().to_string();
    let rx = Receiver::start(&netns, PORT)?;
    let (attached, address) = wait_attached(&netns, timeout)?;
    let left = timeout.saturating_sub(announced.elapsed());
    udp_probe_until_ok(
        &client,
        SocketAddrV4::new(address, PORT),
        Duration::from_millis(2),
        left,
    )
    .with_context(|| format!("client to {MOVER} at {address} on node {to}"))?;
    let first = rx
        .first()
        .context("an echo came back but the receiver saw nothing")?;
    Ok(Move {
        address,
        announce_to_attach: attached - announced,
        attach_to_first_packet: first.saturating_duration_since(attached),
    })
}
