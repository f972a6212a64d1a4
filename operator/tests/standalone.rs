//! The standalone loop against real temp directories: manifests in, MeshNode
//! specs and statuses out, daemons faked by writing node.json / status.json.

use std::fs;
use std::path::Path;

use k8s_openapi::jiff::Timestamp;
use tempfile::TempDir;
use weft_api::conditions::{self, types};
use weft_api::standalone::{NodeRegistration, StateDir, StoredStatus};
use weft_api::{
    AppSelector, AppStatus, MeshAppStatus, MeshNode, MeshNodeStatus, PeerStatus, WorkloadStatus,
};
use weft_operator::standalone::files::write_json_atomic;
use weft_operator::standalone::get::{self, Output};
use weft_operator::standalone::{Standalone, StandaloneConfig};

const APPS: &str = "\
apiVersion: weft.dev/v1alpha1
kind: MeshApp
metadata: {name: web, namespace: demo}
spec:
  addressSpace: 10.100.0.0/16
  selector: {matchLabels: {tier: web}}
---
apiVersion: weft.dev/v1alpha1
kind: MeshApp
metadata: {name: db, namespace: demo}
spec: {}
";

struct Env {
    manifests: TempDir,
    state: TempDir,
    op: Standalone,
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

impl Env {
    fn new() -> Self {
        let manifests = TempDir::new().unwrap();
        let state = TempDir::new().unwrap();
        fs::write(manifests.path().join("apps.yaml"), APPS).unwrap();
        let op = Standalone::new(StandaloneConfig::new(manifests.path(), state.path()));
        Env {
            manifests,
            state,
            op,
        }
    }

    fn dir(&self) -> StateDir {
        StateDir::new(self.state.path())
    }

    fn register(&self, node: &str, addr: &str) {
        let reg = NodeRegistration {
            name: node.into(),
            site: "local".into(),
            address: addr.into(),
            labels: Default::default(),
        };
        write_json_atomic(&self.dir().registration(node), &reg).unwrap();
    }

    fn report(&self, node: &str, status: &MeshNodeStatus) {
        write_json_atomic(&self.dir().node_status(node), status).unwrap();
    }

    fn meshnode(&self, node: &str) -> MeshNode {
        serde_json::from_str(&fs::read_to_string(self.dir().meshnode(node)).unwrap()).unwrap()
    }

    /// The apps listed in `selectors/<site>/<namespace>.json`; `None`
    /// when there is no such file.
    fn selectors_or_none(&self, site: &str, namespace: &str) -> Option<Vec<String>> {
        let path = self.dir().selectors_file(site, namespace).unwrap();
        let body = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        let sels: Vec<AppSelector> = serde_json::from_slice(&body).unwrap();
        Some(sels.into_iter().map(|a| a.app).collect())
    }

    fn selectors(&self, site: &str, namespace: &str) -> Vec<String> {
        self.selectors_or_none(site, namespace)
            .unwrap_or_else(|| panic!("no selector file for {site}/{namespace}"))
    }

    fn app_status(&self, key: &str) -> Option<StoredStatus<MeshAppStatus>> {
        let path = self.dir().status_file("meshapps", key);
        path.exists()
            .then(|| serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap())
    }
}

fn workload(name: &str, labels: &[(&str, &str)]) -> WorkloadStatus {
    WorkloadStatus {
        name: name.into(),
        namespace: "demo".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// (app, public key, programmed, peers with handshake ages).
type AppReport<'a> = (&'a str, &'a str, bool, Vec<(&'a str, u64)>);

/// A daemon's report: heartbeat at `now`, the given workloads, and for each
/// app (name, key, programmed, peers with handshake ages).
fn status(
    now: Timestamp,
    gen: Option<i64>,
    workloads: Vec<WorkloadStatus>,
    apps: Vec<AppReport<'_>>,
) -> MeshNodeStatus {
    MeshNodeStatus {
        observed_generation: gen,
        heartbeat: Some(now.to_string()),
        workloads,
        apps: apps
            .into_iter()
            .map(|(app, key, programmed, peers)| AppStatus {
                app: app.into(),
                public_key: key.into(),
                programmed,
                peers: peers
                    .into_iter()
                    .map(|(n, hs)| PeerStatus {
                        node: n.into(),
                        last_handshake_seconds: Some(hs),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Two nodes, each running one `web` workload (tier=web) and n1 a `db` one.
fn two_nodes(env: &Env, now: Timestamp) {
    env.register("n1", "192.0.2.1");
    env.register("n2", "192.0.2.2");
    env.report(
        "n1",
        &status(
            now,
            None,
            vec![
                workload("w1", &[("tier", "web")]),
                workload("d1", &[("weft.dev/app", "db")]),
            ],
            vec![],
        ),
    );
    env.report(
        "n2",
        &status(now, None, vec![workload("w2", &[("tier", "web")])], vec![]),
    );
}

#[test]
fn first_tick_writes_specs_and_a_second_tick_writes_nothing() {
    let mut env = Env::new();
    two_nodes(&env, t(0));
    let r = env.op.tick(t(0)).unwrap();
    assert_eq!(r.meshnode_writes, vec!["n1", "n2"]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let n1 = env.meshnode("n1");
    assert_eq!(n1.metadata.generation, Some(1));
    assert_eq!(n1.metadata.name.as_deref(), Some("n1"));
    let apps: Vec<&str> = n1.spec.apps.iter().map(|a| a.app.as_str()).collect();
    assert_eq!(apps, vec!["demo/db", "demo/web"]);
    let web = &n1.spec.apps[1];
    assert_eq!(web.address_space, "10.100.0.0/16");
    assert_eq!(web.address, "10.100.0.1/16");
    assert_eq!(web.workloads, vec!["demo/w1"]);
    assert!(web.peers.is_empty(), "no keys reported yet");
    assert_eq!(n1.spec.apps[0].address_space, "100.64.0.0/16");
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(env.dir().meshnode("n1")).unwrap()).unwrap();
    assert_eq!(
        (&json["apiVersion"], &json["kind"]),
        (&"weft.dev/v1alpha1".into(), &"MeshNode".into()),
        "{json}"
    );
    assert!(r.status_writes.contains(&"meshapps/demo/web".to_string()));
    assert_eq!(r.selector_writes, vec!["local/demo"]);
    assert_eq!(env.selectors("local", "demo"), ["demo/db", "demo/web"]);

    let again = env.op.tick(t(1)).unwrap();
    assert!(!again.wrote_anything(), "{again:?}");

    // A restarted operator (fresh memory) also writes nothing.
    let mut restarted = Standalone::new(StandaloneConfig::new(
        env.manifests.path(),
        env.state.path(),
    ));
    let r = restarted.tick(t(2)).unwrap();
    assert!(!r.wrote_anything(), "{r:?}");
}

#[test]
fn reported_keys_flow_into_peers_and_readiness_into_status() {
    let mut env = Env::new();
    two_nodes(&env, t(0));
    env.op.tick(t(0)).unwrap();
    let st = env.app_status("demo/web").unwrap();
    assert_eq!(st.status.nodes.as_deref(), Some("0/2"));
    assert!(!conditions::is_true(&st.status.conditions, types::READY));

    let n1_gen = env.meshnode("n1").metadata.generation;
    env.report(
        "n1",
        &status(
            t(5),
            n1_gen,
            vec![
                workload("w1", &[("tier", "web")]),
                workload("d1", &[("weft.dev/app", "db")]),
            ],
            vec![
                ("demo/web", "KEY1", true, vec![]),
                ("demo/db", "KEYDB1", true, vec![]),
            ],
        ),
    );
    env.report(
        "n2",
        &status(
            t(5),
            Some(1),
            vec![workload("w2", &[("tier", "web")])],
            vec![("demo/web", "KEY2", true, vec![])],
        ),
    );
    let r = env.op.tick(t(6)).unwrap();
    assert_eq!(r.meshnode_writes, vec!["n1", "n2"]);
    let n1 = env.meshnode("n1");
    assert_eq!(n1.metadata.generation, Some(2));
    let web1 = n1.spec.apps.iter().find(|a| a.app == "demo/web").unwrap();
    let web2 = env
        .meshnode("n2")
        .spec
        .apps
        .into_iter()
        .find(|a| a.app == "demo/web")
        .unwrap();
    assert_eq!(web1.peers.len(), 1);
    assert_eq!(web1.peers[0].public_key, "KEY2");
    assert_eq!(
        web1.peers[0].endpoint,
        format!("192.0.2.2:{}", web2.listen_port)
    );
    assert_eq!(web1.peers[0].allowed_ips, vec![web2.node_slice.clone()]);
    assert_eq!(web2.peers[0].public_key, "KEY1");

    // Daemons catch up with generation 2 and handshake.
    env.report(
        "n1",
        &status(
            t(8),
            Some(2),
            vec![
                workload("w1", &[("tier", "web")]),
                workload("d1", &[("weft.dev/app", "db")]),
            ],
            vec![
                ("demo/web", "KEY1", true, vec![("n2", 3)]),
                ("demo/db", "KEYDB1", true, vec![]),
            ],
        ),
    );
    env.report(
        "n2",
        &status(
            t(8),
            Some(2),
            vec![workload("w2", &[("tier", "web")])],
            vec![("demo/web", "KEY2", true, vec![("n1", 4)])],
        ),
    );
    let r = env.op.tick(t(9)).unwrap();
    assert!(r.meshnode_writes.is_empty());
    let st = env.app_status("demo/web").unwrap();
    assert_eq!(st.status.nodes.as_deref(), Some("2/2"));
    assert_eq!(st.status.peers.as_deref(), Some("1/1"));
    assert!(
        conditions::is_true(&st.status.conditions, types::READY),
        "{:?}",
        st.status.conditions
    );
    let db = env.app_status("demo/db").unwrap();
    assert!(
        conditions::is_true(&db.status.conditions, types::READY),
        "{:?}",
        db.status.conditions
    );

    let table = get::render("meshapps", env.state.path(), Output::Table, t(70)).unwrap();
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(
        table.lines().any(|l| l.contains("web")
            && l.contains("True")
            && l.contains("2/2")
            && l.contains("10.100.0.0/16")
            && l.ends_with("70s")),
        "{table}"
    );
    let wide = get::render("meshnodes", env.state.path(), Output::Wide, t(70)).unwrap();
    assert!(wide.contains("n1") && wide.contains("GENERATION"), "{wide}");
    let json = get::render("meshapps", env.state.path(), Output::Json, t(70)).unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&json)
        .unwrap()
        .is_array());
}

#[test]
fn a_broken_manifest_keeps_its_last_good_content() {
    let mut env = Env::new();
    two_nodes(&env, t(0));
    env.op.tick(t(0)).unwrap();
    let before = env.meshnode("n1");

    fs::write(
        env.manifests.path().join("apps.yaml"),
        "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: web\n",
    )
    .unwrap();
    let r = env.op.tick(t(1)).unwrap();
    assert_eq!(r.manifest_errors.len(), 1, "{r:?}");
    assert!(r.meshnode_writes.is_empty(), "{r:?}");
    // The apps say why, and that their last accepted spec stays in force.
    let web = env.app_status("demo/web").unwrap();
    let ready = conditions::get(&web.status.conditions, types::READY).unwrap();
    assert!(
        ready.message.contains("apps.yaml")
            && ready.message.contains("still enforcing generation 1"),
        "{ready:?}"
    );
    assert_eq!(env.meshnode("n1").spec, before.spec);
    assert_eq!(
        env.meshnode("n1").metadata.generation,
        before.metadata.generation
    );

    // Unknown kind in the second document: same, and the error names it.
    fs::write(
        env.manifests.path().join("apps.yaml"),
        format!(
            "{APPS}---\napiVersion: weft.dev/v1alpha1\nkind: MeshWidget\nmetadata: {{name: x}}\n"
        ),
    )
    .unwrap();
    let r = env.op.tick(t(2)).unwrap();
    assert!(
        r.manifest_errors[0].1.contains("document 2"),
        "{:?}",
        r.manifest_errors
    );
    assert!(r.meshnode_writes.is_empty(), "{r:?}");

    // Fixing the file clears the error; nothing was ever rewritten on a node.
    fs::write(env.manifests.path().join("apps.yaml"), APPS).unwrap();
    let r = env.op.tick(t(3)).unwrap();
    assert!(r.manifest_errors.is_empty());
    assert!(r.meshnode_writes.is_empty(), "{r:?}");
    let r = env.op.tick(t(4)).unwrap();
    assert!(!r.wrote_anything(), "{r:?}");
    assert_eq!(
        env.meshnode("n1").metadata.generation,
        before.metadata.generation
    );
}

#[test]
fn deleting_a_manifest_removes_its_apps() {
    let mut env = Env::new();
    two_nodes(&env, t(0));
    fs::write(env.manifests.path().join("extra.yml"), "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: api, namespace: demo}\nspec: {}\n").unwrap();
    env.report(
        "n2",
        &status(
            t(0),
            None,
            vec![
                workload("w2", &[("tier", "web")]),
                workload("a1", &[("weft.dev/app", "api")]),
            ],
            vec![],
        ),
    );
    env.op.tick(t(0)).unwrap();
    assert!(env
        .meshnode("n2")
        .spec
        .apps
        .iter()
        .any(|a| a.app == "demo/api"));
    assert!(env.app_status("demo/api").is_some());

    fs::remove_file(env.manifests.path().join("extra.yml")).unwrap();
    let r = env.op.tick(t(1)).unwrap();
    // n2 loses the app; n1 never had it. Its namespace's selectors lose it.
    assert_eq!(r.meshnode_writes, vec!["n2"]);
    assert_eq!(r.selector_writes, vec!["local/demo"]);
    assert_eq!(env.selectors("local", "demo"), ["demo/db", "demo/web"]);
    assert_eq!(r.status_deletes, vec!["meshapps/demo/api"]);
    let n2 = env.meshnode("n2");
    assert_eq!(n2.metadata.generation, Some(2));
    assert!(!n2.spec.apps.iter().any(|a| a.app == "demo/api"));
    assert!(env.app_status("demo/api").is_none());
    // web kept its allocation.
    assert_eq!(
        n2.spec
            .apps
            .iter()
            .find(|a| a.app == "demo/web")
            .unwrap()
            .address,
        "10.100.1.1/16"
    );
}

#[test]
fn a_lost_node_is_dropped_from_peers_and_unregistered_nodes_get_nothing() {
    let mut env = Env::new();
    two_nodes(&env, t(0));
    env.report(
        "n1",
        &status(
            t(0),
            None,
            vec![workload("w1", &[("tier", "web")])],
            vec![("demo/web", "KEY1", false, vec![])],
        ),
    );
    env.report(
        "n2",
        &status(
            t(0),
            None,
            vec![workload("w2", &[("tier", "web")])],
            vec![("demo/web", "KEY2", false, vec![])],
        ),
    );
    // A node directory without node.json is not planned.
    fs::create_dir_all(env.dir().node_dir("n3")).unwrap();
    env.op.tick(t(1)).unwrap();
    assert_eq!(env.meshnode("n2").spec.apps[0].peers.len(), 1);
    assert!(!env.dir().meshnode("n3").exists());

    // n1 keeps reporting, n2 goes silent.
    env.report(
        "n1",
        &status(
            t(60),
            None,
            vec![workload("w1", &[("tier", "web")])],
            vec![("demo/web", "KEY1", false, vec![])],
        ),
    );
    env.op.tick(t(61)).unwrap();
    assert!(env.meshnode("n1").spec.apps[0].peers.is_empty());
    let st = env.app_status("demo/web").unwrap();
    let ready = conditions::get(&st.status.conditions, types::READY).unwrap();
    assert!(ready.message.contains("n2 (lost)"), "{}", ready.message);
}

#[test]
fn plan_errors_reach_status_and_the_report() {
    let mut env = Env::new();
    two_nodes(&env, t(0));
    fs::write(env.manifests.path().join("bad.yaml"), "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: zz, namespace: demo}\nspec: {addressSpace: 10.100.5.0/24}\n---\napiVersion: weft.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {name: p, namespace: demo}\nspec: {app: ghost}\n").unwrap();
    let r = env.op.tick(t(0)).unwrap();
    assert!(
        r.errors
            .iter()
            .any(|e| e.object == "MeshApp demo/zz" && e.reason == "AddressSpaceConflict"),
        "{:?}",
        r.errors
    );
    assert!(r
        .errors
        .iter()
        .any(|e| e.object == "MeshPolicy demo/p" && e.field == "spec.app"));
    let zz = env.app_status("demo/zz").unwrap();
    let d = conditions::get(&zz.status.conditions, types::DEGRADED).unwrap();
    assert!(d.message.contains("spec.addressSpace"), "{}", d.message);
    let pol: StoredStatus<weft_api::MeshPolicyStatus> = serde_json::from_str(
        &fs::read_to_string(env.dir().status_file("meshpolicies", "demo/p")).unwrap(),
    )
    .unwrap();
    assert!(!conditions::is_true(
        &pol.status.conditions,
        types::ACCEPTED
    ));
    assert!(!env.op.tick(t(1)).unwrap().wrote_anything());
}

#[test]
fn editing_a_spec_bumps_its_generation() {
    let mut env = Env::new();
    env.op.tick(t(0)).unwrap();
    assert_eq!(env.app_status("demo/web").unwrap().generation, 1);
    fs::write(
        env.manifests.path().join("apps.yaml"),
        APPS.replace("spec: {}", "spec: {mtu: 1400}"),
    )
    .unwrap();
    env.op.tick(t(1)).unwrap();
    assert_eq!(env.app_status("demo/db").unwrap().generation, 2);
    assert_eq!(env.app_status("demo/web").unwrap().generation, 1);
}

#[test]
fn every_example_manifest_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !weft_operator::standalone::manifests::is_manifest(&path) {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let parsed = weft_operator::standalone::manifests::parse_manifest(&path, &text);
        assert_eq!(parsed.file_problem, None, "{}", path.display());
        assert!(!parsed.docs.is_empty(), "{} has no objects", path.display());
        for d in &parsed.docs {
            assert!(
                d.problems.is_empty(),
                "{}: {:?}",
                path.display(),
                d.problems
            );
        }
        seen += 1;
    }
    assert!(
        seen >= 2,
        "examples/ should hold the app and site manifests"
    );
    // And they plan cleanly together.
    let state = TempDir::new().unwrap();
    let mut op = Standalone::new(StandaloneConfig::new(&dir, state.path()));
    let r = op.tick(t(0)).unwrap();
    assert!(r.errors.is_empty() && r.manifest_errors.is_empty(), "{r:?}");
    assert!(r.status_writes.contains(&"meshsites/local".to_string()));
}

fn workload_in(namespace: &str, name: &str, labels: &[(&str, &str)]) -> WorkloadStatus {
    WorkloadStatus {
        namespace: namespace.into(),
        ..workload(name, labels)
    }
}

fn write_manifest(env: &Env, file: &str, yaml: &str) {
    fs::write(env.manifests.path().join(file), yaml).unwrap();
}

/// The bytes of every node's meshnode.json.
fn meshnode_bytes(env: &Env, nodes: &[String]) -> Vec<Vec<u8>> {
    nodes
        .iter()
        .map(|n| fs::read(env.dir().meshnode(n)).unwrap())
        .collect()
}

#[test]
fn adding_one_app_rewrites_only_the_meshnodes_of_its_nodes() {
    let mut env = Env::new();
    let nodes: Vec<String> = (1..=6).map(|i| format!("n{i}")).collect();
    for (i, n) in nodes.iter().enumerate() {
        env.register(n, &format!("192.0.2.{}", i + 1));
        let mut w = vec![workload(&format!("w{i}"), &[("tier", "web")])];
        // Workloads of an app that does not exist yet, on n2 and n5.
        if n == "n2" || n == "n5" {
            w.push(workload_in(
                "ops",
                &format!("a{i}"),
                &[("weft.dev/app", "api")],
            ));
        }
        env.report(n, &status(t(0), None, w, vec![]));
    }
    env.op.tick(t(0)).unwrap();
    assert!(!env.op.tick(t(1)).unwrap().wrote_anything());
    let before = meshnode_bytes(&env, &nodes);

    write_manifest(
        &env,
        "api.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: api, namespace: ops}\nspec: {}\n",
    );
    let r = env.op.tick(t(2)).unwrap();
    let after = meshnode_bytes(&env, &nodes);
    let rewritten: Vec<&str> = nodes
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| b != a)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(rewritten, ["n2", "n5"], "only the app's nodes");
    assert_eq!(r.meshnode_writes, rewritten);
    // Every other node learns of it from its namespace's selector file.
    assert_eq!(r.selector_writes, vec!["local/ops"]);
    assert_eq!(env.selectors("local", "ops"), ["ops/api"]);
}

#[test]
fn selector_files_follow_the_apps_of_each_namespace_and_site() {
    let mut env = Env::new();
    two_nodes(&env, t(0));
    env.op.tick(t(0)).unwrap();
    assert_eq!(env.selectors("local", "demo"), ["demo/db", "demo/web"]);
    assert_eq!(env.selectors_or_none("local", "ops"), None);

    // A new namespace's app: its own file appears, demo's is not touched.
    // One for another site waits until that site has a node.
    write_manifest(
        &env,
        "ops.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: api, namespace: ops}\nspec: {}\n---\n\
         apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: far, namespace: ops}\nspec: {sites: [edge]}\n",
    );
    let r = env.op.tick(t(1)).unwrap();
    assert_eq!(r.selector_writes, vec!["local/ops"]);
    assert_eq!(env.selectors("local", "ops"), ["ops/api"]);
    assert!(!env.dir().selectors_dir().join("edge").exists());

    // A rejected app still claims its workloads (they wait for it rather
    // than start unmeshed): it is listed all the same.
    write_manifest(
        &env,
        "clash.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: clash, namespace: demo}\nspec: {addressSpace: 10.100.128.0/17}\n",
    );
    let r = env.op.tick(t(2)).unwrap();
    assert!(
        r.errors.iter().any(|e| e.object == "MeshApp demo/clash"),
        "{:?}",
        r.errors
    );
    assert_eq!(r.selector_writes, vec!["local/demo"]);
    assert_eq!(
        env.selectors("local", "demo"),
        ["demo/clash", "demo/db", "demo/web"]
    );

    // A node at the edge: its site gets the files of the apps spanning it.
    let edge = NodeRegistration {
        name: "e1".into(),
        site: "edge".into(),
        address: "192.0.2.9".into(),
        labels: Default::default(),
    };
    write_json_atomic(&env.dir().registration("e1"), &edge).unwrap();
    let r = env.op.tick(t(3)).unwrap();
    assert_eq!(r.selector_writes, vec!["edge/ops"]);
    assert_eq!(env.selectors("edge", "ops"), ["ops/far"]);
    assert_eq!(env.selectors_or_none("edge", "demo"), None);
    assert!(!env.op.tick(t(4)).unwrap().wrote_anything());

    // The namespace's last apps go: so do its files (and the edge's
    // directory, left empty).
    fs::remove_file(env.manifests.path().join("ops.yaml")).unwrap();
    let r = env.op.tick(t(5)).unwrap();
    assert_eq!(r.selector_deletes, vec!["edge/ops", "local/ops"]);
    assert!(r.selector_writes.is_empty(), "{r:?}");
    assert_eq!(env.selectors_or_none("local", "ops"), None);
    assert!(!env.dir().selectors_dir().join("edge").exists());
    assert_eq!(
        env.selectors("local", "demo"),
        ["demo/clash", "demo/db", "demo/web"]
    );

    // A restarted operator finds the files as it left them.
    let mut restarted = Standalone::new(StandaloneConfig::new(
        env.manifests.path(),
        env.state.path(),
    ));
    let r = restarted.tick(t(6)).unwrap();
    assert!(!r.wrote_anything(), "{r:?}");
}

/// n1's report for `demo/web` with its peer n2 and the given counters.
fn web_report(now: Timestamp, gen: Option<i64>, rx: u64) -> MeshNodeStatus {
    let mut st = status(
        now,
        gen,
        vec![
            workload("w1", &[("tier", "web")]),
            workload("d1", &[("weft.dev/app", "db")]),
        ],
        vec![("demo/web", "KEY1", true, vec![("n2", 5)])],
    );
    st.apps[0].peers[0].rx_bytes = rx;
    st
}

/// Between passes that plan everything, statuses are computed only for the
/// apps a change can reach (see `status_scope`); what depends on time alone,
/// the traffic figures' refresh, still lands once it is due.
#[test]
fn statuses_follow_node_reports_and_held_back_traffic_lands_when_due() {
    let mut env = Env::new();
    env.op = Standalone::new(
        StandaloneConfig::new(env.manifests.path(), env.state.path()).with_traffic_refresh(20),
    );
    two_nodes(&env, t(0));
    env.op.tick(t(0)).unwrap();
    let gen = env.meshnode("n1").metadata.generation;
    env.report("n1", &web_report(t(1), gen, 100));
    env.op.tick(t(1)).unwrap();
    let traffic = |env: &Env| {
        env.app_status("demo/web")
            .unwrap()
            .status
            .traffic
            .map(|t| t.rx_bytes)
    };
    assert_eq!(traffic(&env), Some(100), "a node's report reaches its app");

    // Counters alone move: held back for the refresh interval (20 s)...
    env.report("n1", &web_report(t(2), gen, 200));
    let r = env.op.tick(t(2)).unwrap();
    assert!(
        r.status_writes.is_empty(),
        "counters alone do not rewrite a young status: {:?}",
        r.status_writes
    );
    let r = env.op.tick(t(10)).unwrap();
    assert!(r.status_writes.is_empty(), "{:?}", r.status_writes);
    assert_eq!(traffic(&env), Some(100));
    // ...and written once it is due, with no new report in between (both
    // heartbeats still count: no node is lost yet).
    let r = env.op.tick(t(25)).unwrap();
    assert_eq!(r.status_writes, vec!["meshapps/demo/web"]);
    assert_eq!(traffic(&env), Some(200));
    let r = env.op.tick(t(26)).unwrap();
    assert!(!r.wrote_anything(), "{r:?}");
}
