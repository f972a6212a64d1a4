//! The metrics plumbing shared by the operator and the node daemon: the
//! exposition is [`prometheus_client`]'s (the Prometheus project's own Rust
//! client), the `/metrics`, `/healthz` and `/readyz` responder is [`hyper`]'s
//! HTTP/1.1 server. Each binary keeps its metrics in a [`Registry`] and
//! implements [`Endpoints`] over it.
//!
//! Why these and not hand-written code: the text format has escaping and
//! naming rules (`_total`, `le` values as Go writes them) that the maintained
//! encoder gets right, and hyper was already in both binaries through kube's
//! client, so the responder costs a feature flag, not a new HTTP stack.
//!
//! The exposition is the classic Prometheus text format 0.0.4
//! ([`CONTENT_TYPE`]), which every scraper reads; families with no sample
//! (no app yet, no error yet) are left out. The responder answers one
//! request per connection and closes it (scrapes and probes do not reuse
//! connections; simple clients read to the end of the stream).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpListener;

pub use prometheus_client;
pub use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the reconcile duration histograms.
pub const DURATION_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// `Content-Type` of `/metrics`: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How long one connection may take (request and answer) before it is dropped.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// A histogram over [`DURATION_BUCKETS`].
pub fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug
    // in a collector, and a partial exposition is still worth serving.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "metrics exposition incomplete");
    }
    out
}

/// Writes one family of already-known values from a collector (figures read
/// from elsewhere at scrape time, e.g. [`ConstGauge`]s per app); a family
/// with no sample is left out, as the registry does. A counter's `name` is
/// given without `_total` (the encoder adds it).
///
/// [`ConstGauge`]: prometheus_client::metrics::gauge::ConstGauge
pub fn const_family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet,
    M: EncodeMetric,
{
    let mut samples = samples.into_iter().peekable();
    let Some(kind) = samples.peek().map(|(_, m)| m.metric_type()) else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        debug_assert!(metric.metric_type() == kind);
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// What the endpoints serve.
pub trait Endpoints: Send + Sync + 'static {
    /// The `/metrics` body.
    fn render(&self) -> String;
    /// Whether `/readyz` answers 200.
    fn is_ready(&self) -> bool;
    /// The `/readyz` body while not ready.
    fn not_ready_reason(&self) -> &'static str {
        "not ready\n"
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    r
}

/// The answer to one request.
fn respond<E: Endpoints>(endpoints: &E, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET\n".to_string(),
        );
    }
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, CONTENT_TYPE, endpoints.render()),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".to_string()),
        "/readyz" if endpoints.is_ready() => text(StatusCode::OK, PLAIN, "ready\n".to_string()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            endpoints.not_ready_reason().to_string(),
        ),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".to_string()),
    }
}

/// Serves the endpoints on `listener` until `shutdown` resolves, on the
/// current tokio runtime (one task per connection).
pub async fn serve<E: Endpoints>(
    listener: TcpListener,
    endpoints: Arc<E>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let endpoints = endpoints.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let answer = respond(&*endpoints, &req);
                            async move { Ok::<_, Infallible>(answer) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service);
                        let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    // E.g. out of file descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::{ConstCounter, Counter};
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::ConstGauge;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[derive(Debug)]
    struct Peers;

    impl prometheus_client::collector::Collector for Peers {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            const_family(
                &mut encoder,
                "x_peer_bytes",
                "Bytes.",
                [([("peer", "a\"b")], ConstCounter::new(5u64))],
            )?;
            const_family(
                &mut encoder,
                "x_up",
                "Up.",
                Vec::<([(&str, &str); 1], ConstGauge<u64>)>::new(),
            )
        }
    }

    #[test]
    fn the_exposition_is_prometheus_text_with_escaped_labels_and_go_style_buckets() {
        let mut r = Registry::default();
        let c = Family::<[(&'static str, &'static str); 1], Counter>::default();
        r.register("x", "X counted", c.clone());
        c.get_or_create(&[("a", "q\"b\\c\nd")]).inc_by(3);
        let empty = Family::<[(&'static str, &'static str); 1], Counter>::default();
        r.register("never", "Never counted", empty);
        let h = duration_histogram();
        r.register("d_seconds", "D", h.clone());
        h.observe(0.020);
        h.observe(10.0);
        r.register_collector(Box::new(Peers));
        let out = encode(&r);
        for line in [
            "# HELP x_total X counted.\n",
            "# TYPE x_total counter\n",
            "x_total{a=\"q\\\"b\\\\c\\nd\"} 3\n",
            "# TYPE d_seconds histogram\n",
            "d_seconds_bucket{le=\"0.025\"} 1\n",
            "d_seconds_bucket{le=\"1\"} 1\n",
            "d_seconds_bucket{le=\"5\"} 1\n",
            "d_seconds_bucket{le=\"+Inf\"} 2\n",
            "d_seconds_sum 10.02\n",
            "d_seconds_count 2\n",
            "# HELP x_peer_bytes_total Bytes.\n",
            "# TYPE x_peer_bytes_total counter\n",
            "x_peer_bytes_total{peer=\"a\\\"b\"} 5\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert!(!out.contains("never"), "empty families are left out: {out}");
        assert!(!out.contains("x_up"), "{out}");
        assert!(!out.contains("# EOF"), "0.0.4, not OpenMetrics: {out}");
    }

    struct Fixed(std::sync::atomic::AtomicBool);

    impl Endpoints for Fixed {
        fn render(&self) -> String {
            "x_total 1\n".into()
        }
        fn is_ready(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
        fn not_ready_reason(&self) -> &'static str {
            "waiting\n"
        }
    }

    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        // Reads to the end: the server closes after one answer.
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("the server closes the connection")
            .unwrap();
        out
    }

    #[tokio::test]
    async fn answers_once_per_connection_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let e = Arc::new(Fixed(false.into()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, e.clone(), async {
            let _ = stopped.await;
        }));
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");

        let m = exchange(addr, &get("/metrics")).await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        let head = m.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(
            head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        assert!(m.ends_with("\r\n\r\nx_total 1\n"), "{m}");
        let r = exchange(addr, &get("/readyz")).await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.ends_with("waiting\n"),
            "{r}"
        );
        e.0.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(exchange(addr, &get("/readyz"))
            .await
            .starts_with("HTTP/1.1 200"));
        assert!(exchange(addr, &get("/healthz")).await.ends_with("ok\n"));
        assert!(exchange(addr, &get("/nope"))
            .await
            .starts_with("HTTP/1.1 404"));
        let post = "POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";
        assert!(exchange(addr, post).await.starts_with("HTTP/1.1 405"));
        assert!(exchange(addr, "garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400"));

        let _ = stop.send(());
        server.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener closes with the server"
        );
    }
}
