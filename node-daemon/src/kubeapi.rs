//! The daemon's access to the Kubernetes API, shared by the MeshNode
//! transport ([`crate::desired::kube`]) and the pod and MeshApp watches
//! ([`crate::workloads::pods`]): the client ([`client`]) and the watches.
//!
//! Every watch of the daemon goes through [`retrying_watcher`]: kube-runtime's
//! watcher with Weft's retry policy ([`API_RETRY`], 250 ms doubling to a 4 s
//! cap, jittered) instead of kube-runtime's default (800 ms to 30 s, which
//! after a one-minute API outage left pods waiting a minute for their
//! attachment), and an immediate relist when the API says the watch expired.
//!
//! ```text
//!  watcher ─► 410: a new watcher (a fresh list) at once
//!          ─► other error: passed on, then a pause of the next delay
//!          ─► data (list or change): passed on, delays start over
//! ```
//!
//! The operator has the same code in `operator/src/k8s/watch.rs` (both
//! crates need kube-runtime's types, which weft-api does not depend on);
//! the parameters live once, in [`weft_api::backoff`].

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{stream, Stream, StreamExt};
use kube::api::Api;
use kube::runtime::watcher::{self, watcher, Event};
use kube::Resource;
use serde::de::DeserializeOwned;
use weft_api::backoff::{Exponential, Policy, API_RETRY};

/// A delay sequence of its own: seeded from the clock, the process and a
/// counter, so watches and daemons do not retry in step.
pub fn delays(policy: Policy) -> Exponential {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Exponential::new(policy, seed)
}

/// Whether the API answered 410 Gone/Expired: the resourceVersion the
/// watcher resumes from is no longer served, and only a new list helps.
pub fn is_expired(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
    }
}

type Inner<K> = Pin<Box<dyn Stream<Item = watcher::Result<Event<K>>> + Send>>;

struct Retrying<K, F> {
    start: F,
    inner: Inner<K>,
    delays: Exponential,
    /// Sleep this long before polling again (set after an error).
    pause: Option<Duration>,
    /// A 410 was answered with a new watcher and nothing came since.
    expired: bool,
}

/// The stream of `start()` with Weft's retry behaviour; see the module
/// documentation. Instead of kube-runtime's `StreamBackoff`, because that
/// starts its delays over on every `Ok` item, and the watcher yields
/// `Event::Init` before each list attempt: while lists fail (an API server
/// answering 503) the delay never grew past the first step.
///
/// On a 410, kube-runtime 5.0's watcher (the version in Cargo.lock) does go
/// back to a fresh list after an ERROR event, but yields the error first, so
/// a backoff after it waited before that list; and a 410 on the watch
/// request itself (`WatchStartFailed`) kept it retrying the same, expired
/// resourceVersion. A new watcher starts with a list either way. A second
/// 410 with no data since is passed on and paced like any other error.
pub fn retrying<K, S, F>(
    start: F,
    delays: Exponential,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Send + 'static,
    S: Stream<Item = watcher::Result<Event<K>>> + Send + 'static,
    F: Fn() -> S + Send + 'static,
{
    let inner: Inner<K> = Box::pin(start());
    let state = Retrying {
        start,
        inner,
        delays,
        pause: None,
        expired: false,
    };
    stream::unfold(state, |mut st| async move {
        if let Some(pause) = st.pause.take() {
            tokio::time::sleep(pause).await;
        }
        loop {
            match st.inner.next().await? {
                Err(e) if is_expired(&e) && !st.expired => {
                    tracing::debug!(error = %e, "watch expired; listing again now");
                    st.inner = Box::pin((st.start)());
                    st.expired = true;
                }
                Err(e) => {
                    if is_expired(&e) {
                        st.inner = Box::pin((st.start)());
                    }
                    st.pause = st.delays.next();
                    return Some((Err(e), st));
                }
                // Emitted before every list attempt: no sign of a healthy API.
                Ok(Event::Init) => return Some((Ok(Event::Init), st)),
                Ok(event) => {
                    st.delays.reset();
                    st.expired = false;
                    return Some((Ok(event), st));
                }
            }
        }
    })
}

/// A watch of `api` with Weft's retry policy and relist on expiry.
pub fn retrying_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    retrying(
        move || watcher(api.clone(), config.clone()),
        delays(API_RETRY),
    )
}

/// A client for the configured API server (in-cluster or KUBECONFIG)
/// without kube-client's built-in retry of 429/503/504 answers. That layer
/// (kube-client 5.0) retries one request up to 15 times, from 5 ms doubling
/// to a 1000 s cap, so while a restarting API server answers 503 a single
/// list, watch or write could stay pending for minutes, well past the
/// server's return. Errors surface at once instead, and Weft's own
/// backoffs ([`weft_api::backoff::API_RETRY`]) pace the retries.
pub async fn client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests {

    use http::{Request, Response};
    use k8s_openapi::api::core::v1::Pod;
    use kube::client::Body;
    use kube::Client;
    use serde_json::json;

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn reply(code: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn status(code: u16, reason: &str) -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": reason, "code": code, "message": reason})
    }

    fn pod_list(rv: &str, names: &[&str]) -> serde_json::Value {
        let items: Vec<_> = names
            .iter()
            .map(|n| {
                json!({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": n, "namespace": "demo", "resourceVersion": rv}})
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": rv}, "items": items})
    }

    async fn next(handle: &mut Handle) -> (bool, tower_test::mock::SendResponse<Response<Body>>) {
        let (req, send) = handle.next_request().await.expect("client dropped");
        let watch = req.uri().query().unwrap_or_default().contains("watch=true");
        (watch, send)
    }

    /// The watch request itself answered 410 (not an ERROR event): the
    /// watcher alone would retry the same resourceVersion for ever; here the
    /// very next request is a list, with no backoff before it. Paused
    /// (virtual) time, so "no backoff" is exact, not a race.
    #[tokio::test(start_paused = true)]
    async fn a_watch_refused_with_410_lists_again_at_once() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Pod> = Api::all(Client::new(svc, "default"));
        let mut events = Box::pin(retrying_watcher(api, watcher::Config::default()));
        let server = tokio::spawn(async move {
            let (watch, send) = next(&mut handle).await;
            assert!(!watch, "a list first");
            send.send_response(reply(200, pod_list("5", &["a"])));
            let (watch, send) = next(&mut handle).await;
            assert!(watch);
            send.send_response(reply(410, status(410, "Expired")));
            let refused = tokio::time::Instant::now();
            let (watch, send) = next(&mut handle).await;
            assert!(!watch, "a 410 is answered with a list");
            let waited = refused.elapsed();
            send.send_response(reply(200, pod_list("9", &["a", "b"])));
            waited
        });
        let mut lists = 0;
        while lists < 2 {
            match events.next().await.unwrap() {
                Ok(Event::InitDone) => lists += 1,
                Ok(_) => {}
                Err(e) => panic!("the 410 must not surface: {e}"),
            }
        }
        let waited = server.await.unwrap();
        assert!(waited < API_RETRY.min / 2, "relisted after {waited:?}");
    }

    /// The API answers every list 503 for a minute (a server that is up but
    /// not ready). The watcher yields `Event::Init` before each attempt; the
    /// delays must grow to the cap all the same (kube-runtime's
    /// `StreamBackoff` started over on it and retried at the floor), and the
    /// first list after the outage comes within the cap. Paused time.
    #[tokio::test(start_paused = true)]
    async fn while_lists_fail_the_delays_grow_to_the_cap_and_recovery_comes_within_it() {
        use tokio::time::Instant;
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Pod> = Api::all(Client::new(svc, "default"));
        let mut events = Box::pin(retrying_watcher(api, watcher::Config::default()));
        let outage = Duration::from_secs(60);
        let server = tokio::spawn(async move {
            let down = Instant::now();
            let mut attempts = Vec::new();
            let send = loop {
                let (watch, send) = next(&mut handle).await;
                assert!(!watch, "nothing to watch before a list succeeded");
                if down.elapsed() >= outage {
                    break send;
                }
                attempts.push(Instant::now());
                send.send_response(reply(503, status(503, "ServiceUnavailable")));
            };
            let listed = Instant::now();
            send.send_response(reply(200, pod_list("3", &["a"])));
            (down, attempts, listed)
        });
        loop {
            match events.next().await.unwrap() {
                Ok(Event::InitDone) => break,
                Ok(_) => {}
                Err(e) => assert!(!is_expired(&e)),
            }
        }
        let (down, attempts, listed) = server.await.unwrap();
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g <= API_RETRY.max), "{gaps:?}");
        assert!(
            gaps[gaps.len() - 5..]
                .iter()
                .all(|g| *g >= API_RETRY.max / 2),
            "the delays reach the cap: {gaps:?}"
        );
        let recovered_after = listed - (down + outage);
        assert!(
            recovered_after <= API_RETRY.max,
            "listed {recovered_after:?} after the server came back"
        );
    }

    #[test]
    fn only_410_counts_as_expired() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(serde_json::from_value(status(code, "x")).unwrap()))
        };
        assert!(is_expired(&watcher::Error::WatchStartFailed(api(410))));
        assert!(is_expired(&watcher::Error::InitialListFailed(api(410))));
        assert!(!is_expired(&watcher::Error::WatchStartFailed(api(503))));
        assert!(!is_expired(&watcher::Error::NoResourceVersion));
    }
}
