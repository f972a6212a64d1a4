//! The standalone operator reads a node's status.json and node.json only
//! when their stamp changed, and takes its own meshnode.json from memory
//! while the file is the one it wrote. Every change must still be seen: a
//! same-size rewrite with the modification time put back, and a
//! meshnode.json deleted or edited behind the operator's back. Every pass
//! here is a full scan (see `Env::tick`).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tempfile::TempDir;
use weft_api::standalone::{NodeRegistration, StateDir};
use weft_api::{MeshNode, MeshNodeStatus, WorkloadStatus};
use weft_operator::standalone::files::write_json_atomic;
use weft_operator::standalone::{Standalone, StandaloneConfig, TickReport};

const APPS: &str = "\
apiVersion: weft.dev/v1alpha1
kind: MeshApp
metadata: {name: web, namespace: demo}
spec:
  addressSpace: 10.100.0.0/16
  selector: {matchLabels: {tier: web}}
";

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

/// Long enough for a file's stamp to be trusted (see `stamp::SETTLE_SECONDS`).
fn settle() {
    std::thread::sleep(Duration::from_millis(2100));
}

fn set_mtime(path: &Path) {
    let st = Command::new("touch")
        .arg("-d")
        .arg("@1700000000")
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

struct Env {
    _manifests: TempDir,
    state: TempDir,
    op: Standalone,
}

impl Env {
    /// Nodes n1 and n2, each running one workload labelled `tier=<tier>`.
    fn new(tier_n1: &str) -> Env {
        let manifests = TempDir::new().unwrap();
        let state = TempDir::new().unwrap();
        fs::write(manifests.path().join("apps.yaml"), APPS).unwrap();
        let op = Standalone::new(StandaloneConfig::new(manifests.path(), state.path()));
        let env = Env {
            _manifests: manifests,
            state,
            op,
        };
        for (n, addr, tier) in [("n1", "192.0.2.1", tier_n1), ("n2", "192.0.2.2", "web")] {
            let reg = NodeRegistration {
                name: n.into(),
                site: "local".into(),
                address: addr.into(),
                labels: Default::default(),
            };
            write_json_atomic(&env.dir().registration(n), &reg).unwrap();
            fs::write(env.dir().node_status(n), status_json(n, tier)).unwrap();
        }
        env
    }

    fn dir(&self) -> StateDir {
        StateDir::new(self.state.path())
    }

    /// A full scan each pass: these check the stamps that full scans (the
    /// first pass, after an inotify overflow, the periodic safety net) go by;
    /// `watch_events.rs` checks the passes that go by events.
    fn tick(&mut self) -> TickReport {
        self.op.force_full_scan();
        let r = self.op.tick(t(1)).unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        r
    }

    /// The workloads of app demo/web in n1's MeshNode (none when the app is
    /// not on n1).
    fn web_workloads_of_n1(&self) -> Vec<String> {
        let n1 = self.meshnode("n1");
        n1.spec
            .apps
            .iter()
            .find(|a| a.app == "demo/web")
            .map(|a| a.workloads.clone())
            .unwrap_or_default()
    }

    fn meshnode(&self, n: &str) -> MeshNode {
        serde_json::from_slice(&fs::read(self.dir().meshnode(n)).unwrap()).unwrap()
    }
}

/// A daemon's report: one workload `w-<node>` labelled `tier=<tier>`.
fn status_json(node: &str, tier: &str) -> Vec<u8> {
    let st = MeshNodeStatus {
        heartbeat: Some(t(0).to_string()),
        workloads: vec![WorkloadStatus {
            name: format!("w-{node}"),
            namespace: "demo".into(),
            labels: [("tier".to_string(), tier.to_string())].into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    serde_json::to_vec_pretty(&st).unwrap()
}

#[test]
fn a_same_size_status_rewrite_with_the_mtime_put_back_is_seen() {
    let mut env = Env::new("web");
    let status = env.dir().node_status("n1");
    set_mtime(&status);
    set_mtime(&env.dir().registration("n1"));
    assert_eq!(env.tick().meshnode_writes, ["n1", "n2"]);
    assert_eq!(env.web_workloads_of_n1(), ["demo/w-n1"]);
    // Settled: the next passes may skip reading n1's files.
    settle();
    assert!(!env.tick().wrote_anything());
    assert!(!env.tick().wrote_anything());

    // Rewritten in place, same size, mtime put back, settled again before
    // the next pass: only ctime tells.
    let before = fs::metadata(&status).unwrap();
    let body = status_json("n1", "wob");
    assert_eq!(body.len() as u64, before.len());
    fs::write(&status, body).unwrap();
    set_mtime(&status);
    settle();
    let r = env.tick();
    assert_eq!(r.meshnode_writes, ["n1"], "{r:?}");
    assert!(env.web_workloads_of_n1().is_empty());

    // Replaced by another file of the same size and times: the inode tells.
    let tmp = env.dir().node_dir("n1").join(".status.json.new");
    fs::write(&tmp, status_json("n1", "web")).unwrap();
    set_mtime(&tmp);
    fs::rename(&tmp, &status).unwrap();
    settle();
    assert_eq!(env.tick().meshnode_writes, ["n1"]);
    assert_eq!(env.web_workloads_of_n1(), ["demo/w-n1"]);
}

#[test]
fn a_meshnode_deleted_or_edited_behind_the_operators_back_is_rewritten() {
    let mut env = Env::new("web");
    let path = env.dir().meshnode("n1");
    assert_eq!(env.tick().meshnode_writes, ["n1", "n2"]);
    let written = fs::read(&path).unwrap();

    // Deleted right after the write (the file is still "racy").
    fs::remove_file(&path).unwrap();
    assert_eq!(env.tick().meshnode_writes, ["n1"]);
    assert_eq!(fs::read(&path).unwrap(), written);
    assert!(!env.tick().wrote_anything());

    // Settled: from now on its stamp alone vouches for it.
    set_mtime(&path);
    settle();
    assert!(!env.tick().wrote_anything());
    assert!(!env.tick().wrote_anything());

    // Edited in place, same size, mtime put back, settled: only ctime tells.
    let edited = String::from_utf8(written.clone())
        .unwrap()
        .replace("demo/w-n1", "demo/w-n9");
    assert_eq!(edited.len(), written.len());
    fs::write(&path, edited).unwrap();
    set_mtime(&path);
    settle();
    let r = env.tick();
    assert_eq!(r.meshnode_writes, ["n1"], "{r:?}");
    assert_eq!(env.web_workloads_of_n1(), ["demo/w-n1"]);
    assert_eq!(env.meshnode("n1").metadata.generation, Some(2));
    assert!(!env.tick().wrote_anything());

    // Deleted once settled and trusted.
    settle();
    assert!(!env.tick().wrote_anything());
    fs::remove_file(&path).unwrap();
    assert_eq!(env.tick().meshnode_writes, ["n1"]);
    assert_eq!(env.web_workloads_of_n1(), ["demo/w-n1"]);
    assert!(!env.tick().wrote_anything());
}
