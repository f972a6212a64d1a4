//! Builds the MeshNode status the daemon publishes (pure). Only public keys
//! appear here; private keys never reach this module.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weft_api::conditions::{self, types};
use weft_api::standalone::LocalWorkload;
use weft_api::{AppStatus, DataplaneKind, MeshNode, MeshNodeStatus, PeerStatus, WorkloadStatus};

use super::observed::Observation;
use crate::core::plan::AppPlan;
use crate::core::state::workload_key;

/// A peer counts as up with a handshake younger than this (the operator's
/// definition, so MeshNode and MeshApp status agree).
pub use weft_api::meshnode::HANDSHAKE_FRESH_SECONDS;

/// Assembles the status from this pass's plans, errors and observation.
#[allow(clippy::too_many_arguments)]
pub fn build(
    node: &str,
    endpoint_address: &str,
    kind: DataplaneKind,
    spec: Option<&MeshNode>,
    plans: &[AppPlan],
    app_errors: &BTreeMap<String, String>,
    observed: &Observation,
    local: &[LocalWorkload],
    errors: &[String],
    now: Time,
) -> MeshNodeStatus {
    let generation = spec.and_then(|s| s.metadata.generation);
    let mut apps = Vec::new();
    let mut attached: BTreeMap<String, (String, String)> = BTreeMap::new();
    for p in plans {
        let att = spec.and_then(|s| s.spec.apps.iter().find(|a| a.app == p.app));
        let netns = att.map(|a| a.netns.clone()).unwrap_or_default();
        let dev = observed
            .state
            .apps
            .get(&netns)
            .and_then(|a| a.device.as_ref());
        let error = app_errors.get(&p.app).cloned();
        let traffic = observed.traffic.get(&netns);
        let peers = p
            .peer_nodes
            .iter()
            .map(|(pk, peer_node)| {
                let st = observed
                    .stats
                    .get(&(netns.clone(), pk.clone()))
                    .cloned()
                    .unwrap_or_default();
                let t = traffic
                    .and_then(|t| t.peers.get(pk))
                    .copied()
                    .unwrap_or_default();
                PeerStatus {
                    node: peer_node.clone(),
                    public_key: pk.clone(),
                    last_handshake_seconds: st.last_handshake_seconds,
                    rx_bytes: st.rx_bytes,
                    tx_bytes: st.tx_bytes,
                    rx_packets: t.rx_packets,
                    tx_packets: t.tx_packets,
                    active_connections: t.active_connections,
                }
            })
            .collect::<Vec<_>>();
        let mut peers = peers;
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        for (w, ip) in &p.addresses {
            attached.insert(w.clone(), (p.app.clone(), ip.to_string()));
        }
        let want = p.result.as_ref().ok().and_then(|a| a.device.as_ref());
        let peers_up = peers
            .iter()
            .filter(|p| {
                p.last_handshake_seconds
                    .is_some_and(|s| s < HANDSHAKE_FRESH_SECONDS)
            })
            .count();
        let policy_drops = observed.policy_counters.get(&netns).map(|c| {
            c.dropped_ingress
                .packets
                .saturating_add(c.dropped_egress.packets)
        });
        apps.push(AppStatus {
            app: p.app.clone(),
            public_key: want.map(|d| d.public_key.clone()).unwrap_or_default(),
            listen_port: dev
                .map(|d| d.listen_port)
                .unwrap_or(att.map(|a| a.listen_port).unwrap_or(0)),
            interface: att.map(|a| a.interface.clone()).unwrap_or_default(),
            // Programmed = planned cleanly and every op of this pass succeeded;
            // a device still missing after the pass shows up as an error.
            programmed: error.is_none() && p.result.is_ok(),
            error,
            peers,
            peers_up: u32::try_from(peers_up).unwrap_or(u32::MAX),
            policy_drops,
            active_connections: traffic.and_then(|t| t.active_connections),
        });
    }
    apps.sort_by(|a, b| a.app.cmp(&b.app));
    let apps_ready = apps.iter().filter(|a| a.programmed).count() as u32;
    let wl = local
        .iter()
        .map(|w| {
            let k = workload_key(w);
            let (app, address) = attached
                .get(&k)
                .cloned()
                .map(|(a, ip)| (Some(a), Some(ip)))
                .unwrap_or((None, None));
            WorkloadStatus {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                labels: w.labels.clone(),
                app,
                address,
            }
        })
        .collect();

    let mut conds = Vec::new();
    let ready = match spec {
        None => conditions::new(
            types::READY,
            false,
            "NoSpec",
            format!("no MeshNode spec for {node} yet"),
            None,
        ),
        Some(_) if errors.is_empty() => conditions::new(
            types::READY,
            true,
            "Programmed",
            format!("{apps_ready} app(s) programmed"),
            generation,
        ),
        Some(_) => conditions::new(
            types::READY,
            false,
            "ProgrammingFailed",
            errors.join("; "),
            generation,
        ),
    };
    conditions::set(&mut conds, ready, now.clone());
    MeshNodeStatus {
        conditions: conds,
        observed_generation: generation,
        dataplane: Some(kind),
        endpoint_address: Some(endpoint_address.to_string()),
        apps_ready,
        apps,
        workloads: wl,
        // Added by the run loop (`Reconciler::prepare_keys`).
        prepared_keys: Vec::new(),
        heartbeat: Some(now.0.to_string()),
    }
}

/// Whether two statuses differ in anything but heartbeat and condition times.
pub fn changed(old: &MeshNodeStatus, new: &MeshNodeStatus) -> bool {
    let strip = |s: &MeshNodeStatus| {
        let mut s = s.clone();
        s.heartbeat = None;
        s.conditions.clear();
        // Counters move with every packet; publishing them on each change
        // would rewrite status constantly. They go out with the heartbeat.
        for a in &mut s.apps {
            a.policy_drops = a.policy_drops.map(|_| 0);
            a.active_connections = a.active_connections.map(|_| 0);
            for p in &mut a.peers {
                p.rx_bytes = 0;
                p.tx_bytes = 0;
                p.rx_packets = 0;
                p.tx_packets = 0;
                p.active_connections = 0;
                p.last_handshake_seconds = p.last_handshake_seconds.map(|_| 0);
            }
        }
        s
    };
    strip(old) != strip(new)
        || !conditions::lists_equal_ignoring_time(&old.conditions, &new.conditions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(drops: Option<u64>, handshake: Option<u64>, rx: u64) -> MeshNodeStatus {
        MeshNodeStatus {
            apps: vec![AppStatus {
                app: "demo/web".into(),
                peers: vec![PeerStatus {
                    node: "n2".into(),
                    last_handshake_seconds: handshake,
                    rx_bytes: rx,
                    ..Default::default()
                }],
                peers_up: u32::from(handshake.is_some_and(|s| s < HANDSHAKE_FRESH_SECONDS)),
                policy_drops: drops,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn moving_counters_alone_never_count_as_a_change() {
        let base = with(Some(3), Some(5), 100);
        assert!(!changed(&base, &with(Some(900), Some(17), 5000)));
        // A policy appearing or going, or a peer going down, is a change.
        assert!(changed(&base, &with(None, Some(5), 100)));
        assert!(changed(&base, &with(Some(3), None, 100)));
        assert!(changed(&base, &with(Some(3), Some(200), 100)));
    }
}
