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
//! - [`watch`]: every watch's retry policy, and an immediate relist on 410.
//! - [`federation`]: this cluster as a member of federation hubs (a task
//!   beside the loop: hubs in, this member's records out).

pub mod error;
pub mod federation;
pub mod lease;
pub mod metrics;
pub mod pass_state;
pub mod reconcile;
pub mod run;
pub mod snapshot;
pub mod snapshot_sync;
pub mod trim;
pub mod watch;

pub use error::Error;
pub use pass_state::PassState;
pub use reconcile::{
    reconcile_all, reconcile_all_limited, ReconcileReport, STATUS_WRITES_PER_PASS,
};
pub use snapshot::{snapshot_from_stores, snapshot_without_specs, Observed};

/// A client for the configured API server (in-cluster or KUBECONFIG)
/// without kube-client's built-in retry of 429/503/504 answers. That layer
/// (kube-client 5.0) retries one request up to 15 times, from 5 ms doubling
/// to a 1000 s cap, so while a restarting API server answers 503 a single
/// list, watch or write could stay pending for minutes, well past the
/// server's return (and a Lease renewal could outlast the Lease). Errors
/// surface at once instead: watches retry on [`weft_api::backoff::API_RETRY`],
/// a failed pass on the loop's backoff ([`run`]), the Lease every
/// `renew_every`.
pub async fn client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}
