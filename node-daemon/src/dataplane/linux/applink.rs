//! App links: a veth pair between two app netns on the node, the only path
//! between two apps (see the planner's `crossapp`). Each end routes the
//! other app's range via [`LINK_GATEWAY`], answered by a permanent
//! neighbour entry with the other end's MAC, so no address is configured on
//! either end and nothing answers ARP. What may cross is decided by each
//! app's nftables table (`nft`), which is in place before the link exists.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use anyhow::{anyhow, Result};
use rtnetlink::LinkVeth;
use tokio::runtime::Runtime;

use super::{netns, nl};

/// Prefix of app link names (`wx` + the other app's id).
pub(crate) const LINK_PREFIX: &str = "wx";

/// Next hop of the routes through an app link (link-local, never on a wire).
pub(crate) const LINK_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 1);

/// Creates the pair `a_if` (in `a`) <-> `b_if` (in `b`), replacing either
/// end if it exists, both up with the gateway neighbour pointing across.
pub(crate) fn create(rt: &Runtime, a: &File, a_if: &str, b: &File, b_if: &str) -> Result<()> {
    let tmp = format!("wy{:08x}", std::process::id());
    netns::within(b, || {
        nl::run(rt, |h| async move {
            nl::del_link_by_name(&h, b_if).await.map(drop)
        })
    })?;
    let b_fd = b.as_fd();
    let a_mac = netns::within(a, || {
        nl::run(rt, |h| async move {
            nl::del_link_by_name(&h, a_if).await?;
            nl::del_link_by_name(&h, &tmp).await?;
            h.link()
                .add(LinkVeth::new(a_if, &tmp).build())
                .execute()
                .await
                .map_err(|e| anyhow!("add veth {a_if}: {e}"))?;
            let end = nl::link_by_name(&h, a_if)
                .await?
                .ok_or_else(|| anyhow!("veth {a_if} vanished"))?;
            let peer = nl::index_of(&h, &tmp).await?;
            nl::move_link(&h, peer, b_fd, Some(b_if)).await?;
            nl::link_mac(&end).ok_or_else(|| anyhow!("{a_if} has no MAC"))
        })
    })?;
    let wired = (|| -> Result<()> {
        let b_mac = netns::within(b, || {
            nl::run(rt, |h| async move {
                let end = nl::link_by_name(&h, b_if)
                    .await?
                    .ok_or_else(|| anyhow!("veth end {b_if} did not arrive"))?;
                let idx = end.header.index;
                nl::set_mtu_up(&h, idx, nl::link_mtu(&end)).await?;
                nl::set_neighbour(&h, idx, LINK_GATEWAY, &a_mac).await?;
                nl::link_mac(&end).ok_or_else(|| anyhow!("{b_if} has no MAC"))
            })
        })?;
        netns::within(a, || {
            nl::run(rt, |h| async move {
                let end = nl::link_by_name(&h, a_if)
                    .await?
                    .ok_or_else(|| anyhow!("veth {a_if} vanished"))?;
                let idx = end.header.index;
                nl::set_mtu_up(&h, idx, nl::link_mtu(&end)).await?;
                nl::set_neighbour(&h, idx, LINK_GATEWAY, &b_mac).await
            })
        })
    })();
    if let Err(e) = wired {
        // Never leave half a link: the pair goes as a whole.
        let _ = delete(rt, a, a_if);
        return Err(e);
    }
    Ok(())
}

/// Removes the pair through its end `ifname` in `ns` (missing is fine).
pub(crate) fn delete(rt: &Runtime, ns: &File, ifname: &str) -> Result<()> {
    netns::within(ns, || {
        nl::run(rt, |h| async move {
            nl::del_link_by_name(&h, ifname).await.map(drop)
        })
    })
}
