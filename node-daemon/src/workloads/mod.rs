//! Sources of workloads: where the daemon learns which workloads run on its
//! node. Every source implements [`WorkloadSource`]; the run loop lists it
//! once per pass.
//!
//! | source | mode | module |
//! |---|---|---|
//! | announcement files in the node's workloads directory | standalone | [`dir`] |
//! | those merged with what a CNI runtime registered on the attach socket | standalone, Kubernetes | [`runtime`], [`attach`] |
//! | the pods of this node (their metadata), for the runtime's ADD | Kubernetes | [`pods`] |
//! | the local Docker engine | edge hosts | [`docker`] |

pub mod attach;
pub mod dir;
pub mod docker;
pub mod pods;
pub mod runtime;

pub use crate::core::state::workload_key as key;
pub use dir::{DirSource, StateAnnouncements};
pub use runtime::RuntimeSource;

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use weft_api::standalone::LocalWorkload;
use weft_api::{AppSelector, MeshNode, MeshNodeStatus};

/// A source of the node's current workloads.
pub trait WorkloadSource: Send {
    /// Current workloads, sorted by `namespace/name`. Unreadable entries are
    /// reported through `tracing` and skipped.
    fn list(&mut self) -> Vec<LocalWorkload>;

    /// Workloads known from the last [`list`](Self::list) that cannot be
    /// attached yet (announced, but their runtime has not told us their
    /// netns). They appear in status, so the operator can plan them, but get
    /// no interface.
    fn pending(&self) -> Vec<LocalWorkload> {
        Vec::new()
    }

    /// Called after every pass with its spec and (final) status.
    fn after_pass(&mut self, _spec: Option<&MeshNode>, _status: &MeshNodeStatus) {}

    /// The apps (`namespace/name`) of `site` that claim a workload of the
    /// last [`list`](Self::list) not among `placed` (the workloads the spec
    /// already attaches), so the node can make their keys before the
    /// operator plans them here; `None` when the source cannot tell (it
    /// knows no app selectors, or not yet).
    fn claimed_apps(&self, _site: &str, _placed: &BTreeSet<&str>) -> Option<BTreeSet<String>> {
        None
    }

    /// A condition about the source itself (e.g. its container engine is
    /// unreachable), added to the node's status; `None` for sources that
    /// cannot fail that way.
    fn condition(&self) -> Option<Condition> {
        None
    }
}

/// Holds back a workload whose runtime gave it a new sandbox (same name,
/// new netns) for one pass, so its old attachment goes before the new one
/// is made (links compare by address, not by netns).
#[derive(Debug, Default)]
pub struct SandboxChanges {
    /// The netns each workload was attached to in the last pass.
    last_netns: std::collections::BTreeMap<String, String>,
}

impl SandboxChanges {
    /// The workloads to attach this pass (input order kept).
    pub fn filter(&mut self, workloads: Vec<LocalWorkload>) -> Vec<LocalWorkload> {
        let last = std::mem::take(&mut self.last_netns);
        let mut out = Vec::with_capacity(workloads.len());
        for w in workloads {
            let k = key(&w);
            if last.get(&k).is_some_and(|n| n != &w.netns) {
                tracing::info!(workload = %k, netns = %w.netns, "workload moved to a new sandbox; re-attaching");
                continue;
            }
            self.last_netns.insert(k, w.netns.clone());
            out.push(w);
        }
        out
    }
}

/// Where workload metadata (namespace, name, labels) comes from when the
/// runtime tells the netns over the attach socket.
pub trait Announcements: Send {
    /// Every known workload, sorted by `namespace/name`; netns may be empty.
    fn scan(&self) -> Vec<LocalWorkload>;

    /// Whether a registered workload missing from [`scan`](Self::scan)
    /// belongs to no app. True for announcement files (standalone: the file
    /// is the Pod object, written before the runtime's ADD); false for a
    /// watch that may lag behind the runtime (the ADD then waits).
    fn complete(&self) -> bool {
        true
    }

    /// The selectors of the apps of `namespaces` that span `site` (apps
    /// claim workloads of their own namespace only, so these are all a
    /// node needs, however many apps exist elsewhere); `None` while the
    /// source cannot tell yet, and workloads then wait rather than pass
    /// through as belonging to no app.
    fn selectors(&self, site: &str, namespaces: &BTreeSet<String>) -> Option<Vec<AppSelector>>;
}
