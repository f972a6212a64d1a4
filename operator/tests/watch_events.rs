//! The standalone operator learns which input files changed from inotify:
//! every kind of change must still reach the next pass (an edit in place, a
//! file renamed into place, a deletion, a symlinked manifest, a new node
//! directory), a pass with nothing new reads no file at all, and a forced
//! full scan sees what no event reported.

use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use tempfile::TempDir;
use weft_api::standalone::{NodeRegistration, StateDir};
use weft_api::{MeshNode, MeshNodeStatus, WorkloadStatus};
use weft_operator::standalone::files::write_json_atomic;
use weft_operator::standalone::{Standalone, StandaloneConfig, TickReport};

fn app(name: &str, tier: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{tier: {tier}}}}}\n"
    )
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

/// A daemon's report: workloads `w-<node>-<tier>` labelled `tier=<tier>`.
fn status_json(node: &str, tiers: &[&str]) -> Vec<u8> {
    let st = MeshNodeStatus {
        heartbeat: Some(t(0).to_string()),
        workloads: tiers
            .iter()
            .map(|tier| WorkloadStatus {
                name: format!("w-{node}-{tier}"),
                namespace: "demo".into(),
                labels: [("tier".to_string(), tier.to_string())].into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    serde_json::to_vec(&st).unwrap()
}

/// Manifests, state and a directory outside both (symlink targets), all
/// removed on drop.
struct Env {
    manifests: TempDir,
    state: TempDir,
    outside: TempDir,
    op: Standalone,
}

impl Env {
    /// App demo/web in web.yaml; nodes n1 and n2 each run a `tier=web` and
    /// a `tier=db` workload. Ticks until converged.
    fn new() -> Env {
        let manifests = TempDir::new().unwrap();
        let state = TempDir::new().unwrap();
        let outside = TempDir::new().unwrap();
        fs::write(manifests.path().join("web.yaml"), app("web", "web")).unwrap();
        let op = Standalone::new(StandaloneConfig::new(manifests.path(), state.path()));
        let mut env = Env {
            manifests,
            state,
            outside,
            op,
        };
        assert!(env.op.watching(), "inotify is available on Linux");
        env.add_node("n1", &["web", "db"]);
        env.add_node("n2", &["web", "db"]);
        assert_eq!(env.tick().meshnode_writes, ["n1", "n2"]);
        // The events of its own writes come in the next pass.
        assert!(!env.tick().wrote_anything());
        env
    }

    fn dir(&self) -> StateDir {
        StateDir::new(self.state.path())
    }

    fn manifest(&self, name: &str) -> PathBuf {
        self.manifests.path().join(name)
    }

    fn add_node(&self, n: &str, tiers: &[&str]) {
        let reg = NodeRegistration {
            name: n.into(),
            site: "local".into(),
            address: format!("192.0.2.{}", n.trim_start_matches('n')),
            labels: Default::default(),
        };
        write_json_atomic(&self.dir().registration(n), &reg).unwrap();
        fs::write(self.dir().node_status(n), status_json(n, tiers)).unwrap();
    }

    fn tick(&mut self) -> TickReport {
        let r = self.op.tick(t(1)).unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        r
    }

    /// What the passes patched in place (snapshot, selector files,
    /// statuses) is what a new operator, which reads everything, plans: it
    /// writes nothing.
    fn a_new_operator_writes_nothing(&self) {
        let cfg = StandaloneConfig::new(self.manifests.path(), self.state.path());
        let r = Standalone::new(cfg).tick(t(1)).unwrap();
        assert!(!r.wrote_anything(), "{r:?}");
    }

    /// The apps in a node's MeshNode.
    fn apps_of(&self, n: &str) -> Vec<String> {
        let obj: MeshNode =
            serde_json::from_slice(&fs::read(self.dir().meshnode(n)).unwrap()).unwrap();
        obj.spec.apps.iter().map(|a| a.app.clone()).collect()
    }
}

fn rename_into_place(tmp: &Path, body: &str, to: &Path) {
    fs::write(tmp, body).unwrap();
    fs::rename(tmp, to).unwrap();
}

#[test]
fn a_converged_pass_reads_no_file() {
    let mut env = Env::new();
    for _ in 0..3 {
        let before = env.op.reads();
        let r = env.tick();
        assert!(!r.wrote_anything(), "{r:?}");
        assert_eq!(env.op.reads(), before, "a pass with nothing new read files");
    }
    // One changed file costs one read.
    fs::write(
        env.dir().node_status("n2"),
        status_json("n2", &["web", "db"]),
    )
    .unwrap();
    let before = env.op.reads();
    assert!(!env.tick().wrote_anything());
    assert_eq!(env.op.reads(), before + 1);
}

#[test]
fn a_manifest_edited_in_place_is_seen() {
    let mut env = Env::new();
    let f = env.manifest("web.yaml");
    let inode = fs::metadata(&f).unwrap();
    // fs::write truncates and writes the same inode.
    fs::write(&f, format!("{}---\n{}", app("web", "web"), app("db", "db"))).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&f).unwrap()),
        std::os::unix::fs::MetadataExt::ino(&inode)
    );
    let r = env.tick();
    assert!(
        r.status_writes.contains(&"meshapps/demo/db".to_string()),
        "{r:?}"
    );
    assert_eq!(env.apps_of("n1"), ["demo/db", "demo/web"]);
}

#[test]
fn a_manifest_renamed_into_place_is_seen_new_or_replacing() {
    let mut env = Env::new();
    // A new file, written as editors and git do: a temp file renamed.
    let tmp = env.manifest(".db.yaml.tmp");
    rename_into_place(&tmp, &app("db", "db"), &env.manifest("db.yaml"));
    let r = env.tick();
    assert!(
        r.status_writes.contains(&"meshapps/demo/db".to_string()),
        "{r:?}"
    );
    assert_eq!(env.apps_of("n2"), ["demo/db", "demo/web"]);
    // Replacing an existing file: web now selects nothing that runs.
    rename_into_place(&tmp, &app("web", "none"), &env.manifest("web.yaml"));
    let r = env.tick();
    assert_eq!(r.meshnode_writes, ["n1", "n2"], "{r:?}");
    assert_eq!(env.apps_of("n1"), ["demo/db"]);
    env.a_new_operator_writes_nothing();
}

#[test]
fn a_deleted_manifest_deletes_its_objects() {
    let mut env = Env::new();
    fs::write(env.manifest("db.yaml"), app("db", "db")).unwrap();
    assert_eq!(env.tick().meshnode_writes, ["n1", "n2"]);
    fs::remove_file(env.manifest("db.yaml")).unwrap();
    let r = env.tick();
    assert_eq!(r.status_deletes, ["meshapps/demo/db"], "{r:?}");
    assert_eq!(env.apps_of("n1"), ["demo/web"]);
    // A file moved out of the directory counts as deleted too.
    fs::rename(
        env.manifest("web.yaml"),
        env.outside.path().join("web.yaml"),
    )
    .unwrap();
    let r = env.tick();
    assert_eq!(r.status_deletes, ["meshapps/demo/web"], "{r:?}");
    assert!(env.apps_of("n1").is_empty());
    env.a_new_operator_writes_nothing();
}

#[test]
fn a_symlinked_manifest_is_followed_to_its_target() {
    let mut env = Env::new();
    let target = env.outside.path().join("db.yaml");
    fs::write(&target, app("db", "db")).unwrap();
    std::os::unix::fs::symlink(&target, env.manifest("db.yaml")).unwrap();
    let r = env.tick();
    assert!(
        r.status_writes.contains(&"meshapps/demo/db".to_string()),
        "{r:?}"
    );
    assert_eq!(env.apps_of("n1"), ["demo/db", "demo/web"]);
    // The target edited where no watch is: the link is checked every pass.
    fs::write(&target, app("db", "none")).unwrap();
    let r = env.tick();
    assert_eq!(r.meshnode_writes, ["n1", "n2"], "{r:?}");
    assert_eq!(env.apps_of("n1"), ["demo/web"]);
}

#[test]
fn a_new_node_directory_and_a_changed_report_are_seen() {
    let mut env = Env::new();
    env.add_node("n3", &["web"]);
    let r = env.tick();
    assert!(r.meshnode_writes.contains(&"n3".to_string()), "{r:?}");
    assert_eq!(env.apps_of("n3"), ["demo/web"]);
    // A report replaced by rename, as daemons write it.
    let tmp = env.dir().node_dir("n1").join(".status.json.tmp");
    fs::write(&tmp, status_json("n1", &["db"])).unwrap();
    fs::rename(&tmp, env.dir().node_status("n1")).unwrap();
    let r = env.tick();
    assert!(r.meshnode_writes.contains(&"n1".to_string()), "{r:?}");
    assert!(env.apps_of("n1").is_empty());
    // A node directory removed: the node is gone (web, now on n2 alone,
    // says so in its status; no key was reported, so n2 has no peer to drop).
    fs::remove_dir_all(env.dir().node_dir("n3")).unwrap();
    let r = env.tick();
    assert_eq!(r.status_writes, ["meshapps/demo/web"], "{r:?}");
    assert!(!env.tick().wrote_anything());
    env.a_new_operator_writes_nothing();
}

#[test]
fn a_meshnode_deleted_behind_the_operators_back_is_rewritten() {
    let mut env = Env::new();
    let path = env.dir().meshnode("n1");
    let written = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    assert_eq!(env.tick().meshnode_writes, ["n1"]);
    assert_eq!(fs::read(&path).unwrap(), written);
}

#[test]
fn a_forced_full_scan_sees_what_no_event_reported() {
    let mut env = Env::new();
    // A hard link written through another directory: no watched directory
    // hears of it. The periodic full scan (or one after a queue overflow)
    // does.
    let outside = env.outside.path().join("web.yaml");
    fs::hard_link(env.manifest("web.yaml"), &outside).unwrap();
    fs::write(
        &outside,
        format!("{}---\n{}", app("web", "web"), app("db", "db")),
    )
    .unwrap();
    env.op.force_full_scan();
    let r = env.tick();
    assert!(
        r.status_writes.contains(&"meshapps/demo/db".to_string()),
        "{r:?}"
    );
    assert_eq!(env.apps_of("n1"), ["demo/db", "demo/web"]);
    // Back to events afterwards (the pass after a write reads what it wrote).
    assert!(!env.tick().wrote_anything());
    let before = env.op.reads();
    assert!(!env.tick().wrote_anything());
    assert_eq!(env.op.reads(), before);
}

#[test]
fn a_replaced_manifests_directory_is_scanned_whole() {
    let mut env = Env::new();
    // Moved away and a new directory put in its place (as a deploy tool
    // swapping a checkout does): the old watch says nothing of the new one.
    let path = env.manifests.path().to_path_buf();
    fs::rename(&path, env.outside.path().join("old")).unwrap();
    fs::create_dir(&path).unwrap();
    fs::write(path.join("db.yaml"), app("db", "db")).unwrap();
    let r = env.tick();
    assert_eq!(r.status_deletes, ["meshapps/demo/web"], "{r:?}");
    assert!(
        r.status_writes.contains(&"meshapps/demo/db".to_string()),
        "{r:?}"
    );
    assert_eq!(env.apps_of("n1"), ["demo/db"]);
    // The new directory is watched from now on.
    fs::write(path.join("web.yaml"), app("web", "web")).unwrap();
    let r = env.tick();
    assert!(
        r.status_writes.contains(&"meshapps/demo/web".to_string()),
        "{r:?}"
    );
    env.a_new_operator_writes_nothing();
}

/// The loop's wait ends at the first change of an input, not at its timer,
/// and runs to the timer when nothing changes.
#[test]
fn a_change_ends_the_wait_for_the_next_pass() {
    use std::time::{Duration, Instant};
    let mut env = Env::new();
    // Drain what the converging passes left queued.
    env.tick();
    env.tick();
    let started = Instant::now();
    env.op.wait_for_input(Duration::from_millis(300));
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "woke with nothing changed after {:?}",
        started.elapsed()
    );
    let path = env.manifest("db.yaml");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        fs::write(path, app("db", "db")).unwrap();
    });
    let started = Instant::now();
    env.op.wait_for_input(Duration::from_secs(30));
    let waited = started.elapsed();
    writer.join().unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "the new manifest did not wake it: {waited:?}"
    );
    assert_eq!(
        env.tick().meshnode_writes,
        ["n1", "n2"],
        "db reaches both nodes"
    );
}
