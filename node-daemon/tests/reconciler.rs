//! The daemon's reconcile loop against the in-memory data plane.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weft_api::standalone::LocalWorkload;
use weft_api::{AppAttachment, MeshNode, MeshNodeSpec, PeerSpec};
use weft_node_daemon::dataplane::fake::FakeDataplane;
use weft_node_daemon::run::reconcile::Reconciler;

fn t() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
}

const PEER_KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

fn attachment(app: &str, id: &str, octet: u8) -> AppAttachment {
    AppAttachment {
        app: app.into(),
        app_id: id.into(),
        netns: format!("weft-n1-{id}"),
        interface: format!("wf{id}"),
        address_space: format!("10.{octet}.0.0/16"),
        node_slice: format!("10.{octet}.1.0/24"),
        address: format!("10.{octet}.1.1/16"),
        listen_port: 51820 + octet as u16,
        mtu: 1420,
        persistent_keepalive: 0,
        workloads: vec!["demo/w1".into()],
        peers: vec![std::sync::Arc::new(PeerSpec {
            node: "n2".into(),
            public_key: PEER_KEY.into(),
            endpoint: "192.0.2.2:51820".into(),
            allowed_ips: vec![format!("10.{octet}.2.0/24")],
        })],
        policy: None,
        app_links: Vec::new(),
        remote_apps: Vec::new(),
        names: Default::default(),
    }
}

fn meshnode(generation: i64, apps: Vec<AppAttachment>) -> MeshNode {
    let mut mn = MeshNode::new(
        "n1",
        MeshNodeSpec {
            site: "local".into(),
            apps,
        },
    );
    mn.metadata.generation = Some(generation);
    mn
}

fn workloads() -> Vec<LocalWorkload> {
    vec![LocalWorkload {
        name: "w1".into(),
        namespace: "demo".into(),
        labels: Default::default(),
        netns: "/run/netns/w1".into(),
    }]
}

fn rec(dir: &std::path::Path) -> Reconciler<FakeDataplane> {
    Reconciler::new("n1", "192.0.2.1", FakeDataplane::default(), dir).unwrap()
}

#[test]
fn converged_resync_makes_zero_writes() {
    let d = tempfile::tempdir().unwrap();
    let mut r = rec(d.path());
    let spec = meshnode(1, vec![attachment("demo/web", "aaaaaaaaaa", 100)]);
    let first = r.pass(Some(&spec), &workloads(), t());
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert!(
        first.writes >= 7,
        "netns, device, link, address, peer, route, workload: {}",
        first.writes
    );
    let second = r.pass(Some(&spec), &workloads(), t());
    assert_eq!(second.writes, 0, "a converged resync must not write");
    assert!(second.status.apps[0].programmed);
}

#[test]
fn deleted_interface_is_recreated_on_resync() {
    let d = tempfile::tempdir().unwrap();
    let mut r = rec(d.path());
    let spec = meshnode(1, vec![attachment("demo/web", "aaaaaaaaaa", 100)]);
    r.pass(Some(&spec), &workloads(), t());
    let key_before = r.pass(Some(&spec), &workloads(), t()).status.apps[0]
        .public_key
        .clone();
    r.dataplane()
        .state
        .apps
        .get_mut("weft-n1-aaaaaaaaaa")
        .unwrap()
        .device = None;
    let repair = r.pass(Some(&spec), &workloads(), t());
    assert!(repair.writes > 0);
    let dev = r.dataplane().state.apps["weft-n1-aaaaaaaaaa"]
        .device
        .clone()
        .unwrap();
    assert_eq!(dev.public_key, key_before, "same key after repair");
    assert_eq!(dev.peers.len(), 1);
    assert_eq!(r.pass(Some(&spec), &workloads(), t()).writes, 0);
}

#[test]
fn deleted_netns_is_recreated_on_resync() {
    let d = tempfile::tempdir().unwrap();
    let mut r = rec(d.path());
    let spec = meshnode(1, vec![attachment("demo/web", "aaaaaaaaaa", 100)]);
    r.pass(Some(&spec), &workloads(), t());
    r.dataplane().state.apps.clear();
    r.pass(Some(&spec), &workloads(), t());
    assert!(r.dataplane().state.apps["weft-n1-aaaaaaaaaa"]
        .device
        .is_some());
    assert_eq!(
        r.dataplane().state.apps["weft-n1-aaaaaaaaaa"]
            .workloads
            .len(),
        1
    );
}

#[test]
fn removed_app_is_fully_cleaned_up_including_its_key() {
    let d = tempfile::tempdir().unwrap();
    let mut r = rec(d.path());
    let both = meshnode(
        1,
        vec![
            attachment("demo/web", "aaaaaaaaaa", 100),
            attachment("demo/db", "bbbbbbbbbb", 101),
        ],
    );
    r.pass(Some(&both), &workloads(), t());
    assert!(d.path().join("keys/bbbbbbbbbb.key").exists());
    let one = meshnode(2, vec![attachment("demo/web", "aaaaaaaaaa", 100)]);
    let rep = r.pass(Some(&one), &workloads(), t());
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert!(!r.dataplane().state.apps.contains_key("weft-n1-bbbbbbbbbb"));
    assert!(
        !d.path().join("keys/bbbbbbbbbb.key").exists(),
        "key of a removed app is deleted"
    );
    assert!(d.path().join("keys/aaaaaaaaaa.key").exists());
    assert_eq!(rep.status.observed_generation, Some(2));
}

#[test]
fn invalid_spec_for_one_app_keeps_its_last_good_state_and_the_others_running() {
    let d = tempfile::tempdir().unwrap();
    let mut r = rec(d.path());
    let good = meshnode(
        1,
        vec![
            attachment("demo/web", "aaaaaaaaaa", 100),
            attachment("demo/db", "bbbbbbbbbb", 101),
        ],
    );
    r.pass(Some(&good), &workloads(), t());
    let mut broken_db = attachment("demo/db", "bbbbbbbbbb", 101);
    broken_db.address_space = "10.101.0.0/99".into();
    let mut web2 = attachment("demo/web", "aaaaaaaaaa", 100);
    web2.mtu = 1400;
    let bad = meshnode(2, vec![web2, broken_db]);
    let rep = r.pass(Some(&bad), &workloads(), t());
    assert!(
        rep.errors
            .iter()
            .any(|e| e.contains("spec.apps[demo/db].addressSpace")),
        "{:?}",
        rep.errors
    );
    let db = &r.dataplane().state.apps["weft-n1-bbbbbbbbbb"];
    assert!(
        db.device.is_some(),
        "the working db data plane is not torn down"
    );
    assert_eq!(
        r.dataplane().state.apps["weft-n1-aaaaaaaaaa"]
            .device
            .as_ref()
            .unwrap()
            .mtu,
        1400,
        "web still updates"
    );
    let db_status = rep.status.apps.iter().find(|a| a.app == "demo/db").unwrap();
    assert!(!db_status.programmed && db_status.error.as_ref().unwrap().contains("addressSpace"));
    assert_eq!(rep.status.conditions[0].status, "False");
}

#[test]
fn without_a_spec_nothing_is_touched() {
    let d = tempfile::tempdir().unwrap();
    let mut r = rec(d.path());
    let spec = meshnode(1, vec![attachment("demo/web", "aaaaaaaaaa", 100)]);
    r.pass(Some(&spec), &workloads(), t());
    let rep = r.pass(None, &workloads(), t());
    assert_eq!(rep.writes, 0);
    assert!(r.dataplane().state.apps.contains_key("weft-n1-aaaaaaaaaa"));
    assert_eq!(rep.status.conditions[0].reason, "NoSpec");
}

#[test]
fn workload_addresses_survive_a_daemon_restart() {
    let d = tempfile::tempdir().unwrap();
    let spec = meshnode(1, vec![attachment("demo/web", "aaaaaaaaaa", 100)]);
    let addr1 = rec(d.path())
        .pass(Some(&spec), &workloads(), t())
        .status
        .workloads[0]
        .address
        .clone();
    let addr2 = rec(d.path())
        .pass(Some(&spec), &workloads(), t())
        .status
        .workloads[0]
        .address
        .clone();
    assert_eq!(addr1, addr2);
    assert_eq!(addr1.as_deref(), Some("10.100.1.2"));
}

#[test]
fn failed_operation_marks_only_its_app_not_programmed() {
    let d = tempfile::tempdir().unwrap();
    let mut r = rec(d.path());
    r.dataplane().fail_ops = vec!["attach_workload"];
    let spec = meshnode(1, vec![attachment("demo/web", "aaaaaaaaaa", 100)]);
    let rep = r.pass(Some(&spec), &workloads(), t());
    assert!(!rep.status.apps[0].programmed);
    assert!(
        rep.errors.iter().any(|e| e.contains("attach_workload")),
        "{:?}",
        rep.errors
    );
    r.dataplane().fail_ops.clear();
    let rep = r.pass(Some(&spec), &workloads(), t());
    assert!(rep.status.apps[0].programmed, "{:?}", rep.errors);
}

#[test]
fn status_and_logs_carry_public_keys_only() {
    let d = tempfile::tempdir().unwrap();
    let mut r = rec(d.path());
    let spec = meshnode(1, vec![attachment("demo/web", "aaaaaaaaaa", 100)]);
    let rep = r.pass(Some(&spec), &workloads(), t());
    let key = std::fs::read(d.path().join("keys/aaaaaaaaaa.key")).unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&key);
    let json = serde_json::to_string(&rep.status).unwrap();
    let dbg = format!("{:?} {:?}", rep, r.dataplane().applied);
    for s in [&json, &dbg] {
        assert!(!s.contains(&hex) && !s.contains(&b64), "private key leaked");
    }
    assert!(json.contains(&rep.status.apps[0].public_key));
}

#[test]
fn peers_without_a_handshake_are_probed_through_the_tunnel_rate_limited() {
    let d = tempfile::tempdir().unwrap();
    let mut r = rec(d.path());
    let spec = meshnode(1, vec![attachment("demo/web", "aaaaaaaaaa", 100)]);
    r.pass(Some(&spec), &workloads(), t());
    let probes = r.dataplane().probes.clone();
    assert_eq!(
        probes,
        vec![(
            "weft-n1-aaaaaaaaaa".to_string(),
            "10.100.2.1".parse().unwrap()
        )],
        "peer n2's tunnel address"
    );
    let writes = r.pass(Some(&spec), &workloads(), t()).writes;
    assert_eq!(writes, 0, "probing is traffic, not a write");
    assert_eq!(r.dataplane().probes.len(), 1, "rate-limited");
}
