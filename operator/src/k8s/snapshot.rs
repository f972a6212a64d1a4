//! Kubernetes objects → the planner's [`Snapshot`]. Pure: everything comes in
//! through [`Observed`] (the reflector stores' contents) and `now`; this is the
//! one place where Kubernetes types are translated.
//!
//! | source | becomes |
//! |---|---|
//! | MeshApp / MeshPolicy / MeshSite (not being deleted) | `apps` / `policies` / `sites` |
//! | MeshApp `status.addressSpace` | `previous_ranges` (allocations stick) |
//! | MeshPolicy / MeshApp / MeshSite `status.enforced` | `previous_policies` / `previous_apps` / `previous_sites` (kept while the spec is rejected) |
//! | Node: InternalIP, `weft.dev/site` label, Ready condition | `nodes` (NotReady ⇒ lost) |
//! | MeshNode without a Node (edge host, deleted Node) | `nodes`, lost when its heartbeat is stale; its status' workloads if its site is of kind Edge |
//! | MeshNode spec / status | `previous_specs` / `public_keys`, `workload_addresses` |
//! | Pod with `spec.nodeName`, not finished | `workloads` of that node |

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use weft_api::labels::SITE_LABEL;
use weft_api::{MeshApp, MeshNode, MeshPolicy, MeshSite, SiteKind};

use crate::planner::accept::effective_site_kind;
use crate::planner::{NodeInfo, ObjectKey, PlannerConfig, Snapshot};
use crate::standalone::LOST_AFTER_SECONDS;

/// What the reflector stores hold at one moment.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// MeshApps.
    pub apps: Vec<Arc<MeshApp>>,
    /// MeshPolicies.
    pub policies: Vec<Arc<MeshPolicy>>,
    /// MeshSites.
    pub sites: Vec<Arc<MeshSite>>,
    /// MeshNodes (written by the operator, status by the daemons).
    pub meshnodes: Vec<Arc<MeshNode>>,
    /// Pods.
    pub pods: Vec<Arc<Pod>>,
    /// Nodes.
    pub nodes: Vec<Arc<Node>>,
}

/// `namespace/name` of a namespaced object.
pub fn key_of<K: ResourceExt>(obj: &K) -> ObjectKey {
    ObjectKey::new(obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Whether the object has a deletion timestamp.
pub fn is_deleting<K: ResourceExt>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_some()
}

/// The Node's InternalIP, IPv4 preferred on dual-stack nodes (empty when
/// it has none, which the planner reports as an unusable address).
pub fn node_address(node: &Node) -> String {
    let internal: Vec<&str> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.as_str())
        .collect();
    internal
        .iter()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .or(internal.first())
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Whether the Node's Ready condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

pub(crate) fn heartbeat_stale(mn: &MeshNode, now: Timestamp) -> bool {
    mn.status
        .as_ref()
        .and_then(|s| s.heartbeat.as_deref())
        .and_then(|h| h.parse::<Timestamp>().ok())
        .is_none_or(|hb| now.duration_since(hb) > SignedDuration::from_secs(LOST_AFTER_SECONDS))
}

pub(crate) fn pod_is_running_somewhere(pod: &Pod) -> Option<&str> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    Some(node)
}

/// Builds the planner's input from the stores' contents.
pub fn snapshot_from_stores(obs: &Observed, config: &PlannerConfig, now: Timestamp) -> Snapshot {
    build(obs, config, now, true)
}

/// What the snapshot of `obs` at `now` is built from, as one number: every
/// object's identity and resourceVersion (the API server gives a change a
/// new one), and which MeshNodes' heartbeats are stale at `now` (the only
/// input that moves with time alone). Equal numbers mean equal snapshots,
/// so a pass can skip building one (~80 ms at 10,000 apps). `None` when an
/// object has no resourceVersion: then nothing can be told.
pub fn input_fingerprint(obs: &Observed, now: Timestamp) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    fn each<K: ResourceExt>(
        kind: u8,
        objects: &[Arc<K>],
        extra: impl Fn(&K) -> bool,
    ) -> Option<u64> {
        // A sum: the caches iterate in no fixed order.
        let mut sum = objects.len() as u64;
        for o in objects {
            let m = o.meta();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (
                kind,
                &m.namespace,
                &m.name,
                m.resource_version.as_ref()?,
                extra(o),
            )
                .hash(&mut h);
            sum = sum.wrapping_add(h.finish());
        }
        Some(sum)
    }
    let parts = [
        each(0, &obs.apps, |_| false)?,
        each(1, &obs.policies, |_| false)?,
        each(2, &obs.sites, |_| false)?,
        each(3, &obs.meshnodes, |m| heartbeat_stale(m, now))?,
        each(4, &obs.pods, |_| false)?,
        each(5, &obs.nodes, |_| false)?,
    ];
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    Some(h.finish())
}

/// [`snapshot_from_stores`] without `previous_specs`: for
/// [`Incremental::plan_stored`](crate::planner::incremental::Incremental::plan_stored),
/// which reads the stored specs in place instead of a copy of them all.
pub fn snapshot_without_specs(obs: &Observed, config: &PlannerConfig, now: Timestamp) -> Snapshot {
    build(obs, config, now, false)
}

fn build(obs: &Observed, config: &PlannerConfig, now: Timestamp, with_specs: bool) -> Snapshot {
    let mut s = Snapshot {
        config: config.clone(),
        ..Default::default()
    };
    for app in obs.apps.iter().filter(|a| !is_deleting(a.as_ref())) {
        let key = key_of(app.as_ref());
        if let Some(range) = app.status.as_ref().and_then(|st| st.address_space.clone()) {
            s.previous_ranges.insert(key.clone(), range);
        }
        if let Some(e) = app.status.as_ref().and_then(|st| st.enforced.clone()) {
            s.previous_apps.insert(key.clone(), e);
        }
        s.apps.insert(key, app.spec.clone());
    }
    for p in obs.policies.iter().filter(|p| !is_deleting(p.as_ref())) {
        let key = key_of(p.as_ref());
        if let Some(e) = p.status.as_ref().and_then(|st| st.enforced.clone()) {
            s.previous_policies.insert(key.clone(), e);
        }
        s.policies.insert(key, p.spec.clone());
    }
    for site in obs.sites.iter().filter(|x| !is_deleting(x.as_ref())) {
        if let Some(e) = site.status.as_ref().and_then(|st| st.enforced.clone()) {
            s.previous_sites.insert(site.name_any(), e);
        }
        s.sites.insert(site.name_any(), site.spec.clone());
    }
    for node in &obs.nodes {
        s.nodes.insert(
            node.name_any(),
            NodeInfo {
                site: node.labels().get(SITE_LABEL).cloned().unwrap_or_default(),
                address: node_address(node),
                lost: !node_ready(node) || is_deleting(node.as_ref()),
            },
        );
    }
    // A lookup, not a scan per MeshNode (1,000 x 1,000 name copies).
    let kube_nodes: std::collections::HashSet<&str> = obs
        .nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    for mn in &obs.meshnodes {
        let name = mn.name_any();
        if with_specs {
            s.previous_specs.insert(name.clone(), mn.spec.clone());
        }
        if !s.nodes.contains_key(&name) {
            let site = mn
                .labels()
                .get(SITE_LABEL)
                .cloned()
                .unwrap_or_else(|| mn.spec.site.clone());
            let address = mn
                .status
                .as_ref()
                .and_then(|st| st.endpoint_address.clone())
                .unwrap_or_default();
            s.nodes.insert(
                name.clone(),
                NodeInfo {
                    site,
                    address,
                    lost: heartbeat_stale(mn, now),
                },
            );
        }
        // An edge host has no pods: its daemon reports its workloads (Docker
        // containers) with their labels in status, as in standalone mode.
        // Only MeshNodes of a MeshSite of kind Edge are believed: a node's
        // own report must not let it join apps of a Kubernetes site (pods
        // there come from the Pod watch), nor may a Kubernetes MeshNode
        // whose Node is gone.
        let edge = !kube_nodes.contains(name.as_str())
            && s.nodes
                .get(&name)
                .is_some_and(|n| effective_site_kind(&s, &n.site) == Some(SiteKind::Edge));
        for w in mn.status.iter().flat_map(|st| &st.workloads) {
            if edge {
                s.add_workload(
                    &name,
                    ObjectKey::new(&w.namespace, &w.name),
                    w.labels.clone(),
                );
            }
            if let Some(addr) = &w.address {
                s.add_workload_address(&name, ObjectKey::new(&w.namespace, &w.name), addr.clone());
            }
        }
        for (app, key) in mn.status.iter().flat_map(|st| st.app_public_keys()) {
            s.add_public_key(&name, ObjectKey::parse(app), key);
        }
    }
    for pod in &obs.pods {
        if let Some(node) = pod_is_running_somewhere(pod) {
            s.add_workload(node, key_of(pod.as_ref()), pod.labels().clone());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use weft_api::{
        AppAttachment, AppStatus, MeshAppSpec, MeshAppStatus, MeshNodeSpec, MeshNodeStatus,
        WorkloadStatus,
    };

    fn node(name: &str, ip: &str, ready: &str, site: Option<&str>) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: site.map(|s| [(SITE_LABEL.to_string(), s.to_string())].into()),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: name.into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.into(),
                    },
                ]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn pod(
        ns: &str,
        name: &str,
        node: Option<&str>,
        phase: &str,
        labels: &[(&str, &str)],
    ) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        })
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    #[test]
    fn pods_become_workloads_of_their_node_with_namespace_and_labels() {
        let obs = Observed {
            nodes: vec![node("n1", "192.0.2.1", "True", None)],
            pods: vec![
                pod("demo", "web-1", Some("n1"), "Running", &[("tier", "web")]),
                pod("demo", "pending", None, "Pending", &[("tier", "web")]),
                pod("demo", "done", Some("n1"), "Succeeded", &[("tier", "web")]),
            ],
            ..Default::default()
        };
        let s = snapshot_from_stores(&obs, &PlannerConfig::default(), now());
        let on_n1 = &s.workloads["n1"];
        assert_eq!(
            on_n1.len(),
            1,
            "unscheduled and finished pods are not workloads"
        );
        assert_eq!(on_n1[&ObjectKey::new("demo", "web-1")]["tier"], "web");
    }

    #[test]
    fn node_internal_ip_site_label_and_readiness_become_node_info() {
        let obs = Observed {
            nodes: vec![
                node("n1", "192.0.2.1", "True", Some("edge1")),
                node("n2", "192.0.2.2", "False", None),
                node("n3", "192.0.2.3", "Unknown", None),
            ],
            ..Default::default()
        };
        let s = snapshot_from_stores(&obs, &PlannerConfig::default(), now());
        assert_eq!(
            s.nodes["n1"],
            NodeInfo {
                site: "edge1".into(),
                address: "192.0.2.1".into(),
                lost: false
            }
        );
        assert!(s.nodes["n2"].lost, "NotReady node is lost");
        assert!(s.nodes["n3"].lost, "Unknown readiness is lost");
        assert_eq!(s.nodes["n2"].site, "", "no label means the local site");
    }

    #[test]
    fn dual_stack_nodes_are_reached_over_ipv4() {
        let mut n = (*node("n1", "2001:db8::1", "True", None)).clone();
        n.status
            .as_mut()
            .unwrap()
            .addresses
            .as_mut()
            .unwrap()
            .push(NodeAddress {
                type_: "InternalIP".into(),
                address: "192.0.2.9".into(),
            });
        assert_eq!(node_address(&n), "192.0.2.9");
        n.status.as_mut().unwrap().addresses = None;
        assert_eq!(
            node_address(&n),
            "",
            "no address is reported by the planner"
        );
    }

    fn meshnode(name: &str, heartbeat_age: Option<i64>) -> Arc<MeshNode> {
        let mut mn = MeshNode::new(
            name,
            MeshNodeSpec {
                site: "local".into(),
                apps: vec![AppAttachment {
                    app: "demo/web".into(),
                    listen_port: 51820,
                    ..Default::default()
                }],
            },
        );
        mn.status = Some(MeshNodeStatus {
            endpoint_address: Some("198.51.100.7".into()),
            heartbeat: heartbeat_age
                .map(|age| Time(now() - SignedDuration::from_secs(age)).0.to_string()),
            apps: vec![
                AppStatus {
                    app: "demo/web".into(),
                    public_key: "PUBKEY".into(),
                    ..Default::default()
                },
                AppStatus {
                    app: "demo/db".into(),
                    public_key: String::new(),
                    ..Default::default()
                },
            ],
            workloads: vec![WorkloadStatus {
                name: "web-1".into(),
                namespace: "demo".into(),
                app: Some("demo/web".into()),
                address: Some("100.64.0.2".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        Arc::new(mn)
    }

    #[test]
    fn the_fingerprint_follows_versions_and_stale_heartbeats_not_order() {
        let versioned = |mut o: Arc<MeshNode>, rv: &str| {
            Arc::make_mut(&mut o).metadata.resource_version = Some(rv.into());
            o
        };
        let mut pod_a = pod("demo", "a", Some("n1"), "Running", &[]);
        Arc::make_mut(&mut pod_a).metadata.resource_version = Some("5".into());
        let obs = Observed {
            meshnodes: vec![
                versioned(meshnode("m1", Some(10)), "1"),
                versioned(meshnode("m2", Some(10)), "2"),
            ],
            pods: vec![pod_a.clone()],
            ..Default::default()
        };
        let f = input_fingerprint(&obs, now()).unwrap();
        let mut reordered = obs.clone();
        reordered.meshnodes.reverse();
        assert_eq!(input_fingerprint(&reordered, now()), Some(f));

        let mut bumped = obs.clone();
        bumped.meshnodes[1] = versioned(meshnode("m2", Some(10)), "3");
        assert_ne!(input_fingerprint(&bumped, now()), Some(f));

        // No new version, but the heartbeats grew stale meanwhile.
        let later = now() + SignedDuration::from_secs(LOST_AFTER_SECONDS);
        assert_ne!(input_fingerprint(&obs, later), Some(f));

        let mut gone = obs.clone();
        gone.pods.clear();
        assert_ne!(input_fingerprint(&gone, now()), Some(f));

        let mut unversioned = obs;
        unversioned.pods = vec![pod("demo", "a", Some("n1"), "Running", &[])];
        assert_eq!(input_fingerprint(&unversioned, now()), None);
    }

    #[test]
    fn meshnode_status_gives_keys_and_workload_addresses_and_spec_gives_previous_specs() {
        let obs = Observed {
            nodes: vec![node("n1", "192.0.2.1", "True", None)],
            meshnodes: vec![meshnode("n1", Some(1))],
            ..Default::default()
        };
        let s = snapshot_from_stores(&obs, &PlannerConfig::default(), now());
        assert_eq!(
            s.public_keys
                .get(&("n1".to_string(), ObjectKey::new("demo", "web"))),
            Some(&"PUBKEY".to_string())
        );
        assert_eq!(s.public_keys.len(), 1, "empty keys are not published");
        assert_eq!(
            s.workload_addresses["n1"][&ObjectKey::new("demo", "web-1")],
            "100.64.0.2"
        );
        assert_eq!(s.previous_specs["n1"].apps[0].listen_port, 51820);
        assert_eq!(
            s.nodes["n1"].address, "192.0.2.1",
            "the Node wins over MeshNode status"
        );
    }

    #[test]
    fn meshnode_without_node_is_lost_once_its_heartbeat_is_stale() {
        let obs = Observed {
            meshnodes: vec![
                meshnode("fresh", Some(5)),
                meshnode("stale", Some(LOST_AFTER_SECONDS + 1)),
                meshnode("silent", None),
            ],
            ..Default::default()
        };
        let s = snapshot_from_stores(&obs, &PlannerConfig::default(), now());
        assert!(!s.nodes["fresh"].lost);
        assert_eq!(s.nodes["fresh"].address, "198.51.100.7");
        assert!(s.nodes["stale"].lost);
        assert!(s.nodes["silent"].lost);
    }

    #[test]
    fn an_edge_host_workloads_come_from_its_meshnode_status_a_nodes_from_pods() {
        let with_site = |name: &str, site: &str| {
            let mut m = (*meshnode(name, Some(1))).clone();
            m.spec.site = site.into();
            m.status.as_mut().unwrap().workloads[0].labels =
                [("weft.dev/app".to_string(), "web".to_string())].into();
            Arc::new(m)
        };
        let site = |name: &str, kind: SiteKind| {
            Arc::new(MeshSite::new(
                name,
                weft_api::MeshSiteSpec {
                    kind,
                    ..Default::default()
                },
            ))
        };
        let obs = Observed {
            nodes: vec![node("n1", "192.0.2.1", "True", None)],
            sites: vec![site("edge", SiteKind::Edge), site("local", SiteKind::Local)],
            meshnodes: vec![
                // n1's status lists web-1 too, but a Kubernetes node's
                // workloads are its pods: status must not add any.
                meshnode("n1", Some(1)),
                with_site("edge-1", "edge"),
                // Claims a Kubernetes site without a Node: not believed.
                with_site("rogue", "local"),
                // A site that does not exist: not believed either.
                with_site("nowhere-1", "nowhere"),
            ],
            ..Default::default()
        };
        let s = snapshot_from_stores(&obs, &PlannerConfig::default(), now());
        assert_eq!(
            s.workloads["edge-1"][&ObjectKey::new("demo", "web-1")]["weft.dev/app"],
            "web"
        );
        assert_eq!(
            s.workloads.keys().collect::<Vec<_>>(),
            ["edge-1"],
            "{:?}",
            s.workloads
        );
    }

    #[test]
    fn apps_being_deleted_leave_the_snapshot_and_ranges_stick() {
        let mut web = MeshApp::new("web", MeshAppSpec::default());
        web.metadata.namespace = Some("demo".into());
        web.status = Some(MeshAppStatus {
            address_space: Some("100.64.0.0/16".into()),
            ..Default::default()
        });
        let mut gone = MeshApp::new("gone", MeshAppSpec::default());
        gone.metadata.namespace = Some("demo".into());
        gone.metadata.deletion_timestamp = Some(Time(now()));
        let obs = Observed {
            apps: vec![Arc::new(web), Arc::new(gone)],
            ..Default::default()
        };
        let s = snapshot_from_stores(&obs, &PlannerConfig::default(), now());
        assert_eq!(s.apps.len(), 1);
        assert!(s.apps.contains_key(&ObjectKey::new("demo", "web")));
        assert_eq!(
            s.previous_ranges[&ObjectKey::new("demo", "web")],
            "100.64.0.0/16"
        );
    }
}
