//! Per-app DNS: `<workload>.<app-name>.<app-namespace>.weft`.
//!
//! Why here, and like this: each app gets its own resolver inside its own
//! netns, bound to this node's tunnel address of the app (port 53, UDP and
//! TCP). Only the app's workloads route to that address (the app's range is
//! routed into the app netns, and nothing of another app is), so which app
//! is asking is known from where the query arrives, and one app never sees
//! another's names. The names come with the MeshNode
//! (`AppAttachment::names`, every workload of the app on every node and
//! federated site), so nothing else needs watching. Answers live in
//! [`answer`] (pure), forwarding of other names in [`upstream`], the
//! sockets in [`sockets`] and [`server`], the per-app lifecycle in
//! [`service`].
//!
//! Workloads point at it explicitly (the CNI result's `dns`, or
//! `--dns 169.254.1.53`, [`crate::core::state::RESOLVER_ADDRESS`], for a
//! container or in a pod's `dnsConfig`); nothing rewrites a
//! workload's resolv.conf.

pub mod answer;
pub mod server;
pub mod service;
pub mod sockets;
pub mod upstream;

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use weft_api::meshnode::WorkloadName;
use weft_api::AppAttachment;

pub use service::{AppNetns, DnsOptions, DnsService};

/// One app's resolver as wanted on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverSpec {
    /// The app, `namespace/name`.
    pub app: String,
    /// Where it listens: the node's tunnel address of the app.
    pub address: Ipv4Addr,
    /// Who may ask: the app's address range.
    pub clients: Ipv4Net,
    /// The app's workloads by name.
    pub names: Arc<Vec<WorkloadName>>,
}

impl ResolverSpec {
    /// The resolver an attachment asks for; `None` when its tunnel address
    /// or range does not parse (the plan reports that already).
    pub fn of(a: &AppAttachment) -> Option<ResolverSpec> {
        let address = match a.address.parse::<Ipv4Net>() {
            Ok(n) => n.addr(),
            Err(_) => a.address.parse::<Ipv4Addr>().ok()?,
        };
        let clients: Ipv4Net = a.address_space.parse().ok()?;
        Some(ResolverSpec {
            app: a.app.clone(),
            address,
            clients: clients.trunc(),
            names: a.names.clone(),
        })
    }
}
