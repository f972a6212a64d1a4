//! An invalid MeshPolicy update keeps its last accepted version enforced,
//! through the standalone loop with real state files, and across an
//! operator restart (the enforced spec is read back from the stored status).

use std::fs;

use k8s_openapi::jiff::Timestamp;
use tempfile::TempDir;
use weft_api::conditions::{self, types};
use weft_api::standalone::{NodeRegistration, StateDir, StoredStatus};
use weft_api::{CompiledPolicy, MeshNode, MeshNodeStatus, MeshPolicyStatus, WorkloadStatus};
use weft_operator::standalone::files::write_json_atomic;
use weft_operator::standalone::{Standalone, StandaloneConfig};

const APP: &str = "\
apiVersion: weft.dev/v1alpha1
kind: MeshApp
metadata: {name: web, namespace: demo}
spec:
  addressSpace: 10.100.0.0/16
  selector: {matchLabels: {tier: web}}
";

fn policy(port: &str) -> String {
    format!(
        "\
apiVersion: weft.dev/v1alpha1
kind: MeshPolicy
metadata: {{name: allow, namespace: demo}}
spec:
  app: web
  selector: {{matchLabels: {{role: server}}}}
  ingress:
    - peers: [{{selector: {{matchLabels: {{role: client}}}}}}]
      ports: [{{protocol: TCP, {port}}}]
"
    )
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn workload(name: &str, role: &str, address: &str) -> WorkloadStatus {
    WorkloadStatus {
        name: name.into(),
        namespace: "demo".into(),
        labels: [("tier", "web"), ("role", role)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        app: Some("demo/web".into()),
        address: Some(address.into()),
    }
}

struct Env {
    manifests: TempDir,
    state: TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            manifests: TempDir::new().unwrap(),
            state: TempDir::new().unwrap(),
        };
        fs::write(env.manifests.path().join("app.yaml"), APP).unwrap();
        let dir = env.dir();
        write_json_atomic(
            &dir.registration("n1"),
            &NodeRegistration {
                name: "n1".into(),
                site: "local".into(),
                address: "192.0.2.1".into(),
                labels: Default::default(),
            },
        )
        .unwrap();
        write_json_atomic(
            &dir.node_status("n1"),
            &MeshNodeStatus {
                heartbeat: Some(t(0).to_string()),
                workloads: vec![
                    workload("server", "server", "10.100.0.2"),
                    workload("client", "client", "10.100.0.3"),
                ],
                ..Default::default()
            },
        )
        .unwrap();
        env
    }

    fn dir(&self) -> StateDir {
        StateDir::new(self.state.path())
    }

    fn operator(&self) -> Standalone {
        Standalone::new(StandaloneConfig::new(
            self.manifests.path(),
            self.state.path(),
        ))
    }

    fn set_policy(&self, text: Option<String>) {
        let path = self.manifests.path().join("policy.yaml");
        match text {
            Some(t) => fs::write(path, t).unwrap(),
            None => fs::remove_file(path).unwrap(),
        }
    }

    fn enforced(&self) -> Option<CompiledPolicy> {
        let mn: MeshNode =
            serde_json::from_str(&fs::read_to_string(self.dir().meshnode("n1")).unwrap()).unwrap();
        mn.spec
            .apps
            .iter()
            .find(|a| a.app == "demo/web")
            .and_then(|a| a.policy.clone())
    }

    fn status(&self) -> StoredStatus<MeshPolicyStatus> {
        serde_json::from_str(
            &fs::read_to_string(self.dir().status_file("meshpolicies", "demo/allow")).unwrap(),
        )
        .unwrap()
    }
}

#[test]
fn an_invalid_update_keeps_the_accepted_version_across_a_restart() {
    let env = Env::new();
    let mut op = env.operator();
    env.set_policy(Some(policy("port: 80")));
    op.tick(t(0)).unwrap();
    let v1 = env.enforced().expect("policy compiled");
    assert_eq!(v1.rules[0].port, Some(80));
    let st = env.status();
    assert!(conditions::is_true(&st.status.conditions, types::ACCEPTED));
    assert_eq!(st.status.enforced.as_ref().map(|e| e.generation), Some(1));

    // endPort below port: rejected, generation 1 stays enforced.
    env.set_policy(Some(policy("port: 80, endPort: 79")));
    let r = op.tick(t(1)).unwrap();
    assert!(
        r.meshnode_writes.is_empty(),
        "nothing changes in the data plane: {r:?}"
    );
    assert_eq!(env.enforced().as_ref(), Some(&v1));
    let st = env.status();
    assert_eq!(st.generation, 2);
    let c = conditions::get(&st.status.conditions, types::ACCEPTED).unwrap();
    assert_eq!(c.status, "False");
    assert!(
        c.message.contains("spec.ingress[0].ports[0].endPort")
            && c.message.contains("still enforcing generation 1"),
        "{}",
        c.message
    );
    assert_eq!(st.status.enforced.as_ref().map(|e| e.generation), Some(1));

    // A restarted operator reads the enforced spec back from the status.
    drop(op);
    let mut op = env.operator();
    let r = op.tick(t(2)).unwrap();
    assert!(!r.wrote_anything(), "{r:?}");
    assert_eq!(env.enforced().as_ref(), Some(&v1));

    // Fixed: the new version is enforced and recorded.
    env.set_policy(Some(policy("port: 8443")));
    op.tick(t(3)).unwrap();
    assert_eq!(env.enforced().unwrap().rules[0].port, Some(8443));
    let st = env.status();
    assert!(conditions::is_true(&st.status.conditions, types::ACCEPTED));
    assert_eq!(st.status.enforced.as_ref().map(|e| e.generation), Some(3));

    // Deleted: nothing of it is enforced, its status is gone.
    env.set_policy(None);
    op.tick(t(4)).unwrap();
    assert_eq!(env.enforced(), None);
    assert!(!env.dir().status_file("meshpolicies", "demo/allow").exists());
}

#[test]
fn a_policy_invalid_from_the_start_enforces_nothing() {
    let env = Env::new();
    let mut op = env.operator();
    env.set_policy(Some(policy("port: 80, endPort: 79")));
    op.tick(t(0)).unwrap();
    assert_eq!(env.enforced(), None);
    let st = env.status();
    let c = conditions::get(&st.status.conditions, types::ACCEPTED).unwrap();
    assert!(
        c.message.contains("nothing of it is enforced"),
        "{}",
        c.message
    );
    assert_eq!(st.status.enforced, None);
}
