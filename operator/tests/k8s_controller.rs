//! Controller tests against a scripted fake API server (kube-rs's tower-test
//! pattern): the reconcile pass runs against a `Client` whose transport is a
//! `tower_test` mock; an `ApiServerVerifier` expects each request in order,
//! checks it, and answers it. When the pass finishes the client is dropped,
//! so `no_more_requests` proves nothing else was sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeStatus, Pod, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use weft_api::conditions::{self, types};
use weft_api::labels::APP_FINALIZER;
use weft_api::{
    AppStatus, MeshApp, MeshAppSpec, MeshNode, MeshNodeSpec, MeshNodeStatus, MeshPolicy,
    MeshPolicySpec, MeshSite, MeshSiteSpec, PeerStatus, Selector,
};
use weft_operator::k8s::{
    reconcile_all, reconcile_all_limited, snapshot_from_stores, Observed, PassState,
    ReconcileReport, STATUS_WRITES_PER_PASS,
};
use weft_operator::planner::incremental::PassKind;
use weft_operator::planner::{self, PlannerConfig};
use weft_operator::status::{self as app_status, NodeView};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

// ---------------------------------------------------------------- fixtures

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn app(name: &str, spec: MeshAppSpec) -> MeshApp {
    let mut a = MeshApp::new(name, spec);
    a.metadata.namespace = Some("demo".into());
    a.metadata.generation = Some(1);
    a.metadata.resource_version = Some("100".into());
    a
}

fn web() -> MeshApp {
    app(
        "web",
        MeshAppSpec {
            selector: Selector::labels([("tier", "web")]),
            ..Default::default()
        },
    )
}

fn with_finalizer(mut a: MeshApp) -> MeshApp {
    a.metadata.finalizers = Some(vec![APP_FINALIZER.to_string()]);
    a
}

fn deleting(mut a: MeshApp) -> MeshApp {
    a.metadata.deletion_timestamp = Some(Time(now()));
    a
}

fn node(name: &str, ip: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            }]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn pod(name: &str, node: &str, tier: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("demo".into()),
            labels: Some([("tier".to_string(), tier.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        }),
    }
}

/// Two Ready nodes, a web pod on each.
fn two_nodes_with_web_pods() -> Observed {
    Observed {
        nodes: vec![
            Arc::new(node("n1", "192.0.2.1")),
            Arc::new(node("n2", "192.0.2.2")),
        ],
        pods: vec![
            Arc::new(pod("web-1", "n1", "web")),
            Arc::new(pod("web-2", "n2", "web")),
        ],
        ..Default::default()
    }
}

/// What a daemon that programmed everything and handshook with every peer reports.
fn daemon_status(spec: &MeshNodeSpec, generation: i64) -> MeshNodeStatus {
    MeshNodeStatus {
        observed_generation: Some(generation),
        apps: spec
            .apps
            .iter()
            .map(|a| AppStatus {
                app: a.app.clone(),
                public_key: format!("key-of-{}", a.netns),
                listen_port: a.listen_port,
                interface: a.interface.clone(),
                programmed: true,
                error: None,
                peers: a
                    .peers
                    .iter()
                    .map(|p| PeerStatus {
                        node: p.node.clone(),
                        public_key: p.public_key.clone(),
                        last_handshake_seconds: Some(5),
                        rx_bytes: 1,
                        tx_bytes: 1,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Turns `obs` into the state a finished rollout leaves behind: every
/// MeshNode spec is the plan, every daemon reports it programmed with fresh
/// handshakes, every status is what the operator would write.
fn converge(mut obs: Observed) -> Observed {
    let cfg = PlannerConfig::default();
    for _ in 0..3 {
        let plan = planner::plan(&snapshot_from_stores(&obs, &cfg, now()));
        obs.meshnodes = plan
            .nodes
            .iter()
            .map(|(name, spec)| {
                let mut mn = MeshNode::new(name, spec.clone());
                mn.metadata.generation = Some(1);
                // Keys come from the status, so fill it before the next round.
                let mut st = daemon_status(spec, 1);
                for a in &mut st.apps {
                    a.public_key = format!("key-{name}-{}", a.app);
                }
                mn.status = Some(st);
                Arc::new(mn)
            })
            .collect();
    }
    let snapshot = snapshot_from_stores(&obs, &cfg, now());
    let plan = planner::plan(&snapshot);
    let views: BTreeMap<String, NodeView<'_>> = obs
        .meshnodes
        .iter()
        .map(|m| {
            (
                m.name_any(),
                NodeView {
                    spec_generation: m.metadata.generation,
                    status: m.status.as_ref(),
                    lost: false,
                },
            )
        })
        .collect();
    let now_time = Time(now());
    let apps = obs
        .apps
        .iter()
        .map(|a| {
            let mut a = (**a).clone();
            let key = weft_operator::k8s::snapshot::key_of(&a);
            if let Some(outcome) = plan.apps.get(&key) {
                a.status = Some(app_status::app_status(
                    &key, outcome, &views, 1, None, &now_time,
                ));
            }
            Arc::new(a)
        })
        .collect();
    obs.apps = apps;
    obs
}

// ------------------------------------------------------- the fake API server

struct Seen {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

/// Answers requests in order, checking each against what the test expects.
struct ApiServerVerifier {
    handle: Handle,
    /// Objects the server knows, by path, to answer with.
    objects: BTreeMap<String, Value>,
}

fn path_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    let base = match obj.meta().namespace.as_deref() {
        Some(ns) => K::url_path(&(), Some(ns)),
        None => K::url_path(&(), None),
    };
    format!("{base}/{}", obj.meta().name.clone().unwrap_or_default())
}

impl ApiServerVerifier {
    fn new(handle: Handle, obs: &Observed) -> Self {
        let mut objects = BTreeMap::new();
        for a in &obs.apps {
            objects.insert(
                path_of(a.as_ref()),
                serde_json::to_value(a.as_ref()).unwrap(),
            );
        }
        for p in &obs.policies {
            objects.insert(
                path_of(p.as_ref()),
                serde_json::to_value(p.as_ref()).unwrap(),
            );
        }
        for s in &obs.sites {
            objects.insert(
                path_of(s.as_ref()),
                serde_json::to_value(s.as_ref()).unwrap(),
            );
        }
        ApiServerVerifier { handle, objects }
    }

    /// Takes the next request and answers it like an API server would.
    async fn next(&mut self) -> Seen {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .expect("the controller sent no further request within 5 s")
            .expect("the controller finished without sending the expected request");
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let seen = Seen {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body,
        };
        let answer = self.answer(&seen);
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        seen
    }

    fn answer(&mut self, seen: &Seen) -> Value {
        if seen.path.ends_with("/events") {
            return seen.body.clone();
        }
        if seen.path.contains("/meshnodes/") {
            let mut obj = seen.body.clone();
            obj["metadata"]["generation"] = json!(2);
            return obj;
        }
        let object_path = seen.path.trim_end_matches("/status").to_string();
        let mut obj = self
            .objects
            .get(&object_path)
            .cloned()
            .unwrap_or_else(|| panic!("request for an unknown object {}", seen.path));
        if let Some(status) = seen.body.get("status") {
            obj["status"] = status.clone();
        }
        if let Some(f) = seen.body.pointer("/metadata/finalizers") {
            obj["metadata"]["finalizers"] = f.clone();
        }
        self.objects.insert(object_path, obj.clone());
        obj
    }

    async fn finalizer_is_added(mut self, app: &str) -> Self {
        let seen = self.next().await;
        assert_eq!(seen.method, Method::PATCH);
        assert_eq!(
            seen.path,
            format!("/apis/weft.dev/v1alpha1/namespaces/demo/meshapps/{app}")
        );
        assert_eq!(seen.content_type, "application/merge-patch+json");
        let fins = seen.body.pointer("/metadata/finalizers").unwrap();
        assert!(fins.as_array().unwrap().contains(&json!(APP_FINALIZER)));
        assert!(
            seen.body.pointer("/metadata/resourceVersion").is_some(),
            "guarded by resourceVersion"
        );
        self
    }

    async fn finalizer_is_released(mut self, app: &str) -> Self {
        let seen = self.next().await;
        assert_eq!(seen.method, Method::PATCH);
        assert_eq!(
            seen.path,
            format!("/apis/weft.dev/v1alpha1/namespaces/demo/meshapps/{app}")
        );
        let fins = seen.body.pointer("/metadata/finalizers").unwrap();
        assert!(!fins.as_array().unwrap().contains(&json!(APP_FINALIZER)));
        self
    }

    async fn meshnode_is_applied(mut self, node: &str) -> (Self, MeshNodeSpec) {
        let seen = self.next().await;
        assert_eq!(seen.method, Method::PATCH);
        assert_eq!(
            seen.path,
            format!("/apis/weft.dev/v1alpha1/meshnodes/{node}")
        );
        assert_eq!(seen.content_type, "application/apply-patch+yaml");
        assert!(
            seen.query.contains("fieldManager=weft-operator"),
            "{}",
            seen.query
        );
        assert!(
            seen.body.get("status").is_none(),
            "spec apply never carries status"
        );
        let spec = serde_json::from_value(seen.body["spec"].clone()).unwrap();
        (self, spec)
    }

    async fn status_is_applied(mut self, plural: &str, path_tail: &str) -> (Self, Value) {
        let seen = self.next().await;
        assert_eq!(seen.method, Method::PATCH);
        assert_eq!(
            seen.path,
            format!(
                "/apis/weft.dev/v1alpha1/{path_tail_prefix}{plural}/{path_tail}/status",
                path_tail_prefix = if plural == "meshsites" {
                    ""
                } else {
                    "namespaces/demo/"
                }
            )
        );
        assert_eq!(seen.content_type, "application/apply-patch+yaml");
        assert!(seen.query.contains("fieldManager=weft-operator"));
        let keys: Vec<&str> = seen
            .body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["apiVersion", "kind", "status"],
            "status apply carries only status"
        );
        (self, seen.body["status"].clone())
    }

    async fn warning_event_is_published(mut self, object: &str, field: &str) -> Self {
        let seen = self.next().await;
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/apis/events.k8s.io/v1/namespaces/demo/events");
        assert_eq!(seen.body["type"], "Warning");
        assert_eq!(seen.body["regarding"]["name"], object);
        assert_eq!(seen.body["reportingController"], "weft-operator");
        assert_eq!(
            seen.body["reportingInstance"], "weft-operator-0",
            "the Event says which replica (the leader) reported it"
        );
        let note = seen.body["note"].as_str().unwrap();
        assert!(
            note.contains(field),
            "the event names the field {field}: {note}"
        );
        self
    }

    async fn no_more_requests(mut self) {
        if let Some((req, _)) = self.handle.next_request().await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

/// Runs one pass against the fake server; `script` drives the verifier.
async fn pass<F, Fut>(obs: Observed, at: Timestamp, script: F) -> ReconcileReport
where
    F: FnOnce(ApiServerVerifier) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = ApiServerVerifier::new(handle, &obs);
    let client = Client::new(svc, "default");
    let task = tokio::spawn(async move {
        let r = reconcile_all(
            &client,
            &obs,
            &PlannerConfig::default(),
            at,
            Some("weft-operator-0"),
            &mut PassState::default(),
        )
        .await;
        drop(client);
        r
    });
    tokio::time::timeout(Duration::from_secs(10), script(verifier))
        .await
        .expect("scenario timed out");
    task.await.unwrap().expect("reconcile failed")
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

// ------------------------------------------------------------------ scenarios

#[tokio::test]
async fn creating_an_app_adds_the_finalizer_applies_meshnodes_and_reports_status() {
    let mut obs = two_nodes_with_web_pods();
    obs.apps = vec![Arc::new(web())];
    let report = pass(obs, now(), |v| async move {
        let v = v.finalizer_is_added("web").await;
        let (v, n1) = v.meshnode_is_applied("n1").await;
        assert_eq!(n1.apps.len(), 1);
        assert_eq!(n1.apps[0].app, "demo/web");
        assert_eq!(n1.apps[0].workloads, ["demo/web-1"]);
        assert!(n1.apps[0].peers.is_empty(), "no keys reported yet");
        let (v, n2) = v.meshnode_is_applied("n2").await;
        assert_eq!(n2.apps[0].workloads, ["demo/web-2"]);
        let (v, status) = v.status_is_applied("meshapps", "web").await;
        assert_eq!(status["addressSpace"], "100.64.0.0/16");
        assert_eq!(status["nodes"], "0/2");
        assert_eq!(condition(&status, "Ready")["status"], "False");
        assert_eq!(condition(&status, "Ready")["reason"], "NodesNotReady");
        v.no_more_requests().await;
    })
    .await;
    assert_eq!(report.meshnode_writes, ["n1", "n2"]);
}

#[tokio::test]
async fn converged_state_makes_no_request_even_as_time_passes() {
    let mut obs = two_nodes_with_web_pods();
    obs.apps = vec![Arc::new(with_finalizer(web()))];
    let obs = converge(obs);
    let st = obs.apps[0].status.clone().unwrap();
    assert!(conditions::is_true(&st.conditions, types::READY), "{st:?}");
    assert_eq!(st.peers.as_deref(), Some("1/1"));
    let report = pass(obs.clone(), now(), |v| v.no_more_requests()).await;
    assert!(!report.wrote_anything());
    let later = now() + k8s_openapi::jiff::SignedDuration::from_secs(20);
    let report = pass(obs, later, |v| v.no_more_requests()).await;
    assert!(
        !report.wrote_anything(),
        "condition times alone never cause a write"
    );
}

/// Runs one pass against the fake server with the state of earlier passes.
async fn pass_keeping<F, Fut>(
    obs: Observed,
    at: Timestamp,
    mut state: PassState,
    script: F,
) -> (ReconcileReport, PassState)
where
    F: FnOnce(ApiServerVerifier) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = ApiServerVerifier::new(handle, &obs);
    let client = Client::new(svc, "default");
    let task = tokio::spawn(async move {
        let r = reconcile_all(
            &client,
            &obs,
            &PlannerConfig::default(),
            at,
            None,
            &mut state,
        )
        .await;
        drop(client);
        (r, state)
    });
    tokio::time::timeout(Duration::from_secs(10), script(verifier))
        .await
        .expect("scenario timed out");
    let (r, state) = task.await.unwrap();
    (r.expect("reconcile failed"), state)
}

/// Every object of `obs` with resourceVersion `rv`, as an API server's
/// objects always have one.
fn versioned(mut obs: Observed, rv: &str) -> Observed {
    fn set<K: Resource + Clone>(items: &mut [Arc<K>], rv: &str) {
        for o in items {
            Arc::make_mut(o).meta_mut().resource_version = Some(rv.into());
        }
    }
    set(&mut obs.apps, rv);
    set(&mut obs.meshnodes, rv);
    set(&mut obs.pods, rv);
    set(&mut obs.nodes, rv);
    obs
}

#[tokio::test]
async fn caches_unchanged_since_the_last_plan_are_not_planned_again_and_a_new_version_is() {
    let mut obs = two_nodes_with_web_pods();
    obs.apps = vec![Arc::new(with_finalizer(web()))];
    let obs = versioned(converge(obs), "7");
    let built = |r: &ReconcileReport| r.phases.iter().any(|(p, _)| *p == "snapshot");
    let (first, state) = pass_keeping(obs.clone(), now(), PassState::default(), |v| {
        v.no_more_requests()
    })
    .await;
    assert!(built(&first), "the first pass builds its snapshot");
    // After a full plan every stored spec is checked against it once.
    let (_, state) = pass_keeping(obs.clone(), now(), state, |v| v.no_more_requests()).await;
    let (second, state) = pass_keeping(obs.clone(), now(), state, |v| v.no_more_requests()).await;
    assert!(!built(&second), "{:?}", second.phases);
    assert_eq!(second.planned, Some(PassKind::Unchanged));
    assert!(!second.wrote_anything());
    // A pod with a new resourceVersion (same content): planned again, and
    // still nothing to write.
    let mut touched = obs.clone();
    Arc::make_mut(&mut touched.pods[1])
        .metadata
        .resource_version = Some("8".into());
    let (third, state) =
        pass_keeping(touched.clone(), now(), state, |v| v.no_more_requests()).await;
    assert!(built(&third), "{:?}", third.phases);
    assert!(!third.wrote_anything());
    // Objects without a resourceVersion tell nothing: always planned.
    let mut unversioned = touched;
    Arc::make_mut(&mut unversioned.nodes[0])
        .metadata
        .resource_version = None;
    let (fourth, _) = pass_keeping(unversioned, now(), state, |v| v.no_more_requests()).await;
    assert!(built(&fourth), "{:?}", fourth.phases);
}

#[tokio::test]
async fn a_new_key_from_a_daemon_is_passed_to_its_peers_only() {
    let mut obs = two_nodes_with_web_pods();
    obs.apps = vec![Arc::new(with_finalizer(web()))];
    let mut obs = converge(obs);
    // n2's daemon restarted with a new key (e.g. its key file was lost).
    let mut n2 = (*obs.meshnodes[1]).clone();
    n2.status.as_mut().unwrap().apps[0].public_key = "rotated".into();
    obs.meshnodes[1] = Arc::new(n2);
    pass(obs, now(), |v| async move {
        let (v, n1) = v.meshnode_is_applied("n1").await;
        assert_eq!(n1.apps[0].peers[0].node, "n2");
        assert_eq!(n1.apps[0].peers[0].public_key, "rotated");
        // n1's MeshApp view: n1 has not applied generation 2 yet.
        let (v, status) = v.status_is_applied("meshapps", "web").await;
        assert_eq!(condition(&status, "Ready")["status"], "False");
        v.no_more_requests().await;
    })
    .await;
}

#[tokio::test]
async fn bad_input_gets_a_degraded_condition_naming_the_field_and_other_apps_keep_working() {
    let mut obs = two_nodes_with_web_pods();
    let bad = app(
        "bad",
        MeshAppSpec {
            selector: Selector::labels([("tier", "web")]),
            address_space: Some("10.0.0.0/33".into()),
            ..Default::default()
        },
    );
    obs.apps = vec![
        Arc::new(with_finalizer(bad)),
        Arc::new(with_finalizer(web())),
    ];
    pass(obs, now(), |v| async move {
        let (v, n1) = v.meshnode_is_applied("n1").await;
        assert_eq!(n1.apps.len(), 1, "the invalid app is left out");
        assert_eq!(n1.apps[0].app, "demo/web");
        let (v, _) = v.meshnode_is_applied("n2").await;
        let (v, bad) = v.status_is_applied("meshapps", "bad").await;
        let degraded = condition(&bad, "Degraded");
        assert_eq!(degraded["status"], "True");
        assert!(
            degraded["message"]
                .as_str()
                .unwrap()
                .contains("spec.addressSpace"),
            "{degraded}"
        );
        let v = v
            .warning_event_is_published("bad", "spec.addressSpace")
            .await;
        let (v, good) = v.status_is_applied("meshapps", "web").await;
        assert_eq!(condition(&good, "Degraded")["reason"], "NodesNotReady");
        v.no_more_requests().await;
    })
    .await;
}

#[tokio::test]
async fn a_policy_naming_an_unknown_app_is_not_accepted_and_says_which_field() {
    let mut obs = two_nodes_with_web_pods();
    obs.apps = vec![Arc::new(with_finalizer(web()))];
    let mut obs = converge(obs);
    let mut pol = MeshPolicy::new(
        "p",
        MeshPolicySpec {
            app: "nope".into(),
            ..Default::default()
        },
    );
    pol.metadata.namespace = Some("demo".into());
    pol.metadata.generation = Some(3);
    obs.policies = vec![Arc::new(pol)];
    pass(obs, now(), |v| async move {
        let (v, status) = v.status_is_applied("meshpolicies", "p").await;
        let accepted = condition(&status, "Accepted");
        assert_eq!(accepted["status"], "False");
        assert!(
            accepted["message"].as_str().unwrap().contains("spec.app"),
            "{accepted}"
        );
        assert_eq!(accepted["observedGeneration"], 3);
        v.warning_event_is_published("p", "spec.app")
            .await
            .no_more_requests()
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_site_reports_its_nodes() {
    let mut obs = two_nodes_with_web_pods();
    obs.apps = vec![Arc::new(with_finalizer(web()))];
    let mut obs = converge(obs);
    let mut site = MeshSite::new("local", MeshSiteSpec::default());
    site.metadata.generation = Some(1);
    obs.sites = vec![Arc::new(site)];
    pass(obs, now(), |v| async move {
        let (v, status) = v.status_is_applied("meshsites", "local").await;
        assert_eq!(status["nodes"], 2);
        assert_eq!(condition(&status, "Ready")["status"], "True");
        v.no_more_requests().await;
    })
    .await;
}

#[tokio::test]
async fn deleting_an_app_removes_it_from_every_node_and_releases_the_finalizer_once_nodes_confirm()
{
    let mut obs = two_nodes_with_web_pods();
    obs.apps = vec![Arc::new(with_finalizer(web()))];
    let live = converge(obs);
    let mut obs = live.clone();
    obs.apps = vec![Arc::new(deleting((*live.apps[0]).clone()))];

    // 1. The app leaves every MeshNode spec; nodes still carry it: keep the finalizer.
    let report = pass(obs.clone(), now(), |v| async move {
        let (v, n1) = v.meshnode_is_applied("n1").await;
        assert!(n1.apps.is_empty());
        let (v, n2) = v.meshnode_is_applied("n2").await;
        assert!(n2.apps.is_empty());
        v.no_more_requests().await;
    })
    .await;
    assert_eq!(report.waiting_for_cleanup, ["demo/web"]);

    // 2. Specs are empty but the daemons have not reported yet: nothing to do.
    for mn in &mut obs.meshnodes {
        let mut m = (**mn).clone();
        m.spec.apps.clear();
        *mn = Arc::new(m);
    }
    let report = pass(obs.clone(), now(), |v| v.no_more_requests()).await;
    assert_eq!(report.waiting_for_cleanup, ["demo/web"]);

    // 3. Every daemon removed it: release the finalizer.
    for mn in &mut obs.meshnodes {
        let mut m = (**mn).clone();
        m.status.as_mut().unwrap().apps.clear();
        *mn = Arc::new(m);
    }
    let report = pass(obs, now(), |v| async move {
        v.finalizer_is_released("web")
            .await
            .no_more_requests()
            .await;
    })
    .await;
    assert_eq!(report.finalizers_released, ["demo/web"]);
}

#[tokio::test]
async fn a_lost_node_does_not_hold_up_the_finalizer() {
    let mut obs = two_nodes_with_web_pods();
    obs.apps = vec![Arc::new(with_finalizer(web()))];
    let live = converge(obs);
    let mut obs = live.clone();
    obs.apps = vec![Arc::new(deleting((*live.apps[0]).clone()))];
    for mn in &mut obs.meshnodes {
        let mut m = (**mn).clone();
        m.spec.apps.clear();
        *mn = Arc::new(m);
    }
    // n2 went NotReady with the app still in its last status.
    let mut n2 = node("n2", "192.0.2.2");
    n2.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "Unknown".into();
    obs.nodes[1] = Arc::new(n2);
    let mut n1 = (*obs.meshnodes[0]).clone();
    n1.status.as_mut().unwrap().apps.clear();
    obs.meshnodes[0] = Arc::new(n1);
    pass(obs, now(), |v| async move {
        v.finalizer_is_released("web")
            .await
            .no_more_requests()
            .await;
    })
    .await;
}

/// GitOps sees no drift: across creation, bad input, policies, sites and
/// deletion, every request that touches a user-owned object either writes its
/// status subresource or changes nothing but `metadata.finalizers`.
#[tokio::test]
async fn reconciling_never_changes_spec_or_metadata_of_user_objects_except_the_finalizer() {
    let mut obs = two_nodes_with_web_pods();
    let bad = app(
        "bad",
        MeshAppSpec {
            sites: vec!["nowhere".into()],
            ..Default::default()
        },
    );
    let mut pol = MeshPolicy::new(
        "p",
        MeshPolicySpec {
            app: "web".into(),
            ..Default::default()
        },
    );
    pol.metadata.namespace = Some("demo".into());
    let site = MeshSite::new("local", MeshSiteSpec::default());
    let gone = deleting(with_finalizer(app("gone", MeshAppSpec::default())));
    obs.apps = vec![Arc::new(web()), Arc::new(bad), Arc::new(gone)];
    obs.policies = vec![Arc::new(pol)];
    obs.sites = vec![Arc::new(site)];

    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let task = {
        let obs = obs.clone();
        tokio::spawn(async move {
            let r = reconcile_all(
                &client,
                &obs,
                &PlannerConfig::default(),
                now(),
                None,
                &mut PassState::default(),
            )
            .await;
            drop(client);
            r
        })
    };
    let mut verifier = ApiServerVerifier::new(
        tower_test::mock::pair::<Request<Body>, Response<Body>>().1,
        &obs,
    );
    let mut user_requests = 0;
    while let Some((req, send)) = handle.next_request().await {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let path = parts.uri.path().to_string();
        let user_owned = ["/meshapps/", "/meshpolicies/", "/meshsites/"]
            .iter()
            .any(|k| path.contains(k));
        if user_owned {
            user_requests += 1;
            assert_eq!(parts.method, Method::PATCH, "{path}");
            if path.ends_with("/status") {
                let keys: Vec<&str> = body
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(String::as_str)
                    .collect();
                assert_eq!(keys, ["apiVersion", "kind", "status"], "{path}");
            } else {
                let meta = body.as_object().unwrap();
                assert_eq!(
                    meta.keys().collect::<Vec<_>>(),
                    ["metadata"],
                    "{path}: {body}"
                );
                let mut fields: Vec<&String> =
                    body["metadata"].as_object().unwrap().keys().collect();
                fields.sort();
                assert_eq!(fields, ["finalizers", "resourceVersion"], "{path}: {body}");
            }
        }
        let seen = Seen {
            method: parts.method,
            path,
            query: String::new(),
            content_type: String::new(),
            body,
        };
        let answer = verifier.answer(&seen);
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
    }
    let report = task.await.unwrap().unwrap();
    assert!(
        user_requests >= 5,
        "the scenario exercises finalizers and statuses"
    );
    assert_eq!(report.finalizers_added, ["demo/bad", "demo/web"]);
    assert_eq!(report.finalizers_released, ["demo/gone"]);
}

#[tokio::test]
async fn a_failure_already_reported_is_neither_rewritten_nor_announced_again() {
    let mut obs = two_nodes_with_web_pods();
    obs.apps = vec![Arc::new(with_finalizer(web()))];
    let mut obs = converge(obs);
    let mut pol = MeshPolicy::new(
        "p",
        MeshPolicySpec {
            app: "nope".into(),
            ..Default::default()
        },
    );
    pol.metadata.namespace = Some("demo".into());
    pol.metadata.generation = Some(3);
    obs.policies = vec![Arc::new(pol.clone())];
    let mut written = Value::Null;
    pass(obs.clone(), now(), |v| async {
        let (v, status) = v.status_is_applied("meshpolicies", "p").await;
        written = status;
        v.warning_event_is_published("p", "spec.app")
            .await
            .no_more_requests()
            .await;
    })
    .await;
    pol.status = Some(serde_json::from_value(written).unwrap());
    obs.policies = vec![Arc::new(pol)];
    let later = now() + k8s_openapi::jiff::SignedDuration::from_secs(60);
    let report = pass(obs, later, |v| v.no_more_requests()).await;
    assert!(!report.wrote_anything());
}

/// Runs one pass with a status budget, answering every request; returns the
/// report and the paths of the status patches, in order.
async fn pass_with_budget(obs: &Observed, budget: usize) -> (ReconcileReport, Vec<String>) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let task = {
        let obs = obs.clone();
        tokio::spawn(async move {
            let r = reconcile_all_limited(
                &client,
                &obs,
                &PlannerConfig::default(),
                now(),
                None,
                &mut PassState::default(),
                budget,
            )
            .await;
            drop(client);
            r
        })
    };
    let mut verifier = ApiServerVerifier::new(
        tower_test::mock::pair::<Request<Body>, Response<Body>>().1,
        obs,
    );
    let mut statuses = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let path = parts.uri.path().to_string();
        if path.ends_with("/status") {
            statuses.push(path.clone());
        }
        let seen = Seen {
            method: parts.method,
            path,
            query: String::new(),
            content_type: String::new(),
            body,
        };
        let answer = verifier.answer(&seen);
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
    }
    (task.await.unwrap().unwrap(), statuses)
}

/// Start-up with many objects whose status changes: a pass sends at most its
/// budget of status patches (in key order), says how many it left, and never
/// holds back a MeshNode.
#[tokio::test]
async fn status_writes_over_the_pass_budget_are_left_for_the_next_pass() {
    let mut obs = two_nodes_with_web_pods();
    obs.apps = (1..=5)
        .map(|i| {
            Arc::new(with_finalizer(app(
                &format!("a{i}"),
                MeshAppSpec::default(),
            )))
        })
        .collect();
    let (report, statuses) = pass_with_budget(&obs, 2).await;
    assert_eq!(
        statuses,
        [
            "/apis/weft.dev/v1alpha1/namespaces/demo/meshapps/a1/status",
            "/apis/weft.dev/v1alpha1/namespaces/demo/meshapps/a2/status"
        ]
    );
    assert_eq!(report.statuses_deferred, 3);
    assert_eq!(report.meshnode_writes, ["n1", "n2"]);
    let (report, statuses) = pass_with_budget(&obs, STATUS_WRITES_PER_PASS).await;
    assert_eq!(statuses.len(), 5);
    assert_eq!(report.statuses_deferred, 0);
}
