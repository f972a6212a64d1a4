//! Prometheus metrics and health endpoints of the node daemon: a
//! `prometheus_client` registry and the shared hyper responder of
//! [`weft_metrics`], on a thread of its own (see [`Server`]).
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | text exposition format 0.0.4 (families below) |
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once a MeshNode spec is known and a pass ran, 503 before |
//!
//! Counters of the loop accumulate in the registry; per-app figures (peers,
//! policy counters) are the last pass's observation, replaced on every pass
//! and written by a collector at scrape time, so an app or peer that left
//! disappears from the exposition (and a family with no app is left out). Labels carry app
//! names, peer node names, rule ids, op names and error reasons only: no
//! key of any kind.
//!
//! Sources: handshake age and bytes per peer are WireGuard's; packets per
//! peer and open connections come from the app netns' `weft_stats` table and
//! connection tracking (`dataplane::linux::stats`, read at most every 5 s);
//! rule counters and drops from the policy table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft_api::meshnode::HANDSHAKE_FRESH_SECONDS;
use weft_metrics::prometheus_client::collector::Collector;
use weft_metrics::prometheus_client::encoding::DescriptorEncoder;
use weft_metrics::prometheus_client::metrics::counter::{ConstCounter, Counter};
use weft_metrics::prometheus_client::metrics::family::Family;
use weft_metrics::prometheus_client::metrics::gauge::ConstGauge;
use weft_metrics::prometheus_client::metrics::histogram::Histogram;
use weft_metrics::{const_family, serve, Endpoints, Registry};

use crate::core::state::PolicyCounters;
use crate::run::reconcile::PassReport;

/// One peer of one app, as last observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerFigures {
    /// The peer's MeshNode name.
    pub node: String,
    /// Seconds since the last handshake, if any.
    pub handshake_age_seconds: Option<u64>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// IP packets received from the peer through the tunnel.
    pub rx_packets: u64,
    /// IP packets sent to the peer through the tunnel.
    pub tx_packets: u64,
    /// Open connections with the peer.
    pub active_connections: u64,
}

/// One app's figures from the last pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppFigures {
    /// Peers, sorted by node.
    pub peers: Vec<PeerFigures>,
    /// The app's policy counters, when it has a policy table.
    pub policy: Option<PolicyCounters>,
    /// Open connections in the app's netns, when known.
    pub active_connections: Option<u64>,
}

/// A label set with one label whose value is a fixed string.
type Static1 = [(&'static str, &'static str); 1];

/// Counters and gauges of the daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    passes: Counter,
    status_writes: Counter,
    writes: Family<Static1, Counter>,
    errors: Family<Static1, Counter>,
    duration: Histogram,
    apps: Arc<Mutex<BTreeMap<String, AppFigures>>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let passes = Counter::default();
        let status_writes = Counter::default();
        let writes = Family::<Static1, Counter>::default();
        let errors = Family::<Static1, Counter>::default();
        let duration = weft_metrics::duration_histogram();
        // Help texts are registered without their final period: the
        // registry adds it.
        registry.register(
            "weft_node_reconcile_passes",
            "Reconcile passes run",
            passes.clone(),
        );
        registry.register(
            "weft_node_status_writes",
            "MeshNode status publications",
            status_writes.clone(),
        );
        registry.register(
            "weft_node_dataplane_writes",
            "Data-plane operations applied, by operation",
            writes.clone(),
        );
        registry.register(
            "weft_node_errors",
            "Problems met, by reason (a problem that persists counts once per pass)",
            errors.clone(),
        );
        registry.register(
            "weft_node_reconcile_duration_seconds",
            "Duration of reconcile passes (observe, diff, apply, status)",
            duration.clone(),
        );
        let apps = Arc::new(Mutex::new(BTreeMap::new()));
        registry.register_collector(Box::new(AppsCollector { apps: apps.clone() }));
        Metrics {
            registry,
            passes,
            status_writes,
            writes,
            errors,
            duration,
            apps,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Records one reconcile pass and takes its per-app figures.
    pub fn observe_pass(&self, took: Duration, report: &PassReport) {
        self.passes.inc();
        self.duration.observe(took.as_secs_f64());
        for (op, n) in &report.writes_by_op {
            self.writes.get_or_create(&[("op", op)]).inc_by(*n);
        }
        for reason in &report.error_reasons {
            self.errors.get_or_create(&[("reason", reason)]).inc();
        }
        let apps = report
            .status
            .apps
            .iter()
            .map(|a| {
                let peers = a
                    .peers
                    .iter()
                    .map(|p| PeerFigures {
                        node: p.node.clone(),
                        handshake_age_seconds: p.last_handshake_seconds,
                        rx_bytes: p.rx_bytes,
                        tx_bytes: p.tx_bytes,
                        rx_packets: p.rx_packets,
                        tx_packets: p.tx_packets,
                        active_connections: p.active_connections,
                    })
                    .collect();
                let policy = report.policy_counters.get(&a.app).cloned();
                let active_connections = a.active_connections;
                (
                    a.app.clone(),
                    AppFigures {
                        peers,
                        policy,
                        active_connections,
                    },
                )
            })
            .collect();
        if let Ok(mut m) = self.apps.lock() {
            *m = apps;
        }
    }

    /// Counts one problem outside a pass (e.g. `status_write`).
    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts one status publication.
    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Marks the daemon ready (a spec is known and a pass ran).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        weft_metrics::encode(&self.registry)
    }
}

/// The per-app families: the last pass's observations (WireGuard's and
/// the kernel's own counters), written as they are at scrape time.
#[derive(Debug)]
struct AppsCollector {
    apps: Arc<Mutex<BTreeMap<String, AppFigures>>>,
}

type PeerValue = fn(&PeerFigures) -> u64;

/// Per-peer counters: name (without `_total`), help, value.
const PEER_COUNTERS: [(&str, &str, PeerValue); 4] = [
    (
        "weft_node_peer_receive_bytes",
        "Bytes received from the peer (WireGuard's count: encrypted, overhead included).",
        |p| p.rx_bytes,
    ),
    (
        "weft_node_peer_transmit_bytes",
        "Bytes sent to the peer (WireGuard's count: encrypted, overhead included).",
        |p| p.tx_bytes,
    ),
    (
        "weft_node_peer_receive_packets",
        "IP packets received from the peer through the tunnel (restarts when the peer set changes).",
        |p| p.rx_packets,
    ),
    (
        "weft_node_peer_transmit_packets",
        "IP packets sent to the peer through the tunnel, after policy (restarts when the peer set changes).",
        |p| p.tx_packets,
    ),
];

impl Collector for AppsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let apps = self.apps.lock().map(|a| a.clone()).unwrap_or_default();
        let e = &mut e;
        let gauge = |v: u64| ConstGauge::new(v);
        let counter = |v: u64| ConstCounter::new(v);
        let peers = || {
            apps.iter()
                .flat_map(|(app, f)| f.peers.iter().map(move |p| (app.as_str(), p)))
        };
        let policies = || {
            apps.iter()
                .filter_map(|(app, f)| Some((app.as_str(), f.policy.as_ref()?)))
        };

        const_family(
            e,
            "weft_node_peers_up",
            "Peers of the app with a handshake in the last 180 seconds.",
            apps.iter().map(|(app, f)| {
                let up = f
                    .peers
                    .iter()
                    .filter(|p| {
                        p.handshake_age_seconds
                            .is_some_and(|s| s < HANDSHAKE_FRESH_SECONDS)
                    })
                    .count();
                ([("app", app.as_str())], gauge(up as u64))
            }),
        )?;
        const_family(
            e,
            "weft_node_peers",
            "Peers configured for the app.",
            apps.iter()
                .map(|(app, f)| ([("app", app.as_str())], gauge(f.peers.len() as u64))),
        )?;
        const_family(
            e,
            "weft_node_peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with the peer (absent before the first).",
            peers().filter_map(|(app, p)| {
                let age = p.handshake_age_seconds?;
                Some(([("app", app), ("peer", p.node.as_str())], gauge(age)))
            }),
        )?;
        for (name, help, value) in PEER_COUNTERS {
            const_family(
                e,
                name,
                help,
                peers()
                    .map(|(app, p)| ([("app", app), ("peer", p.node.as_str())], counter(value(p)))),
            )?;
        }
        const_family(
            e,
            "weft_node_peer_active_connections",
            "Open connections whose other end is in the peer's ranges (replied, TCP established).",
            peers().map(|(app, p)| {
                (
                    [("app", app), ("peer", p.node.as_str())],
                    gauge(p.active_connections),
                )
            }),
        )?;
        const_family(
            e,
            "weft_node_active_connections",
            "Open connections in the app's namespace on this node (replied, TCP established).",
            apps.iter().filter_map(|(app, f)| {
                Some(([("app", app.as_str())], gauge(f.active_connections?)))
            }),
        )?;
        for (name, help, bytes) in [
            (
                "weft_node_policy_rule_packets",
                "Packets of new flows allowed by the policy rule.",
                false,
            ),
            (
                "weft_node_policy_rule_bytes",
                "Bytes of new flows allowed by the policy rule.",
                true,
            ),
        ] {
            const_family(
                e,
                name,
                help,
                policies().flat_map(|(app, pc)| {
                    pc.rules.iter().map(move |(rule, c)| {
                        let v = if bytes { c.bytes } else { c.packets };
                        ([("app", app), ("rule", rule.as_str())], counter(v))
                    })
                }),
            )?;
        }
        for (name, help, bytes) in [
            (
                "weft_node_policy_drops_packets",
                "Packets dropped by policy (no rule allowed them), by direction.",
                false,
            ),
            (
                "weft_node_policy_drops_bytes",
                "Bytes dropped by policy (no rule allowed them), by direction.",
                true,
            ),
        ] {
            const_family(
                e,
                name,
                help,
                policies().flat_map(|(app, pc)| {
                    [
                        ("ingress", &pc.dropped_ingress),
                        ("egress", &pc.dropped_egress),
                    ]
                    .into_iter()
                    .map(move |(dir, c)| {
                        let v = if bytes { c.bytes } else { c.packets };
                        ([("app", app), ("direction", dir)], counter(v))
                    })
                }),
            )?;
        }
        const_family(
            e,
            "weft_node_policy_established_packets",
            "Packets of established or related flows passed by the policy table.",
            policies().map(|(app, pc)| ([("app", app)], counter(pc.established.packets))),
        )
    }
}

impl Endpoints for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    fn not_ready_reason(&self) -> &'static str {
        "no MeshNode spec yet\n"
    }
}

/// The endpoint server: a thread with its own small runtime, stopped and
/// joined on drop.
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `address` (port 0 picks one) and serves `metrics` there.
    pub fn start(address: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<Server> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let std_listener = std::net::TcpListener::bind(address)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => {
                            serve(l, metrics, async {
                                let _ = rx.await;
                            })
                            .await
                        }
                        Err(e) => tracing::warn!(error = %e, "metrics listener unusable"),
                    }
                });
            })?;
        tracing::info!(address = %addr, "serving /metrics, /healthz, /readyz");
        Ok(Server {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use weft_api::{AppStatus, MeshNodeStatus, PeerStatus};

    use super::*;
    use crate::core::state::Counter;

    fn report() -> PassReport {
        let mut policy = PolicyCounters::default();
        policy.rules.insert(
            "demo/p:ingress[0].ports[0]".into(),
            Counter {
                packets: 3,
                bytes: 180,
            },
        );
        policy.dropped_ingress = Counter {
            packets: 2,
            bytes: 120,
        };
        PassReport {
            writes: 2,
            writes_by_op: [("set_peer", 1), ("set_policy", 1)].into_iter().collect(),
            error_reasons: vec!["dataplane", "spec", "dataplane"],
            policy_counters: [("demo/web".to_string(), policy)].into_iter().collect(),
            status: MeshNodeStatus {
                apps: vec![AppStatus {
                    app: "demo/web".into(),
                    public_key: "PUBLICKEY-N1".into(),
                    peers: vec![
                        PeerStatus {
                            node: "n2".into(),
                            public_key: "PUBLICKEY-N2".into(),
                            last_handshake_seconds: Some(4),
                            rx_bytes: 1000,
                            tx_bytes: 2000,
                            rx_packets: 11,
                            tx_packets: 12,
                            active_connections: 2,
                        },
                        PeerStatus {
                            node: "n3".into(),
                            public_key: "PUBLICKEY-N3".into(),
                            last_handshake_seconds: None,
                            rx_bytes: 0,
                            tx_bytes: 148,
                            ..Default::default()
                        },
                    ],
                    active_connections: Some(3),
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn text_rendering_has_units_labels_and_no_keys() {
        let m = Metrics::default();
        m.observe_pass(Duration::from_millis(20), &report());
        m.observe_pass(Duration::from_millis(700), &PassReport::default());
        m.error("status_write");
        let text = m.render();
        for line in [
            "weft_node_reconcile_passes_total 2\n",
            "weft_node_dataplane_writes_total{op=\"set_peer\"} 1\n",
            "weft_node_dataplane_writes_total{op=\"set_policy\"} 1\n",
            "weft_node_errors_total{reason=\"dataplane\"} 2\n",
            "weft_node_errors_total{reason=\"spec\"} 1\n",
            "weft_node_errors_total{reason=\"status_write\"} 1\n",
            "weft_node_reconcile_duration_seconds_bucket{le=\"0.025\"} 1\n",
            "weft_node_reconcile_duration_seconds_bucket{le=\"1\"} 2\n",
            "weft_node_reconcile_duration_seconds_count 2\n",
            "# TYPE weft_node_reconcile_duration_seconds histogram\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // The second pass had no apps: per-app series are gone.
        assert!(!text.contains("app=\"demo/web\""), "{text}");

        m.observe_pass(Duration::from_millis(1), &report());
        let text = m.render();
        for line in [
            "weft_node_peers_up{app=\"demo/web\"} 1\n",
            "weft_node_peers{app=\"demo/web\"} 2\n",
            "weft_node_peer_handshake_age_seconds{app=\"demo/web\",peer=\"n2\"} 4\n",
            "weft_node_peer_receive_bytes_total{app=\"demo/web\",peer=\"n2\"} 1000\n",
            "weft_node_peer_transmit_bytes_total{app=\"demo/web\",peer=\"n3\"} 148\n",
            "weft_node_peer_receive_packets_total{app=\"demo/web\",peer=\"n2\"} 11\n",
            "weft_node_peer_transmit_packets_total{app=\"demo/web\",peer=\"n2\"} 12\n",
            "weft_node_peer_transmit_packets_total{app=\"demo/web\",peer=\"n3\"} 0\n",
            "weft_node_peer_active_connections{app=\"demo/web\",peer=\"n2\"} 2\n",
            "weft_node_active_connections{app=\"demo/web\"} 3\n",
            "# TYPE weft_node_active_connections gauge\n",
            "weft_node_policy_rule_packets_total{app=\"demo/web\",rule=\"demo/p:ingress[0].ports[0]\"} 3\n",
            "weft_node_policy_rule_bytes_total{app=\"demo/web\",rule=\"demo/p:ingress[0].ports[0]\"} 180\n",
            "weft_node_policy_drops_packets_total{app=\"demo/web\",direction=\"ingress\"} 2\n",
            "weft_node_policy_drops_bytes_total{app=\"demo/web\",direction=\"egress\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("weft_node_peer_handshake_age_seconds{app=\"demo/web\",peer=\"n3\"}"),
            "no handshake, no age"
        );
        assert!(!text.contains("PUBLICKEY"), "no key in any label or value");
        // Every sample line belongs to a family declared with HELP and TYPE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let metric = l.split(['{', ' ']).next().unwrap();
            let fam = metric
                .strip_suffix("_bucket")
                .or_else(|| metric.strip_suffix("_sum"))
                .or_else(|| metric.strip_suffix("_count"))
                .filter(|f| f.ends_with("_seconds"))
                .unwrap_or(metric);
            assert!(
                text.contains(&format!("# TYPE {fam} ")),
                "{metric} has no TYPE"
            );
        }
    }

    /// Every family of the exposition: name, type and help, exactly as
    /// dashboards and alerts query them (changing one is a breaking change).
    const PINNED: [(&str, &str, &str); 20] = [
        ("weft_node_reconcile_passes_total", "counter", "Reconcile passes run."),
        ("weft_node_status_writes_total", "counter", "MeshNode status publications."),
        ("weft_node_dataplane_writes_total", "counter", "Data-plane operations applied, by operation."),
        ("weft_node_errors_total", "counter", "Problems met, by reason (a problem that persists counts once per pass)."),
        ("weft_node_reconcile_duration_seconds", "histogram", "Duration of reconcile passes (observe, diff, apply, status)."),
        ("weft_node_peers_up", "gauge", "Peers of the app with a handshake in the last 180 seconds."),
        ("weft_node_peers", "gauge", "Peers configured for the app."),
        ("weft_node_peer_handshake_age_seconds", "gauge", "Seconds since the last WireGuard handshake with the peer (absent before the first)."),
        ("weft_node_peer_receive_bytes_total", "counter", "Bytes received from the peer (WireGuard's count: encrypted, overhead included)."),
        ("weft_node_peer_transmit_bytes_total", "counter", "Bytes sent to the peer (WireGuard's count: encrypted, overhead included)."),
        ("weft_node_peer_receive_packets_total", "counter", "IP packets received from the peer through the tunnel (restarts when the peer set changes)."),
        ("weft_node_peer_transmit_packets_total", "counter", "IP packets sent to the peer through the tunnel, after policy (restarts when the peer set changes)."),
        ("weft_node_peer_active_connections", "gauge", "Open connections whose other end is in the peer's ranges (replied, TCP established)."),
        ("weft_node_active_connections", "gauge", "Open connections in the app's namespace on this node (replied, TCP established)."),
        ("weft_node_policy_rule_packets_total", "counter", "Packets of new flows allowed by the policy rule."),
        ("weft_node_policy_rule_bytes_total", "counter", "Bytes of new flows allowed by the policy rule."),
        ("weft_node_policy_drops_packets_total", "counter", "Packets dropped by policy (no rule allowed them), by direction."),
        ("weft_node_policy_drops_bytes_total", "counter", "Bytes dropped by policy (no rule allowed them), by direction."),
        ("weft_node_policy_established_packets_total", "counter", "Packets of established or related flows passed by the policy table."),
        // Not a family name: the histogram's series, pinned below.
        ("weft_node_reconcile_duration_seconds_bucket", "", ""),
    ];

    #[test]
    fn family_names_types_and_help_are_pinned() {
        let m = Metrics::default();
        m.observe_pass(Duration::from_millis(20), &report());
        m.status_written();
        let text = m.render();
        let mut declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        declared.sort_unstable();
        let mut want: Vec<&str> = PINNED
            .iter()
            .filter(|(_, kind, _)| !kind.is_empty())
            .map(|(name, _, _)| *name)
            .collect();
        want.sort_unstable();
        assert_eq!(declared, want, "{text}");
        for (name, kind, help) in PINNED {
            if kind.is_empty() {
                assert!(
                    text.contains(&format!("\n{name}{{le=\"0.005\"}} 0\n")),
                    "{text}"
                );
                continue;
            }
            let head = format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
            assert!(text.contains(&head), "missing {head:?} in\n{text}");
        }
        // Before any pass: the unlabelled families only.
        let fresh = Metrics::default().render();
        assert!(
            fresh.contains("weft_node_reconcile_passes_total 0\n"),
            "{fresh}"
        );
        assert!(!fresh.contains("app=\""), "{fresh}");
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn endpoints_answer_on_an_ephemeral_loopback_port() {
        let metrics = Arc::new(Metrics::default());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), metrics.clone()).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 503"));
        metrics.observe_pass(Duration::from_millis(3), &report());
        metrics.set_ready(true);
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 200"));
        let body = get(addr, "/metrics");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{body}"
        );
        assert!(body.contains("weft_node_reconcile_passes_total 1\n"));
        assert!(body.contains("weft_node_peers_up{app=\"demo/web\"} 1\n"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
        drop(server);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the listener closes with the server"
        );
    }
}
