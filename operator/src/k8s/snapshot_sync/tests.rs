//! The snapshot kept in line object by object is the one built from the
//! whole caches, over random sequences of changes to them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeStatus, Pod, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use weft_api::{
    AppStatus, MeshApp, MeshAppSpec, MeshAppStatus, MeshNode, MeshNodeSpec, MeshNodeStatus,
    MeshSite, MeshSiteSpec, Selector, SiteKind, WorkloadStatus,
};

use super::*;
use crate::k8s::snapshot::snapshot_without_specs;
use crate::planner::incremental::Journal;
use crate::planner::Snapshot;

const NODES: [&str; 3] = ["n0", "n1", "e0"];

#[derive(Clone, Debug)]
enum Change {
    PutApp(usize, usize, bool),
    DeleteApp(usize, bool),
    PutPod(usize, usize, usize, bool),
    RemovePod(usize),
    Report(usize, usize, bool),
    Ready(usize, bool),
    RemoveNode(usize),
    EdgeSite(bool),
    Later(i64),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..4usize, 0..2usize, any::<bool>()).prop_map(|(a, t, r)| Change::PutApp(a, t, r)),
        (0..4usize, any::<bool>()).prop_map(|(a, d)| Change::DeleteApp(a, d)),
        (0..6usize, 0..3usize, 0..2usize, any::<bool>())
            .prop_map(|(p, n, t, done)| Change::PutPod(p, n, t, done)),
        (0..6usize).prop_map(Change::RemovePod),
        (0..3usize, 0..4usize, any::<bool>()).prop_map(|(n, a, k)| Change::Report(n, a, k)),
        (0..2usize, any::<bool>()).prop_map(|(n, r)| Change::Ready(n, r)),
        (0..3usize).prop_map(Change::RemoveNode),
        any::<bool>().prop_map(Change::EdgeSite),
        (0..60i64).prop_map(Change::Later),
    ]
}

struct World {
    obs: Observed,
    rv: u64,
    now: Timestamp,
}

impl World {
    fn rv(&mut self) -> Option<String> {
        self.rv += 1;
        Some(self.rv.to_string())
    }

    fn meta(&mut self, ns: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: ns.map(String::from),
            resource_version: self.rv(),
            ..Default::default()
        }
    }

    fn node(&mut self, n: usize, ready: bool) -> Arc<Node> {
        Arc::new(Node {
            metadata: self.meta(None, NODES[n]),
            spec: None,
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: format!("192.0.2.{}", n + 1),
                }]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn site(&mut self, edge: bool) -> Arc<MeshSite> {
        let mut s = MeshSite::new(
            "edge",
            MeshSiteSpec {
                kind: if edge {
                    SiteKind::Edge
                } else {
                    SiteKind::Remote
                },
                ..Default::default()
            },
        );
        s.metadata.resource_version = self.rv();
        Arc::new(s)
    }

    fn apply(&mut self, c: &Change) {
        match *c {
            Change::PutApp(a, tier, range) => {
                let name = format!("app{a}");
                let mut app = MeshApp::new(
                    &name,
                    MeshAppSpec {
                        selector: Selector::labels([("tier", ["x", "y"][tier])]),
                        ..Default::default()
                    },
                );
                app.metadata.namespace = Some("demo".into());
                app.metadata.resource_version = self.rv();
                app.status = range.then(|| MeshAppStatus {
                    address_space: Some(format!("100.64.{a}.0/24")),
                    ..Default::default()
                });
                self.obs
                    .apps
                    .retain(|x| x.metadata.name.as_deref() != Some(&name));
                self.obs.apps.push(Arc::new(app));
            }
            Change::DeleteApp(a, gone) => {
                let name = format!("app{a}");
                if gone {
                    self.obs
                        .apps
                        .retain(|x| x.metadata.name.as_deref() != Some(&name));
                } else if let Some(app) = self
                    .obs
                    .apps
                    .iter_mut()
                    .find(|x| x.metadata.name.as_deref() == Some(&name))
                {
                    let rv = self.rv;
                    let app = Arc::make_mut(app);
                    app.metadata.deletion_timestamp = Some(Time(self.now));
                    app.metadata.resource_version = Some((rv + 1).to_string());
                    self.rv += 1;
                }
            }
            Change::PutPod(p, n, tier, done) => {
                let name = format!("pod{p}");
                let mut meta = self.meta(Some("demo"), &name);
                meta.labels = Some([("tier".to_string(), ["x", "y"][tier].to_string())].into());
                let pod = Pod {
                    metadata: meta,
                    spec: Some(PodSpec {
                        node_name: Some(NODES[n].into()),
                        ..Default::default()
                    }),
                    status: Some(PodStatus {
                        phase: Some(if done { "Succeeded" } else { "Running" }.into()),
                        ..Default::default()
                    }),
                };
                self.obs
                    .pods
                    .retain(|x| x.metadata.name.as_deref() != Some(&name));
                self.obs.pods.push(Arc::new(pod));
            }
            Change::RemovePod(p) => {
                let name = format!("pod{p}");
                self.obs
                    .pods
                    .retain(|x| x.metadata.name.as_deref() != Some(&name));
            }
            Change::Report(n, a, key) => {
                let name = NODES[n];
                let meta = self.meta(None, name);
                let heartbeat = Time(self.now).0.to_string();
                let mut mn = MeshNode::new(
                    name,
                    MeshNodeSpec {
                        site: if n == 2 { "edge" } else { "" }.into(),
                        apps: Vec::new(),
                    },
                );
                mn.metadata = meta;
                mn.status = Some(MeshNodeStatus {
                    heartbeat: Some(heartbeat),
                    endpoint_address: Some(format!("198.51.100.{}", n + 1)),
                    workloads: vec![WorkloadStatus {
                        name: format!("w{a}"),
                        namespace: "demo".into(),
                        labels: [("tier".to_string(), "x".to_string())].into(),
                        address: key.then(|| format!("100.64.{a}.2")),
                        ..Default::default()
                    }],
                    apps: vec![AppStatus {
                        app: format!("demo/app{a}"),
                        public_key: if key {
                            format!("key{n}{a}")
                        } else {
                            String::new()
                        },
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                self.obs
                    .meshnodes
                    .retain(|x| x.metadata.name.as_deref() != Some(name));
                self.obs.meshnodes.push(Arc::new(mn));
            }
            Change::Ready(n, ready) => {
                let node = self.node(n, ready);
                self.obs
                    .nodes
                    .retain(|x| x.metadata.name.as_deref() != Some(NODES[n]));
                self.obs.nodes.push(node);
            }
            Change::RemoveNode(n) => {
                self.obs
                    .nodes
                    .retain(|x| x.metadata.name.as_deref() != Some(NODES[n]));
                self.obs
                    .meshnodes
                    .retain(|x| x.metadata.name.as_deref() != Some(NODES[n]));
            }
            Change::EdgeSite(edge) => {
                let site = self.site(edge);
                self.obs.sites = vec![site];
            }
            Change::Later(secs) => self.now += SignedDuration::from_secs(secs),
        }
    }
}

proptest! {
    #[test]
    fn kept_object_by_object_it_is_the_snapshot_of_the_whole_caches(
        changes in proptest::collection::vec(change(), 1..30)
    ) {
        let mut w = World {
            obs: Observed::default(),
            rv: 0,
            now: Timestamp::from_second(1_700_000_000).unwrap(),
        };
        let n0 = w.node(0, true);
        let site = w.site(true);
        w.obs.nodes.push(n0);
        w.obs.sites.push(site);
        let config = PlannerConfig::default();
        let mut sync = SnapshotSync::default();
        let mut kept = Snapshot::default();
        let mut journal = Journal::default();
        sync.apply(&w.obs, &config, w.now, None, &mut Edit::new(&mut kept, &mut journal));
        prop_assert_eq!(&kept, &snapshot_without_specs(&w.obs, &config, w.now));
        for (i, c) in changes.iter().enumerate() {
            w.apply(c);
            // The caches iterate in no fixed order.
            w.obs.pods.reverse();
            sync.apply(&w.obs, &config, w.now, None, &mut Edit::new(&mut kept, &mut journal));
            prop_assert_eq!(
                &kept,
                &snapshot_without_specs(&w.obs, &config, w.now),
                "step {} ({:?})",
                i,
                c
            );
        }
    }
}
