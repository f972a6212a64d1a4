//! Prometheus metrics and health endpoints of the node daemon, served with
//! the operator's responder ([`weft_metrics`]).
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | text exposition format 0.0.4 (families below) |
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once a MeshNode spec is known and a pass ran, 503 before |
//!
//! Counters of the loop accumulate here; per-app figures (peers, policy
//! counters) are the last pass's observation, replaced on every pass so an
//! app or peer that left disappears from the exposition. Labels carry app
//! names, peer node names, rule ids, op names and error reasons only: no
//! key of any kind.
//!
//! Sources: handshake age and bytes per peer are WireGuard's; packets per
//! peer and open connections come from the app netns' `weft_stats` table and
//! connection tracking (`dataplane::linux::stats`, read at most every 5 s);
//! rule counters and drops from the policy table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft_api::meshnode::HANDSHAKE_FRESH_SECONDS;
use weft_metrics::{family, sample, serve, Endpoints, Histogram};

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

/// Counters and gauges of the daemon.
#[derive(Debug, Default)]
pub struct Metrics {
    passes: AtomicU64,
    status_writes: AtomicU64,
    writes: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    duration: Histogram,
    apps: Mutex<BTreeMap<String, AppFigures>>,
    ready: AtomicBool,
}

impl Metrics {
    /// Records one reconcile pass and takes its per-app figures.
    pub fn observe_pass(&self, took: Duration, report: &PassReport) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.duration.observe(took);
        if let Ok(mut w) = self.writes.lock() {
            for (op, n) in &report.writes_by_op {
                *w.entry(op).or_default() += n;
            }
        }
        if let Ok(mut e) = self.errors.lock() {
            for reason in &report.error_reasons {
                *e.entry(reason).or_default() += 1;
            }
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
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(reason).or_default() += 1;
        }
    }

    /// Counts one status publication.
    pub fn status_written(&self) {
        self.status_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the daemon ready (a spec is known and a pass ran).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);

        let name = "weft_node_reconcile_passes_total";
        family(o, name, "counter", "Reconcile passes run.");
        sample(o, name, &[], get(&self.passes));

        let name = "weft_node_status_writes_total";
        family(o, name, "counter", "MeshNode status publications.");
        sample(o, name, &[], get(&self.status_writes));

        let name = "weft_node_dataplane_writes_total";
        family(
            o,
            name,
            "counter",
            "Data-plane operations applied, by operation.",
        );
        if let Ok(w) = self.writes.lock() {
            for (op, n) in w.iter() {
                sample(o, name, &[("op", op)], n);
            }
        }

        let name = "weft_node_errors_total";
        family(
            o,
            name,
            "counter",
            "Problems met, by reason (a problem that persists counts once per pass).",
        );
        if let Ok(e) = self.errors.lock() {
            for (reason, n) in e.iter() {
                sample(o, name, &[("reason", reason)], n);
            }
        }

        self.duration.render(
            o,
            "weft_node_reconcile_duration_seconds",
            "Duration of reconcile passes (observe, diff, apply, status).",
        );

        let apps = self.apps.lock().map(|a| a.clone()).unwrap_or_default();
        let name = "weft_node_peers_up";
        family(
            o,
            name,
            "gauge",
            "Peers of the app with a handshake in the last 180 seconds.",
        );
        for (app, f) in &apps {
            let up = f
                .peers
                .iter()
                .filter(|p| {
                    p.handshake_age_seconds
                        .is_some_and(|s| s < HANDSHAKE_FRESH_SECONDS)
                })
                .count();
            sample(o, name, &[("app", app)], up);
        }
        let name = "weft_node_peers";
        family(o, name, "gauge", "Peers configured for the app.");
        for (app, f) in &apps {
            sample(o, name, &[("app", app)], f.peers.len());
        }
        let name = "weft_node_peer_handshake_age_seconds";
        family(
            o,
            name,
            "gauge",
            "Seconds since the last WireGuard handshake with the peer (absent before the first).",
        );
        for (app, f) in &apps {
            for p in &f.peers {
                if let Some(age) = p.handshake_age_seconds {
                    sample(o, name, &[("app", app), ("peer", &p.node)], age);
                }
            }
        }
        type PeerValue = fn(&PeerFigures) -> u64;
        let per_peer: [(&str, &str, &str, PeerValue); 5] = [
            (
                "weft_node_peer_receive_bytes_total",
                "counter",
                "Bytes received from the peer (WireGuard's count: encrypted, overhead included).",
                |p| p.rx_bytes,
            ),
            (
                "weft_node_peer_transmit_bytes_total",
                "counter",
                "Bytes sent to the peer (WireGuard's count: encrypted, overhead included).",
                |p| p.tx_bytes,
            ),
            (
                "weft_node_peer_receive_packets_total",
                "counter",
                "IP packets received from the peer through the tunnel (restarts when the peer set changes).",
                |p| p.rx_packets,
            ),
            (
                "weft_node_peer_transmit_packets_total",
                "counter",
                "IP packets sent to the peer through the tunnel, after policy (restarts when the peer set changes).",
                |p| p.tx_packets,
            ),
            (
                "weft_node_peer_active_connections",
                "gauge",
                "Open connections whose other end is in the peer's ranges (replied, TCP established).",
                |p| p.active_connections,
            ),
        ];
        for (name, kind, help, value) in per_peer {
            family(o, name, kind, help);
            for (app, f) in &apps {
                for p in &f.peers {
                    sample(o, name, &[("app", app), ("peer", &p.node)], value(p));
                }
            }
        }
        let name = "weft_node_active_connections";
        family(
            o,
            name,
            "gauge",
            "Open connections in the app's namespace on this node (replied, TCP established).",
        );
        for (app, f) in &apps {
            if let Some(n) = f.active_connections {
                sample(o, name, &[("app", app)], n);
            }
        }

        for (name, help, bytes) in [
            (
                "weft_node_policy_rule_packets_total",
                "Packets of new flows allowed by the policy rule.",
                false,
            ),
            (
                "weft_node_policy_rule_bytes_total",
                "Bytes of new flows allowed by the policy rule.",
                true,
            ),
        ] {
            family(o, name, "counter", help);
            for (app, f) in &apps {
                let Some(pc) = &f.policy else { continue };
                for (rule, c) in &pc.rules {
                    let v = if bytes { c.bytes } else { c.packets };
                    sample(o, name, &[("app", app), ("rule", rule)], v);
                }
            }
        }
        for (name, help, bytes) in [
            (
                "weft_node_policy_drops_packets_total",
                "Packets dropped by policy (no rule allowed them), by direction.",
                false,
            ),
            (
                "weft_node_policy_drops_bytes_total",
                "Bytes dropped by policy (no rule allowed them), by direction.",
                true,
            ),
        ] {
            family(o, name, "counter", help);
            for (app, f) in &apps {
                let Some(pc) = &f.policy else { continue };
                for (dir, c) in [
                    ("ingress", &pc.dropped_ingress),
                    ("egress", &pc.dropped_egress),
                ] {
                    let v = if bytes { c.bytes } else { c.packets };
                    sample(o, name, &[("app", app), ("direction", dir)], v);
                }
            }
        }
        let name = "weft_node_policy_established_packets_total";
        family(
            o,
            name,
            "counter",
            "Packets of established or related flows passed by the policy table.",
        );
        for (app, f) in &apps {
            if let Some(pc) = &f.policy {
                sample(o, name, &[("app", app)], pc.established.packets);
            }
        }
        out
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
        assert!(body.contains("content-type: text/plain; version=0.0.4"));
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
