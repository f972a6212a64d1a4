//! Cross-app allows through the whole planner: a link (and rules) only
//! where both apps' policies allow the flow, on the node where both live.

use weft_api::meshpolicy::{PolicyPeer, PolicyPort, PolicyRule};
use weft_api::{AppAttachment, MeshAppSpec, MeshPolicySpec, PolicyDirection, Selector};

use super::super::{plan, NodeInfo, ObjectKey, Plan, Snapshot};

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("demo", name)
}

fn tcp(port: u16) -> PolicyPort {
    PolicyPort {
        protocol: Some("TCP".into()),
        port: Some(port),
        end_port: None,
    }
}

/// web (10.1.0.0/16) and db (10.2.0.0/16); web's client and server on
/// `web_node`, db's workload on `db_node`.
fn world(web_node: &str, db_node: &str) -> Snapshot {
    let mut s = Snapshot::default();
    for (n, a) in [("n1", "192.0.2.1"), ("n2", "192.0.2.2")] {
        s.nodes.insert(
            n.into(),
            NodeInfo {
                site: String::new(),
                address: a.into(),
                lost: false,
            },
        );
    }
    for (app, range) in [("web", "10.1.0.0/16"), ("db", "10.2.0.0/16")] {
        s.apps.insert(
            key(app),
            MeshAppSpec {
                address_space: Some(range.into()),
                ..Default::default()
            },
        );
    }
    let slice = |n: &str, app_octet: u8| {
        if n == "n1" {
            format!("10.{app_octet}.0")
        } else {
            format!("10.{app_octet}.1")
        }
    };
    for (name, app, role, node, host) in [
        ("client", "web", "client", web_node, 2),
        ("server", "web", "server", web_node, 3),
        ("pg", "db", "pg", db_node, 2),
    ] {
        let wk = key(name);
        let labels = [("weft.dev/app", app), ("role", role)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.add_workload(node, wk.clone(), labels);
        let octet = if app == "web" { 1 } else { 2 };
        s.add_workload_address(node, wk, format!("{}.{host}", slice(node, octet)));
    }
    s
}

fn web_egress_to_db() -> MeshPolicySpec {
    MeshPolicySpec {
        app: "web".into(),
        selector: Selector::labels([("role", "client")]),
        ingress: None,
        egress: Some(vec![PolicyRule {
            peers: vec![PolicyPeer {
                app: Some("db".into()),
                ..Default::default()
            }],
            ports: vec![tcp(5432)],
        }]),
    }
}

fn db_ingress_from_web(selector: Option<Selector>) -> MeshPolicySpec {
    MeshPolicySpec {
        app: "db".into(),
        selector: Selector::default(),
        ingress: Some(vec![PolicyRule {
            peers: vec![PolicyPeer {
                app: Some("web".into()),
                selector,
                ..Default::default()
            }],
            ports: vec![tcp(5432)],
        }]),
        egress: None,
    }
}

fn att<'a>(p: &'a Plan, node: &str, app: &str) -> &'a AppAttachment {
    p.nodes[node]
        .apps
        .iter()
        .find(|a| a.app == format!("demo/{app}"))
        .unwrap()
}

#[test]
fn only_one_side_allowing_gives_no_link_and_no_rule() {
    for (name, spec) in [
        ("web-out", web_egress_to_db()),
        ("db-in", db_ingress_from_web(None)),
    ] {
        let mut s = world("n1", "n1");
        s.policies.insert(key(name), spec);
        let p = plan(&s);
        assert!(p.policies[&key(name)].accepted, "{name}");
        for app in ["web", "db"] {
            assert!(
                att(&p, "n1", app).app_links.is_empty(),
                "{name}: {app} must not be linked"
            );
        }
    }
}

#[test]
fn both_sides_allowing_link_the_apps_with_each_sides_rules() {
    let mut s = world("n1", "n1");
    s.policies.insert(key("web-out"), web_egress_to_db());
    s.policies.insert(key("db-in"), db_ingress_from_web(None));
    let p = plan(&s);
    let (web, db) = (att(&p, "n1", "web"), att(&p, "n1", "db"));
    assert_eq!(web.app_links.len(), 1);
    assert_eq!(db.app_links.len(), 1);
    let (wl, dl) = (&web.app_links[0], &db.app_links[0]);
    // Each end names the other app's namespace and range; the names pair up.
    assert_eq!(wl.app, "demo/db");
    assert_eq!(wl.netns, db.netns);
    assert_eq!(wl.address_space, "10.2.0.0/16");
    assert_eq!(dl.netns, web.netns);
    assert_eq!(dl.address_space, "10.1.0.0/16");
    assert_eq!(
        (&wl.interface, &wl.peer_interface),
        (&dl.peer_interface, &dl.interface)
    );
    assert!(wl.interface.len() <= 15);
    // web: egress from the client only (the server is not selected), to pg.
    assert_eq!(wl.rules.len(), 1);
    let r = &wl.rules[0];
    assert_eq!(r.direction, PolicyDirection::Egress);
    assert_eq!(r.id, "demo/web-out:egress[0].ports[0]");
    assert_eq!(r.local, vec!["10.1.0.2"]);
    assert_eq!(r.peers, vec!["10.2.0.2/32"]);
    assert_eq!(r.port, Some(5432));
    // db: ingress to pg from the client only (the only source web allows).
    assert_eq!(dl.rules.len(), 1);
    let r = &dl.rules[0];
    assert_eq!(r.direction, PolicyDirection::Ingress);
    assert_eq!(r.local, vec!["10.2.0.2"]);
    assert_eq!(r.peers, vec!["10.1.0.2/32"]);
    // Within-app policy is not affected: web's server stays open in web.
    assert!(web
        .policy
        .as_ref()
        .is_some_and(|c| c.ingress_isolated.is_empty()));
}

#[test]
fn a_selector_on_the_other_side_narrows_the_sources() {
    let mut s = world("n1", "n1");
    s.policies.insert(key("web-out"), web_egress_to_db());
    s.policies.insert(
        key("db-in"),
        db_ingress_from_web(Some(Selector::labels([("role", "server")]))),
    );
    let p = plan(&s);
    // web allows only the client out, db only the server in: no flow
    // satisfies both, so no link.
    assert!(att(&p, "n1", "web").app_links.is_empty());
    assert!(att(&p, "n1", "db").app_links.is_empty());
}

#[test]
fn apps_on_different_nodes_are_not_linked_and_the_policy_says_why() {
    let mut s = world("n1", "n2");
    s.policies.insert(key("web-out"), web_egress_to_db());
    s.policies.insert(key("db-in"), db_ingress_from_web(None));
    let p = plan(&s);
    assert!(p
        .nodes
        .values()
        .all(|n| n.apps.iter().all(|a| a.app_links.is_empty())));
    let o = &p.policies[&key("web-out")];
    assert!(o.accepted);
    assert!(
        o.notes
            .iter()
            .any(|n| n.contains("spec.egress[0].peers[0].app")
                && n.contains("demo/db on n2")
                && n.contains("same node")),
        "{:?}",
        o.notes
    );
}

#[test]
fn an_invalid_update_of_one_side_keeps_the_link_it_allowed() {
    let mut s = world("n1", "n1");
    s.policies.insert(key("web-out"), web_egress_to_db());
    s.policies.insert(key("db-in"), db_ingress_from_web(None));
    let linked = plan(&s);
    let mut bad = db_ingress_from_web(None);
    bad.ingress.as_mut().unwrap()[0].ports[0].end_port = Some(1);
    s.policies.insert(key("db-in"), bad);
    s.previous_policies.insert(
        key("db-in"),
        weft_api::EnforcedPolicy {
            generation: 1,
            spec: db_ingress_from_web(None),
        },
    );
    assert_eq!(plan(&s).nodes, linked.nodes);
    s.previous_policies.clear();
    let p = plan(&s);
    assert!(
        att(&p, "n1", "db").app_links.is_empty(),
        "never accepted: no link"
    );
}
