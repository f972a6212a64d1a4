//! Userspace WireGuard in process: GotaTun devices (see
//! `docs/design/userspace-wireguard.md` for why GotaTun, measured against
//! boringtun 0.7 and a fast path of our own).
//!
//! Placement, as for kernel devices: the TUN link is created inside the app
//! netns ([`tun`]), the encrypted UDP socket is bound in the node netns
//! ([`udp`]). All devices of the daemon share one small runtime
//! ([`Engine`]): at 200 apps that is a handful of threads, not two per app.
//!
//! Configuration goes only through GotaTun's Rust API, in diffs: a peer
//! changed in place keeps its session and counters (a UAPI `set` on an
//! existing peer would replace it, dropping both). What `wg show` reads is a
//! read-only socket the daemon serves ([`super::wgsock`]), answered through
//! the device's own UAPI `get`.

mod offload;
mod tun;
mod udp;

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use gotatun::device::uapi::command::{Get, Request};
use gotatun::device::uapi::{UapiClient, UapiServer};
use gotatun::device::{Device, DeviceBuilder, Peer};
use gotatun::x25519::{PublicKey, StaticSecret};
use ipnet::Ipv4Net;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::netns;
use super::uapi::{UapiDevice, UapiPeer};
use super::wgsock::{WgServer, WgSocket};
use crate::keys::PrivateKey;

/// Runtime worker threads shared by all devices.
const WORKERS: usize = 2;
/// How long stopping a device, or one configuration call, may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A new TUN link's MTU until the data plane sets one.
const TUN_DEFAULT_MTU: u16 = 1500;
/// GotaTun reads each TUN packet into a pool buffer of this size.
pub(crate) const MAX_MTU: u16 = 4096 - 96;

type Transports = (udp::NodeUdp, tun::Tun, tun::Tun);

/// The runtime all devices of a data plane run on. It lives as long as one
/// device does, so a node with no userspace app keeps no idle threads.
pub(crate) struct Engine {
    rt: Runtime,
}

impl Engine {
    /// Starts the runtime. Its threads are named like the calling thread,
    /// so a process that hosts several data planes (the tests) can tell
    /// whose threads they are.
    pub(crate) fn start() -> Result<Arc<Engine>> {
        let name = std::thread::current()
            .name()
            .unwrap_or("weft-wireguard")
            .to_string();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(WORKERS);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .enable_io()
            .enable_time()
            .build()
            .context("start the userspace WireGuard runtime")?;
        Ok(Arc::new(Engine { rt }))
    }

    /// Runs `f` to its end on the runtime, bounded by [`CALL_TIMEOUT`].
    fn call<T>(&self, what: &str, f: impl std::future::Future<Output = T>) -> Result<T> {
        self.rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f).await })
            .map_err(|_| anyhow!("{what}: no answer within {CALL_TIMEOUT:?}"))
    }
}

/// One running GotaTun device we own.
pub(crate) struct UserspaceDevice {
    /// Interface (TUN link) name.
    pub interface: String,
    engine: Arc<Engine>,
    device: Option<Device<Transports>>,
    /// The TUN link's MTU, as GotaTun sees it (it pads packets up to it).
    mtu: watch::Sender<u16>,
    uapi: UapiClient,
    /// The key last set and its public half, derived once.
    key: Option<(PrivateKey, String)>,
    /// The device's socket for `wg`, when the daemon serves one.
    wg_socket: Option<WgSocket>,
}

impl std::fmt::Debug for UserspaceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceDevice")
            .field("interface", &self.interface)
            .field("wg_socket", &self.wg_socket)
            .finish_non_exhaustive()
    }
}

fn public_key(b64: &str) -> Result<PublicKey> {
    use base64::Engine as _;
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("peer public key is not a 32-byte base64 key"))?;
    Ok(PublicKey::from(bytes))
}

fn b64(key: &PublicKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

impl UserspaceDevice {
    /// Creates the TUN link `interface` in `app`, binds `port` in `node`
    /// and starts the device with `key`. Nothing is left behind on failure.
    pub(crate) fn start(
        engine: Arc<Engine>,
        node: Arc<File>,
        app: &File,
        interface: &str,
        key: &PrivateKey,
        port: u16,
    ) -> Result<Self> {
        let fd = open_tun(app, interface)?;
        let (mtu, mtu_rx) = watch::channel(TUN_DEFAULT_MTU);
        let tun = {
            let _in_runtime = engine.rt.enter();
            tun::Tun::new(fd, mtu_rx).context("register the TUN fd")?
        };
        let (uapi, uapi_server) = UapiServer::new();
        let builder = DeviceBuilder::new()
            .with_udp(udp::NodeUdp { node_ns: node })
            .with_ip(tun)
            .with_listen_port(port)
            .with_uapi(uapi_server);
        let device = engine.call("start the device", async move {
            let device = builder.build().await?;
            // Setting the key brings the connection up (binds the socket),
            // also while there is no peer yet, so a taken port shows now.
            match device
                .set_private_key(StaticSecret::from(key.to_bytes()))
                .await
            {
                Ok(()) => Ok(device),
                Err(e) => {
                    device.stop().await;
                    Err(e)
                }
            }
        })?;
        let device =
            device.with_context(|| format!("start WireGuard device {interface} on port {port}"))?;
        Ok(UserspaceDevice {
            interface: interface.to_string(),
            engine,
            device: Some(device),
            mtu,
            uapi,
            key: Some((key.clone(), key.public_key())),
            wg_socket: None,
        })
    }

    fn device(&self) -> Result<&Device<Transports>> {
        self.device
            .as_ref()
            .ok_or_else(|| anyhow!("WireGuard device {} is stopped", self.interface))
    }

    /// Sets the key and the listen port; each only when it differs (a
    /// change rebinds the socket and restarts the device's tasks).
    pub(crate) fn configure(&mut self, key: &PrivateKey, port: u16) -> Result<()> {
        let secret = StaticSecret::from(key.to_bytes());
        let dev = self.device()?;
        self.engine
            .call(
                "configure the device",
                dev.write(async |d| {
                    d.set_private_key(secret).await;
                    d.set_listen_port(port);
                }),
            )?
            .with_context(|| {
                format!(
                    "configure WireGuard device {} on port {port}",
                    self.interface
                )
            })?;
        if self.key.as_ref().is_none_or(|(k, _)| k != key) {
            self.key = Some((key.clone(), key.public_key()));
        }
        Ok(())
    }

    /// Adds the peer, or changes it in place (its session and counters
    /// stay). An endpoint of `None` leaves a learned endpoint alone.
    pub(crate) fn set_peer(
        &self,
        public_key_b64: &str,
        endpoint: Option<SocketAddr>,
        allowed_ips: &[Ipv4Net],
        keepalive: u16,
    ) -> Result<()> {
        let pk = public_key(public_key_b64)?;
        let ips: Vec<ipnetwork::IpNetwork> = allowed_ips
            .iter()
            .map(|n| {
                ipnetwork::Ipv4Network::new(n.addr(), n.prefix_len())
                    .map(Into::into)
                    .map_err(|e| anyhow!("allowed IP {n}: {e}"))
            })
            .collect::<Result<_>>()?;
        let keepalive = (keepalive > 0).then_some(keepalive);
        let dev = self.device()?;
        self.engine
            .call(
                "set a peer",
                dev.write(async |d| {
                    let changed = d
                        .modify_peer(&pk, |p| {
                            p.clear_allowed_ips();
                            p.add_allowed_ips(ips.iter().copied());
                            if endpoint.is_some() {
                                p.set_endpoint(endpoint);
                            }
                            p.set_keepalive(keepalive);
                        })
                        .await;
                    if !changed {
                        let mut peer = Peer::new(pk).with_allowed_ips(ips.iter().copied());
                        peer.endpoint = endpoint;
                        peer.keepalive = keepalive;
                        d.add_peer(peer);
                    }
                }),
            )?
            .with_context(|| format!("set a peer of WireGuard device {}", self.interface))
    }

    /// Removes the peer (absent is fine).
    pub(crate) fn remove_peer(&self, public_key_b64: &str) -> Result<()> {
        let pk = public_key(public_key_b64)?;
        let dev = self.device()?;
        self.engine
            .call(
                "remove a peer",
                dev.write(async |d| d.remove_peer(&pk).await),
            )?
            .with_context(|| format!("remove a peer of WireGuard device {}", self.interface))
            .map(drop)
    }

    /// Tells the device the MTU its TUN link now has.
    pub(crate) fn set_mtu(&self, mtu: u16) {
        self.mtu.send_replace(mtu);
    }

    /// The device's configuration and counters, read back from it.
    pub(crate) fn get(&self) -> Result<UapiDevice> {
        let dev = self.device()?;
        let (secret, listen_port, peers) = self.engine.call(
            "read the device",
            dev.read(async |d| {
                (
                    d.private_key().map(|k| k.to_bytes()),
                    d.listen_port(),
                    d.peers().await,
                )
            }),
        )?;
        let public_key = match (secret, &self.key) {
            (Some(s), Some((k, public))) if s == k.to_bytes() => public.clone(),
            (Some(s), _) => b64(&PublicKey::from(&StaticSecret::from(s))),
            (None, _) => String::new(),
        };
        let mut peers: Vec<UapiPeer> = peers
            .into_iter()
            .map(|p| {
                let mut allowed_ips: Vec<Ipv4Net> = p
                    .peer
                    .allowed_ips
                    .iter()
                    .filter_map(|n| match n {
                        ipnetwork::IpNetwork::V4(n) => Ipv4Net::new(n.ip(), n.prefix()).ok(),
                        ipnetwork::IpNetwork::V6(_) => None,
                    })
                    .collect();
                allowed_ips.sort();
                UapiPeer {
                    public_key: b64(&p.peer.public_key),
                    endpoint: p.peer.endpoint,
                    allowed_ips,
                    persistent_keepalive: p.peer.keepalive.unwrap_or(0),
                    handshake_age: p.stats.last_handshake.map(|a| a.as_secs()),
                    rx_bytes: p.stats.rx_bytes as u64,
                    tx_bytes: p.stats.tx_bytes as u64,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
        Ok(UapiDevice {
            public_key,
            listen_port,
            peers,
        })
    }

    /// Serves the device to `wg` as `<dir>/<name>.sock` (see
    /// [`super::wgsock`]). Best effort: the mesh works without it, so a
    /// failure is logged, not returned.
    pub(crate) fn serve_wg_socket(&mut self, server: &WgServer, dir: &std::path::Path, name: &str) {
        let engine = self.engine.clone();
        let uapi = self.uapi.clone();
        let get = Arc::new(move || -> Result<String> {
            let response = engine
                .call("answer `wg`", uapi.send(Request::Get(Get::default())))?
                .map_err(|e| anyhow!("{e:#}"))?;
            Ok(response.to_string())
        });
        match WgSocket::start(server, dir, name, get) {
            Ok(s) => self.wg_socket = s,
            Err(e) => {
                tracing::warn!(interface = %self.interface, socket = name, error = %format!("{e:#}"), "cannot serve a socket for `wg`")
            }
        }
    }

    /// Stops the device: its UDP socket and TUN link are gone when this
    /// returns (bounded by [`CALL_TIMEOUT`]).
    pub(crate) fn stop(&mut self) {
        // The socket first: `wg` must not find a device that is going away.
        if let Some(mut s) = self.wg_socket.take() {
            s.stop();
        }
        let Some(device) = self.device.take() else {
            return;
        };
        if self.engine.call("stop the device", device.stop()).is_err() {
            tracing::warn!(interface = %self.interface, "WireGuard device did not stop in time");
        }
    }
}

impl Drop for UserspaceDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates the TUN link in `app`. A device of that name stopped a moment
/// ago may still be closing its fd (the kernel answers EBUSY): wait for it.
fn open_tun(app: &File, interface: &str) -> Result<std::os::fd::OwnedFd> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match netns::within(app, || Ok(tun::open(interface)?)) {
            Err(e)
                if std::time::Instant::now() < deadline && format!("{e:#}").contains("EBUSY") =>
            {
                std::thread::sleep(Duration::from_millis(10))
            }
            r => return r,
        }
    }
}

/// Stops all `devices` at once (each stop waits for its tasks).
pub(crate) fn stop_all(devices: Vec<UserspaceDevice>) {
    std::thread::scope(|s| {
        for mut d in devices {
            s.spawn(move || d.stop());
        }
    });
}
