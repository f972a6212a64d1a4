//! The daemon's view of the API: a watch on its own MeshNode (by name, so it
//! never lists other nodes') and server-side apply of that MeshNode's status.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::json;
use tokio::task::JoinHandle;
use weft_api::labels::{DAEMON_MANAGER, SITE_LABEL};
use weft_api::{MeshNode, MeshNodeStatus};

use super::Transport;
use crate::kubeapi::retrying_watcher;
use crate::storage;

/// The field selector that restricts the watch to one MeshNode.
pub fn own_meshnode_selector(node: &str) -> String {
    format!("metadata.name={node}")
}

/// The body of the status apply: identity and status only.
pub fn status_apply_body(status: &MeshNodeStatus) -> serde_json::Value {
    json!({
        "apiVersion": MeshNode::api_version(&()),
        "kind": MeshNode::kind(&()),
        "status": status,
    })
}

/// The body that registers an edge host as a MeshNode of `site`: identity,
/// the site label and `spec.site`, nothing the operator plans.
pub fn registration_body(node: &str, site: &str) -> serde_json::Value {
    json!({
        "apiVersion": MeshNode::api_version(&()),
        "kind": MeshNode::kind(&()),
        "metadata": {"name": node, "labels": {SITE_LABEL: site}},
        "spec": {"site": site},
    })
}

/// How often a failed registration is retried.
const REGISTER_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest the loop waits for a status write or a registration: the client
/// sets no read timeout, so a server that accepted the request and went
/// silent would otherwise hold up every pass (and data plane repairs) too.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `fut`, or an error once [`WRITE_TIMEOUT`] has passed.
async fn within_write_timeout<T>(
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(WRITE_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("no answer from the API server within {WRITE_TIMEOUT:?}"),
    }
}

/// Watches one MeshNode and writes its status.
pub struct KubeTransport {
    node: String,
    /// Edge hosts (no Kubernetes Node) create their own MeshNode of this site.
    register_site: Option<String>,
    last_register: Option<std::time::Instant>,
    api: Api<MeshNode>,
    store: Store<MeshNode>,
    watch: JoinHandle<()>,
    wake: crate::wake::Wake,
    cache_path: PathBuf,
    last_good: Option<MeshNode>,
    rt: tokio::runtime::Handle,
}

impl KubeTransport {
    /// Starts the watch on `rt`; the last good spec cached under `data_dir`
    /// is served until the API answers (so a restart during an API outage
    /// keeps the data plane).
    pub fn start(client: Client, node: &str, data_dir: &Path, rt: &tokio::runtime::Handle) -> Self {
        let api: Api<MeshNode> = Api::all(client);
        let (store, writer) = reflector::store();
        let stream = retrying_watcher(
            api.clone(),
            watcher::Config::default().fields(&own_meshnode_selector(node)),
        );
        let node_name = node.to_string();
        let wake = crate::wake::Wake::default();
        let woken = wake.clone();
        // A new spec (generation) wakes the loop; the daemon's own status
        // writes do not (they leave the generation as it is).
        let mut seen: Option<Option<i64>> = None;
        let watch = rt.spawn(reflector::reflector(writer, stream).for_each(move |ev| {
            match ev {
                Err(e) => {
                    tracing::warn!(node = %node_name, error = %e, "MeshNode watch failed; retrying with backoff");
                }
                Ok(watcher::Event::Apply(mn) | watcher::Event::InitApply(mn)) => {
                    if seen != Some(mn.metadata.generation) {
                        seen = Some(mn.metadata.generation);
                        woken.set();
                    }
                }
                Ok(watcher::Event::Delete(_)) => {
                    seen = None;
                    woken.set();
                }
                Ok(_) => {}
            }
            std::future::ready(())
        }));
        let cache_path = data_dir.join("last-meshnode.json");
        let last_good = storage::read_json(&cache_path).ok().flatten();
        KubeTransport {
            node: node.into(),
            register_site: None,
            last_register: None,
            api,
            store,
            watch,
            cache_path,
            last_good,
            rt: rt.clone(),
            wake,
        }
    }

    /// Set when the watched MeshNode's spec changes: hand it to the loop.
    pub fn wake(&self) -> crate::wake::Wake {
        self.wake.clone()
    }

    /// Makes this daemon register its node as a MeshNode of `site` while
    /// the API has none (an edge host: no Kubernetes Node, so the operator
    /// would never plan it otherwise).
    pub fn register_as(mut self, site: &str) -> Self {
        self.register_site = Some(site.to_string());
        self
    }

    /// Server-side applies [`registration_body`] as `weft-node-daemon`
    /// (no force: the operator owns the rest of the spec). Creating the
    /// object needs `create` on meshnodes; config/edge grants exactly that.
    pub async fn register(&self, site: &str) -> Result<(), kube::Error> {
        self.api
            .patch(
                &self.node,
                &PatchParams::apply(DAEMON_MANAGER),
                &Patch::Apply(&registration_body(&self.node, site)),
            )
            .await
            .map(|_| ())
    }

    /// Registers when due: only for edge hosts, only while the watch has no
    /// MeshNode, at most every [`REGISTER_RETRY`].
    fn register_if_due(&mut self) {
        let Some(site) = self.register_site.clone() else {
            return;
        };
        if self.exists()
            || self
                .last_register
                .is_some_and(|t| t.elapsed() < REGISTER_RETRY)
        {
            return;
        }
        self.last_register = Some(std::time::Instant::now());
        let rt = self.rt.clone();
        match rt.block_on(within_write_timeout(self.register(&site))) {
            Ok(()) => tracing::info!(node = %self.node, %site, "registered as a MeshNode"),
            Err(e) => {
                tracing::warn!(node = %self.node, %site, error = %e, "cannot register as a MeshNode; retrying")
            }
        }
    }

    fn current(&self) -> Option<MeshNode> {
        self.store
            .get(&ObjectRef::new(&self.node))
            .map(|m| (*m).clone())
    }

    /// Whether the API currently has this node's MeshNode.
    pub fn exists(&self) -> bool {
        self.current().is_some()
    }

    /// The desired MeshNode: the watched object, else the last good one.
    pub fn read_spec(&mut self) -> Option<MeshNode> {
        if let Some(mn) = self.current() {
            let same = self.last_good.as_ref().is_some_and(|g| {
                g.metadata.generation == mn.metadata.generation && g.spec == mn.spec
            });
            if !same {
                let mut cached = mn.clone();
                cached.status = None;
                cached.metadata.managed_fields = None;
                if let Err(e) = storage::write_json_private(&self.cache_path, &cached) {
                    tracing::warn!(error = %e, "cannot cache MeshNode spec");
                }
                self.last_good = Some(cached);
            }
        }
        self.last_good.clone()
    }

    /// Server-side applies the status subresource as `weft-node-daemon`.
    pub async fn publish_status(&self, status: &MeshNodeStatus) -> Result<(), kube::Error> {
        self.api
            .patch_status(
                &self.node,
                &PatchParams::apply(DAEMON_MANAGER).force(),
                &Patch::Apply(&status_apply_body(status)),
            )
            .await
            .map(|_| ())
    }
}

/// The blocking side the shared loop uses: `write_status` waits for the
/// patch on the client runtime, so it must not be called from a tokio worker.
impl Transport for KubeTransport {
    fn mode(&self) -> &'static str {
        "kubernetes"
    }
    fn read_spec(&mut self) -> Option<MeshNode> {
        self.register_if_due();
        KubeTransport::read_spec(self)
    }
    /// Status can only be written once the operator created the MeshNode.
    fn can_write_status(&self) -> bool {
        self.exists()
    }
    fn write_status(&mut self, status: &MeshNodeStatus) -> anyhow::Result<()> {
        let rt = self.rt.clone();
        rt.block_on(within_write_timeout(self.publish_status(status)))
    }
}

impl Drop for KubeTransport {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Method, Request, Response};
    use kube::client::Body;
    use weft_api::{AppStatus, MeshNodeSpec};

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn meshnode(name: &str, generation: i64) -> MeshNode {
        let mut mn = MeshNode::new(
            name,
            MeshNodeSpec {
                site: "local".into(),
                apps: vec![],
            },
        );
        mn.metadata.generation = Some(generation);
        mn.metadata.resource_version = Some("7".into());
        mn
    }

    fn ok(v: serde_json::Value) -> Response<Body> {
        Response::builder()
            .body(Body::from(serde_json::to_vec(&v).unwrap()))
            .unwrap()
    }

    /// Answers the watcher's initial list with `items`; watch requests are
    /// left hanging (nothing changes). Returns every other request.
    async fn serve_until_other(
        handle: &mut Handle,
        items: &[MeshNode],
    ) -> (
        http::request::Parts,
        serde_json::Value,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        loop {
            let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                .await
                .expect("no request within 5 s")
                .expect("client dropped");
            let (parts, body) = req.into_parts();
            let query = parts.uri.query().unwrap_or_default().to_string();
            if parts.method == Method::GET
                && parts.uri.path() == "/apis/weft.dev/v1alpha1/meshnodes"
            {
                assert!(
                    query.contains("fieldSelector=metadata.name%3Dn1"),
                    "the daemon must watch only its own MeshNode: {query}"
                );
                if query.contains("watch=true") {
                    std::mem::forget(send); // keep the watch open, quietly
                    continue;
                }
                send.send_response(ok(json!({
                    "apiVersion": "weft.dev/v1alpha1",
                    "kind": "MeshNodeList",
                    "metadata": {"resourceVersion": "7"},
                    "items": items,
                })));
                continue;
            }
            let bytes = body.collect_bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            return (parts, body, send);
        }
    }

    #[tokio::test]
    async fn watches_only_its_own_meshnode_and_caches_the_spec_privately() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let mut t =
            KubeTransport::start(client, "n1", dir.path(), &tokio::runtime::Handle::current());
        let server = tokio::spawn(async move {
            let _ = serve_until_other(&mut handle, &[meshnode("n1", 3)]).await;
        });
        let mut spec = None;
        for _ in 0..100 {
            spec = t.read_spec();
            if spec.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let spec = spec.expect("the watched MeshNode is served");
        assert_eq!(spec.metadata.generation, Some(3));
        assert!(t.exists());
        // Its arrival asked the loop for a pass; nothing since.
        assert!(t.wake().take(), "a new spec wakes the loop");
        assert!(!t.wake().take());
        let cache = dir.path().join("last-meshnode.json");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
            0o600
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_restart_without_the_api_serves_the_cached_spec() {
        let dir = tempfile::tempdir().unwrap();
        storage::write_json_private(&dir.path().join("last-meshnode.json"), &meshnode("n1", 5))
            .unwrap();
        let (svc, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut t = KubeTransport::start(
            Client::new(svc, "default"),
            "n1",
            dir.path(),
            &tokio::runtime::Handle::current(),
        );
        assert_eq!(t.read_spec().unwrap().metadata.generation, Some(5));
        assert!(!t.exists(), "the API has not answered");
    }

    #[tokio::test]
    async fn status_goes_to_the_status_subresource_as_weft_node_daemon_only() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let t = KubeTransport::start(
            Client::new(svc, "default"),
            "n1",
            dir.path(),
            &tokio::runtime::Handle::current(),
        );
        let status = MeshNodeStatus {
            apps: vec![AppStatus {
                app: "demo/web".into(),
                public_key: "PUB".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let server = tokio::spawn(async move {
            let (parts, body, send) = serve_until_other(&mut handle, &[meshnode("n1", 1)]).await;
            send.send_response(ok(serde_json::to_value(meshnode("n1", 1)).unwrap()));
            (parts, body)
        });
        t.publish_status(&status).await.unwrap();
        let (parts, body) = server.await.unwrap();
        assert_eq!(parts.method, Method::PATCH);
        assert_eq!(
            parts.uri.path(),
            "/apis/weft.dev/v1alpha1/meshnodes/n1/status"
        );
        let query = parts.uri.query().unwrap();
        assert!(
            query.contains("fieldManager=weft-node-daemon") && query.contains("force=true"),
            "{query}"
        );
        assert_eq!(
            parts.headers.get(http::header::CONTENT_TYPE).unwrap(),
            "application/apply-patch+yaml"
        );
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["apiVersion", "kind", "status"]);
        assert_eq!(body["status"]["apps"][0]["publicKey"], "PUB");
        assert!(
            !body.to_string().contains("private"),
            "no private key ever leaves the node"
        );
    }

    #[tokio::test]
    async fn an_edge_host_registers_its_meshnode_with_only_its_site() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let t = KubeTransport::start(
            Client::new(svc, "default"),
            "n1",
            dir.path(),
            &tokio::runtime::Handle::current(),
        )
        .register_as("edge");
        let server = tokio::spawn(async move {
            let (parts, body, send) = serve_until_other(&mut handle, &[]).await;
            send.send_response(ok(serde_json::to_value(meshnode("n1", 1)).unwrap()));
            (parts, body)
        });
        t.register("edge").await.unwrap();
        let (parts, body) = server.await.unwrap();
        assert_eq!(parts.method, Method::PATCH);
        assert_eq!(parts.uri.path(), "/apis/weft.dev/v1alpha1/meshnodes/n1");
        let query = parts.uri.query().unwrap();
        assert!(
            query.contains("fieldManager=weft-node-daemon") && !query.contains("force"),
            "the operator keeps ownership of what it plans: {query}"
        );
        assert_eq!(body["metadata"]["labels"]["weft.dev/site"], "edge");
        assert_eq!(body["spec"], json!({"site": "edge"}), "no apps, no keys");
        assert!(body.get("status").is_none());
    }

    /// A server that took the request and went silent costs the loop one
    /// [`WRITE_TIMEOUT`], not a pass stalled for good. Paused time.
    #[tokio::test(start_paused = true)]
    async fn a_silent_server_holds_a_write_for_at_most_the_write_timeout() {
        let started = tokio::time::Instant::now();
        let r = within_write_timeout(std::future::pending::<Result<(), kube::Error>>()).await;
        let err = r.expect_err("a write that never answers fails");
        assert!(err.to_string().contains("no answer"), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= WRITE_TIMEOUT && waited < WRITE_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    /// The next request, and whether it is a watch.
    async fn next_request(
        handle: &mut Handle,
    ) -> (bool, tower_test::mock::SendResponse<Response<Body>>) {
        let (req, send) = handle.next_request().await.expect("client dropped");
        let watch = req.uri().query().unwrap_or_default().contains("watch=true");
        (watch, send)
    }

    /// The API goes away for a minute (every request answered 503), then
    /// comes back without the watch's resourceVersion (410). The daemon's
    /// MeshNode watch keeps trying, at most [`API_RETRY`]`.max` apart, and
    /// has listed again within that cap of the server's return (with
    /// kube-runtime's default backoff this took up to a minute). Paused
    /// (virtual) time: exact, and no real waiting.
    #[tokio::test(start_paused = true)]
    async fn after_an_api_outage_the_meshnode_watch_lists_again_within_the_backoff_cap() {
        use tokio::time::Instant;
        use weft_api::backoff::API_RETRY;
        let dir = tempfile::tempdir().unwrap();
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let t = KubeTransport::start(
            Client::new(svc, "default"),
            "n1",
            dir.path(),
            &tokio::runtime::Handle::current(),
        );
        let outage = Duration::from_secs(60);
        let list = |mn: MeshNode, rv: &str| {
            ok(
                json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshNodeList",
                      "metadata": {"resourceVersion": rv}, "items": [mn]}),
            )
        };
        let server = tokio::spawn(async move {
            let (watch, send) = next_request(&mut handle).await;
            assert!(!watch);
            send.send_response(list(meshnode("n1", 1), "7"));
            // The server goes down: the open watch ends.
            let (watch, send) = next_request(&mut handle).await;
            assert!(watch);
            send.send_response(Response::new(Body::empty()));
            let down = Instant::now();
            let mut attempts = Vec::new();
            let send = loop {
                let (watch, send) = next_request(&mut handle).await;
                if down.elapsed() >= outage {
                    assert!(watch, "resumes from its resourceVersion");
                    break send;
                }
                attempts.push(Instant::now());
                let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "ServiceUnavailable", "code": 503, "message": "down"});
                send.send_response(
                    Response::builder()
                        .status(503)
                        .body(Body::from(unavailable.to_string().into_bytes()))
                        .unwrap(),
                );
            };
            // Back, but restarted: that resourceVersion is gone.
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version"}});
            send.send_response(ok(gone));
            let (watch, send) = next_request(&mut handle).await;
            assert!(!watch, "a 410 is answered with a list");
            let listed = Instant::now();
            send.send_response(list(meshnode("n1", 2), "20"));
            (down, attempts, listed)
        });
        let (down, attempts, listed) = server.await.unwrap();
        let recovered_after = listed - (down + outage);
        assert!(
            recovered_after <= API_RETRY.max,
            "listed {recovered_after:?} after the server came back"
        );
        for gap in attempts.windows(2).map(|w| w[1] - w[0]) {
            assert!(gap <= API_RETRY.max, "{gap:?} between retries");
        }
        // Paced, not hammering: the capped delay is at least half the cap.
        let most = 60 / (API_RETRY.max.as_secs() / 2) as usize + 10;
        assert!(
            (15..=most).contains(&attempts.len()),
            "{} retries in a minute",
            attempts.len()
        );
        let mut generation = None;
        for _ in 0..100 {
            generation = t.current().and_then(|m| m.metadata.generation);
            if generation == Some(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(generation, Some(2), "the store holds the relisted MeshNode");
    }
}
