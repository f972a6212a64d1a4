//! Small rtnetlink helpers. Every request runs on a fresh netlink socket
//! opened in the calling thread's *current* network namespace (a netlink
//! socket stays in the namespace it was opened in), driven by a
//! current-thread tokio runtime on the calling thread. The socket is closed
//! before [`run`] returns, so it never pins a namespace that is being removed.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;
const ESRCH: i32 = libc::ESRCH;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

/// Runs `f` against a netlink connection opened in the calling thread's
/// current network namespace.
pub(crate) fn run<T, F, Fut>(rt: &tokio::runtime::Runtime, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().context("open rtnetlink socket")?;
        tokio::pin!(conn);
        let work = f(handle);
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            _ = &mut conn => Err(anyhow!("rtnetlink connection closed")),
        }
    })
}

/// The (positive) errno of a netlink error, if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn ok_if(r: Result<(), rtnetlink::Error>, benign: &[i32]) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e) if errno(&e).is_some_and(|n| benign.contains(&n)) => Ok(()),
        r => r,
    }
}

// ---- links ----

/// All links of the namespace.
pub(crate) async fn links(h: &Handle) -> Result<Vec<LinkMessage>> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("dump links")
}

/// The link called `name`, if any.
pub(crate) async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(l) => Ok(l),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("get link {name}")),
    }
}

/// Like [`link_by_name`] but missing is an error; returns the index.
pub(crate) async fn index_of(h: &Handle, name: &str) -> Result<u32> {
    link_by_name(h, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| anyhow!("no link {name}"))
}

pub(crate) fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub(crate) fn link_kind(l: &LinkMessage) -> Option<&InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

pub(crate) fn link_mtu(l: &LinkMessage) -> u32 {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(0)
}

pub(crate) fn link_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

pub(crate) fn link_mac(l: &LinkMessage) -> Option<Vec<u8>> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.clone()),
        _ => None,
    })
}

/// Sets MTU and brings the link up.
pub(crate) async fn set_mtu_up(h: &Handle, index: u32, mtu: u32) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
        .execute()
        .await
        .with_context(|| format!("set link {index} mtu {mtu} up"))
}

/// Moves a link into the namespace `ns`, optionally renaming it on the way.
pub(crate) async fn move_link(
    h: &Handle,
    index: u32,
    ns: BorrowedFd<'_>,
    new_name: Option<&str>,
) -> Result<()> {
    let mut b = LinkUnspec::new_with_index(index).setns_by_fd(ns.as_raw_fd());
    if let Some(n) = new_name {
        b = b.name(n.to_string());
    }
    h.link()
        .set(b.build())
        .execute()
        .await
        .with_context(|| format!("move link {index} to another netns"))
}

/// Deletes a link (missing is fine).
pub(crate) async fn del_link(h: &Handle, index: u32) -> Result<()> {
    ok_if(h.link().del(index).execute().await, &[ENODEV])
        .with_context(|| format!("delete link {index}"))
}

/// Deletes the link called `name` if it exists.
pub(crate) async fn del_link_by_name(h: &Handle, name: &str) -> Result<bool> {
    match link_by_name(h, name).await? {
        Some(l) => del_link(h, l.header.index).await.map(|_| true),
        None => Ok(false),
    }
}

// ---- addresses ----

/// IPv4 addresses of link `index`, sorted.
pub(crate) async fn addresses(h: &Handle, index: u32) -> Result<Vec<(Ipv4Net, AddressMessage)>> {
    let all: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .context("dump addresses")?;
    let mut out: Vec<(Ipv4Net, AddressMessage)> = all
        .into_iter()
        .filter(|m| m.header.index == index && m.header.family == AddressFamily::Inet)
        .filter_map(|m| {
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                    _ => None,
                })
            })?;
            Some((Ipv4Net::new(addr, m.header.prefix_len).ok()?, m))
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// Adds an IPv4 address (already present is fine).
pub(crate) async fn add_address(h: &Handle, index: u32, net: Ipv4Net) -> Result<()> {
    ok_if(
        h.address()
            .add(index, IpAddr::V4(net.addr()), net.prefix_len())
            .execute()
            .await,
        &[EEXIST],
    )
    .with_context(|| format!("add address {net}"))
}

/// Removes an IPv4 address (missing is fine).
pub(crate) async fn del_address(h: &Handle, index: u32, net: Ipv4Net) -> Result<()> {
    for (n, m) in addresses(h, index).await? {
        if n == net {
            ok_if(h.address().del(m).execute().await, &[EADDRNOTAVAIL])
                .with_context(|| format!("delete address {net}"))?;
        }
    }
    Ok(())
}

// ---- routes ----

/// An IPv4 route of the main table, as we read it back.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub dst: Ipv4Net,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    pub protocol: RouteProtocol,
    pub msg: RouteMessage,
}

/// Destinations routed through interface `idx` by us (the kernel's own
/// routes, e.g. for an address's prefix, left out), sorted and unique.
pub(crate) fn destinations_via(routes: &[Route], idx: u32) -> Vec<Ipv4Net> {
    let mut r: Vec<Ipv4Net> = routes
        .iter()
        .filter(|r| r.oif == Some(idx) && r.protocol != RouteProtocol::Kernel)
        .map(|r| r.dst)
        .collect();
    r.sort();
    r.dedup();
    r
}

/// IPv4 unicast routes of the main table.
pub(crate) async fn routes(h: &Handle) -> Result<Vec<Route>> {
    let all: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .context("dump routes")?;
    let mut out = Vec::new();
    for m in all {
        if m.header.address_family != AddressFamily::Inet {
            continue;
        }
        let table = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(m.header.table));
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            continue;
        }
        let dst_addr = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(v)) => Some(*v),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let Ok(dst) = Ipv4Net::new(dst_addr, m.header.destination_prefix_length) else {
            continue;
        };
        let oif = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let gateway = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(v)) => Some(*v),
            _ => None,
        });
        out.push(Route {
            dst,
            oif,
            gateway,
            protocol: m.header.protocol,
            msg: m,
        });
    }
    Ok(out)
}

/// Routes through link `index` that someone programmed (not the kernel's
/// own prefix routes), sorted by destination.
pub(crate) async fn routes_via(h: &Handle, index: u32) -> Result<Vec<Route>> {
    let mut r: Vec<Route> = routes(h)
        .await?
        .into_iter()
        .filter(|r| r.oif == Some(index) && r.protocol != RouteProtocol::Kernel)
        .collect();
    r.sort_by_key(|r| r.dst);
    Ok(r)
}

/// Adds (or replaces) `dst` through link `index`: scope link without a
/// gateway, or via `gateway`.
pub(crate) async fn add_route(
    h: &Handle,
    index: u32,
    dst: Ipv4Net,
    gateway: Option<Ipv4Addr>,
) -> Result<()> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .output_interface(index);
    b = match gateway {
        Some(gw) => b.gateway(gw),
        None => b.scope(RouteScope::Link),
    };
    h.route()
        .add(b.build())
        .replace()
        .execute()
        .await
        .with_context(|| format!("add route {dst}"))
}

/// Adds (or replaces) `dst` via `gateway` on link `index`, the gateway
/// being on-link by fiat (no address or route for it is needed; a static
/// neighbour entry answers it).
pub(crate) async fn add_route_onlink(
    h: &Handle,
    index: u32,
    dst: Ipv4Net,
    gateway: Ipv4Addr,
) -> Result<()> {
    let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .output_interface(index)
        .gateway(gateway)
        .build();
    msg.header.flags |= RouteFlags::Onlink;
    h.route()
        .add(msg)
        .replace()
        .execute()
        .await
        .with_context(|| format!("add route {dst} via {gateway} onlink"))
}

/// Removes `dst` through link `index` (missing is fine).
pub(crate) async fn del_route(h: &Handle, index: u32, dst: Ipv4Net) -> Result<()> {
    for r in routes(h).await? {
        if r.dst == dst && r.oif == Some(index) {
            ok_if(h.route().del(r.msg).execute().await, &[ESRCH])
                .with_context(|| format!("delete route {dst}"))?;
        }
    }
    Ok(())
}

// ---- neighbours ----

/// A permanent neighbour entry `ip -> mac` on link `index` (replaces).
pub(crate) async fn set_neighbour(h: &Handle, index: u32, ip: Ipv4Addr, mac: &[u8]) -> Result<()> {
    h.neighbours()
        .add(index, IpAddr::V4(ip))
        .link_layer_address(mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .with_context(|| format!("add neighbour {ip}"))
}
