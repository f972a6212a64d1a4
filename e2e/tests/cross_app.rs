//! End-to-end: traffic between two apps, through the standalone operator and
//! real node daemons, with `examples/policy-web-db.yaml` (web's
//! role=frontend may open TCP 5432 to db's role=primary, both sides say so).
//! On node 1 both apps get an app link; everything else between the apps
//! stays dropped, and deleting the policies closes the path again.
//!
//! Needs root, `ip`, `ping`, `nft` and the workspace binaries built first
//! (`cargo build --workspace`). Without root the test prints `SKIPPED` —
//! except under `CI=true`, where a skip is a failure.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weft_api::conditions::{self, types};
use weft_api::standalone::StoredStatus;
use weft_api::MeshPolicyStatus;
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::scenario::{self, NS};
use weft_e2e::traffic::{ping, tcp_transfer_opts, TransferOpts};

const READY: Duration = Duration::from_secs(25);
const PG: u16 = 5432;

fn tcp(c: &Cluster, from: &str, to: &str, addr: Ipv4Addr, port: u16, secs: u64) -> bool {
    let (from, to) = (
        c.workload(from).netns().to_string(),
        c.workload(to).netns().to_string(),
    );
    tcp_transfer_opts(
        &from,
        &to,
        addr,
        &TransferOpts {
            bytes: 256 << 10,
            port,
            fill: None,
            timeout: Duration::from_secs(secs),
        },
    )
    .is_ok()
}

fn pings(c: &Cluster, from: &str, to: Ipv4Addr) -> bool {
    ping(c.workload(from).netns(), to, 2, Duration::from_secs(2))
        .unwrap()
        .ok
}

fn policy_status(c: &Cluster, name: &str) -> MeshPolicyStatus {
    let path = c
        .state()
        .status_file("meshpolicies", &format!("{NS}/{name}"));
    let s: StoredStatus<MeshPolicyStatus> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    s.status
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_apps_talk_only_where_both_policies_allow() {
    if !scenario::privileged_or_skip("two_apps_talk_only_where_both_policies_allow") {
        return;
    }
    for b in ["weft-operator", "weft-node-daemon"] {
        if let Err(e) = weft_e2e::bin(b) {
            panic!("{e:#}: run `cargo build --workspace` first");
        }
    }
    let mut c = Cluster::new(2).expect("build the simulated network");
    c.start_all().expect("start operator and daemons");
    scenario::install_manifests(&c, &scenario::repo_examples_dir()).expect("write manifests");
    scenario::add_workloads(&mut c).expect("announce workloads");
    c.add_workload(1, "fe", NS, &[("tier", "web"), ("role", "frontend")])
        .unwrap();
    let db = weft_api::labels::APP_LABEL;
    c.add_workload(1, "pg", NS, &[(db, "db"), ("role", "primary")])
        .unwrap();
    c.add_workload(2, "pg-far", NS, &[(db, "db"), ("role", "primary")])
        .unwrap();
    for app in ["web", "db"] {
        c.wait_ready(NS, app, READY)
            .unwrap_or_else(|e| panic!("{NS}/{app} not Ready: {e:#}"));
    }
    let a = scenario::wait_addresses(&mut c, READY).expect("addresses");
    let fe = c.wait_address("fe", READY).unwrap();
    let pg = c.wait_address("pg", READY).unwrap();
    let pg_far = c.wait_address("pg-far", READY).unwrap();

    // Both sides allow fe -> pg on TCP 5432: it passes (with its replies,
    // the transfer is checked end to end). The link may take a pass or two
    // after the addresses are reported.
    wait("fe -> pg:5432 through the app link", READY, || {
        tcp(&c, "fe", "pg", pg, PG, 3)
    });
    // The link is node 1's only: both apps' entries there carry it.
    let n1 = weft_e2e::status::read_meshnode(c.state(), &c.node_name(1))
        .unwrap()
        .unwrap();
    for (app, other) in [("web", "db"), ("db", "web")] {
        let att = n1["spec"]["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["app"] == format!("{NS}/{app}"))
            .unwrap();
        assert_eq!(att["appLinks"][0]["app"], format!("{NS}/{other}"), "{att}");
    }
    let n2 = weft_e2e::status::read_meshnode(c.state(), &c.node_name(2))
        .unwrap()
        .unwrap();
    assert!(!n2.to_string().contains("appLinks"), "no link on node 2");
    // Everything else between the apps stays dropped.
    assert!(!tcp(&c, "fe", "pg", pg, 5433, 3), "another port");
    assert!(!pings(&c, "fe", pg), "ICMP is not allowed");
    assert!(
        !tcp(&c, "web-1", "pg", pg, PG, 3),
        "a web workload web does not allow"
    );
    assert!(
        !tcp(&c, "fe", "db-1", a.db1, PG, 3),
        "a db workload db does not expose"
    );
    assert!(!tcp(&c, "pg", "fe", fe, PG, 3), "the reverse direction");
    assert!(
        !tcp(&c, "fe", "pg-far", pg_far, PG, 3),
        "db on the other node"
    );
    assert!(!pings(&c, "web-1", a.db1), "web-1 -> db-1 (same node)");
    // Inside their own apps the selected workloads stay open.
    assert!(pings(&c, "fe", a.web2), "fe -> web-2 (within web)");
    assert!(pings(&c, "db-2", pg), "db-2 -> pg (within db)");
    // The policy names what is out of reach.
    let st = policy_status(&c, "web-to-db");
    let acc = conditions::get(&st.conditions, types::ACCEPTED).unwrap();
    assert_eq!(acc.status, "True", "{}", acc.message);
    assert!(
        acc.message.contains(&c.node_name(2)) && acc.message.contains("out of reach"),
        "{}",
        acc.message
    );

    // Deleting the policy pair removes the link: the path is gone.
    c.delete_manifest("policy-web-db.yaml").unwrap();
    wait("the app link to go", READY, || {
        !tcp(&c, "fe", "pg", pg, PG, 2)
    });
    assert!(pings(&c, "fe", a.web2), "web still works");
    assert_torn_down_cleanly(c);
}
