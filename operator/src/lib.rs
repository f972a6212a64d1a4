//! Weft operator: turns MeshApps, MeshPolicies and MeshSites into one desired
//! MeshNode spec per node, and MeshNode status back into user-facing status.
//!
//! ```text
//!  manifests / API ─► Snapshot ─► planner::plan ─► MeshNode specs ─► daemons
//!                                      │                                │
//!  MeshApp/Policy/Site status ◄─ status::* ◄──── MeshNode status ◄─────┘
//! ```
//!
//! - [`planner`]: pure, deterministic planning (IPAM, naming, peers, validation).
//! - [`status`]: pure aggregation of node status into object status.
//! - [`standalone`]: the file-based control loop (no Kubernetes) and `get`.
//! - [`k8s`]: the Kubernetes controllers (reflectors, server-side apply, finalizer, lease).

pub mod federation;
pub mod k8s;
pub mod planner;
pub mod standalone;
pub mod status;
