//! Kernel WireGuard: a `wireguard` link created in the node netns (its UDP
//! socket stays in the namespace the link was created in) and moved into the
//! app netns; configured through wireguard-control's kernel backend (generic
//! netlink), always from inside the app netns.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use anyhow::{anyhow, Context, Result};
use ipnet::Ipv4Net;
use rtnetlink::{Handle, LinkWireguard};
use wireguard_control::{Backend, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use super::uapi::{UapiDevice, UapiPeer};
use crate::keys::PrivateKey;

fn ifname(name: &str) -> Result<InterfaceName> {
    name.parse()
        .map_err(|e| anyhow!("bad interface name {name:?}: {e:?}"))
}

fn key_b64(k: &str) -> Result<Key> {
    Key::from_base64(k).map_err(|_| anyhow!("peer public key is not a base64 WireGuard key"))
}

/// Creates a wireguard link called `name` in the current netns.
pub(crate) async fn add_link(h: &Handle, name: &str) -> Result<()> {
    h.link()
        .add(LinkWireguard::new(name).build())
        .execute()
        .await
        .with_context(|| format!("add wireguard link {name}"))
}

/// Sets key and port (call from inside the app netns).
pub(crate) fn configure(name: &str, key: &PrivateKey, port: u16) -> Result<()> {
    DeviceUpdate::new()
        .set_private_key(Key(key.to_bytes()))
        .set_listen_port(port)
        .apply(&ifname(name)?, Backend::Kernel)
        .with_context(|| format!("configure wireguard {name}"))
}

/// Adds or replaces a peer (call from inside the app netns).
pub(crate) fn set_peer(
    name: &str,
    public_key: &str,
    endpoint: Option<SocketAddr>,
    allowed_ips: &[Ipv4Net],
    keepalive: u16,
) -> Result<()> {
    let mut p = PeerConfigBuilder::new(&key_b64(public_key)?)
        .replace_allowed_ips()
        .set_persistent_keepalive_interval(keepalive);
    if let Some(e) = endpoint {
        p = p.set_endpoint(e);
    }
    for a in allowed_ips {
        p = p.add_allowed_ip(IpAddr::V4(a.network()), a.prefix_len());
    }
    DeviceUpdate::new()
        .add_peer(p)
        .apply(&ifname(name)?, Backend::Kernel)
        .with_context(|| format!("set peer on {name}"))
}

/// Removes a peer (call from inside the app netns).
pub(crate) fn remove_peer(name: &str, public_key: &str) -> Result<()> {
    DeviceUpdate::new()
        .remove_peer_by_key(&key_b64(public_key)?)
        .apply(&ifname(name)?, Backend::Kernel)
        .with_context(|| format!("remove peer from {name}"))
}

/// Reads the device back in the same shape the UAPI gives (call from inside
/// the app netns). Kernel handshake times are Unix times: converted to ages.
pub(crate) fn get(name: &str) -> Result<UapiDevice> {
    let d = wireguard_control::Device::get(&ifname(name)?, Backend::Kernel)
        .with_context(|| format!("read wireguard {name}"))?;
    let public_key = d
        .public_key
        .map(|k| k.to_base64())
        .or_else(|| d.private_key.map(|k| k.get_public().to_base64()))
        .unwrap_or_default();
    let now = SystemTime::now();
    let mut peers: Vec<UapiPeer> = d
        .peers
        .into_iter()
        .map(|p| {
            let mut allowed_ips: Vec<Ipv4Net> = p
                .config
                .allowed_ips
                .iter()
                .filter_map(|a| match a.address {
                    IpAddr::V4(v) => Ipv4Net::new(v, a.cidr).ok(),
                    IpAddr::V6(_) => None,
                })
                .collect();
            allowed_ips.sort();
            let handshake_age = p
                .stats
                .last_handshake_time
                .filter(|t| *t > SystemTime::UNIX_EPOCH)
                .map(|t| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0));
            UapiPeer {
                public_key: p.config.public_key.to_base64(),
                endpoint: p.config.endpoint,
                allowed_ips,
                persistent_keepalive: p.config.persistent_keepalive_interval.unwrap_or(0),
                handshake_age,
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            }
        })
        .collect();
    peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    Ok(UapiDevice {
        public_key,
        listen_port: d.listen_port.unwrap_or(0),
        peers,
    })
}
