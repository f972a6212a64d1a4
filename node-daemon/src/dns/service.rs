//! The set of running resolvers, one per app netns, kept in step with the
//! MeshNode by [`DnsService::sync`] after every reconcile pass.
//!
//! A resolver is restarted (sockets closed and reopened) only when its
//! address, its client range or its netns changed; new names are swapped
//! into the running resolver. A recreated netns (drift repair deletes and
//! recreates it) is noticed by its identity (the nsfs inode): sockets
//! opened in the old one would serve a namespace nobody uses any more.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Context, Result};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::answer::Zone;
use super::server::{self, Shared};
use super::sockets::Sockets;
use super::upstream::Upstreams;
use super::ResolverSpec;
use crate::core::state::RESOLVER_ADDRESS;

/// How the service reaches app namespaces (the data plane provides it).
pub trait AppNetns {
    /// An identity of `netns` that changes when it is recreated; `None`
    /// when it does not exist.
    fn identity(&self, netns: &str) -> Result<Option<u64>>;
    /// Opens the resolver's sockets on `addr` inside `netns`; with
    /// `on_loopback`, first makes `addr` local there (on `lo`), for the
    /// fixed address no interface of the app carries.
    fn open(&self, netns: &str, addr: SocketAddrV4, on_loopback: bool) -> Result<Sockets>;
}

/// Settings of the resolvers.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// The resolv.conf whose `nameserver`s get names outside `.weft`.
    pub resolv_conf: std::path::PathBuf,
    /// Port of the resolvers (53; tests may pick another).
    pub port: u16,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            resolv_conf: "/etc/resolv.conf".into(),
            port: 53,
        }
    }
}

struct Running {
    spec: ResolverSpec,
    netns_id: u64,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// The resolvers of one node.
pub struct DnsService {
    rt: Runtime,
    port: u16,
    upstreams: Arc<Upstreams>,
    running: BTreeMap<String, Running>,
}

impl std::fmt::Debug for DnsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsService")
            .field("port", &self.port)
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl DnsService {
    /// Starts the resolver runtime. Its threads enter `node_ns` when they
    /// start, whoever spawns them, so every forwarded query leaves from the
    /// node netns.
    pub fn new(opts: &DnsOptions, node_ns: &File) -> Result<DnsService> {
        let node_ns = Arc::new(node_ns.try_clone().context("clone node netns")?);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("weft-dns")
            .enable_all()
            .on_thread_start(move || {
                if let Err(e) =
                    nix::sched::setns(node_ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                {
                    // A resolver thread elsewhere would forward from the
                    // wrong namespace: stop hard, as the data plane does.
                    tracing::error!(error = %e, "DNS thread cannot enter the node netns");
                    std::process::abort();
                }
            })
            .build()
            .context("DNS runtime")?;
        let upstreams = Arc::new(Upstreams::new(Path::new(&opts.resolv_conf)));
        Ok(DnsService {
            rt,
            port: opts.port,
            upstreams,
            running: BTreeMap::new(),
        })
    }

    /// Apps (by netns) with a resolver now.
    pub fn running(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Runs exactly the resolvers in `want` (by netns). Returns one error per
    /// netns whose resolver could not start; the others are unaffected.
    pub fn sync(
        &mut self,
        want: &BTreeMap<String, ResolverSpec>,
        ns: &dyn AppNetns,
    ) -> Vec<(String, String)> {
        self.upstreams.refresh();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !want.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            self.stop(&n);
        }
        let mut errors = Vec::new();
        for (netns, spec) in want {
            if let Err(e) = self.ensure(netns, spec, ns) {
                errors.push((netns.clone(), format!("{e:#}")));
            }
        }
        errors
    }

    fn ensure(&mut self, netns: &str, spec: &ResolverSpec, ns: &dyn AppNetns) -> Result<()> {
        let Some(id) = ns.identity(netns)? else {
            self.stop(netns);
            return Err(anyhow!("no network namespace {netns}"));
        };
        if let Some(r) = self.running.get_mut(netns) {
            let same_sockets = r.netns_id == id
                && r.spec.address == spec.address
                && r.spec.clients == spec.clients;
            if same_sockets {
                if r.spec.names != spec.names || r.spec.app != spec.app {
                    let zone = Zone::new(&spec.app, &spec.names)
                        .ok_or_else(|| anyhow!("app {:?} is not namespace/name", spec.app))?;
                    *r.shared.zone.write().expect("lock") = Arc::new(zone);
                    r.spec = spec.clone();
                    tracing::debug!(netns, names = spec.names.len(), "DNS names updated");
                }
                return Ok(());
            }
            self.stop(netns);
        }
        let zone = Zone::new(&spec.app, &spec.names)
            .ok_or_else(|| anyhow!("app {:?} is not namespace/name", spec.app))?;
        // The node's tunnel address (what `--dns` named before the fixed
        // address existed) and the fixed address every workload routes.
        let addr = SocketAddrV4::new(spec.address, self.port);
        let fixed = SocketAddrV4::new(RESOLVER_ADDRESS, self.port);
        let sockets = [ns.open(netns, addr, false)?, ns.open(netns, fixed, true)?];
        let shared = Arc::new(Shared {
            zone: RwLock::new(Arc::new(zone)),
            clients: spec.clients,
            upstreams: self.upstreams.clone(),
        });
        let mut tasks = Vec::with_capacity(4);
        for s in sockets {
            tasks.push(self.rt.spawn(server::serve_udp(s.udp, shared.clone())));
            tasks.push(self.rt.spawn(server::serve_tcp(s.tcp, shared.clone())));
        }
        tracing::info!(netns, app = %spec.app, %addr, %fixed, names = spec.names.len(), "DNS resolver serving");
        self.running.insert(
            netns.to_string(),
            Running {
                spec: spec.clone(),
                netns_id: id,
                shared,
                tasks,
            },
        );
        Ok(())
    }

    /// Stops `netns`' resolver and waits until its sockets are closed, so
    /// the address is free for a new one right away.
    fn stop(&mut self, netns: &str) {
        let Some(r) = self.running.remove(netns) else {
            return;
        };
        for t in &r.tasks {
            t.abort();
        }
        self.rt.block_on(async {
            for t in r.tasks {
                let _ = t.await;
            }
        });
        tracing::info!(netns, app = %r.spec.app, "DNS resolver stopped");
    }
}

impl Drop for DnsService {
    fn drop(&mut self) {
        for n in self.running() {
            self.stop(&n);
        }
    }
}
