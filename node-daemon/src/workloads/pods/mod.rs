//! The pods of this node, as the CNI plugin's ADD needs them: namespace,
//! name and labels (the runtime tells the netns over the attach socket).
//! One watch with `spec.nodeName=<node>`, so the daemon never lists the
//! cluster's other pods. Whether some app claims a new pod comes from the
//! MeshApps of these pods' namespaces ([`app_watch`]).

pub mod app_watch;

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;
use weft_api::standalone::LocalWorkload;
use weft_api::AppSelector;

use crate::kubeapi::retrying_watcher;
use crate::wake::Wake;
use crate::workloads::Announcements;
use app_watch::AppWatches;

/// The field selector of the watch: pods scheduled to `node`.
pub fn on_node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// A pod as a workload announcement; `None` once it finished (its sandbox
/// is going or gone, and a finished pod never needs an attachment).
pub fn announcement(pod: &Pod) -> Option<LocalWorkload> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    Some(LocalWorkload {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_else(|| "default".into()),
        labels: pod.labels().clone(),
        netns: String::new(),
    })
}

/// What the pod cache keeps: identity, labels, deletion and phase (what
/// [`announcement`] reads); containers, volumes and the rest go as they arrive.
pub fn trim_pod(p: &mut Pod) {
    trim_meta(&mut p.metadata);
    p.metadata.annotations = None;
    p.metadata.owner_references = None;
    p.spec = None;
    let phase = p.status.as_ref().and_then(|s| s.phase.clone());
    p.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase,
        ..Default::default()
    });
}

/// Drops the metadata no cache of the daemon reads.
pub(super) fn trim_meta(m: &mut kube::api::ObjectMeta) {
    m.managed_fields = None;
    m.finalizers = None;
}

/// Announcements from the pod watch, app selectors from the MeshApp
/// watches of the pods' namespaces.
pub struct PodAnnouncements {
    store: Store<Pod>,
    watch: JoinHandle<()>,
    apps: AppWatches,
}

impl PodAnnouncements {
    /// Starts the watches on `rt`; every change they deliver sets `wake`,
    /// so the run loop decides about a new pod at once.
    pub fn start(client: Client, node: &str, rt: &tokio::runtime::Handle, wake: Wake) -> Self {
        let api: Api<Pod> = Api::all(client.clone());
        let (store, writer) = reflector::store();
        let stream = retrying_watcher(
            api,
            watcher::Config::default().fields(&on_node_selector(node)),
        )
        .modify(trim_pod);
        let pod_wake = wake.clone();
        let watch = rt.spawn(reflector::reflector(writer, stream).for_each(move |ev| {
            match ev {
                Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying with backoff"),
                Ok(_) => pod_wake.set(),
            }
            std::future::ready(())
        }));
        let pods = store.clone();
        let apps = AppWatches::start(client, rt, move || pod_namespaces(&pods.state()), wake);
        PodAnnouncements { store, watch, apps }
    }

    /// The namespaces whose MeshApps the daemon watches now.
    pub fn watched_namespaces(&self) -> BTreeSet<String> {
        self.apps.watched_namespaces()
    }
}

/// The namespaces of `pods` that may still need an attachment (finished
/// pods never do: a Job's completed pods do not keep a watch alive).
pub fn pod_namespaces(pods: &[Arc<Pod>]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| announcement(p))
        .map(|a| a.namespace)
        .collect()
}

impl Announcements for PodAnnouncements {
    fn scan(&self) -> Vec<LocalWorkload> {
        let mut out: Vec<LocalWorkload> = self
            .store
            .state()
            .iter()
            .filter_map(|p| announcement(p))
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// The watch can lag behind the kubelet's ADD: a pod missing from it
    /// is not yet known, not "of no app".
    fn complete(&self) -> bool {
        false
    }

    /// Once the MeshApp watches of `namespaces` have listed (and while
    /// they are healthy); until then nobody can tell, and the pods wait.
    fn selectors(&self, site: &str, namespaces: &BTreeSet<String>) -> Option<Vec<AppSelector>> {
        self.apps.selectors(site, namespaces)
    }
}

impl Drop for PodAnnouncements {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(name: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("demo".into()),
                labels: Some([("tier".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn running_pods_are_announced_with_labels_and_no_netns() {
        let a = announcement(&pod("web-1", "Running")).unwrap();
        assert_eq!((a.namespace.as_str(), a.name.as_str()), ("demo", "web-1"));
        assert_eq!(a.labels.get("tier").map(String::as_str), Some("web"));
        assert!(a.netns.is_empty(), "the runtime tells the netns");
        assert!(announcement(&pod("web-2", "Pending")).is_some());
    }

    #[test]
    fn finished_pods_are_not() {
        assert!(announcement(&pod("job-1", "Succeeded")).is_none());
        assert!(announcement(&pod("job-2", "Failed")).is_none());
    }

    #[test]
    fn the_watch_is_restricted_to_this_node() {
        assert_eq!(on_node_selector("n1"), "spec.nodeName=n1");
    }

    #[test]
    fn trimmed_pods_answer_the_same() {
        for phase in ["Running", "Succeeded"] {
            let p = pod("web-1", phase);
            let mut t = p.clone();
            trim_pod(&mut t);
            assert_eq!(announcement(&p), announcement(&t), "{phase}");
        }
    }

    #[test]
    fn finished_pods_keep_no_namespace_watched() {
        let mut ops = pod("api-1", "Running");
        ops.metadata.namespace = Some("ops".into());
        let mut batch = pod("job-1", "Succeeded");
        batch.metadata.namespace = Some("batch".into());
        let pods = [pod("web-1", "Pending"), pod("web-2", "Running"), ops, batch];
        let pods: Vec<Arc<Pod>> = pods.into_iter().map(Arc::new).collect();
        let got: Vec<String> = pod_namespaces(&pods).into_iter().collect();
        assert_eq!(got, ["demo", "ops"]);
    }
}
