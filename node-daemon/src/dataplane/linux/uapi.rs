//! A WireGuard device as read back: the fields of a UAPI `get` the data
//! plane compares with what it wants, whichever implementation (kernel or
//! userspace) was read.

use std::net::SocketAddr;

use ipnet::Ipv4Net;

/// One peer as read back by `get=1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UapiPeer {
    /// base64 public key.
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Ipv4Net>,
    pub persistent_keepalive: u16,
    /// Whole seconds since the last handshake.
    pub handshake_age: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The device as read back by `get=1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UapiDevice {
    /// base64 public key.
    pub public_key: String,
    pub listen_port: u16,
    pub peers: Vec<UapiPeer>,
}
