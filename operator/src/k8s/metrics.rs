//! Prometheus metrics and health endpoints of the Kubernetes operator, on the
//! tiny HTTP/1.1 responder of [`weft_metrics`] (shared with the
//! node daemon).
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | text exposition format 0.0.4 |
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once the caches are filled, 503 before |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::error::Error;
use super::reconcile::ReconcileReport;
pub use weft_metrics::{serve, DURATION_BUCKETS};
use weft_metrics::{Endpoints, Histogram};

/// Counters and gauges of the operator.
#[derive(Debug, Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    duration: Histogram,
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
        self.duration.observe(took);
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
        self.duration.render(
            &mut out,
            "weft_operator_reconcile_duration_seconds",
            "Duration of reconcile passes.",
        );
        out
    }
}

impl Endpoints for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
    fn is_ready(&self) -> bool {
        Metrics::is_ready(self)
    }
    fn not_ready_reason(&self) -> &'static str {
        "caches not filled yet\n"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

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
