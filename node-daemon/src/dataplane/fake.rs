//! In-memory data plane for unit tests: applies ops to a [`NodeState`] and
//! counts every write, so tests can assert "a converged resync writes nothing".

use weft_api::DataplaneKind;

use super::{AppTraffic, Dataplane, Observation, TrafficSpec};
use crate::core::ops::Op;
use crate::core::state::{AppLinkEnd, AppNet, Device, NodeState, Peer};
use crate::error::Error;

/// A data plane that lives in memory.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    /// Current "kernel" state; tests may edit it to inject drift.
    pub state: NodeState,
    /// Every op applied, in order.
    pub applied: Vec<Op>,
    /// Ops whose `name()` is listed here fail (to test error handling).
    pub fail_ops: Vec<&'static str>,
    /// Probes sent: (netns, destination).
    pub probes: Vec<(String, std::net::Ipv4Addr)>,
    /// What each netns counts (the "stats table").
    pub traffic_specs: std::collections::BTreeMap<String, TrafficSpec>,
    /// Figures tests inject per netns (peers not counted are left out).
    pub traffic: std::collections::BTreeMap<String, AppTraffic>,
    /// Writes of counting rules.
    pub traffic_writes: usize,
    /// The resolvers last asked for (see [`Dataplane::sync_dns`]).
    pub dns: std::collections::BTreeMap<String, crate::dns::ResolverSpec>,
}

impl FakeDataplane {
    /// Number of writes so far.
    pub fn writes(&self) -> usize {
        self.applied.len()
    }

    fn app(&mut self, netns: &str, op: &Op) -> Result<&mut AppNet, Error> {
        self.state
            .apps
            .get_mut(netns)
            .ok_or_else(|| Error::dp(op.name(), netns, "no such netns"))
    }

    fn dev<'a>(app: &'a mut AppNet, ifc: &str, op: &Op) -> Result<&'a mut Device, Error> {
        let netns = app.netns.clone();
        app.device
            .as_mut()
            .filter(|d| d.interface == ifc)
            .ok_or_else(|| Error::dp(op.name(), netns, format!("no interface {ifc}")))
    }
}

impl Dataplane for FakeDataplane {
    fn kind(&self) -> DataplaneKind {
        DataplaneKind::Userspace
    }

    fn observe(&mut self, netns_prefix: &str) -> Result<Observation, Error> {
        let mut state = self.state.clone();
        state.apps.retain(|k, _| k.starts_with(netns_prefix));
        for a in state.apps.values_mut() {
            a.app.clear(); // the kernel does not know app names
        }
        let policy_counters = state
            .apps
            .iter()
            .filter_map(|(k, a)| {
                let p = a.policy.as_ref()?;
                let rules = p
                    .ruleset
                    .rules
                    .iter()
                    .map(|r| (r.id.clone(), Default::default()))
                    .collect();
                Some((
                    k.clone(),
                    crate::core::state::PolicyCounters {
                        rules,
                        ..Default::default()
                    },
                ))
            })
            .collect();
        Ok(Observation {
            state,
            policy_counters,
            ..Default::default()
        })
    }

    fn traffic(&mut self, netns: &str, want: &TrafficSpec) -> Result<AppTraffic, Error> {
        if !self.state.apps.contains_key(netns) {
            return Err(Error::dp("traffic", netns, "no such netns"));
        }
        let wrote = self.traffic_specs.get(netns) != Some(want);
        if wrote {
            self.traffic_specs.insert(netns.to_string(), want.clone());
            self.traffic_writes += 1;
        }
        let mut t = self.traffic.get(netns).cloned().unwrap_or_default();
        t.peers.retain(|k, _| want.peers.contains_key(k));
        for k in want.peers.keys() {
            t.peers.entry(k.clone()).or_default();
        }
        t.active_connections = Some(t.active_connections.unwrap_or(0));
        t.wrote = wrote;
        Ok(t)
    }

    fn sync_dns(
        &mut self,
        want: &std::collections::BTreeMap<String, crate::dns::ResolverSpec>,
    ) -> Vec<(String, Error)> {
        self.dns = want.clone();
        want.keys()
            .filter(|n| !self.state.apps.contains_key(*n))
            .map(|n| (n.clone(), Error::dp("dns", n, "no such netns")))
            .collect()
    }

    fn probe(&mut self, netns: &str, destination: std::net::Ipv4Addr) -> Result<(), Error> {
        self.probes.push((netns.to_string(), destination));
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), Error> {
        if self.fail_ops.contains(&op.name()) {
            return Err(Error::dp(op.name(), op.netns(), "injected failure"));
        }
        self.applied.push(op.clone());
        match op {
            Op::CreateNetns { netns } => {
                self.state
                    .apps
                    .entry(netns.clone())
                    .or_insert_with(|| AppNet {
                        netns: netns.clone(),
                        ..Default::default()
                    });
            }
            Op::DeleteNetns { netns } => {
                self.state.apps.remove(netns);
                self.traffic_specs.remove(netns); // the rules go with the netns
            }
            Op::CreateDevice {
                netns,
                interface,
                private_key,
                listen_port,
            } => {
                let app = self.app(netns, op)?;
                app.device = Some(Device {
                    interface: interface.clone(),
                    listen_port: *listen_port,
                    public_key: private_key.public_key(),
                    mtu: 1500,
                    ..Default::default()
                });
            }
            Op::DeleteDevice { netns, .. } => self.app(netns, op)?.device = None,
            Op::ConfigureDevice {
                netns,
                interface,
                private_key,
                listen_port,
            } => {
                let app = self.app(netns, op)?;
                let d = Self::dev(app, interface, op)?;
                d.public_key = private_key.public_key();
                d.listen_port = *listen_port;
            }
            Op::SetLink {
                netns,
                interface,
                mtu,
            } => {
                let d = Self::dev(self.app(netns, op)?, interface, op)?;
                d.mtu = *mtu;
                d.up = true;
            }
            Op::AddAddress {
                netns,
                interface,
                address,
            } => {
                let d = Self::dev(self.app(netns, op)?, interface, op)?;
                d.addresses.push(*address);
                d.addresses.sort();
            }
            Op::DeleteAddress {
                netns,
                interface,
                address,
            } => Self::dev(self.app(netns, op)?, interface, op)?
                .addresses
                .retain(|a| a != address),
            Op::AddRoute {
                netns,
                interface,
                destination,
            } => {
                let d = Self::dev(self.app(netns, op)?, interface, op)?;
                d.routes.push(*destination);
                d.routes.sort();
            }
            Op::DeleteRoute {
                netns,
                interface,
                destination,
            } => Self::dev(self.app(netns, op)?, interface, op)?
                .routes
                .retain(|r| r != destination),
            Op::SetPeer {
                netns,
                interface,
                public_key,
                endpoint,
                allowed_ips,
                persistent_keepalive,
            } => {
                let d = Self::dev(self.app(netns, op)?, interface, op)?;
                d.peers.insert(
                    public_key.clone(),
                    Peer {
                        endpoint: *endpoint,
                        allowed_ips: allowed_ips.clone(),
                        persistent_keepalive: *persistent_keepalive,
                    },
                );
            }
            Op::RemovePeer {
                netns,
                interface,
                public_key,
            } => {
                Self::dev(self.app(netns, op)?, interface, op)?
                    .peers
                    .remove(public_key);
            }
            Op::AttachWorkload {
                netns,
                host_interface,
                link,
                ..
            } => {
                self.app(netns, op)?
                    .workloads
                    .insert(host_interface.clone(), link.clone());
            }
            Op::DetachWorkload {
                netns,
                host_interface,
            } => {
                self.app(netns, op)?.workloads.remove(host_interface);
            }
            Op::SetPolicy { netns, policy } => {
                self.app(netns, op)?.policy = policy.clone();
            }
            // Workload routes live in the workload's netns, which the fake
            // (like the real observation) does not model.
            Op::SetWorkloadRoutes { netns, .. } => {
                self.app(netns, op)?;
            }
            Op::CreateAppLink {
                netns,
                interface,
                peer_netns,
                peer_interface,
            } => {
                // Like a veth pair: both ends appear (fresh, unrouted) or neither.
                if !self.state.apps.contains_key(peer_netns) {
                    return Err(Error::dp(
                        op.name(),
                        netns,
                        format!("no netns {peer_netns}"),
                    ));
                }
                let end = |peer_netns: &str, peer_interface: &str| AppLinkEnd {
                    peer_netns: peer_netns.to_string(),
                    peer_interface: peer_interface.to_string(),
                    routes: Vec::new(),
                };
                let mine = end(peer_netns, peer_interface);
                self.app(netns, op)?.links.insert(interface.clone(), mine);
                let theirs = end(netns, interface);
                self.app(peer_netns, op)?
                    .links
                    .insert(peer_interface.clone(), theirs);
            }
            Op::DeleteAppLink { netns, interface } => {
                if let Some(l) = self.app(netns, op)?.links.remove(interface) {
                    if let Some(peer) = self.state.apps.get_mut(&l.peer_netns) {
                        peer.links.remove(&l.peer_interface);
                    }
                }
            }
            Op::AddAppLinkRoute {
                netns,
                interface,
                destination,
            } => {
                let l = self
                    .app(netns, op)?
                    .links
                    .get_mut(interface)
                    .ok_or_else(|| Error::dp(op.name(), netns, format!("no link {interface}")))?;
                l.routes.push(*destination);
                l.routes.sort();
            }
            Op::DeleteAppLinkRoute {
                netns,
                interface,
                destination,
            } => {
                if let Some(l) = self.app(netns, op)?.links.get_mut(interface) {
                    l.routes.retain(|r| r != destination);
                }
            }
        }
        Ok(())
    }
}
