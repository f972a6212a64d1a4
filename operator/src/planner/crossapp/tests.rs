//! Cross-app allows through the whole planner: links, transit placements,
//! carried addresses and rules only where both apps' policies allow a flow.

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
    let workloads = [
        ("client", "web", "client", web_node, 2u32),
        ("server", "web", "server", web_node, 3),
        ("pg", "db", "pg", db_node, 2),
    ];
    for (name, app, role, node, _) in workloads {
        let labels = [("weft.dev/app", app), ("role", role)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.add_workload(node, key(name), labels);
    }
    // As in a live cluster: the nodes got their slices from an earlier
    // plan, and their daemons report addresses from them (the planner
    // counts a reported address only inside the reporting node's slice).
    s.previous_specs = plan(&s).nodes;
    for (name, app, _, node, host) in workloads {
        let slice: ipnet::Ipv4Net = s.previous_specs[node]
            .apps
            .iter()
            .find(|a| a.app == format!("demo/{app}"))
            .unwrap()
            .node_slice
            .parse()
            .unwrap();
        let addr = std::net::Ipv4Addr::from(u32::from(slice.network()) + host);
        s.add_workload_address(node, key(name), addr.to_string());
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

/// `world` with public keys for every app on every node (peers are only
/// listed once their key is known).
fn keyed(web_node: &str, db_node: &str) -> Snapshot {
    let mut s = world(web_node, db_node);
    for n in ["n1", "n2"] {
        for app in ["web", "db"] {
            s.add_public_key(n, key(app), format!("{n}-{app}-key"));
        }
    }
    s
}

fn peer_ips(a: &AppAttachment, node: &str) -> Vec<String> {
    a.peers
        .iter()
        .find(|p| p.node == node)
        .map(|p| p.allowed_ips.clone())
        .unwrap_or_default()
}

fn has(p: &Plan, node: &str, app: &str) -> bool {
    p.nodes[node]
        .apps
        .iter()
        .any(|a| a.app == format!("demo/{app}"))
}

/// web's client on n1 may reach db's pg on n2 (both sides allow it).
fn cross_node_pair() -> Snapshot {
    let mut s = keyed("n1", "n2");
    s.policies.insert(key("web-out"), web_egress_to_db());
    s.policies.insert(key("db-in"), db_ingress_from_web(None));
    s
}

#[test]
fn a_pair_on_two_nodes_crosses_on_one_and_the_other_tunnel_carries_it() {
    let p = plan(&cross_node_pair());
    // demo/db sorts before demo/web: the pair crosses on pg's node (n2),
    // and web's tunnel carries pg's address between n1 and n2. web is
    // placed on n2 without workloads.
    let web2 = att(&p, "n2", "web");
    assert!(web2.workloads.is_empty());
    assert_eq!(p.apps[&key("web")].nodes, vec!["n1", "n2"]);
    assert_eq!(p.apps[&key("web")].transit_nodes, vec!["n2"]);
    assert_eq!(p.apps[&key("db")].nodes, vec!["n2"], "db needs no transit");
    // A transit placement is a full node of the app: own slice, port, mesh.
    let web1 = att(&p, "n1", "web");
    assert_ne!(web2.node_slice, web1.node_slice);
    assert_eq!(peer_ips(web2, "n1"), vec![web1.node_slice.clone()]);
    // The link on n2, with each side's rules for exactly the allowed pair.
    let db2 = att(&p, "n2", "db");
    assert_eq!(web2.app_links.len(), 1);
    assert_eq!(db2.app_links.len(), 1);
    assert_eq!(web2.app_links[0].netns, db2.netns);
    assert_eq!(db2.app_links[0].netns, web2.netns);
    let wr = &web2.app_links[0].rules;
    assert_eq!(wr.len(), 1);
    assert_eq!(
        (wr[0].direction, &wr[0].local, &wr[0].peers),
        (
            PolicyDirection::Egress,
            &vec!["10.1.0.2".to_string()],
            &vec!["10.2.0.2/32".to_string()]
        )
    );
    let dr = &db2.app_links[0].rules;
    assert_eq!(dr.len(), 1);
    assert_eq!(
        (dr[0].direction, &dr[0].local, &dr[0].peers),
        (
            PolicyDirection::Ingress,
            &vec!["10.2.0.2".to_string()],
            &vec!["10.1.0.2/32".to_string()]
        )
    );
    // n1: web's peer n2 carries pg's /32 (and nothing else of db), web's
    // rules there come without a link (db is not on n1).
    assert_eq!(
        peer_ips(web1, "n2"),
        vec![web2.node_slice.clone(), "10.2.0.2/32".to_string()]
    );
    assert!(web1.app_links.is_empty());
    assert_eq!(web1.remote_apps.len(), 1);
    let ra = &web1.remote_apps[0];
    assert_eq!(
        (ra.app.as_str(), ra.address_space.as_str()),
        ("demo/db", "10.2.0.0/16")
    );
    assert_eq!(ra.rules, *wr, "the same half, on both nodes of web");
    assert!(!has(&p, "n1", "db"), "db is not placed on n1");
    // db's tunnel carries nothing foreign; no note remains.
    assert!(db2.peers.iter().all(|x| x.allowed_ips.len() == 1));
    assert!(p.policies.values().all(|o| o.notes.is_empty()), "{p:?}");
}

#[test]
fn one_side_alone_places_and_carries_nothing_across_nodes() {
    for (name, spec) in [
        ("web-out", web_egress_to_db()),
        ("db-in", db_ingress_from_web(None)),
    ] {
        let mut s = keyed("n1", "n2");
        s.policies.insert(key(name), spec);
        let p = plan(&s);
        assert!(!has(&p, "n2", "web"), "{name}: no transit web on n2");
        assert!(!has(&p, "n1", "db"), "{name}: no transit db on n1");
        for spec in p.nodes.values() {
            for a in &spec.apps {
                assert!(a.app_links.is_empty() && a.remote_apps.is_empty(), "{name}");
                assert!(a.peers.iter().all(|x| x.allowed_ips.len() == 1), "{name}");
            }
        }
    }
}

#[test]
fn ports_the_two_sides_do_not_share_allow_nothing() {
    let mut s = keyed("n1", "n2");
    s.policies.insert(key("web-out"), web_egress_to_db());
    let mut db = db_ingress_from_web(None);
    db.ingress.as_mut().unwrap()[0].ports = vec![tcp(5433)];
    s.policies.insert(key("db-in"), db);
    let p = plan(&s);
    assert!(!has(&p, "n2", "web"));
    assert!(att(&p, "n1", "web").remote_apps.is_empty());
}

#[test]
fn the_reverse_direction_uses_the_same_carrier() {
    // pg (db, n2) as the client of web's server (n1): db's egress to web
    // and web's ingress from db. The pair still crosses on pg's node in
    // web's tunnel, so a pair allowed both ways has one path.
    let mut s = keyed("n1", "n2");
    s.policies.insert(
        key("db-out"),
        MeshPolicySpec {
            app: "db".into(),
            selector: Selector::default(),
            ingress: None,
            egress: Some(vec![PolicyRule {
                peers: vec![PolicyPeer {
                    app: Some("web".into()),
                    ..Default::default()
                }],
                ports: vec![tcp(80)],
            }]),
        },
    );
    s.policies.insert(
        key("web-in"),
        MeshPolicySpec {
            app: "web".into(),
            selector: Selector::labels([("role", "server")]),
            ingress: Some(vec![PolicyRule {
                peers: vec![PolicyPeer {
                    app: Some("db".into()),
                    ..Default::default()
                }],
                ports: vec![tcp(80)],
            }]),
            egress: None,
        },
    );
    let p = plan(&s);
    let web1 = att(&p, "n1", "web");
    let web2 = att(&p, "n2", "web");
    assert!(web2.workloads.is_empty(), "web is the transit on n2");
    assert_eq!(
        peer_ips(web1, "n2"),
        vec![web2.node_slice.clone(), "10.2.0.2/32".to_string()]
    );
    let r = &web1.remote_apps[0].rules;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].direction, PolicyDirection::Ingress);
    assert_eq!(r[0].local, vec!["10.1.0.3"], "only the server");
    let dr = &att(&p, "n2", "db").app_links[0].rules;
    assert_eq!(dr[0].direction, PolicyDirection::Egress);
    assert_eq!(dr[0].peers, vec!["10.1.0.3/32"]);

    // Allowing the first direction too keeps one carrier (web) and one
    // crossing node (n2): db's tunnel never carries web's addresses.
    s.policies.insert(key("web-out"), web_egress_to_db());
    s.policies.insert(key("db-in"), db_ingress_from_web(None));
    let p = plan(&s);
    assert!(!has(&p, "n1", "db"));
    assert_eq!(
        peer_ips(att(&p, "n1", "web"), "n2"),
        vec![
            att(&p, "n2", "web").node_slice.clone(),
            "10.2.0.2/32".to_string()
        ]
    );
    assert!(att(&p, "n2", "db")
        .peers
        .iter()
        .all(|x| x.allowed_ips.len() == 1));
}

#[test]
fn withdrawing_an_allow_removes_transit_link_and_carried_addresses() {
    let mut s = cross_node_pair();
    let first = plan(&s);
    s.previous_specs = first.nodes.clone();
    // Converged: planning again over its own output changes nothing.
    assert_eq!(plan(&s).nodes, first.nodes);
    s.policies.remove(&key("db-in"));
    let p = plan(&s);
    assert!(!has(&p, "n2", "web"), "transit placement gone");
    assert_eq!(p.apps[&key("web")].nodes, vec!["n1"]);
    assert!(p.apps[&key("web")].transit_nodes.is_empty());
    let web1 = att(&p, "n1", "web");
    assert!(web1.peers.is_empty(), "web has no other node now");
    assert!(web1.remote_apps.is_empty() && web1.app_links.is_empty());
    assert!(att(&p, "n2", "db").app_links.is_empty());
    // Allowing again gives the transit its old slice back (sticky).
    s.previous_specs = first.nodes.clone();
    s.policies.insert(key("db-in"), db_ingress_from_web(None));
    assert_eq!(plan(&s).nodes, first.nodes);
}

#[test]
fn a_carrier_outside_its_sites_is_not_placed_and_the_policies_say_so() {
    let mut s = cross_node_pair();
    // n2 moves to site "edge", which db lists and web does not.
    s.nodes.get_mut("n2").unwrap().site = "edge".into();
    s.sites.insert("edge".into(), Default::default());
    s.apps.get_mut(&key("db")).unwrap().sites = vec!["edge".into()];
    let p = plan(&s);
    assert!(has(&p, "n2", "db"));
    assert!(!has(&p, "n2", "web"), "web does not span edge");
    for pol in ["web-out", "db-in"] {
        let o = &p.policies[&key(pol)];
        assert!(o.accepted, "{pol}: {o:?}");
        assert!(
            o.notes
                .iter()
                .any(|n| n.contains("not carried") && n.contains("demo/web cannot be placed on n2")),
            "{pol}: {:?}",
            o.notes
        );
    }
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

#[test]
fn a_node_cannot_claim_another_nodes_address() {
    let mut s = cross_node_pair();
    let pg_addr = s.workload_addresses["n2"][&key("pg")].clone();
    // A third node reports a db workload (labels db's policy admits) with
    // pg's address, which lies in db's slice on n2. Believed, it would put
    // pg's /32 on web's peer n3 too: traffic for pg diverted to n3.
    s.nodes.insert(
        "n3".into(),
        NodeInfo {
            site: String::new(),
            address: "192.0.2.3".into(),
            lost: false,
        },
    );
    let labels = [("weft.dev/app", "db"), ("role", "pg")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.add_workload("n3", key("rogue"), labels);
    s.add_workload_address("n3", key("rogue"), pg_addr.clone());
    for app in ["web", "db"] {
        s.add_public_key("n3", key(app), format!("n3-{app}-key"));
    }
    // Two rounds, as in a live cluster: n3 gets its slices, then plans on.
    s.previous_specs = plan(&s).nodes;
    let p = plan(&s);
    let host = format!("{pg_addr}/32");
    for (node, spec) in &p.nodes {
        for app in &spec.apps {
            for peer in app.peers.iter().filter(|x| x.node != "n2") {
                assert!(
                    !peer.allowed_ips.contains(&host),
                    "{node}: {} routes pg's address to {}: {:?}",
                    app.app,
                    peer.node,
                    peer.allowed_ips
                );
            }
        }
    }
    // pg itself is still carried to n2 (the legitimate pair works).
    let web1 = att(&p, "n1", "web");
    assert!(peer_ips(web1, "n2").contains(&host));
}

#[test]
fn a_transit_placement_without_a_free_slice_says_why() {
    let mut s = cross_node_pair();
    // web's range holds one /24: its own node takes it, the transit
    // placement on n2 finds none.
    let web = s.apps.get_mut(&key("web")).unwrap();
    web.address_space = Some("10.1.0.0/24".into());
    web.node_prefix_length = Some(24);
    let p = plan(&s);
    let errs = &p.apps[&key("web")].errors;
    assert!(
        errs.iter().any(|e| e.reason == "NodeSlicesExhausted"
            && e.message.contains("node n2")
            && e.message.contains("transit placement")),
        "{errs:?}"
    );
    // web still runs where its workloads are.
    assert!(p.nodes["n1"].apps.iter().any(|a| a.app == "demo/web"));
}
