//! End-to-end: traffic between two apps, through the standalone operator and
//! real node daemons, with `examples/policy-web-db.yaml` (web's
//! role=frontend may open TCP 5432 to db's role=primary, both sides say so).
//! On node 1 both apps get an app link; fe also reaches the primary on node
//! 2 (the pair crosses on node 2, in web's tunnel); everything else between
//! the apps stays dropped, and deleting the policies closes the paths
//! again. `cross_app_nodes.rs` covers a carrier placed without workloads.
//!
//! Needs root, `ip`, `ping`, `nft` and the workspace binaries built first
//! (`cargo build --workspace`). Without root the test prints `SKIPPED` —
//! except under `CI=true`, where a skip is a failure.

use std::time::Duration;

use weft_api::conditions::{self, types};
use weft_api::standalone::StoredStatus;
use weft_api::MeshPolicyStatus;
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::probe;
use weft_e2e::scenario::{self, NS};

const READY: Duration = Duration::from_secs(25);
const PG: u16 = 5432;

fn policy_status(c: &Cluster, name: &str) -> MeshPolicyStatus {
    let path = c
        .state()
        .status_file("meshpolicies", &format!("{NS}/{name}"));
    let s: StoredStatus<MeshPolicyStatus> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    s.status
}

#[test]
fn two_apps_talk_only_where_both_policies_allow() {
    let Some(mut c) =
        scenario::cluster_with_examples("two_apps_talk_only_where_both_policies_allow", 2)
    else {
        return;
    };
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
    probe::wait("fe -> pg:5432 through the app link", READY, || {
        probe::tcp(&c, "fe", "pg", pg, PG, 256 << 10, 3)
    });
    // fe -> pg-far crosses nodes: db sorts first, so the pair crosses on
    // pg-far's node (2), over a web-db link there, and web's tunnel carries
    // pg-far's address between the nodes.
    probe::wait("fe -> pg-far:5432 across nodes", READY, || {
        probe::tcp(&c, "fe", "pg-far", pg_far, PG, 256 << 10, 3)
    });
    for i in [1, 2] {
        let n = weft_e2e::status::read_meshnode(c.state(), &c.node_name(i))
            .unwrap()
            .unwrap();
        for (app, other) in [("web", "db"), ("db", "web")] {
            let att = n["spec"]["apps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["app"] == format!("{NS}/{app}"))
                .unwrap();
            assert_eq!(att["appLinks"][0]["app"], format!("{NS}/{other}"), "{att}");
        }
    }
    let n1 = weft_e2e::status::read_meshnode(c.state(), &c.node_name(1))
        .unwrap()
        .unwrap();
    let web1 = n1["spec"]["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == format!("{NS}/web"))
        .unwrap()
        .clone();
    let carried: Vec<String> = web1["peers"][0]["allowedIps"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(carried, vec![format!("{pg_far}/32")], "{web1}");
    // Everything else between the apps stays dropped.
    assert!(
        !probe::tcp(&c, "fe", "pg", pg, 5433, 256 << 10, 3),
        "another port"
    );
    assert!(!probe::pings(&c, "fe", pg), "ICMP is not allowed");
    assert!(
        !probe::tcp(&c, "web-1", "pg", pg, PG, 256 << 10, 3),
        "a web workload web does not allow"
    );
    assert!(
        !probe::tcp(&c, "fe", "db-1", a.db1, PG, 256 << 10, 3),
        "a db workload db does not expose"
    );
    assert!(
        !probe::tcp(&c, "pg", "fe", fe, PG, 256 << 10, 3),
        "the reverse direction"
    );
    assert!(
        !probe::tcp(&c, "pg-far", "fe", fe, PG, 256 << 10, 3),
        "the reverse direction across nodes"
    );
    assert!(
        !probe::tcp(&c, "web-1", "pg-far", pg_far, PG, 256 << 10, 3),
        "a web workload web does not allow, across nodes"
    );
    assert!(
        !probe::tcp(&c, "fe", "db-2", a.db2, PG, 256 << 10, 3),
        "a db workload db does not expose, across nodes"
    );
    assert!(
        !probe::pings(&c, "web-1", a.db1),
        "web-1 -> db-1 (same node)"
    );
    // Inside their own apps the selected workloads stay open.
    assert!(probe::pings(&c, "fe", a.web2), "fe -> web-2 (within web)");
    assert!(probe::pings(&c, "db-2", pg), "db-2 -> pg (within db)");
    // Everything the policies allow is carried: nothing to note.
    let st = policy_status(&c, "web-to-db");
    let acc = conditions::get(&st.conditions, types::ACCEPTED).unwrap();
    assert_eq!(acc.status, "True", "{}", acc.message);
    assert!(!acc.message.contains("not carried"), "{}", acc.message);

    // Deleting the policy pair removes the links: both paths are gone.
    c.delete_manifest("policy-web-db.yaml").unwrap();
    probe::wait("the app links to go", READY, || {
        !probe::tcp(&c, "fe", "pg", pg, PG, 256 << 10, 2)
            && !probe::tcp(&c, "fe", "pg-far", pg_far, PG, 256 << 10, 2)
    });
    for i in [1, 2] {
        let n = weft_e2e::status::read_meshnode(c.state(), &c.node_name(i))
            .unwrap()
            .unwrap()
            .to_string();
        assert!(!n.contains("appLinks") && !n.contains("remoteApps"), "{n}");
        assert!(!n.contains(&format!("{pg_far}/32")), "{n}");
    }
    assert!(probe::pings(&c, "fe", a.web2), "web still works");
    assert_torn_down_cleanly(c);
}
