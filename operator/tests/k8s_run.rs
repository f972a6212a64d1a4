//! The whole `weft-operator kubernetes` loop against a fake API server that
//! serves lists, keeps watches open, and records every write: a follower
//! (someone else holds the Lease) never writes; the leader does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use weft_api::labels::APP_FINALIZER;
use weft_api::{MeshApp, MeshAppSpec, Selector};
use weft_operator::k8s::lease::LeaseConfig;
use weft_operator::k8s::run::{run, RunConfig};
use weft_operator::planner::PlannerConfig;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn cluster() -> Vec<(&'static str, Value)> {
    let mut app = MeshApp::new(
        "web",
        MeshAppSpec {
            selector: Selector::labels([("tier", "web")]),
            ..Default::default()
        },
    );
    app.metadata.namespace = Some("demo".into());
    app.metadata.generation = Some(1);
    app.metadata.resource_version = Some("1".into());
    app.metadata.finalizers = Some(vec![APP_FINALIZER.into()]);
    let node = Node {
        metadata: ObjectMeta {
            name: Some("n1".into()),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: "192.0.2.1".into(),
            }]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some("demo".into()),
            labels: Some([("tier".to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        }),
        status: None,
    };
    vec![
        (
            "/apis/weft.dev/v1alpha1/meshapps",
            list(
                "weft.dev/v1alpha1",
                "MeshAppList",
                vec![serde_json::to_value(&app).unwrap()],
            ),
        ),
        (
            "/apis/weft.dev/v1alpha1/meshpolicies",
            list("weft.dev/v1alpha1", "MeshPolicyList", vec![]),
        ),
        (
            "/apis/weft.dev/v1alpha1/meshsites",
            list("weft.dev/v1alpha1", "MeshSiteList", vec![]),
        ),
        (
            "/apis/weft.dev/v1alpha1/meshnodes",
            list("weft.dev/v1alpha1", "MeshNodeList", vec![]),
        ),
        (
            "/api/v1/pods",
            list("v1", "PodList", vec![serde_json::to_value(&pod).unwrap()]),
        ),
        (
            "/api/v1/nodes",
            list("v1", "NodeList", vec![serde_json::to_value(&node).unwrap()]),
        ),
    ]
}

fn ok(v: Value) -> Response<Body> {
    Response::builder()
        .body(Body::from(serde_json::to_vec(&v).unwrap()))
        .unwrap()
}

/// Serves the cluster; returns the writes (method and path) it saw.
fn serve(mut handle: Handle, lease_holder: &'static str) -> Arc<Mutex<Vec<String>>> {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let seen = writes.clone();
    tokio::spawn(async move {
        let lists = cluster();
        let mut open_watches = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let path = parts.uri.path().to_string();
            let query = parts.uri.query().unwrap_or_default().to_string();
            if parts.method == Method::GET && path.contains("/leases/") {
                let renewed = Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string();
                send.send_response(ok(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "weft-operator", "namespace": "weft-system", "resourceVersion": "9"},
                    "spec": {"holderIdentity": lease_holder, "leaseDurationSeconds": 15, "renewTime": renewed},
                })));
                continue;
            }
            if parts.method == Method::GET {
                if query.contains("watch=true") {
                    open_watches.push(send); // nothing changes: keep it open
                    continue;
                }
                let (_, l) = lists
                    .iter()
                    .find(|(p, _)| *p == path)
                    .unwrap_or_else(|| panic!("unexpected GET {path}"));
                send.send_response(ok(l.clone()));
                continue;
            }
            let bytes = body.collect_bytes().await.unwrap();
            let mut obj: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.lock()
                .unwrap()
                .push(format!("{} {path}", parts.method));
            if path.contains("/meshapps/") {
                // Answer a status apply with a whole MeshApp.
                let mut app = lists[0].1["items"][0].clone();
                app["status"] = obj["status"].clone();
                obj = app;
            } else {
                obj["metadata"]["name"] = json!(path
                    .rsplit('/')
                    .nth(usize::from(path.ends_with("/status")))
                    .unwrap());
            }
            send.send_response(ok(obj));
        }
    });
    writes
}

fn config(lease: Option<LeaseConfig>) -> RunConfig {
    RunConfig {
        planner: PlannerConfig::default(),
        lease,
        resync: Duration::from_millis(100),
        debounce: Duration::from_millis(10),
        metrics: Default::default(),
        namespace: "weft-system".into(),
        hub_every: Duration::from_millis(100),
    }
}

async fn run_for(client: Client, cfg: RunConfig, d: Duration) {
    run(client, cfg, tokio::time::sleep(d)).await.unwrap();
}

#[tokio::test]
async fn a_follower_never_writes() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let writes = serve(handle, "someone-else");
    let mut lease = LeaseConfig::new("weft-system", "weft-operator", "me");
    lease.renew_every = Duration::from_millis(50);
    let cfg = config(Some(lease));
    let metrics = cfg.metrics.clone();
    run_for(Client::new(svc, "default"), cfg, Duration::from_millis(800)).await;
    assert_eq!(*writes.lock().unwrap(), Vec::<String>::new());
    let text = metrics.render();
    assert!(metrics.is_ready(), "caches filled");
    assert!(text.contains("weft_operator_leader 0"), "{text}");
    assert!(text.contains("weft_operator_reconciles_total 0"), "{text}");
}

#[tokio::test]
async fn the_leader_writes_the_meshnode_then_the_app_status() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let writes = serve(handle, "unused");
    run_for(
        Client::new(svc, "default"),
        config(None),
        Duration::from_millis(800),
    )
    .await;
    let writes = writes.lock().unwrap().clone();
    assert_eq!(
        writes[..2],
        [
            "PATCH /apis/weft.dev/v1alpha1/meshnodes/n1".to_string(),
            "PATCH /apis/weft.dev/v1alpha1/namespaces/demo/meshapps/web/status".to_string(),
        ]
    );
}
