//! In-memory data plane for unit tests: applies ops to a [`NodeState`] and
//! counts every write, so tests can assert "a converged resync writes nothing".

use weft_api::DataplaneKind;

use super::{Dataplane, Observation};
use crate::error::Error;
use crate::ops::Op;
use crate::state::{AppNet, Device, NodeState, Peer};

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
                    crate::state::PolicyCounters {
                        rules,
                        ..Default::default()
                    },
                ))
            })
            .collect();
        Ok(Observation {
            state,
            stats: Default::default(),
            policy_counters,
        })
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
        }
        Ok(())
    }
}
