//! The simulated WAN: one namespace holding a bridge, and one namespace per
//! node attached to it by a veth pair. Node `i` (1-based) has 192.0.2.i/24
//! (TEST-NET-1, which exists only inside these namespaces).

use std::net::Ipv4Addr;

use anyhow::{ensure, Result};

use crate::netns::NetNs;

/// Name of a node's WAN interface inside its namespace.
pub const NODE_WAN_IFACE: &str = "wan0";
/// Name of the bridge inside the WAN namespace.
pub const WAN_BRIDGE: &str = "br0";

/// A set of simulated nodes on one WAN segment. Dropping it deletes every
/// namespace (and with them the links) it created.
#[derive(Debug)]
pub struct Sim {
    prefix: String,
    // Field order matters: nodes and hosts are deleted before the WAN.
    nodes: Vec<NetNs>,
    hosts: Vec<NetNs>,
    wan: NetNs,
}

impl Sim {
    /// Builds `n_nodes` nodes under a fresh [`crate::unique_prefix`].
    pub fn new(n_nodes: usize) -> Result<Sim> {
        Self::with_prefix(&crate::unique_prefix(), n_nodes)
    }

    /// Builds `n_nodes` nodes named `<prefix>-n1..` around `<prefix>-wan`.
    pub fn with_prefix(prefix: &str, n_nodes: usize) -> Result<Sim> {
        ensure!(n_nodes <= 199, "at most 199 nodes supported");
        let wan = NetNs::create(&format!("{prefix}-wan"))?;
        let mut sim = Sim {
            prefix: prefix.to_string(),
            nodes: Vec::new(),
            hosts: Vec::new(),
            wan,
        };
        sim.wan.ip(&[
            "link",
            "add",
            WAN_BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
        ])?;
        sim.wan.ip(&["link", "set", WAN_BRIDGE, "up"])?;
        for i in 1..=n_nodes {
            let node = NetNs::create(&format!("{prefix}-n{i}"))?;
            let port = Self::wan_port(i);
            sim.wan.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                NODE_WAN_IFACE,
                "netns",
                node.name(),
            ])?;
            sim.wan.ip(&["link", "set", &port, "master", WAN_BRIDGE])?;
            sim.wan.ip(&["link", "set", &port, "up"])?;
            let addr = format!("{}/24", Self::node_addr(i));
            node.ip(&["addr", "add", &addr, "dev", NODE_WAN_IFACE])?;
            node.ip(&["link", "set", NODE_WAN_IFACE, "up"])?;
            sim.nodes.push(node);
        }
        Ok(sim)
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
        self.wan.name()
    }

    /// Namespace of node `i` (1-based).
    pub fn node_netns(&self, i: usize) -> &str {
        self.nodes[i - 1].name()
    }

    /// WAN address of node `i` (1-based): 192.0.2.i.
    pub fn node_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, i as u8)
    }

    /// Name, inside the WAN namespace, of the bridge port leading to node `i`.
    pub fn wan_port(i: usize) -> String {
        format!("n{i}")
    }

    /// Attaches one more machine that is not a node (a control plane, an
    /// operator's pod) to the WAN: namespace `<prefix>-<name>` with
    /// `192.0.2.<octet>/24` on its `wan0`. Octets from 200 up keep clear of nodes.
    pub fn add_host(&mut self, name: &str, octet: u8) -> Result<String> {
        ensure!(octet >= 200, "host octets start at 200 (nodes use 1..=199)");
        let host = NetNs::create(&format!("{}-{name}", self.prefix))?;
        let port = format!("h{octet}");
        self.wan.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            NODE_WAN_IFACE,
            "netns",
            host.name(),
        ])?;
        self.wan.ip(&["link", "set", &port, "master", WAN_BRIDGE])?;
        self.wan.ip(&["link", "set", &port, "up"])?;
        let addr = format!("{}/24", Ipv4Addr::new(192, 0, 2, octet));
        host.ip(&["addr", "add", &addr, "dev", NODE_WAN_IFACE])?;
        host.ip(&["link", "set", NODE_WAN_IFACE, "up"])?;
        let name = host.name().to_string();
        self.hosts.push(host);
        Ok(name)
    }

    /// Cuts node `i` off the WAN (its bridge port goes down).
    pub fn cut_link(&self, i: usize) -> Result<()> {
        self.wan.ip(&["link", "set", &Self::wan_port(i), "down"])?;
        Ok(())
    }

    /// Reconnects node `i` to the WAN.
    pub fn restore_link(&self, i: usize) -> Result<()> {
        self.wan.ip(&["link", "set", &Self::wan_port(i), "up"])?;
        Ok(())
    }
}
