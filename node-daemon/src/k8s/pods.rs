//! The pods of this node, as the CNI plugin's ADD needs them: namespace,
//! name and labels (the runtime tells the netns over the attach socket).
//! One watch with `spec.nodeName=<node>`, so the daemon never lists the
//! cluster's other pods. A second watch, on MeshApps, tells first hand
//! whether some app claims a new pod (the MeshNode lists only this node's
//! apps): a pod created together with its app reaches the daemon before
//! the operator has planned the app, and must wait for it rather than pass
//! through unmeshed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;
use weft_api::meshnode::selectors_for_site;
use weft_api::standalone::LocalWorkload;
use weft_api::{AppSelector, MeshApp};

use super::watch::retrying_watcher;
use crate::workloads::Announcements;

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

/// What the MeshApp cache keeps: identity, deletion, `spec.selector` and
/// `spec.sites` (what [`app_selectors`] reads). The cache holds every app
/// of the cluster, so each entry is kept to a few hundred bytes.
pub fn trim_app(a: &mut MeshApp) {
    trim_meta(&mut a.metadata);
    a.metadata.annotations = None;
    a.metadata.labels = None;
    a.spec = weft_api::MeshAppSpec {
        selector: std::mem::take(&mut a.spec.selector),
        sites: std::mem::take(&mut a.spec.sites),
        ..Default::default()
    };
    a.status = None;
}

fn trim_meta(m: &mut kube::api::ObjectMeta) {
    m.managed_fields = None;
    m.finalizers = None;
}

/// Announcements from the pod watch, app selectors from the MeshApp watch.
pub struct PodAnnouncements {
    store: Store<Pod>,
    watch: JoinHandle<()>,
    apps: Store<MeshApp>,
    apps_ready: Arc<AtomicBool>,
    apps_watch: JoinHandle<()>,
}

impl PodAnnouncements {
    /// Starts the watch on `rt`.
    pub fn start(client: Client, node: &str, rt: &tokio::runtime::Handle) -> Self {
        let api: Api<Pod> = Api::all(client.clone());
        let (store, writer) = reflector::store();
        let stream = retrying_watcher(
            api,
            watcher::Config::default().fields(&on_node_selector(node)),
        )
        .modify(trim_pod);
        let watch = rt.spawn(reflector::reflector(writer, stream).for_each(|ev| {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "pod watch failed; retrying with backoff");
            }
            std::future::ready(())
        }));
        let (apps, writer) = reflector::store();
        let stream = retrying_watcher(Api::<MeshApp>::all(client), watcher::Config::default())
            .modify(trim_app);
        // First hand only while the watch is healthy: cleared on an error,
        // set again once a (re)list completed or a change arrived.
        let apps_ready = Arc::new(AtomicBool::new(false));
        let ready = apps_ready.clone();
        let apps_watch = rt.spawn(reflector::reflector(writer, stream).for_each(move |ev| {
            match ev {
                Err(e) => {
                    ready.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "MeshApp watch failed; retrying with backoff");
                }
                Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                ) => {
                    ready.store(true, Ordering::Relaxed);
                }
                Ok(_) => {}
            }
            std::future::ready(())
        }));
        PodAnnouncements {
            store,
            watch,
            apps,
            apps_ready,
            apps_watch,
        }
    }
}

/// The selectors of `apps` of `namespaces` (not being deleted) spanning `site`.
pub fn app_selectors(
    apps: &[Arc<MeshApp>],
    site: &str,
    namespaces: &BTreeSet<String>,
) -> Vec<AppSelector> {
    selectors_for_site(
        apps.iter()
            .filter(|a| a.metadata.deletion_timestamp.is_none())
            .filter(|a| namespaces.contains(a.namespace().as_deref().unwrap_or_default()))
            .map(|a| {
                (
                    format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any()),
                    &a.spec,
                )
            }),
        site,
    )
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

    /// Once the MeshApp watch has listed (and while it is healthy); until
    /// then nobody can tell, and the pods wait.
    fn selectors(&self, site: &str, namespaces: &BTreeSet<String>) -> Option<Vec<AppSelector>> {
        self.apps_ready
            .load(Ordering::Relaxed)
            .then(|| app_selectors(&self.apps.state(), site, namespaces))
    }
}

impl Drop for PodAnnouncements {
    fn drop(&mut self) {
        self.watch.abort();
        self.apps_watch.abort();
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;
    use weft_api::MeshAppSpec;

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
    fn apps_of_the_site_and_namespaces_asked_and_not_being_deleted_give_the_selectors() {
        let app = |ns: &str, name: &str, sites: &[&str], deleting: bool| {
            let mut a = MeshApp::new(
                name,
                MeshAppSpec {
                    sites: sites.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            );
            a.metadata.namespace = Some(ns.into());
            if deleting {
                a.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::now(),
                    ));
            }
            Arc::new(a)
        };
        let apps = [
            app("demo", "web", &[], false),
            app("demo", "edge-only", &["edge"], false),
            app("demo", "gone", &[], true),
            app("ops", "api", &[], false),
            app("other", "elsewhere", &[], false),
        ];
        let names = |namespaces: &[&str]| -> Vec<String> {
            let namespaces = namespaces.iter().map(|n| n.to_string()).collect();
            app_selectors(&apps, "local", &namespaces)
                .into_iter()
                .map(|s| s.app)
                .collect()
        };
        assert_eq!(names(&["demo"]), ["demo/web"]);
        assert_eq!(names(&["demo", "ops"]), ["demo/web", "ops/api"]);
        assert!(names(&["none"]).is_empty());
    }

    #[test]
    fn the_watch_is_restricted_to_this_node() {
        assert_eq!(on_node_selector("n1"), "spec.nodeName=n1");
    }

    #[test]
    fn trimmed_caches_answer_the_same_and_are_small() {
        let app: MeshApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshApp",
            "metadata": {"name": "web", "namespace": "demo", "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(2000)},
                "finalizers": ["weft.dev/cleanup"],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"selector": {"matchLabels": {"tier": "web"}}, "sites": ["local", "edge"],
                     "addressSpace": "10.100.0.0/16", "mtu": 1380},
            "status": {"addressSpace": "10.100.0.0/16", "nodes": "2/2", "peers": "1/1",
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        let mut trimmed = app.clone();
        trim_app(&mut trimmed);
        let demo: BTreeSet<String> = ["demo".to_string()].into();
        for site in ["local", "edge", "other"] {
            assert_eq!(
                app_selectors(&[Arc::new(app.clone())], site, &demo),
                app_selectors(&[Arc::new(trimmed.clone())], site, &demo),
                "{site}"
            );
        }
        assert_eq!(
            app_selectors(&[Arc::new(trimmed.clone())], "edge", &demo).len(),
            1
        );
        let (before, after) = (
            serde_json::to_vec(&app).unwrap().len(),
            serde_json::to_vec(&trimmed).unwrap().len(),
        );
        assert!(after * 5 < before, "{before} -> {after} bytes");
        for phase in ["Running", "Succeeded"] {
            let p = pod("web-1", phase);
            let mut t = p.clone();
            trim_pod(&mut t);
            assert_eq!(announcement(&p), announcement(&t), "{phase}");
        }
    }
}
