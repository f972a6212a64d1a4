//! Leader election against a scripted fake API server: one round of
//! `try_acquire_or_renew` per scenario, each request checked and answered.

use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use weft_operator::k8s::lease::{LeaderElector, LeaseConfig};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/weft-system/leases/weft-operator";

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn micro(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn lease(holder: &str, renewed: Timestamp, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "weft-operator", "namespace": "weft-system", "resourceVersion": "41"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": micro(renewed),
            "acquireTime": micro(renewed),
            "leaseTransitions": transitions,
        }
    })
}

fn respond(status: u16, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&v).unwrap()))
        .unwrap()
}

fn not_found() -> Response<Body> {
    respond(
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn conflict() -> Response<Body> {
    respond(
        409,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
    )
}

struct Verifier(Handle);

impl Verifier {
    async fn next(
        &mut self,
    ) -> (
        Method,
        String,
        Value,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("no request within 5 s")
            .expect("client dropped before the expected request");
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.method, parts.uri.path().to_string(), body, send)
    }

    async fn lease_is_read(mut self, answer: Response<Body>) -> Self {
        let (method, path, _, send) = self.next().await;
        assert_eq!((method, path.as_str()), (Method::GET, PATH));
        send.send_response(answer);
        self
    }

    async fn lease_is_created_by(mut self, me: &str) -> Self {
        let (method, path, body, send) = self.next().await;
        assert_eq!(method, Method::POST);
        assert_eq!(
            path,
            "/apis/coordination.k8s.io/v1/namespaces/weft-system/leases"
        );
        assert_eq!(body["spec"]["holderIdentity"], me);
        send.send_response(respond(201, body));
        self
    }

    async fn lease_is_replaced(
        mut self,
        answer: impl FnOnce(&Value) -> Response<Body>,
    ) -> (Self, Value) {
        let (method, path, body, send) = self.next().await;
        assert_eq!((method, path.as_str()), (Method::PUT, PATH));
        assert_eq!(
            body["metadata"]["resourceVersion"], "41",
            "optimistic concurrency"
        );
        send.send_response(answer(&body));
        (self, body)
    }

    async fn no_more_requests(mut self) {
        if let Some((req, _)) = self.0.next_request().await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

async fn round<F, Fut>(me: &str, at: Timestamp, script: F) -> bool
where
    F: FnOnce(Verifier) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let elector = LeaderElector::new(
        Client::new(svc, "default"),
        LeaseConfig::new("weft-system", "weft-operator", me),
    );
    let task = tokio::spawn(async move { elector.try_acquire_or_renew(at).await });
    script(Verifier(handle)).await;
    task.await.unwrap().expect("election round failed")
}

#[tokio::test]
async fn the_first_replica_creates_the_lease_and_leads() {
    let leading = round("op-a", now(), |v| async move {
        v.lease_is_read(not_found())
            .await
            .lease_is_created_by("op-a")
            .await
            .no_more_requests()
            .await;
    })
    .await;
    assert!(leading);
}

#[tokio::test]
async fn a_fresh_lease_held_by_another_replica_is_left_alone() {
    let renewed = now() - SignedDuration::from_secs(5);
    let leading = round("op-b", now(), |v| async move {
        v.lease_is_read(respond(200, lease("op-a", renewed, 0)))
            .await
            .no_more_requests()
            .await;
    })
    .await;
    assert!(!leading, "followers never write");
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_without_manual_steps() {
    let renewed = now() - SignedDuration::from_secs(16);
    let leading = round("op-b", now(), |v| async move {
        let (v, body) = v
            .lease_is_read(respond(200, lease("op-a", renewed, 2)))
            .await
            .lease_is_replaced(|b| respond(200, b.clone()))
            .await;
        assert_eq!(body["spec"]["holderIdentity"], "op-b");
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        v.no_more_requests().await;
    })
    .await;
    assert!(leading);
}

#[tokio::test]
async fn the_holder_renews_its_lease() {
    let renewed = now() - SignedDuration::from_secs(5);
    let leading = round("op-a", now(), |v| async move {
        let (v, body) = v
            .lease_is_read(respond(200, lease("op-a", renewed, 1)))
            .await
            .lease_is_replaced(|b| respond(200, b.clone()))
            .await;
        assert_eq!(
            body["spec"]["leaseTransitions"], 1,
            "renewing is no transition"
        );
        assert_eq!(body["spec"]["renewTime"], micro(now()));
        v.no_more_requests().await;
    })
    .await;
    assert!(leading);
}

#[tokio::test]
async fn losing_the_race_for_an_expired_lease_means_following() {
    let renewed = now() - SignedDuration::from_secs(60);
    let leading = round("op-c", now(), |v| async move {
        let (v, _) = v
            .lease_is_read(respond(200, lease("op-a", renewed, 2)))
            .await
            .lease_is_replaced(|_| conflict())
            .await;
        v.no_more_requests().await;
    })
    .await;
    assert!(!leading);
}

#[tokio::test]
async fn a_leader_that_shuts_down_hands_the_lease_back() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let elector = LeaderElector::new(
        Client::new(svc, "default"),
        LeaseConfig::new("weft-system", "weft-operator", "op-a"),
    );
    let task = tokio::spawn(async move { elector.release().await });
    let (v, body) = Verifier(handle)
        .lease_is_read(respond(200, lease("op-a", now(), 1)))
        .await
        .lease_is_replaced(|b| respond(200, b.clone()))
        .await;
    assert!(
        body["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null),
        "{body}"
    );
    v.no_more_requests().await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_follower_that_shuts_down_leaves_the_lease_alone() {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let elector = LeaderElector::new(
        Client::new(svc, "default"),
        LeaseConfig::new("weft-system", "weft-operator", "op-b"),
    );
    let task = tokio::spawn(async move { elector.release().await });
    Verifier(handle)
        .lease_is_read(respond(200, lease("op-a", now(), 1)))
        .await
        .no_more_requests()
        .await;
    task.await.unwrap().unwrap();
}
