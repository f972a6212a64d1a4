//! Real Linux data plane (netlink, WireGuard, namespaces).
//!
//! Placement: every app gets a persistent netns under the run directory
//! (`/run/netns` by default). Its WireGuard interface lives inside that netns,
//! but the encrypted UDP sockets live in the *node* netns: the netns the
//! dataplane was constructed in (the daemon's own). Kernel WireGuard gets this
//! by creating the link in the node netns and moving it; userspace devices
//! (GotaTun, see [`userspace`]) by creating their TUN link in the app netns
//! and binding their socket in the node netns.
//!
//! Namespace switching happens on the calling thread only (see
//! [`netns::within`]), which always returns to its original netns, so every
//! call must come from a plain OS thread, never from a tokio worker.

mod applink;
mod changes;
mod kernel;
mod libnft;
mod netns;
pub mod nft;
pub mod nftread;
mod nl;
mod notify;
pub mod sockets;
pub mod stats;
mod uapi;
mod userspace;
pub mod wgsock;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use anyhow::{anyhow, Context, Result};
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::LinkUnspec;
use tokio::runtime::Runtime;
use weft_api::DataplaneKind;

use super::{AppTraffic, Dataplane, Observation, TrafficSpec};
use crate::core::ops::Op;
use crate::core::state::{AppLinkEnd, AppNet, Device, Peer, PeerStats, WorkloadLink};
use crate::error::Error;
use crate::keys::PrivateKey;
use uapi::UapiDevice;
use userspace::UserspaceDevice;

/// Prefix of the app-side veth names reported back as workloads.
pub const WORKLOAD_HOST_IF_PREFIX: &str = workload::HOST_IF_PREFIX;

/// How to build a [`LinuxDataplane`].
#[derive(Clone, Debug)]
pub struct LinuxOptions {
    /// Where named network namespaces are pinned (iproute2 uses `/run/netns`).
    pub netns_run_dir: PathBuf,
    /// Use userspace WireGuard even when the kernel has WireGuard.
    pub force_userspace: bool,
    /// How long a full read of an app's policy table (every rule and
    /// counter) is reused; in between only its marker rule is checked.
    /// Listing thousands of rules on every pass costs a core; a deleted or
    /// replaced table is still caught on the next pass.
    pub policy_full_read_interval: std::time::Duration,
    /// How long traffic figures (per-peer packets, connections) are reused
    /// before the next read (see [`stats::Stats`]).
    pub traffic_read_interval: std::time::Duration,
    /// Serve each userspace device to `wg` as a read-only socket in this
    /// directory (see [`wgsock`]); `wg` itself only looks in
    /// [`wgsock::DEFAULT_DIR`]. Off by default, so in-process test nodes
    /// (which share one host and the same app ids) leave the host's
    /// directory alone; the daemon's `--wg-socket-dir` turns it on.
    pub wg_socket_dir: Option<PathBuf>,
    /// Run a DNS resolver in each app netns (see [`crate::dns`]). Off by
    /// default, so data-plane tests open no port 53; the daemon turns it on.
    pub dns: Option<crate::dns::DnsOptions>,
}

impl Default for LinuxOptions {
    fn default() -> Self {
        LinuxOptions {
            netns_run_dir: PathBuf::from("/run/netns"),
            force_userspace: false,
            policy_full_read_interval: std::time::Duration::from_secs(5),
            // Like the policy counters and the WireGuard counters: every
            // read enters the app netns, which at 200 apps cost a quarter
            // of the daemon's CPU at rest when made every 2 s.
            traffic_read_interval: std::time::Duration::from_secs(5),
            wg_socket_dir: None,
            dns: None,
        }
    }
}

/// The real data plane. Construct it on the thread (and in the netns) that
/// will call it; that netns is the node netns for all devices it creates.
pub struct LinuxDataplane {
    run_dir: PathBuf,
    kind: DataplaneKind,
    /// The node netns (where UDP sockets must live).
    node_ns: Arc<File>,
    /// Drives rtnetlink on the calling thread.
    rt: Runtime,
    /// Userspace devices we run, keyed by app netns.
    devices: BTreeMap<String, UserspaceDevice>,
    /// The runtime they share, while any runs.
    engine: Weak<userspace::Engine>,
    /// Last full read of each app netns' policy table (see `observe_policy`).
    policy_reads: BTreeMap<String, PolicyRead>,
    /// Per app netns: its change notifications and last netlink read (see
    /// [`changes`] and `read_links`).
    link_reads: BTreeMap<String, LinkRead>,
    /// Per app netns: the last read of its WireGuard configuration and
    /// counters (see `device_config`).
    config_reads: BTreeMap<String, ConfigRead>,
    /// When this daemon last changed each app netns' WireGuard device.
    config_written: BTreeMap<String, std::time::Instant>,
    policy_full_read_interval: std::time::Duration,
    /// Traffic counting rules and cached reads, per app netns.
    stats: stats::Stats,
    /// Where userspace devices are served to `wg` (see [`wgsock`]).
    wg_socket_dir: Option<PathBuf>,
    /// The thread serving those sockets, started with the first of them.
    wg_server: Option<wgsock::WgServer>,
    /// The per-app resolvers, when enabled.
    dns: Option<crate::dns::DnsService>,
    /// Wakes the loop on the change announcements of every app netns, once
    /// asked to (see [`Dataplane::wake_on_change`]).
    notifier: Option<notify::Notifier>,
}

/// How the resolvers reach app netns: through the calling thread, exactly
/// like every other netns operation of the data plane.
struct AppNamespaces<'a> {
    run_dir: &'a std::path::Path,
    rt: &'a tokio::runtime::Runtime,
}

impl crate::dns::AppNetns for AppNamespaces<'_> {
    fn identity(&self, netns: &str) -> Result<Option<u64>> {
        match netns::open(&self.run_dir.join(netns))? {
            Some(f) => Ok(Some(
                nix::sys::stat::fstat(&f).context("fstat netns")?.st_ino,
            )),
            None => Ok(None),
        }
    }

    fn open(
        &self,
        netns: &str,
        addr: std::net::SocketAddrV4,
        on_loopback: bool,
    ) -> Result<crate::dns::sockets::Sockets> {
        let ns = netns::open(&self.run_dir.join(netns))?
            .ok_or_else(|| anyhow!("no network namespace {netns}"))?;
        netns::within(&ns, || {
            if on_loopback {
                let local = Ipv4Net::new(*addr.ip(), 32).context("loopback address")?;
                nl::run(self.rt, |h| async move {
                    let lo = nl::index_of(&h, "lo").await?;
                    nl::add_address(&h, lo, local).await
                })?;
            }
            crate::dns::sockets::open(addr)
        })
    }
}

/// A full policy-table read and when it was made.
struct PolicyRead {
    at: std::time::Instant,
    /// Packets over the netns' links just before the read.
    packets: Option<u64>,
    table: Option<(
        crate::core::state::PolicyTable,
        crate::core::state::PolicyCounters,
    )>,
}

impl std::fmt::Debug for LinuxDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxDataplane")
            .field("run_dir", &self.run_dir)
            .field("kind", &self.kind)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

/// The last netlink read of one app netns and what tells when it is out
/// of date.
struct LinkRead {
    /// Inode of the netns file read: a netns replaced under the same name is
    /// another namespace (and the subscription would watch the old one).
    ino: u64,
    /// `None` when subscribing failed: then every pass reads.
    changes: Option<changes::Subscription>,
    raw: RawApp,
    /// The userspace interface the read was made for.
    userspace_if: Option<String>,
    at: std::time::Instant,
    /// Set by our own writes to the netns.
    stale: bool,
    /// The packet count of the netns' links taken in this pass (cleared
    /// when the next pass observes): its policy and traffic reads share it.
    probed: std::cell::Cell<Option<u64>>,
}

/// The last WireGuard configuration read of one app's device.
struct ConfigRead {
    interface: String,
    config: UapiDevice,
    at: std::time::Instant,
}

/// A netns whose links, routes and addresses no notification said changed
/// is still read again this often (a notification lost without an overflow
/// being reported, which the kernel does not promise against). Each read
/// opens an rtnetlink connection in the netns and dumps it: at 200 apps a
/// 30 s period was a tenth of the idle daemon's CPU.
const LINKS_REREAD: std::time::Duration = std::time::Duration::from_secs(120);
/// How long a WireGuard configuration read (peers, handshake ages, byte
/// counters) is reused. Neither the kernel nor GotaTun announces changes,
/// but only our own writes change the configuration (they invalidate the
/// read); what moves by itself is handshakes and counters, whose figures in
/// status and metrics may be this old (handshake ages are advanced by the
/// time since the read).
const CONFIG_REREAD: std::time::Duration = std::time::Duration::from_secs(5);
/// After our own write to a device, a peer without a handshake is read
/// again on every pass for this long, so a new peer shows up at once.
const HANDSHAKE_WATCH: std::time::Duration = std::time::Duration::from_secs(30);

/// What an app netns looks like from inside (netlink side only).
#[derive(Clone)]
struct RawApp {
    device: Option<RawDevice>,
    workloads: BTreeMap<String, WorkloadLink>,
    links: BTreeMap<String, AppLinkEnd>,
}

#[derive(Clone)]
struct RawDevice {
    interface: String,
    mtu: u16,
    up: bool,
    addresses: Vec<Ipv4Net>,
    routes: Vec<Ipv4Net>,
}

impl LinuxDataplane {
    /// Opens the data plane in the calling thread's netns (the node netns)
    /// and picks kernel WireGuard when the kernel has it.
    pub fn new(opts: LinuxOptions) -> Result<Self, Error> {
        let init = || -> Result<Self> {
            let node_ns = netns::current()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            let kind = if opts.force_userspace || !kernel_wireguard_available(&rt) {
                DataplaneKind::Userspace
            } else {
                DataplaneKind::Kernel
            };
            tracing::info!(?kind, "data plane ready");
            if let Some(dir) = &opts.wg_socket_dir {
                // A crashed daemon's sockets answer nobody; `wg` would list
                // them until it trips over each.
                match wgsock::remove_stale(dir) {
                    Ok(gone) if !gone.is_empty() => {
                        tracing::info!(dir = %dir.display(), removed = ?gone, "removed stale WireGuard sockets")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "cannot clear stale WireGuard sockets")
                    }
                }
            }
            if kind == DataplaneKind::Kernel {
                // The kernel answers `wg` over netlink inside the app netns.
                tracing::info!("kernel WireGuard: inspect an app's device with `ip netns exec <netns> wg show`");
            }
            let dns = match &opts.dns {
                Some(o) => Some(crate::dns::DnsService::new(o, &node_ns)?),
                None => None,
            };
            Ok(LinuxDataplane {
                dns,
                run_dir: opts.netns_run_dir.clone(),
                kind,
                node_ns: Arc::new(node_ns),
                engine: Weak::new(),
                rt,
                devices: BTreeMap::new(),
                policy_reads: BTreeMap::new(),
                link_reads: BTreeMap::new(),
                config_reads: BTreeMap::new(),
                config_written: BTreeMap::new(),
                policy_full_read_interval: opts.policy_full_read_interval,
                stats: stats::Stats::new(opts.traffic_read_interval),
                wg_socket_dir: opts.wg_socket_dir.clone(),
                wg_server: None,
                notifier: None,
            })
        };
        init().map_err(|e| Error::dp("init", "", format!("{e:#}")))
    }

    fn app_ns(&self, netns: &str) -> Result<File> {
        netns::open(&self.run_dir.join(netns))?
            .ok_or_else(|| anyhow!("no network namespace {netns}"))
    }

    /// Runs netlink work inside `ns`.
    fn nl_in<T, F, Fut>(&self, ns: &File, f: F) -> Result<T>
    where
        F: FnOnce(rtnetlink::Handle) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        netns::within(ns, || nl::run(&self.rt, f))
    }

    /// Runs one netlink change on `interface` in the app netns `netns`. A
    /// missing interface is an error when adding, and nothing to do when
    /// removing (`missing_ok`): removals stay idempotent.
    fn on_link<F, Fut>(&self, netns: &str, interface: &str, missing_ok: bool, f: F) -> Result<()>
    where
        F: FnOnce(rtnetlink::Handle, u32) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        self.nl_in(&self.app_ns(netns)?, |h| async move {
            match nl::link_by_name(&h, interface).await? {
                Some(l) => f(h, l.header.index).await,
                None if missing_ok => Ok(()),
                None => Err(anyhow!("no link {interface}")),
            }
        })
    }

    fn record(&mut self, netns: &str, interface: &str) -> Result<&mut UserspaceDevice> {
        self.devices
            .get_mut(netns)
            .filter(|d| d.interface == interface)
            .ok_or_else(|| anyhow!("no userspace WireGuard device {interface}"))
    }

    fn drop_record(&mut self, netns: &str) {
        if let Some(mut d) = self.devices.remove(netns) {
            tracing::info!(netns, interface = %d.interface, "stopping userspace WireGuard device");
            d.stop();
        }
    }

    /// The app's WireGuard interface name, if it has one.
    fn wg_interface(&self, netns: &str, app: &File) -> Result<Option<String>> {
        match self.kind {
            DataplaneKind::Userspace => Ok(self.devices.get(netns).map(|d| d.interface.clone())),
            DataplaneKind::Kernel => self.nl_in(app, |h| async move {
                let links = nl::links(&h).await?;
                Ok(links
                    .iter()
                    .find(|l| nl::link_kind(l) == Some(&InfoKind::Wireguard))
                    .and_then(nl::link_name)
                    .map(String::from))
            }),
        }
    }

    fn create_netns(&self, netns: &str) -> Result<()> {
        let ns = netns::create(&self.run_dir, netns)?;
        self.nl_in(&ns, |h| async move {
            let lo = nl::index_of(&h, "lo").await?;
            h.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .context("set lo up")
        })?;
        // /proc/sys/net is the calling thread's netns.
        netns::within(&ns, || {
            netns::write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
            // Strict reverse-path filtering: a workload can only send from the
            // address routed to its own veth, so it cannot borrow another
            // workload's address to slip past that workload's policy. (Traffic
            // from peers is already source-checked by WireGuard's allowed IPs.)
            netns::write_sysctl("/proc/sys/net/ipv4/conf/all/rp_filter", "1")?;
            netns::write_sysctl("/proc/sys/net/ipv4/conf/default/rp_filter", "1")
        })
    }

    fn delete_netns(&mut self, netns: &str) -> Result<()> {
        self.drop_record(netns);
        self.policy_reads.remove(netns);
        self.stats.forget(netns);
        // Its notification sockets hold the namespace: closed now, it goes
        // (with the workloads' veth ends in it) when unmounted, not at the
        // next pass.
        self.link_reads.remove(netns);
        self.config_reads.remove(netns);
        self.config_written.remove(netns);
        netns::delete(&self.run_dir, netns)
    }

    fn create_device(
        &mut self,
        netns: &str,
        interface: &str,
        key: &PrivateKey,
        port: u16,
    ) -> Result<()> {
        let app = self.app_ns(netns)?;
        let present = self.nl_in(&app, |h| async move {
            Ok(nl::link_by_name(&h, interface).await?.is_some())
        })?;
        match self.kind {
            DataplaneKind::Userspace => {
                if present
                    && self
                        .devices
                        .get(netns)
                        .is_some_and(|d| d.interface == interface)
                {
                    return self.configure_device(netns, interface, key, port);
                }
                self.drop_record(netns);
                // Whatever holds the name now is not a device we run.
                self.nl_in(&app, |h| async move {
                    nl::del_link_by_name(&h, interface).await.map(drop)
                })?;
                let engine = match self.engine.upgrade() {
                    Some(e) => e,
                    None => {
                        let e = userspace::Engine::start()?;
                        self.engine = Arc::downgrade(&e);
                        e
                    }
                };
                let mut dev = UserspaceDevice::start(
                    engine,
                    self.node_ns.clone(),
                    &app,
                    interface,
                    key,
                    port,
                )?;
                if let Some(dir) = &self.wg_socket_dir {
                    if self.wg_server.is_none() {
                        match wgsock::WgServer::start() {
                            Ok(s) => self.wg_server = Some(s),
                            Err(e) => {
                                tracing::warn!(error = %format!("{e:#}"), "cannot serve sockets for `wg`")
                            }
                        }
                    }
                    if let Some(server) = &self.wg_server {
                        dev.serve_wg_socket(server, dir, &wgsock::socket_name(netns));
                    }
                }
                self.devices.insert(netns.to_string(), dev);
                Ok(())
            }
            DataplaneKind::Kernel => {
                if !present {
                    let app_fd = app.as_fd();
                    self.nl_in(&self.node_ns, |h| async move {
                        // A link of that name stranded in the node netns (a
                        // move that never happened) is ours to replace.
                        if let Some(l) = nl::link_by_name(&h, interface).await? {
                            if nl::link_kind(&l) == Some(&InfoKind::Wireguard) {
                                nl::del_link(&h, l.header.index).await?;
                            }
                        }
                        kernel::add_link(&h, interface).await?;
                        let idx = nl::index_of(&h, interface).await?;
                        if let Err(e) = nl::move_link(&h, idx, app_fd, None).await {
                            let _ = nl::del_link(&h, idx).await;
                            return Err(e);
                        }
                        Ok(())
                    })?;
                }
                netns::within(&app, || kernel::configure(interface, key, port))
            }
        }
    }

    fn delete_device(&mut self, netns: &str, interface: &str) -> Result<()> {
        if self
            .devices
            .get(netns)
            .is_some_and(|d| d.interface == interface)
        {
            self.drop_record(netns);
        }
        match netns::open(&self.run_dir.join(netns))? {
            Some(app) => self.nl_in(&app, |h| async move {
                nl::del_link_by_name(&h, interface).await.map(drop)
            }),
            None => Ok(()),
        }
    }

    fn configure_device(
        &mut self,
        netns: &str,
        interface: &str,
        key: &PrivateKey,
        port: u16,
    ) -> Result<()> {
        match self.kind {
            DataplaneKind::Userspace => self.record(netns, interface)?.configure(key, port),
            DataplaneKind::Kernel => netns::within(&self.app_ns(netns)?, || {
                kernel::configure(interface, key, port)
            }),
        }
    }

    fn apply_inner(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::CreateNetns { netns } => self.create_netns(netns),
            Op::DeleteNetns { netns } => self.delete_netns(netns),
            Op::CreateDevice {
                netns,
                interface,
                private_key,
                listen_port,
            } => self.create_device(netns, interface, private_key, *listen_port),
            Op::DeleteDevice { netns, interface } => self.delete_device(netns, interface),
            Op::ConfigureDevice {
                netns,
                interface,
                private_key,
                listen_port,
            } => self.configure_device(netns, interface, private_key, *listen_port),
            Op::SetLink {
                netns,
                interface,
                mtu,
            } => {
                if self.kind == DataplaneKind::Userspace {
                    if *mtu > userspace::MAX_MTU {
                        tracing::warn!(
                            netns,
                            interface,
                            mtu,
                            max = userspace::MAX_MTU,
                            "userspace WireGuard drops packets larger than its buffers"
                        );
                    }
                    self.record(netns, interface)?.set_mtu(*mtu);
                }
                let mtu = u32::from(*mtu);
                self.on_link(netns, interface, false, |h, idx| async move {
                    nl::set_mtu_up(&h, idx, mtu).await
                })
            }
            Op::AddAddress {
                netns,
                interface,
                address,
            } => {
                let a = *address;
                self.on_link(netns, interface, false, |h, idx| async move {
                    nl::add_address(&h, idx, a).await
                })
            }
            Op::DeleteAddress {
                netns,
                interface,
                address,
            } => {
                let a = *address;
                self.on_link(netns, interface, true, |h, idx| async move {
                    nl::del_address(&h, idx, a).await
                })
            }
            Op::AddRoute {
                netns,
                interface,
                destination,
            } => {
                let d = *destination;
                self.on_link(netns, interface, false, |h, idx| async move {
                    nl::add_route(&h, idx, d, None).await
                })
            }
            Op::DeleteRoute {
                netns,
                interface,
                destination,
            } => {
                let d = *destination;
                self.on_link(netns, interface, true, |h, idx| async move {
                    nl::del_route(&h, idx, d).await
                })
            }
            Op::SetPeer {
                netns,
                interface,
                public_key,
                endpoint,
                allowed_ips,
                persistent_keepalive,
            } => {
                let mut ips = allowed_ips.clone();
                ips.sort();
                match self.kind {
                    DataplaneKind::Userspace => self.record(netns, interface)?.set_peer(
                        public_key,
                        *endpoint,
                        &ips,
                        *persistent_keepalive,
                    ),
                    DataplaneKind::Kernel => netns::within(&self.app_ns(netns)?, || {
                        kernel::set_peer(
                            interface,
                            public_key,
                            *endpoint,
                            &ips,
                            *persistent_keepalive,
                        )
                    }),
                }
            }
            Op::RemovePeer {
                netns,
                interface,
                public_key,
            } => match self.kind {
                DataplaneKind::Userspace => self.record(netns, interface)?.remove_peer(public_key),
                DataplaneKind::Kernel => netns::within(&self.app_ns(netns)?, || {
                    kernel::remove_peer(interface, public_key)
                }),
            },
            Op::AttachWorkload {
                netns,
                host_interface,
                link,
                routes,
            } => {
                let app = self.app_ns(netns)?;
                let wg = self.wg_interface(netns, &app)?;
                workload::attach(&self.rt, &app, wg.as_deref(), host_interface, link, routes)
            }
            Op::SetWorkloadRoutes {
                host_interface,
                workload_netns,
                routes,
                ..
            } => workload::set_routes(&self.rt, host_interface, workload_netns, routes),
            Op::CreateAppLink {
                netns,
                interface,
                peer_netns,
                peer_interface,
            } => applink::create(
                &self.rt,
                &self.app_ns(netns)?,
                interface,
                &self.app_ns(peer_netns)?,
                peer_interface,
            ),
            Op::DeleteAppLink { netns, interface } => {
                match netns::open(&self.run_dir.join(netns))? {
                    Some(app) => applink::delete(&self.rt, &app, interface),
                    None => Ok(()),
                }
            }
            Op::AddAppLinkRoute {
                netns,
                interface,
                destination,
            } => {
                let d = *destination;
                self.on_link(netns, interface, false, |h, idx| async move {
                    nl::add_route_onlink(&h, idx, d, applink::LINK_GATEWAY).await
                })
            }
            Op::DeleteAppLinkRoute {
                netns,
                interface,
                destination,
            } => {
                let d = *destination;
                self.on_link(netns, interface, true, |h, idx| async move {
                    nl::del_route(&h, idx, d).await
                })
            }
            Op::DetachWorkload {
                netns,
                host_interface,
            } => match netns::open(&self.run_dir.join(netns))? {
                Some(app) => workload::detach(&self.rt, &app, host_interface),
                None => Ok(()),
            },
            Op::SetPolicy { netns, policy } => {
                self.policy_reads.remove(netns);
                netns::within(&self.app_ns(netns)?, || nft::apply(policy.as_ref()))
            }
        }
    }

    /// The app netns' policy table: a full read at most every
    /// `policy_full_read_interval` (for the counters), and then only when
    /// packets moved in the netns; in between nothing while no nftables
    /// notification came from the netns, else only the marker rule of the
    /// small `forward` chain, compared with the last full read (our
    /// traffic-counting table notifies too).
    fn observe_policy(
        &mut self,
        name: &str,
        app: &File,
        nft_changed: bool,
    ) -> Result<
        Option<(
            crate::core::state::PolicyTable,
            crate::core::state::PolicyCounters,
        )>,
    > {
        let mut probe = None;
        if let Some(last) = self.policy_reads.get(name) {
            if !nft_changed && last.at.elapsed() >= self.policy_full_read_interval {
                // Counters only move with packets, and every packet crosses
                // a link of the netns: no packet since, nothing to read.
                probe = packets(&self.link_reads, name);
                if probe.is_some() && probe == last.packets {
                    let table = last.table.clone();
                    if let Some(last) = self.policy_reads.get_mut(name) {
                        last.at = std::time::Instant::now();
                    }
                    return Ok(table);
                }
            }
        }
        if let Some(last) = self.policy_reads.get(name) {
            if last.at.elapsed() < self.policy_full_read_interval {
                // No nftables notification since: nothing to check.
                if !nft_changed {
                    return Ok(last.table.clone());
                }
                let marker = netns::within(app, || nft::observe_marker(&self.rt))?;
                let cached = last.table.as_ref().map(|(t, _)| t.digest.clone());
                if marker == cached {
                    return Ok(last.table.clone());
                }
            }
        }
        let probe = probe.or_else(|| packets(&self.link_reads, name));
        let table = netns::within(app, || nft::observe(&self.rt))?;
        self.policy_reads.insert(
            name.to_string(),
            PolicyRead {
                at: std::time::Instant::now(),
                table: table.clone(),
                packets: probe,
            },
        );
        Ok(table)
    }

    /// Reads one app netns (netlink side, plus the kernel WireGuard config).
    fn read_app(&self, app: &File, userspace_if: Option<String>) -> Result<RawApp> {
        let kind = self.kind;
        netns::within(app, || {
            let raw = nl::run(&self.rt, |h| async move {
                let links = nl::links(&h).await?;
                let routes = nl::routes(&h).await?;
                let wg = match kind {
                    DataplaneKind::Userspace => userspace_if
                        .and_then(|n| links.iter().find(|l| nl::link_name(l) == Some(n.as_str()))),
                    DataplaneKind::Kernel => links
                        .iter()
                        .find(|l| nl::link_kind(l) == Some(&InfoKind::Wireguard)),
                };
                let device = match wg {
                    Some(l) => {
                        let idx = l.header.index;
                        let r = nl::destinations_via(&routes, idx);
                        Some(RawDevice {
                            interface: nl::link_name(l).unwrap_or_default().to_string(),
                            mtu: u16::try_from(nl::link_mtu(l)).unwrap_or(u16::MAX),
                            up: nl::link_up(l),
                            addresses: nl::addresses(&h, idx)
                                .await?
                                .into_iter()
                                .map(|(n, _)| n)
                                .collect(),
                            routes: r,
                        })
                    }
                    None => None,
                };
                // App links: their routes (the other end's netns is not
                // reported back; the diff does not need it).
                let mut app_links = BTreeMap::new();
                for l in &links {
                    let Some(name) = nl::link_name(l) else {
                        continue;
                    };
                    if !name.starts_with(applink::LINK_PREFIX)
                        || nl::link_kind(l) != Some(&InfoKind::Veth)
                    {
                        continue;
                    }
                    let r = nl::destinations_via(&routes, l.header.index);
                    app_links.insert(
                        name.to_string(),
                        AppLinkEnd {
                            routes: r,
                            ..Default::default()
                        },
                    );
                }
                let mut workloads = BTreeMap::new();
                for l in &links {
                    let Some(name) = nl::link_name(l) else {
                        continue;
                    };
                    if !name.starts_with(workload::HOST_IF_PREFIX)
                        || nl::link_kind(l) != Some(&InfoKind::Veth)
                    {
                        continue;
                    }
                    let idx = l.header.index;
                    // The workload's /32; an attachment without one is broken
                    // and reported as 0.0.0.0 so the diff re-attaches it.
                    let address = routes
                        .iter()
                        .find(|r| {
                            r.oif == Some(idx) && r.dst.prefix_len() == 32 && r.gateway.is_none()
                        })
                        .map(|r| r.dst.addr())
                        .unwrap_or(Ipv4Addr::UNSPECIFIED);
                    workloads.insert(
                        name.to_string(),
                        WorkloadLink {
                            workload: String::new(),
                            workload_netns: String::new(),
                            address,
                            mtu: u16::try_from(nl::link_mtu(l)).unwrap_or(u16::MAX),
                        },
                    );
                }
                Ok(RawApp {
                    device,
                    workloads,
                    links: app_links,
                })
            })?;
            Ok(raw)
        })
    }

    /// The netlink side of one app netns: the last read while no change
    /// notification arrived (and it is younger than [`LINKS_REREAD`]), else
    /// a new read. Also says what changed, for the policy table's read.
    fn read_links(
        &mut self,
        name: &str,
        app: &File,
        ino: u64,
        userspace_if: Option<String>,
    ) -> Result<(RawApp, changes::Changed)> {
        let everything = changes::Changed {
            links: true,
            nft: true,
        };
        let reread = changes::spread(LINKS_REREAD, name);
        if let Some(r) = self.link_reads.get_mut(name) {
            if r.ino == ino && r.changes.is_some() {
                let changed = r.changes.as_ref().map(|c| c.take()).unwrap_or(everything);
                let fresh =
                    !r.stale && r.userspace_if == userspace_if && !changes::stale(r.at, reread);
                if fresh && !changed.links {
                    return Ok((r.raw.clone(), changed));
                }
                let raw = self.read_app(app, userspace_if.clone())?;
                let r = self.link_reads.get_mut(name).expect("present above");
                r.raw = raw.clone();
                r.userspace_if = userspace_if;
                r.at = std::time::Instant::now();
                r.stale = false;
                return Ok((raw, everything));
            }
        }
        // First sight of this netns (or a new one under its name):
        // subscribe before reading, so a change right after the read is
        // still seen on the next pass.
        let changes = match netns::within(app, changes::Subscription::here) {
            Ok(c) => {
                if let Some(n) = &self.notifier {
                    for fd in c.fds() {
                        if let Err(e) = n.add(fd) {
                            tracing::warn!(netns = name, error = %format!("{e:#}"), "changes in this netns wait for the timed pass");
                        }
                    }
                }
                Some(c)
            }
            Err(e) => {
                tracing::warn!(netns = name, error = %format!("{e:#}"), "cannot subscribe to the netns' changes; reading it on every pass");
                None
            }
        };
        let raw = self.read_app(app, userspace_if.clone())?;
        self.link_reads.insert(
            name.to_string(),
            LinkRead {
                ino,
                changes,
                raw: raw.clone(),
                userspace_if,
                at: std::time::Instant::now(),
                stale: false,
                probed: std::cell::Cell::new(None),
            },
        );
        Ok((raw, everything))
    }

    /// The device's configuration and counters: the last read while it is
    /// younger than [`CONFIG_REREAD`] and no write of ours came since (a
    /// peer still waiting for its first handshake after a write is read on
    /// every pass), else a new read over UAPI (userspace) or netlink
    /// (kernel). `None` when a userspace device stopped answering (it is
    /// dropped, so the next pass creates it again).
    fn device_config(&mut self, name: &str, app: &File, interface: &str) -> Option<UapiDevice> {
        if let Some(c) = self.config_reads.get(name) {
            let waiting = c.config.peers.iter().any(|p| p.handshake_age.is_none())
                && self
                    .config_written
                    .get(name)
                    .is_some_and(|t| t.elapsed() < HANDSHAKE_WATCH);
            if c.interface == interface
                && !waiting
                && !changes::stale(c.at, changes::spread(CONFIG_REREAD, name))
            {
                let mut config = c.config.clone();
                // Rounded, not truncated: the read's ages are already whole
                // seconds cut down, and the two cuts must not add up.
                let age = c.at.elapsed().as_secs_f64().round() as u64;
                for p in &mut config.peers {
                    p.handshake_age = p.handshake_age.map(|a| a + age);
                }
                return Some(config);
            }
        }
        let read = match self.kind {
            DataplaneKind::Kernel => match netns::within(app, || kernel::get(interface)) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(netns = name, error = %format!("{e:#}"), "cannot read the WireGuard device");
                    None
                }
            },
            DataplaneKind::Userspace => match self.devices.get(name).map(|d| d.get()) {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    tracing::warn!(netns = name, error = %format!("{e:#}"), "userspace WireGuard device is not answering; dropping it");
                    self.drop_record(name);
                    None
                }
                None => None,
            },
        };
        match &read {
            Some(c) => {
                self.config_reads.insert(
                    name.to_string(),
                    ConfigRead {
                        interface: interface.to_string(),
                        config: c.clone(),
                        at: std::time::Instant::now(),
                    },
                );
            }
            None => {
                self.config_reads.remove(name);
            }
        }
        read
    }

    /// Our own write to `netns`: its next observation reads it again.
    fn invalidate(&mut self, netns: &str) {
        if let Some(r) = self.link_reads.get_mut(netns) {
            r.stale = true;
        }
        self.config_reads.remove(netns);
        self.config_written
            .insert(netns.to_string(), std::time::Instant::now());
    }

    fn observe_inner(&mut self, prefix: &str) -> Result<Observation> {
        // A new pass: packets may have moved since the last count.
        for r in self.link_reads.values() {
            r.probed.set(None);
        }
        let mut obs = Observation::default();
        let mut live = BTreeSet::new();
        for name in netns::list(&self.run_dir, prefix)? {
            // A netns unmounted behind our back leaves at most a plain file.
            let Some(app) = netns::open(&self.run_dir.join(&name))? else {
                continue;
            };
            live.insert(name.clone());
            let ino = nix::sys::stat::fstat(&app).context("fstat netns")?.st_ino;
            let userspace_if = self.devices.get(&name).map(|d| d.interface.clone());
            let (raw, changed) = self.read_links(&name, &app, ino, userspace_if.clone())?;
            let policy = match self.observe_policy(&name, &app, changed.nft) {
                Ok(Some((table, counters))) => {
                    obs.policy_counters.insert(name.clone(), counters);
                    Some(table)
                }
                Ok(None) => None,
                Err(e) => {
                    // Unknown content: the diff rewrites the table.
                    tracing::warn!(netns = %name, error = %format!("{e:#}"), "cannot read the policy table");
                    Some(crate::core::state::PolicyTable {
                        digest: "unreadable".into(),
                        ..Default::default()
                    })
                }
            };
            let mut device = None;
            if let Some(rd) = raw.device {
                if let Some(c) = self.device_config(&name, &app, &rd.interface) {
                    let mut peers = BTreeMap::new();
                    for p in c.peers {
                        obs.stats.insert(
                            (name.clone(), p.public_key.clone()),
                            PeerStats {
                                last_handshake_seconds: p.handshake_age,
                                rx_bytes: p.rx_bytes,
                                tx_bytes: p.tx_bytes,
                            },
                        );
                        peers.insert(
                            p.public_key,
                            Peer {
                                endpoint: p.endpoint,
                                allowed_ips: p.allowed_ips,
                                persistent_keepalive: p.persistent_keepalive,
                            },
                        );
                    }
                    device = Some(Device {
                        interface: rd.interface,
                        mtu: rd.mtu,
                        up: rd.up,
                        addresses: rd.addresses,
                        routes: rd.routes,
                        listen_port: c.listen_port,
                        public_key: c.public_key,
                        peers,
                    });
                }
            } else if userspace_if.is_some() {
                // Our TUN link is gone (deleted, or its netns was replaced):
                // stop the device so the next CreateDevice starts cleanly.
                tracing::warn!(netns = %name, "userspace WireGuard link vanished; dropping the device");
                self.drop_record(&name);
            }
            obs.state.apps.insert(
                name.clone(),
                AppNet {
                    app: String::new(),
                    netns: name,
                    device,
                    workloads: raw.workloads,
                    policy,
                    links: raw.links,
                },
            );
        }
        // Reads of namespaces that are gone (their sockets close with them).
        self.link_reads.retain(|n, _| live.contains(n));
        self.config_reads.retain(|n, _| live.contains(n));
        self.config_written.retain(|n, _| live.contains(n));
        self.policy_reads.retain(|n, _| live.contains(n));
        // Devices whose netns is gone altogether.
        let gone: Vec<String> = self
            .devices
            .keys()
            .filter(|n| !live.contains(*n))
            .filter(|n| !matches!(netns::open(&self.run_dir.join(n.as_str())), Ok(Some(_))))
            .cloned()
            .collect();
        for n in gone {
            tracing::warn!(netns = %n, "netns of a userspace WireGuard device vanished; dropping the device");
            self.drop_record(&n);
        }
        Ok(obs)
    }
}

/// Tries to create (and removes) a scratch `wireguard` link in the current
/// netns: "unknown device type" means no kernel module.
fn kernel_wireguard_available(rt: &Runtime) -> bool {
    let name = format!("wfprobe{}", std::process::id() % 10_000_000);
    let r = nl::run(rt, |h| async move {
        kernel::add_link(&h, &name).await?;
        nl::del_link_by_name(&h, &name).await?;
        Ok(())
    });
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %format!("{e:#}"), "kernel WireGuard unavailable; using userspace WireGuard (GotaTun)");
            false
        }
    }
}

impl Dataplane for LinuxDataplane {
    fn kind(&self) -> DataplaneKind {
        self.kind
    }

    fn wake_on_change(&mut self, wake: &crate::wake::Wake) {
        let notifier = match notify::Notifier::start(wake.clone()) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "changes in app netns wait for the timed pass");
                return;
            }
        };
        for r in self.link_reads.values() {
            for fd in r.changes.iter().flat_map(|c| c.fds()) {
                if let Err(e) = notifier.add(fd) {
                    tracing::warn!(error = %format!("{e:#}"), "a netns' changes wait for the timed pass");
                }
            }
        }
        self.notifier = Some(notifier);
        // A namespace created or deleted (by hand, or by another program)
        // is a change too.
        crate::wake::watch(wake, vec![(self.run_dir.clone(), None)]);
    }

    fn observe(&mut self, netns_prefix: &str) -> Result<Observation, Error> {
        self.observe_inner(netns_prefix)
            .map_err(|e| Error::dp("observe", netns_prefix, format!("{e:#}")))
    }

    fn apply(&mut self, op: &Op) -> Result<(), Error> {
        tracing::debug!(op = op.name(), netns = op.netns(), "apply");
        self.invalidate(op.netns());
        if let Op::DeleteNetns { netns } = op {
            // Its notification sockets would keep the namespace (and the
            // workloads' ends of its veths) alive after the unmount.
            self.link_reads.remove(netns);
        }
        if let Op::CreateAppLink { peer_netns, .. } = op {
            self.invalidate(peer_netns);
        }
        self.apply_inner(op)
            .map_err(|e| Error::dp(op.name(), op.netns(), format!("{e:#}")))
    }

    fn probe(&mut self, netns: &str, destination: Ipv4Addr) -> Result<(), Error> {
        let run = || -> Result<()> {
            let app = self.app_ns(netns)?;
            netns::within(&app, || {
                // The socket is created while the thread is in the app netns,
                // so the datagram leaves through the app's WireGuard route.
                let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                sock.send_to(b"weft-handshake-probe", (destination, 9))?;
                Ok(())
            })
        };
        run().map_err(|e| Error::dp("probe", netns, format!("{e:#}")))
    }

    fn sync_dns(
        &mut self,
        want: &BTreeMap<String, crate::dns::ResolverSpec>,
    ) -> Vec<(String, Error)> {
        let Some(dns) = self.dns.as_mut() else {
            return Vec::new();
        };
        let ns = AppNamespaces {
            run_dir: &self.run_dir,
            rt: &self.rt,
        };
        dns.sync(want, &ns)
            .into_iter()
            .map(|(n, e)| {
                let err = Error::dp("dns", &n, e);
                (n, err)
            })
            .collect()
    }

    fn traffic(&mut self, netns: &str, want: &TrafficSpec) -> Result<AppTraffic, Error> {
        // Packet counters need nft; a node without it (an edge host with no
        // policy, say) reports no packet figures instead of failing every
        // pass for every app.
        static NFT_MISSING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let missing = *NFT_MISSING.get_or_init(|| {
            let missing = !libnft::available() && !nft_on_path();
            if missing {
                tracing::warn!(
                    "nftables is not installed: no per-peer packet or connection figures"
                );
            }
            missing
        });
        if missing {
            return Ok(AppTraffic::default());
        }
        // The netns is entered only for a read the cache cannot answer.
        let (link_reads, run_dir) = (&self.link_reads, &self.run_dir);
        self.stats
            .traffic(
                netns,
                want,
                &self.rt,
                || packets(link_reads, netns),
                |f| {
                    let app = netns::open(&run_dir.join(netns))?
                        .ok_or_else(|| anyhow!("no network namespace {netns}"))?;
                    netns::within(&app, f)
                },
            )
            .map_err(|e| Error::dp("traffic", netns, format!("{e:#}")))
    }
}

/// Packets over the links of `netns` now, from its subscription's dump
/// socket; `None` when there is none or the dump failed (then callers read).
fn packets(link_reads: &BTreeMap<String, LinkRead>, netns: &str) -> Option<u64> {
    let read = link_reads.get(netns)?;
    if let Some(n) = read.probed.get() {
        return Some(n);
    }
    match read.changes.as_ref()?.packets() {
        Ok(n) => {
            read.probed.set(Some(n));
            Some(n)
        }
        Err(e) => {
            tracing::debug!(netns, error = %format!("{e:#}"), "link dump failed");
            None
        }
    }
}

/// Whether an `nft` executable is on `PATH`.
fn nft_on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|d| std::fs::metadata(d.join("nft")).is_ok_and(|m| m.is_file()))
    })
}

impl Drop for LinuxDataplane {
    fn drop(&mut self) {
        // Stop every userspace device (their TUN links go with them); the
        // namespaces stay, a restarted daemon picks them up.
        userspace::stop_all(std::mem::take(&mut self.devices).into_values().collect());
    }
}
