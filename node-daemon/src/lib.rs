//! Weft node daemon: makes one node's kernel match its MeshNode.
//!
//! ```text
//!  MeshNode spec ─┐                          ┌─► status (public keys, ports, peers)
//!  local workloads ┼─► plan ─► NodeState ─► diff(desired, observed) ─► [Op] ─► Dataplane::apply
//!  key store ──────┘   (pure)                (pure)           observe ◄─┘  (netlink, WireGuard)
//! ```

pub mod attach;
pub mod cni_install;
pub mod dataplane;
pub mod diff;
pub mod dns;
pub mod docker;
pub mod error;
pub mod ipam;
pub mod k8s;
pub mod keys;
pub mod metrics;
pub mod ops;
pub mod plan;
pub mod reconcile;
pub mod runner;
pub mod standalone;
pub mod state;
pub mod status;
pub mod status_backoff;
pub mod storage;
pub mod wake;
pub mod workloads;

pub use error::Error;
