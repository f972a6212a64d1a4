//! Data-plane operations: the only vocabulary the daemon uses to change the
//! kernel. Each is idempotent in the real implementation.

use std::net::SocketAddr;

use ipnet::Ipv4Net;

use crate::core::state::{PolicyTable, WorkloadLink};
use crate::keys::PrivateKey;

/// One change to the node's data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the app's network namespace (forwarding on, loopback up).
    CreateNetns {
        /// Netns name.
        netns: String,
    },
    /// Remove the netns and everything in it (device, workload links).
    DeleteNetns {
        /// Netns name.
        netns: String,
    },
    /// Create the WireGuard interface in the netns with its key and port
    /// (its UDP socket lives in the node netns).
    CreateDevice {
        /// Netns name.
        netns: String,
        /// Interface name.
        interface: String,
        /// The interface's private key (redacted in Debug).
        private_key: PrivateKey,
        /// UDP listen port.
        listen_port: u16,
    },
    /// Remove the WireGuard interface.
    DeleteDevice {
        /// Netns name.
        netns: String,
        /// Interface name.
        interface: String,
    },
    /// Change key and/or listen port of an existing interface.
    ConfigureDevice {
        /// Netns name.
        netns: String,
        /// Interface name.
        interface: String,
        /// Private key.
        private_key: PrivateKey,
        /// UDP listen port.
        listen_port: u16,
    },
    /// Set MTU and bring the interface up.
    SetLink {
        /// Netns name.
        netns: String,
        /// Interface name.
        interface: String,
        /// MTU.
        mtu: u16,
    },
    /// Add an address to the interface.
    AddAddress {
        /// Netns name.
        netns: String,
        /// Interface name.
        interface: String,
        /// Address with prefix.
        address: Ipv4Net,
    },
    /// Remove an address from the interface.
    DeleteAddress {
        /// Netns name.
        netns: String,
        /// Interface name.
        interface: String,
        /// Address with prefix.
        address: Ipv4Net,
    },
    /// Route a destination through the interface.
    AddRoute {
        /// Netns name.
        netns: String,
        /// Interface name.
        interface: String,
        /// Destination.
        destination: Ipv4Net,
    },
    /// Remove a route through the interface.
    DeleteRoute {
        /// Netns name.
        netns: String,
        /// Interface name.
        interface: String,
        /// Destination.
        destination: Ipv4Net,
    },
    /// Add or replace a peer.
    SetPeer {
        /// Netns name.
        netns: String,
        /// Interface name.
        interface: String,
        /// Peer public key (base64).
        public_key: String,
        /// Peer endpoint.
        endpoint: Option<SocketAddr>,
        /// Allowed IPs (replaced as a whole).
        allowed_ips: Vec<Ipv4Net>,
        /// Keepalive seconds (0 = off).
        persistent_keepalive: u16,
    },
    /// Remove a peer.
    RemovePeer {
        /// Netns name.
        netns: String,
        /// Interface name.
        interface: String,
        /// Peer public key (base64).
        public_key: String,
    },
    /// Connect a workload's netns to the app netns by a veth pair, address it
    /// and route between them.
    AttachWorkload {
        /// App netns name.
        netns: String,
        /// App-side interface name.
        host_interface: String,
        /// The workload.
        link: WorkloadLink,
        /// What the workload routes through the app netns (the app range
        /// and linked apps' ranges); empty: mirror the WireGuard routes.
        routes: Vec<Ipv4Net>,
    },
    /// Replace what an attached workload routes through the app netns (via
    /// its gateway), leaving its link and address alone.
    SetWorkloadRoutes {
        /// App netns name.
        netns: String,
        /// App-side interface name (names the workload in errors).
        host_interface: String,
        /// Path of the workload's netns.
        workload_netns: String,
        /// The routes it should have (replaced as a whole).
        routes: Vec<Ipv4Net>,
    },
    /// Remove a workload's veth pair (both ends go with it).
    DetachWorkload {
        /// App netns name.
        netns: String,
        /// App-side interface name.
        host_interface: String,
    },
    /// Replace the app's policy table as one atomic transaction (`None`
    /// removes it: everything in the app is open again).
    SetPolicy {
        /// App netns name.
        netns: String,
        /// The new table.
        policy: Option<PolicyTable>,
    },
    /// Create a veth pair between two app netns (replacing either end),
    /// both ends up, each with a static neighbour for the link gateway.
    CreateAppLink {
        /// This app's netns (the end that owns the pair).
        netns: String,
        /// This end's name.
        interface: String,
        /// The other app's netns.
        peer_netns: String,
        /// The other end's name.
        peer_interface: String,
    },
    /// Remove an app link (both ends go with it; missing is fine).
    DeleteAppLink {
        /// Netns of the end named.
        netns: String,
        /// Interface name.
        interface: String,
    },
    /// Route a destination through an app link (via its gateway).
    AddAppLinkRoute {
        /// Netns name.
        netns: String,
        /// Link end name.
        interface: String,
        /// Destination.
        destination: Ipv4Net,
    },
    /// Remove a route through an app link.
    DeleteAppLinkRoute {
        /// Netns name.
        netns: String,
        /// Link end name.
        interface: String,
        /// Destination.
        destination: Ipv4Net,
    },
}

impl Op {
    /// The netns the op acts in.
    pub fn netns(&self) -> &str {
        match self {
            Op::CreateNetns { netns }
            | Op::DeleteNetns { netns }
            | Op::CreateDevice { netns, .. }
            | Op::DeleteDevice { netns, .. }
            | Op::ConfigureDevice { netns, .. }
            | Op::SetLink { netns, .. }
            | Op::AddAddress { netns, .. }
            | Op::DeleteAddress { netns, .. }
            | Op::AddRoute { netns, .. }
            | Op::DeleteRoute { netns, .. }
            | Op::SetPeer { netns, .. }
            | Op::RemovePeer { netns, .. }
            | Op::AttachWorkload { netns, .. }
            | Op::DetachWorkload { netns, .. }
            | Op::SetPolicy { netns, .. }
            | Op::SetWorkloadRoutes { netns, .. }
            | Op::CreateAppLink { netns, .. }
            | Op::DeleteAppLink { netns, .. }
            | Op::AddAppLinkRoute { netns, .. }
            | Op::DeleteAppLinkRoute { netns, .. } => netns,
        }
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::CreateNetns { .. } => "create_netns",
            Op::DeleteNetns { .. } => "delete_netns",
            Op::CreateDevice { .. } => "create_device",
            Op::DeleteDevice { .. } => "delete_device",
            Op::ConfigureDevice { .. } => "configure_device",
            Op::SetLink { .. } => "set_link",
            Op::AddAddress { .. } => "add_address",
            Op::DeleteAddress { .. } => "delete_address",
            Op::AddRoute { .. } => "add_route",
            Op::DeleteRoute { .. } => "delete_route",
            Op::SetPeer { .. } => "set_peer",
            Op::RemovePeer { .. } => "remove_peer",
            Op::AttachWorkload { .. } => "attach_workload",
            Op::DetachWorkload { .. } => "detach_workload",
            Op::SetPolicy { .. } => "set_policy",
            Op::SetWorkloadRoutes { .. } => "set_workload_routes",
            Op::CreateAppLink { .. } => "create_app_link",
            Op::DeleteAppLink { .. } => "delete_app_link",
            Op::AddAppLinkRoute { .. } => "add_app_link_route",
            Op::DeleteAppLinkRoute { .. } => "delete_app_link_route",
        }
    }
}
