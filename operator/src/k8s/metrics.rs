//! Prometheus metrics and health endpoints of the Kubernetes operator: a
//! `prometheus_client` registry served by the hyper responder of
//! [`weft_metrics`] (shared with the node daemon).
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | Prometheus text exposition format 0.0.4 |
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once the caches are filled, 503 before |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::error::Error;
use super::reconcile::ReconcileReport;
use weft_metrics::prometheus_client::metrics::counter::Counter;
use weft_metrics::prometheus_client::metrics::family::Family;
use weft_metrics::prometheus_client::metrics::gauge::Gauge;
use weft_metrics::prometheus_client::metrics::histogram::Histogram;
pub use weft_metrics::{serve, DURATION_BUCKETS};
use weft_metrics::{Endpoints, Registry};

/// A gauge of counts.
type Count = Gauge<u64, AtomicU64>;

/// Counters and gauges of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<[(&'static str, &'static str); 1], Counter>,
    duration: Histogram,
    meshnode_writes: Counter,
    status_writes: Counter,
    plan_errors: Count,
    peers_up: Count,
    peers_total: Count,
    leader: Count,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: weft_metrics::duration_histogram(),
            meshnode_writes: Counter::default(),
            status_writes: Counter::default(),
            plan_errors: Count::default(),
            peers_up: Count::default(),
            peers_total: Count::default(),
            leader: Count::default(),
            ready: AtomicBool::new(false),
        };
        let mut r = Registry::default();
        // Help texts without their final period: the registry adds it.
        r.register(
            "weft_operator_reconciles",
            "Reconcile passes run",
            m.reconciles.clone(),
        );
        r.register(
            "weft_operator_meshnode_writes",
            "MeshNode specs applied",
            m.meshnode_writes.clone(),
        );
        r.register(
            "weft_operator_status_writes",
            "Status subresource patches of MeshApp/MeshPolicy/MeshSite",
            m.status_writes.clone(),
        );
        r.register(
            "weft_operator_plan_errors",
            "Bad-input problems in the last plan",
            m.plan_errors.clone(),
        );
        r.register(
            "weft_operator_peers_up",
            "Peer links with a recent handshake, over all apps",
            m.peers_up.clone(),
        );
        r.register(
            "weft_operator_peers_total",
            "Peer links planned, over all apps",
            m.peers_total.clone(),
        );
        r.register(
            "weft_operator_leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        r.register(
            "weft_operator_reconcile_errors",
            "Failed passes by reason",
            m.errors.clone(),
        );
        r.register(
            "weft_operator_reconcile_duration_seconds",
            "Duration of reconcile passes",
            m.duration.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

impl Metrics {
    /// Records one reconcile pass.
    pub fn observe_pass(&self, took: Duration, result: Result<&ReconcileReport, &Error>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        match result {
            Ok(r) => {
                let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
                self.meshnode_writes.inc_by(n(r.meshnode_writes.len()));
                self.status_writes.inc_by(n(r.status_writes.len()));
                self.plan_errors.set(n(r.errors.len()));
                self.peers_up.set(u64::from(r.peers_up));
                self.peers_total.set(u64::from(r.peers_total));
            }
            Err(e) => {
                self.errors
                    .get_or_create(&[("reason", e.metric_label())])
                    .inc();
            }
        }
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(u64::from(leading));
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
        weft_metrics::encode(&self.registry)
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

    #[test]
    fn family_names_types_and_help_are_pinned() {
        let m = Metrics::default();
        let err = Error::Serialize {
            what: "x".into(),
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        m.observe_pass(Duration::from_millis(1), Err(&err));
        let text = m.render();
        let pinned = [
            (
                "weft_operator_reconciles_total",
                "counter",
                "Reconcile passes run.",
            ),
            (
                "weft_operator_meshnode_writes_total",
                "counter",
                "MeshNode specs applied.",
            ),
            (
                "weft_operator_status_writes_total",
                "counter",
                "Status subresource patches of MeshApp/MeshPolicy/MeshSite.",
            ),
            (
                "weft_operator_plan_errors",
                "gauge",
                "Bad-input problems in the last plan.",
            ),
            (
                "weft_operator_peers_up",
                "gauge",
                "Peer links with a recent handshake, over all apps.",
            ),
            (
                "weft_operator_peers_total",
                "gauge",
                "Peer links planned, over all apps.",
            ),
            (
                "weft_operator_leader",
                "gauge",
                "1 while this replica holds the leader Lease.",
            ),
            (
                "weft_operator_reconcile_errors_total",
                "counter",
                "Failed passes by reason.",
            ),
            (
                "weft_operator_reconcile_duration_seconds",
                "histogram",
                "Duration of reconcile passes.",
            ),
        ];
        for (name, kind, help) in pinned {
            let head = format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
            assert!(text.contains(&head), "missing {head:?} in\n{text}");
        }
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# TYPE ")).count(),
            pinned.len(),
            "{text}"
        );
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
