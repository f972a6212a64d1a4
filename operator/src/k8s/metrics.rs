//! Prometheus metrics and health endpoints of the Kubernetes operator, on a
//! deliberately tiny HTTP/1.1 responder (three GET paths, no keep-alive).
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | text exposition format 0.0.4 |
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once the caches are filled, 503 before |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::error::Error;
use super::reconcile::ReconcileReport;

/// Upper bounds (seconds) of the reconcile duration histogram.
pub const DURATION_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Counters and gauges of the operator.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_micros: AtomicU64,
    meshnode_writes: AtomicU64,
    status_writes: AtomicU64,
    plan_errors: AtomicU64,
    peers_up: AtomicU64,
    peers_total: AtomicU64,
    leader: AtomicBool,
    ready: AtomicBool,
}

impl Metrics {
    /// Records one reconcile pass.
    pub fn observe_pass(&self, took: Duration, result: Result<&ReconcileReport, &Error>) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match result {
            Ok(r) => {
                let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
                self.meshnode_writes
                    .fetch_add(n(r.meshnode_writes.len()), Ordering::Relaxed);
                self.status_writes
                    .fetch_add(n(r.status_writes.len()), Ordering::Relaxed);
                self.plan_errors.store(n(r.errors.len()), Ordering::Relaxed);
                self.peers_up
                    .store(u64::from(r.peers_up), Ordering::Relaxed);
                self.peers_total
                    .store(u64::from(r.peers_total), Ordering::Relaxed);
            }
            Err(e) => {
                if let Ok(mut m) = self.errors.lock() {
                    *m.entry(e.metric_label()).or_default() += 1;
                }
            }
        }
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.store(leading, Ordering::Relaxed);
    }

    /// Whether the caches are filled.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Ready for `/readyz`.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            "weft_operator_reconciles_total",
            "Reconcile passes run.",
            "counter",
            get(&self.reconciles),
        );
        counter(
            "weft_operator_meshnode_writes_total",
            "MeshNode specs applied.",
            "counter",
            get(&self.meshnode_writes),
        );
        counter(
            "weft_operator_status_writes_total",
            "Status subresource patches of MeshApp/MeshPolicy/MeshSite.",
            "counter",
            get(&self.status_writes),
        );
        counter(
            "weft_operator_plan_errors",
            "Bad-input problems in the last plan.",
            "gauge",
            get(&self.plan_errors),
        );
        counter(
            "weft_operator_peers_up",
            "Peer links with a recent handshake, over all apps.",
            "gauge",
            get(&self.peers_up),
        );
        counter(
            "weft_operator_peers_total",
            "Peer links planned, over all apps.",
            "gauge",
            get(&self.peers_total),
        );
        counter(
            "weft_operator_leader",
            "1 while this replica holds the leader Lease.",
            "gauge",
            u64::from(self.leader.load(Ordering::Relaxed)),
        );
        let _ = writeln!(
            out,
            "# HELP weft_operator_reconcile_errors_total Failed passes by reason.\n# TYPE weft_operator_reconcile_errors_total counter"
        );
        if let Ok(m) = self.errors.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "weft_operator_reconcile_errors_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        let name = "weft_operator_reconcile_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of reconcile passes.\n# TYPE {name} histogram"
        );
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                get(&self.buckets[i])
            );
        }
        let count = get(&self.duration_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = get(&self.duration_sum_micros) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
        out
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") if metrics.is_ready() => ("200 OK", "text/plain", "ready\n".to_string()),
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "caches not filled yet\n".to_string(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

/// Serves the endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &metrics)).await;
                    });
                }
                Err(e) => tracing::warn!(error = %e, "metrics listener accept failed"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_and_errors_show_up_with_units_and_reasons() {
        let m = Metrics::default();
        let report = ReconcileReport {
            meshnode_writes: vec!["n1".into(), "n2".into()],
            peers_up: 1,
            peers_total: 3,
            ..Default::default()
        };
        m.observe_pass(Duration::from_millis(20), Ok(&report));
        let err = Error::Serialize {
            what: "x".into(),
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        m.observe_pass(Duration::from_millis(700), Err(&err));
        m.set_leader(true);
        let text = m.render();
        assert!(text.contains("weft_operator_reconciles_total 2"), "{text}");
        assert!(text.contains("weft_operator_meshnode_writes_total 2"));
        assert!(text.contains("weft_operator_reconcile_errors_total{reason=\"serialize\"} 1"));
        assert!(text.contains("weft_operator_reconcile_duration_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("weft_operator_reconcile_duration_seconds_bucket{le=\"1\"} 2"));
        assert!(text.contains("weft_operator_reconcile_duration_seconds_count 2"));
        assert!(text.contains("weft_operator_peers_up 1"));
        assert!(text.contains("weft_operator_leader 1"));
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn healthz_readyz_and_metrics_answer_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics.clone(), async {
            let _ = stop_rx.await;
        }));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        metrics.set_ready(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/metrics")
            .await
            .contains("weft_operator_reconciles_total 0"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        let _ = stop_tx.send(());
        server.await.unwrap();
    }
}
