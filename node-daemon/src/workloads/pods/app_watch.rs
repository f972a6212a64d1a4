//! MeshApps of the namespaces this node has pods in, first hand.
//!
//! A pod created together with its app reaches the daemon before the
//! operator has planned the app (the MeshNode lists only this node's apps),
//! so the CNI ADD asks the apps themselves. Apps claim pods of their own
//! namespace only, so the daemon watches MeshApps per namespace, and only
//! in the namespaces of this node's pods: its cache and the changes it
//! receives grow with what runs on the node, not with the cluster.
//!
//! ```text
//!  pods of this node (every SWEEP) ─┐
//!  selectors(namespaces) (an ADD) ──┴─► want ns ─► watch meshapps in ns (started once)
//!  nobody wanted ns for LINGER ─────────────────► stop that watch
//! ```
//!
//! A namespace counts as known once its watch has listed, and only while it
//! is healthy; until then [`AppWatches::selectors`] answers `None` and the
//! pods wait rather than pass through unmeshed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;
use weft_api::meshnode::selectors_for_site;
use weft_api::{AppSelector, MeshApp};

use super::trim_meta;
use crate::kubeapi::retrying_watcher;
use crate::wake::Wake;

/// How long a namespace's watch outlives the last pod of this node in it.
/// Pods come back (a rollout, a rescheduled Job, a restarted pod's new
/// object): restarting the watch costs a list and leaves the next ADD
/// waiting for it, so a brief absence does not stop it; a namespace the
/// node really left stops costing anything after this.
pub const LINGER: Duration = Duration::from_secs(5 * 60);

/// How often the namespaces of this node's pods are compared with the
/// watches. An ADD does not wait for it: [`AppWatches::selectors`] starts
/// the watch of a namespace it is asked about.
pub const SWEEP: Duration = Duration::from_secs(1);

/// What the MeshApp cache keeps: identity, deletion, `spec.selector` and
/// `spec.sites` (what [`app_selectors`] reads); each entry is a few hundred
/// bytes, and status writes change nothing the daemon reads.
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

/// Which namespaces to watch: those wanted (a pod of this node in them, or
/// an ADD asking) within the last `linger`. Pure bookkeeping; the caller
/// starts and stops the watches it reports.
#[derive(Debug, Default)]
pub struct Schedule {
    last_wanted: BTreeMap<String, Instant>,
}

impl Schedule {
    /// Notes `namespaces` as wanted at `now`; returns those not scheduled
    /// before (their watches are to start).
    pub fn want<'a>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> Vec<String> {
        let mut started = Vec::new();
        for ns in namespaces {
            match self.last_wanted.get_mut(ns) {
                Some(t) => *t = (*t).max(now),
                None => {
                    self.last_wanted.insert(ns.to_string(), now);
                    started.push(ns.to_string());
                }
            }
        }
        started
    }

    /// Forgets the namespaces nobody wanted for more than `linger` before
    /// `now`; returns them (their watches are to stop).
    pub fn expire(&mut self, now: Instant, linger: Duration) -> Vec<String> {
        let stale: Vec<String> = self
            .last_wanted
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) > linger)
            .map(|(ns, _)| ns.clone())
            .collect();
        for ns in &stale {
            self.last_wanted.remove(ns);
        }
        stale
    }

    /// The namespaces scheduled.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.last_wanted.keys().map(String::as_str)
    }
}

/// One namespace's watch: its cache, whether that cache is first hand, and
/// the task feeding it (aborted on drop, which closes the watch request).
struct NsWatch {
    apps: Store<MeshApp>,
    ready: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl NsWatch {
    fn start(client: &Client, ns: &str, rt: &tokio::runtime::Handle, wake: &Wake) -> NsWatch {
        let (apps, writer) = reflector::store();
        let stream = retrying_watcher(
            Api::<MeshApp>::namespaced(client.clone(), ns),
            watcher::Config::default(),
        )
        .modify(trim_app);
        // First hand only while the watch is healthy: cleared on an error,
        // set again once a (re)list completed or a change arrived.
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let namespace = ns.to_string();
        let wake = wake.clone();
        let task = rt.spawn(reflector::reflector(writer, stream).for_each(move |ev| {
            match ev {
                Err(e) => {
                    flag.store(false, Ordering::Relaxed);
                    tracing::warn!(namespace = %namespace, error = %e, "MeshApp watch failed; retrying with backoff");
                }
                Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                ) => {
                    flag.store(true, Ordering::Relaxed);
                    // A pod waiting to learn whether an app claims it need
                    // not wait for the next timed pass.
                    wake.set();
                }
                Ok(_) => {}
            }
            std::future::ready(())
        }));
        NsWatch { apps, ready, task }
    }
}

impl Drop for NsWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct State {
    schedule: Schedule,
    watches: BTreeMap<String, NsWatch>,
}

struct Shared {
    client: Client,
    rt: tokio::runtime::Handle,
    state: Mutex<State>,
    /// Set on every change a watch delivers (see [`crate::wake`]).
    wake: Wake,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing is left half-done under the lock; a panic elsewhere must
        // not stop the ADD path.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Schedules `namespaces` at `now` and starts the watches that are
    /// missing; with `expire`, also stops the watches nobody wanted lately.
    fn want<'a>(
        &self,
        st: &mut State,
        namespaces: impl IntoIterator<Item = &'a str>,
        now: Instant,
        expire: bool,
    ) {
        for ns in st.schedule.want(namespaces, now) {
            tracing::info!(namespace = %ns, "watching the namespace's MeshApps");
            let w = NsWatch::start(&self.client, &ns, &self.rt, &self.wake);
            st.watches.insert(ns, w);
        }
        if expire {
            for ns in st.schedule.expire(now, LINGER) {
                tracing::info!(namespace = %ns, linger = ?LINGER, "no pod of this node in the namespace lately; stopped watching its MeshApps");
                st.watches.remove(&ns);
            }
        }
    }
}

/// The per-namespace MeshApp watches of this node; see the module documentation.
pub struct AppWatches {
    shared: Arc<Shared>,
    sweep: JoinHandle<()>,
}

impl AppWatches {
    /// Starts on `rt`; every [`SWEEP`], `pod_namespaces()` (the namespaces
    /// of this node's pods) are watched, and watches idle for [`LINGER`] stop.
    pub fn start(
        client: Client,
        rt: &tokio::runtime::Handle,
        pod_namespaces: impl Fn() -> BTreeSet<String> + Send + 'static,
        wake: Wake,
    ) -> Self {
        let shared = Arc::new(Shared {
            client,
            rt: rt.clone(),
            state: Mutex::new(State::default()),
            wake,
        });
        let s = shared.clone();
        let sweep = rt.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let namespaces = pod_namespaces();
                let mut st = s.lock();
                s.want(
                    &mut st,
                    namespaces.iter().map(String::as_str),
                    Instant::now(),
                    true,
                );
            }
        });
        AppWatches { shared, sweep }
    }

    /// The selectors of the apps of `namespaces` spanning `site`, once
    /// every one of those namespaces' watches has listed (and while they
    /// are healthy); `None` until then. Starts the watches missing, so the
    /// first pod of a namespace waits for one list, not for a sweep.
    pub fn selectors(&self, site: &str, namespaces: &BTreeSet<String>) -> Option<Vec<AppSelector>> {
        let mut st = self.shared.lock();
        self.shared.want(
            &mut st,
            namespaces.iter().map(String::as_str),
            Instant::now(),
            false,
        );
        let mut apps = Vec::new();
        for ns in namespaces {
            let w = st.watches.get(ns)?;
            if !w.ready.load(Ordering::Relaxed) {
                return None;
            }
            apps.extend(w.apps.state());
        }
        Some(app_selectors(&apps, site, namespaces))
    }

    /// The namespaces whose MeshApps are watched now.
    pub fn watched_namespaces(&self) -> BTreeSet<String> {
        self.shared.lock().watches.keys().cloned().collect()
    }
}

impl Drop for AppWatches {
    fn drop(&mut self) {
        self.sweep.abort();
        self.shared.lock().watches.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn namespaces_with_pods_are_watched_from_the_first_time_seen() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert_eq!(s.want(["a", "b"], t0), ["a", "b"]);
        assert!(s.want(["a", "b"], t0 + SWEEP).is_empty(), "started once");
        assert_eq!(s.want(["b", "c"], t0 + 2 * SWEEP), ["c"]);
        assert_eq!(s.namespaces().collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn a_namespace_stops_only_after_lingering_without_pods() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.want(["a", "b"], t0);
        // From here on only b has pods.
        let mut t = t0;
        while t < t0 + LINGER {
            t += SWEEP;
            s.want(["b"], t);
            assert!(s.expire(t, LINGER).is_empty(), "{:?}", t - t0);
        }
        t += SWEEP;
        s.want(["b"], t);
        assert_eq!(s.expire(t, LINGER), ["a"]);
        assert_eq!(s.namespaces().collect::<Vec<_>>(), ["b"]);
        // A pod in a again: a new watch.
        assert_eq!(s.want(["a"], t + SWEEP), ["a"]);
    }

    #[test]
    fn a_pod_back_within_the_linger_keeps_the_watch() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.want(["a"], t0);
        let back = t0 + LINGER - SWEEP;
        assert!(s.want(["a"], back).is_empty());
        assert!(s.expire(t0 + LINGER + SWEEP, LINGER).is_empty());
        assert_eq!(s.expire(back + LINGER + SWEEP, LINGER), ["a"]);
    }

    #[test]
    fn an_older_sighting_does_not_shorten_the_linger() {
        // selectors() and the sweep note times taken a moment apart.
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.want(["a"], t0 + SWEEP);
        s.want(["a"], t0);
        assert!(s.expire(t0 + LINGER + SWEEP / 2, LINGER).is_empty());
    }

    /// Against a mocked API server: the namespace asked is watched there
    /// (not cluster-wide), unknown until its list is done, then known with
    /// its apps; an error makes it unknown again until data arrives.
    #[tokio::test]
    async fn a_namespace_asked_is_watched_there_and_known_once_listed() {
        use http::{Request, Response};
        use kube::client::Body;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let wake = Wake::default();
        let watches = AppWatches::start(
            Client::new(svc, "default"),
            &tokio::runtime::Handle::current(),
            BTreeSet::new,
            wake.clone(),
        );
        let a = set(&["a"]);
        assert_eq!(watches.selectors("local", &a), None);
        assert_eq!(watches.watched_namespaces(), a, "started by the question");
        let reply = |code: u16, body: serde_json::Value| {
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap()
        };
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(
            req.uri().path(),
            "/apis/weft.dev/v1alpha1/namespaces/a/meshapps"
        );
        assert!(!req.uri().query().unwrap_or_default().contains("watch=true"));
        assert_eq!(watches.selectors("local", &a), None, "not listed yet");
        send.send_response(reply(
            200,
            serde_json::json!({
                "apiVersion": "weft.dev/v1alpha1", "kind": "MeshAppList",
                "metadata": {"resourceVersion": "5"},
                "items": [{"apiVersion": "weft.dev/v1alpha1", "kind": "MeshApp",
                    "metadata": {"name": "web", "namespace": "a", "resourceVersion": "5"},
                    "spec": {"selector": {"matchLabels": {"tier": "web"}}}}],
            }),
        ));
        let known = |w: &AppWatches| {
            w.selectors("local", &a)
                .map(|s| s.into_iter().map(|s| s.app).collect::<Vec<_>>())
        };
        while known(&watches).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(known(&watches).unwrap(), ["a/web"]);
        assert!(wake.take(), "the listed apps woke the run loop");
        let (req, send) = handle.next_request().await.unwrap();
        assert!(req.uri().query().unwrap_or_default().contains("watch=true"));
        assert!(req.uri().path().ends_with("/namespaces/a/meshapps"));
        send.send_response(reply(
            500,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "InternalError", "code": 500, "message": "boom"}),
        ));
        while known(&watches).is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(watches.watched_namespaces(), a);
        drop(watches);
    }

    #[test]
    fn selectors_read_only_the_namespaces_asked() {
        use weft_api::MeshAppSpec;
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
            app_selectors(&apps, "local", &set(namespaces))
                .into_iter()
                .map(|s| s.app)
                .collect()
        };
        assert_eq!(names(&["demo"]), ["demo/web"]);
        assert_eq!(names(&["demo", "ops"]), ["demo/web", "ops/api"]);
        assert!(names(&["none"]).is_empty());
    }

    #[test]
    fn trimmed_apps_answer_the_same_and_are_small() {
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
        let demo = set(&["demo"]);
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
    }
}
