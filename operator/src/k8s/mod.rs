//! The Kubernetes mode of the operator: reflectors feed stores, the stores
//! become a planner [`Snapshot`](crate::planner::Snapshot), and one reconcile
//! pass writes only what changed.
//!
//! ```text
//!  watch MeshApp/Policy/Site, MeshNode, Pod, Node ─► stores ─► Observed
//!     Observed ─► snapshot_from_stores (pure) ─► planner::plan (pure)
//!        ├─► MeshNode spec   (server-side apply, only when the spec differs from the store)
//!        ├─► MeshApp/Policy/Site status (status subresource, only when changed ignoring times)
//!        └─► MeshApp finalizer weft.dev/cleanup (added; released once no node lists the app)
//!  only while holding the Lease (lease.rs); errors retry with backoff and jitter
//! ```
//!
//! - [`snapshot`]: pure translation from Kubernetes objects to the planner's input.
//! - [`reconcile`]: one pass against the API (what the controller tests drive).
//! - [`lease`]: leader election over a `coordination.k8s.io` Lease.
//! - [`metrics`]: Prometheus metrics, `/healthz` and `/readyz`.
//! - [`run`]: reflectors, triggers, backoff; the `weft-operator kubernetes` loop.

pub mod error;
pub mod lease;
pub mod metrics;
pub mod reconcile;
pub mod run;
pub mod snapshot;

pub use error::Error;
pub use reconcile::{reconcile_all, ReconcileReport};
pub use snapshot::{snapshot_from_stores, Observed};
