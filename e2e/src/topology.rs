//! The simulated WAN: one namespace holding a bridge, and one namespace per
//! node attached to it by a veth pair. Node `i` (1-based) has 192.0.2.i/24
//! (TEST-NET-1, which exists only inside these namespaces).
//!
//! Several [`Sim`]s can share one WAN ([`Sim::join`]): each has its own name
//! prefix and its own nodes, numbered from 1 in its own numbering but placed
//! on the WAN after every node already there, so one run can hold two
//! clusters whose machines reach each other.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Result};

use crate::netns::NetNs;

/// Name of a node's WAN interface inside its namespace.
pub const NODE_WAN_IFACE: &str = "wan0";
/// Name of the bridge inside the WAN namespace.
pub const WAN_BRIDGE: &str = "br0";
/// Node addresses end below this octet; hosts take it and above.
const FIRST_HOST_OCTET: u8 = 200;

/// The WAN namespace, shared by every [`Sim`] on it: deleted when the last
/// one goes, whichever that is.
#[derive(Debug)]
struct Wan {
    ns: NetNs,
    taken: Mutex<Taken>,
}

/// What the [`Sim`]s on one WAN have claimed so far. Never given back: a
/// dropped sim's addresses stay unused, so nothing can meet a stale neighbour
/// entry or a port whose veth the kernel has not removed yet.
#[derive(Debug, Default)]
struct Taken {
    nodes: usize,
    host_octets: BTreeSet<u8>,
    sims: usize,
}

/// A set of simulated nodes (and hosts) on one WAN segment. Dropping it
/// deletes every namespace (and with them the links) it created, and the WAN
/// itself when no other [`Sim`] shares it.
#[derive(Debug)]
pub struct Sim {
    prefix: String,
    /// WAN index of this sim's node 1, minus one (0 for the sim that made the WAN).
    offset: usize,
    /// Which sim on the WAN this is (0 for the one that made it).
    index: usize,
    // Field order matters: nodes and hosts are deleted before the WAN.
    nodes: Vec<NetNs>,
    hosts: Vec<NetNs>,
    wan: Arc<Wan>,
}

impl Sim {
    /// Builds `n_nodes` nodes under a fresh [`crate::unique_prefix`].
    pub fn new(n_nodes: usize) -> Result<Sim> {
        Self::with_prefix(&crate::unique_prefix(), n_nodes)
    }

    /// Builds `n_nodes` nodes named `<prefix>-n1..` around `<prefix>-wan`.
    pub fn with_prefix(prefix: &str, n_nodes: usize) -> Result<Sim> {
        let ns = NetNs::create(&format!("{prefix}-wan"))?;
        ns.ip(&[
            "link",
            "add",
            WAN_BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
        ])?;
        ns.ip(&["link", "set", WAN_BRIDGE, "up"])?;
        let wan = Arc::new(Wan {
            ns,
            taken: Mutex::new(Taken::default()),
        });
        Self::attach(wan, prefix, n_nodes)
    }

    /// Builds `n_nodes` more nodes, named `<prefix>-n1..` (a prefix of their
    /// own), on `first`'s WAN at the addresses after every node already on
    /// it. The WAN lives until both (and any other sim on it) are dropped.
    pub fn join(first: &Sim, prefix: &str, n_nodes: usize) -> Result<Sim> {
        // Leftover cleanup goes by prefix (`<prefix>-*`), so neither run may
        // claim the other's namespaces.
        let (a, b) = (format!("{}-", first.prefix), format!("{prefix}-"));
        ensure!(
            !a.starts_with(&b) && !b.starts_with(&a),
            "prefix {prefix:?} overlaps {:?}",
            first.prefix
        );
        Self::attach(first.wan.clone(), prefix, n_nodes)
    }

    fn attach(wan: Arc<Wan>, prefix: &str, n_nodes: usize) -> Result<Sim> {
        let (offset, index) = {
            let mut t = wan.taken.lock().unwrap_or_else(|e| e.into_inner());
            let last = t.nodes + n_nodes;
            ensure!(
                last < usize::from(FIRST_HOST_OCTET),
                "at most {} nodes on one WAN ({} taken, {n_nodes} asked)",
                FIRST_HOST_OCTET - 1,
                t.nodes
            );
            let claimed = (t.nodes, t.sims);
            t.nodes = last;
            t.sims += 1;
            claimed
        };
        let mut sim = Sim {
            prefix: prefix.to_string(),
            offset,
            index,
            nodes: Vec::new(),
            hosts: Vec::new(),
            wan,
        };
        for i in 1..=n_nodes {
            let node = NetNs::create(&format!("{prefix}-n{i}"))?;
            sim.plug(&node, &sim.node_port(i), sim.node_wan_addr(i))?;
            sim.nodes.push(node);
        }
        Ok(sim)
    }

    /// Connects `ns` to the bridge through port `port` (a veth whose other
    /// end is the namespace's `wan0`, carrying `addr/24`).
    fn plug(&self, ns: &NetNs, port: &str, addr: Ipv4Addr) -> Result<()> {
        let wan = &self.wan.ns;
        wan.ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            NODE_WAN_IFACE,
            "netns",
            ns.name(),
        ])?;
        wan.ip(&["link", "set", port, "master", WAN_BRIDGE])?;
        wan.ip(&["link", "set", port, "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", NODE_WAN_IFACE])?;
        ns.ip(&["link", "set", NODE_WAN_IFACE, "up"])?;
        Ok(())
    }

    /// The run's name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of nodes.
    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Namespace holding the WAN bridge.
    pub fn wan_netns(&self) -> &str {
        self.wan.ns.name()
    }

    /// Whether another [`Sim`] still shares this one's WAN.
    pub fn wan_shared(&self) -> bool {
        Arc::strong_count(&self.wan) > 1
    }

    /// Which sim on the WAN this is: 0 for the one that made it, then 1,
    /// 2, ... for those that [`Sim::join`]ed it.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many nodes precede this sim's node 1 on the WAN.
    pub fn node_offset(&self) -> usize {
        self.offset
    }

    /// Namespace of node `i` (1-based).
    pub fn node_netns(&self, i: usize) -> &str {
        self.nodes[i - 1].name()
    }

    /// WAN address of WAN node `i` (1-based, counting every sim's nodes):
    /// 192.0.2.i. For a sim's own node `i`, see [`Sim::node_wan_addr`].
    pub fn node_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, i as u8)
    }

    /// WAN address of this sim's node `i` (1-based).
    pub fn node_wan_addr(&self, i: usize) -> Ipv4Addr {
        Self::node_addr(self.offset + i)
    }

    /// Name, inside the WAN namespace, of the bridge port leading to WAN
    /// node `i` (counting every sim's nodes; see [`Sim::node_port`]).
    pub fn wan_port(i: usize) -> String {
        format!("n{i}")
    }

    /// The bridge port leading to this sim's node `i`.
    pub fn node_port(&self, i: usize) -> String {
        Self::wan_port(self.offset + i)
    }

    /// Attaches one more machine that is not a node (a control plane, an
    /// operator's pod) to the WAN: namespace `<prefix>-<name>` with
    /// `192.0.2.<octet>/24` on its `wan0`. Octets from 200 up keep clear of
    /// nodes; each serves one host per WAN, whichever sim asks.
    pub fn add_host(&mut self, name: &str, octet: u8) -> Result<String> {
        ensure!(
            octet >= FIRST_HOST_OCTET,
            "host octets start at {FIRST_HOST_OCTET} (nodes use 1..={})",
            FIRST_HOST_OCTET - 1
        );
        {
            let mut t = self.wan.taken.lock().unwrap_or_else(|e| e.into_inner());
            ensure!(
                t.host_octets.insert(octet),
                "192.0.2.{octet} already has a host on this WAN"
            );
        }
        let host = NetNs::create(&format!("{}-{name}", self.prefix))?;
        self.plug(&host, &format!("h{octet}"), Ipv4Addr::new(192, 0, 2, octet))?;
        let name = host.name().to_string();
        self.hosts.push(host);
        Ok(name)
    }

    /// Cuts node `i` off the WAN (its bridge port goes down).
    pub fn cut_link(&self, i: usize) -> Result<()> {
        self.wan
            .ns
            .ip(&["link", "set", &self.node_port(i), "down"])?;
        Ok(())
    }

    /// Reconnects node `i` to the WAN.
    pub fn restore_link(&self, i: usize) -> Result<()> {
        self.wan.ns.ip(&["link", "set", &self.node_port(i), "up"])?;
        Ok(())
    }
}
