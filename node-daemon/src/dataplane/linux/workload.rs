//! Workload attachment: a veth pair between the app netns (host end, named by
//! the daemon) and the workload's netns (`weft0`). No ARP anywhere: both
//! sides get permanent neighbour entries, the workload reaches the app range
//! through the link-local gateway [`WORKLOAD_GATEWAY`].
//!
//! The workload end is created in the workload's netns directly (the peer
//! of the new veth names its netns): moving a link between namespaces waits
//! for the kernel's RCU grace periods, and with hundreds of workloads
//! attached at once those waits were a large part of the cold start.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use ipnet::Ipv4Net;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
use tokio::runtime::Runtime;

use super::{netns, nl};
use crate::core::state::{WorkloadLink, WORKLOAD_GATEWAY, WORKLOAD_IFNAME};

/// Prefix of the app-side veth names this module reports back.
pub(crate) const HOST_IF_PREFIX: &str = "wv";

fn host_route(addr: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(addr, 32).expect("/32 is a valid prefix")
}

/// Attaches a workload (replacing an existing attachment of the same name).
/// The workload routes `routes` (the app range, linked apps' ranges) via the
/// gateway; when empty, the routes through `wg_if`, the app's WireGuard
/// interface, are mirrored instead.
pub(crate) fn attach(
    rt: &Runtime,
    app: &File,
    wg_if: Option<&str>,
    host_if: &str,
    link: &WorkloadLink,
    routes: &[Ipv4Net],
) -> Result<()> {
    let wl = netns::open(Path::new(&link.workload_netns))?.ok_or_else(|| {
        anyhow!(
            "workload netns {} is not a network namespace",
            link.workload_netns
        )
    })?;
    let mtu = u32::from(link.mtu);
    let addr = link.address;

    // A weft0 left in the workload netns (its pair lost its app side) is ours.
    netns::within(&wl, || {
        nl::run(rt, |h| async move {
            nl::del_link_by_name(&h, WORKLOAD_IFNAME).await.map(drop)
        })
    })?;

    let wl_raw = wl.as_fd().as_raw_fd();
    let (host_idx, host_mac, app_routes) = netns::within(app, || {
        nl::run(rt, |h| async move {
            nl::del_link_by_name(&h, host_if).await?;
            let peer = LinkMessageBuilder::<LinkUnspec>::new()
                .name(WORKLOAD_IFNAME.to_string())
                .mtu(mtu)
                .setns_by_fd(wl_raw)
                .build();
            let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(host_if.to_string())
                .mtu(mtu)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            h.link().add(pair).execute().await.with_context(|| {
                format!("add veth {host_if} with {WORKLOAD_IFNAME} in the workload netns")
            })?;
            let host = nl::link_by_name(&h, host_if)
                .await?
                .ok_or_else(|| anyhow!("veth {host_if} vanished"))?;
            let host_mac = nl::link_mac(&host).ok_or_else(|| anyhow!("{host_if} has no MAC"))?;
            let app_routes: Vec<Ipv4Net> = match wg_if {
                _ if !routes.is_empty() => routes.to_vec(),
                Some(n) => match nl::link_by_name(&h, n).await? {
                    Some(l) => nl::routes_via(&h, l.header.index)
                        .await?
                        .into_iter()
                        .map(|r| r.dst)
                        .collect(),
                    None => Vec::new(),
                },
                None => Vec::new(),
            };
            Ok((host.header.index, host_mac, app_routes))
        })
    })?;

    let wired = (|| -> Result<()> {
        let peer_mac = netns::within(&wl, || {
            nl::run(rt, |h| async move {
                let peer = nl::link_by_name(&h, WORKLOAD_IFNAME)
                    .await?
                    .ok_or_else(|| anyhow!("{WORKLOAD_IFNAME} vanished"))?;
                let peer_mac =
                    nl::link_mac(&peer).ok_or_else(|| anyhow!("{WORKLOAD_IFNAME} has no MAC"))?;
                let idx = peer.header.index;
                nl::set_mtu_up(&h, idx, mtu).await?;
                nl::add_address(&h, idx, host_route(addr)).await?;
                nl::add_route(&h, idx, host_route(WORKLOAD_GATEWAY), None).await?;
                nl::set_neighbour(&h, idx, WORKLOAD_GATEWAY, &host_mac).await?;
                for r in &app_routes {
                    nl::add_route(&h, idx, *r, Some(WORKLOAD_GATEWAY)).await?;
                }
                Ok(peer_mac)
            })
        })?;
        netns::within(app, || {
            nl::run(rt, |h| async move {
                nl::set_mtu_up(&h, host_idx, mtu).await?;
                nl::add_route(&h, host_idx, host_route(addr), None).await?;
                nl::set_neighbour(&h, host_idx, addr, &peer_mac).await
            })
        })
    })();
    if let Err(e) = wired {
        // Leave nothing half-wired behind: the pair goes as a whole.
        let _ = netns::within(app, || {
            nl::run(rt, |h| async move {
                nl::del_link_by_name(&h, host_if).await.map(drop)
            })
        });
        return Err(e);
    }
    Ok(())
}

/// Makes the workload route exactly `routes` via the gateway on `weft0`
/// (adding and removing routes in place: its link, address and open
/// connections are untouched).
pub(crate) fn set_routes(
    rt: &Runtime,
    host_if: &str,
    workload_netns: &str,
    routes: &[Ipv4Net],
) -> Result<()> {
    let wl = netns::open(Path::new(workload_netns))?
        .ok_or_else(|| anyhow!("workload netns {workload_netns} of {host_if} is gone"))?;
    netns::within(&wl, || {
        let lost = nl::run(rt, |h| async move {
            let idx = nl::index_of(&h, WORKLOAD_IFNAME).await?;
            let have = nl::routes_via(&h, idx).await?;
            let via_gw = |r: &nl::Route| r.gateway == Some(WORKLOAD_GATEWAY);
            let mut lost = Vec::new();
            for r in have
                .iter()
                .filter(|r| via_gw(r) && !routes.contains(&r.dst))
            {
                nl::del_route(&h, idx, r.dst).await?;
                lost.push(r.dst);
            }
            for r in routes {
                if !have.iter().any(|x| via_gw(x) && x.dst == *r) {
                    nl::add_route(&h, idx, *r, Some(WORKLOAD_GATEWAY)).await?;
                }
            }
            Ok(lost)
        })?;
        // Connections over a path that is gone would otherwise hang
        // retransmitting: close them (see `sockets`). The routes are right
        // either way, so a failure here is only logged.
        match super::sockets::close_tcp_to(&lost) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                workload_netns,
                closed = n,
                "closed connections whose destination lost its route"
            ),
            Err(e) => {
                tracing::warn!(workload_netns, error = %e, "cannot close connections whose destination lost its route")
            }
        }
        Ok(())
    })
}

/// Removes a workload's veth pair (missing is fine).
pub(crate) fn detach(rt: &Runtime, app: &File, host_if: &str) -> Result<()> {
    netns::within(app, || {
        nl::run(rt, |h| async move {
            nl::del_link_by_name(&h, host_if).await.map(drop)
        })
    })
}
