//! What the operator's watch caches keep of each object: only the fields the
//! snapshot reads (see `snapshot.rs`). A Pod's containers, volumes and
//! conditions, a Node's images and capacity, every object's managedFields and
//! kubectl's last-applied annotation are dropped as they arrive, so the
//! caches grow with what Weft plans from, not with how busy the cluster is.

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeStatus, Pod, PodSpec, PodStatus,
};
use kube::api::ObjectMeta;
use weft_api::MeshNode;

use crate::planner::peers::PeerPool;

/// kubectl's copy of the whole object it applied (client-side apply).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Any object: no managedFields, no last-applied copy.
pub fn meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

/// A Pod: identity, labels, deletion, `spec.nodeName` and `status.phase`.
pub fn pod(p: &mut Pod) {
    meta(&mut p.metadata);
    p.metadata.annotations = None;
    p.metadata.owner_references = None;
    let node_name = p.spec.as_ref().and_then(|s| s.node_name.clone());
    p.spec = Some(PodSpec {
        node_name,
        ..Default::default()
    });
    let phase = p.status.as_ref().and_then(|s| s.phase.clone());
    p.status = Some(PodStatus {
        phase,
        ..Default::default()
    });
}

/// A Node: identity, labels, deletion, its InternalIPs and Ready condition.
pub fn node(n: &mut Node) {
    meta(&mut n.metadata);
    n.metadata.annotations = None;
    n.spec = None;
    let status = n.status.take().unwrap_or_default();
    let addresses: Vec<NodeAddress> = status
        .addresses
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.type_ == "InternalIP")
        .collect();
    let conditions: Vec<NodeCondition> = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ == "Ready")
        .map(|c| NodeCondition {
            type_: c.type_,
            status: c.status,
            ..Default::default()
        })
        .collect();
    n.status = Some(NodeStatus {
        addresses: Some(addresses),
        conditions: Some(conditions),
        ..Default::default()
    });
}

/// What the MeshNode watch keeps: every field (the stored spec is compared
/// with the plan), without managedFields, and with equal peer entries
/// shared across MeshNodes ([`PeerPool`]): 2,000 MeshNodes of an app on
/// every node hold 4 million peer entries, 2,000 of them distinct.
#[derive(Default)]
pub struct MeshNodeTrim {
    pool: PeerPool,
}

impl MeshNodeTrim {
    /// Trims one MeshNode as it arrives.
    pub fn apply(&mut self, m: &mut MeshNode) {
        meta(&mut m.metadata);
        self.pool.share(&mut m.spec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::snapshot::{snapshot_from_stores, Observed};
    use crate::planner::PlannerConfig;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;
    use std::sync::Arc;

    fn busy_node() -> Node {
        let images: Vec<_> = (0..50)
            .map(|i| json!({"names": [format!("registry.example/image-{i}@sha256:{:064}", i)], "sizeBytes": 123456789}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "labels": {"weft.dev/site": "local", "kubernetes.io/hostname": "n1"},
                "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
                "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}]},
            "spec": {"podCIDR": "10.244.1.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}, {"type": "Hostname", "address": "n1"}],
                "conditions": [
                    {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
                "capacity": {"cpu": "2", "memory": "24Gi"},
                "nodeInfo": {"machineID": "x", "systemUUID": "y", "bootID": "z", "kernelVersion": "6.1", "osImage": "Debian", "containerRuntimeVersion": "containerd://1.7", "kubeletVersion": "v1.36.0", "kubeProxyVersion": "v1.36.0", "operatingSystem": "linux", "architecture": "amd64"},
                "images": images,
            },
        }))
        .unwrap()
    }

    fn busy_pod(phase: &str) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "demo", "labels": {"tier": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-x", "uid": "u"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox", "env": [{"name": "A", "value": "B"}]}],
                     "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": phase, "podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn observed(nodes: Vec<Node>, pods: Vec<Pod>) -> Observed {
        Observed {
            nodes: nodes.into_iter().map(Arc::new).collect(),
            pods: pods.into_iter().map(Arc::new).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn trimmed_objects_plan_the_same_and_are_much_smaller() {
        let now = Timestamp::now();
        let cfg = PlannerConfig::default();
        for phase in ["Running", "Pending", "Succeeded"] {
            let (mut n, mut p) = (busy_node(), busy_pod(phase));
            let full = snapshot_from_stores(&observed(vec![n.clone()], vec![p.clone()]), &cfg, now);
            let before =
                serde_json::to_vec(&n).unwrap().len() + serde_json::to_vec(&p).unwrap().len();
            node(&mut n);
            pod(&mut p);
            let after =
                serde_json::to_vec(&n).unwrap().len() + serde_json::to_vec(&p).unwrap().len();
            let trimmed = snapshot_from_stores(&observed(vec![n], vec![p]), &cfg, now);
            assert_eq!(format!("{full:?}"), format!("{trimmed:?}"), "phase {phase}");
            println!("a busy Node and Pod ({phase}): {before} -> {after} bytes");
            assert!(after * 5 < before, "{before} -> {after} bytes");
        }
    }

    #[test]
    fn a_not_ready_node_stays_not_ready() {
        let mut n = busy_node();
        n.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].status = "False".into();
        node(&mut n);
        assert!(!crate::k8s::snapshot::node_ready(&n));
    }

    #[test]
    fn meshnodes_in_the_cache_share_equal_peer_entries() {
        let meshnode = |name: &str, peer: &str| -> MeshNode {
            serde_json::from_value(json!({
                "apiVersion": "weft.dev/v1alpha1", "kind": "MeshNode",
                "metadata": {"name": name, "managedFields": [{"manager": "weft-operator", "operation": "Apply"}]},
                "spec": {"site": "local", "apps": [{"app": "demo/web", "appId": "abc", "netns": "n", "interface": "w",
                    "addressSpace": "10.1.0.0/16", "nodeSlice": "10.1.0.0/24", "address": "10.1.0.1/16",
                    "listenPort": 51820, "mtu": 1420,
                    "peers": [{"node": peer, "publicKey": "k", "endpoint": "192.0.2.9:51820", "allowedIps": ["10.1.9.0/24"]}]}]}
            }))
            .unwrap()
        };
        let (mut a, mut b) = (meshnode("a", "n9"), meshnode("b", "n9"));
        let mut trim = MeshNodeTrim::default();
        trim.apply(&mut a);
        trim.apply(&mut b);
        assert!(a.metadata.managed_fields.is_none());
        assert!(Arc::ptr_eq(
            &a.spec.apps[0].peers[0],
            &b.spec.apps[0].peers[0]
        ));
        assert_eq!(b.spec.apps[0].peers[0].node, "n9");
    }
}
