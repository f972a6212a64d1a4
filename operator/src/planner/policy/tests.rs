//! Policy compiler: table tests and properties (determinism, no policy means
//! no isolation, adding an allow never removes a flow).

use proptest::prelude::*;
use weft_api::meshpolicy::{PolicyPeer, PolicyPort, PolicyRule};
use weft_api::Selector;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(k: &str, v: &str) -> Selector {
    Selector::labels([(k, v)])
}

fn range() -> Ipv4Net {
    "10.1.0.0/16".parse().unwrap()
}

fn tcp(port: u16, end: Option<u16>) -> PolicyPort {
    PolicyPort {
        protocol: Some("TCP".into()),
        port: Some(port),
        end_port: end,
    }
}

fn app() -> ObjectKey {
    ObjectKey::new("demo", "web")
}

struct World {
    labels: Vec<Labels>,
}

impl World {
    fn demo() -> Self {
        World {
            labels: vec![
                labels(&[("role", "server")]),
                labels(&[("role", "client")]),
                labels(&[("role", "other")]),
            ],
        }
    }
    /// Member i on node n{i%2+1}, address 10.1.{i%2+1}.{i+2}.
    fn members(&self) -> Vec<Member<'_>> {
        self.labels
            .iter()
            .enumerate()
            .map(|(i, l)| Member {
                node: if i % 2 == 0 { "n1" } else { "n2" },
                site: "local",
                labels: l,
                address: Some(Ipv4Addr::new(10, 1, (i % 2 + 1) as u8, i as u8 + 2)),
            })
            .collect()
    }
}

fn pol(
    selector: Selector,
    ingress: Option<Vec<PolicyRule>>,
    egress: Option<Vec<PolicyRule>>,
) -> MeshPolicySpec {
    MeshPolicySpec {
        app: "web".into(),
        selector,
        ingress,
        egress,
    }
}

fn allowed(
    c: &CompiledApp,
    m: &[Member<'_>],
    s: usize,
    d: usize,
    proto: PolicyProtocol,
    port: u16,
) -> bool {
    flow_allowed(
        &c.nodes,
        range(),
        m[s].node,
        m[s].address.unwrap(),
        m[d].node,
        m[d].address.unwrap(),
        proto,
        port,
    )
}

#[test]
fn ingress_allow_by_label_and_port_range() {
    let w = World::demo();
    let m = w.members();
    let key = ObjectKey::new("demo", "allow-clients");
    let spec = pol(
        sel("role", "server"),
        Some(vec![PolicyRule {
            peers: vec![PolicyPeer {
                selector: Some(sel("role", "client")),
                ..Default::default()
            }],
            ports: vec![
                tcp(80, Some(90)),
                PolicyPort {
                    protocol: Some("ICMP".into()),
                    ..Default::default()
                },
            ],
        }]),
        None,
    );
    let c = compile_app(&app(), &m, &[(&key, &spec)]);
    let n1 = &c.nodes["n1"];
    assert_eq!(n1.ingress_isolated, vec!["10.1.1.2".to_string()]);
    assert!(n1.egress_isolated.is_empty());
    assert_eq!(n1.rules.len(), 2);
    assert_eq!(n1.rules[0].id, "demo/allow-clients:ingress[0].ports[0]");
    assert_eq!(n1.rules[0].peers, vec!["10.1.2.3/32".to_string()]);
    assert_eq!(
        (n1.rules[0].port, n1.rules[0].end_port),
        (Some(80), Some(90))
    );
    assert_eq!(n1.rules[1].protocol, Some(PolicyProtocol::Icmp));
    assert!(!c.nodes.contains_key("n2"), "nothing isolated on n2");
    use PolicyProtocol::*;
    assert!(allowed(&c, &m, 1, 0, Tcp, 85));
    assert!(allowed(&c, &m, 1, 0, Icmp, 0));
    assert!(!allowed(&c, &m, 1, 0, Tcp, 91));
    assert!(!allowed(&c, &m, 1, 0, Udp, 85));
    assert!(
        !allowed(&c, &m, 2, 0, Tcp, 85),
        "role=other is not a client"
    );
    assert!(
        allowed(&c, &m, 0, 2, Udp, 53),
        "egress of the server stays open"
    );
    assert!(
        allowed(&c, &m, 2, 1, Tcp, 1),
        "unselected workloads stay open"
    );
}

#[test]
fn empty_ingress_denies_everything_and_egress_isolation_is_separate() {
    let w = World::demo();
    let m = w.members();
    let key = ObjectKey::new("demo", "lockdown");
    let spec = pol(Selector::default(), Some(vec![]), None);
    let c = compile_app(&app(), &m, &[(&key, &spec)]);
    for s in 0..3 {
        for d in 0..3 {
            if s != d {
                assert!(!allowed(&c, &m, s, d, PolicyProtocol::Tcp, 80));
            }
        }
    }
    assert!(c
        .nodes
        .values()
        .all(|p| p.egress_isolated.is_empty() && p.rules.is_empty()));
}

#[test]
fn peers_resolving_to_nothing_and_peers_in_another_app_allow_nothing_inside_it() {
    let w = World::demo();
    let m = w.members();
    let key = ObjectKey::new("demo", "p");
    let spec = pol(
        sel("role", "server"),
        Some(vec![
            PolicyRule {
                peers: vec![PolicyPeer {
                    selector: Some(sel("role", "nobody")),
                    ..Default::default()
                }],
                ports: vec![],
            },
            PolicyRule {
                peers: vec![PolicyPeer {
                    app: Some("db".into()),
                    ..Default::default()
                }],
                ports: vec![],
            },
        ]),
        None,
    );
    let c = compile_app(&app(), &m, &[(&key, &spec)]);
    assert!(c.nodes["n1"].rules.is_empty());
    assert!(!allowed(&c, &m, 1, 0, PolicyProtocol::Tcp, 80));
    assert!(
        c.notes.is_empty(),
        "peers in another app are compiled into app links, not here"
    );
}

#[test]
fn cidr_and_site_peers() {
    let w = World::demo();
    let mut m = w.members();
    m[1].site = "edge";
    let key = ObjectKey::new("demo", "p");
    let spec = pol(
        sel("role", "server"),
        Some(vec![PolicyRule {
            peers: vec![
                PolicyPeer {
                    cidr: Some("10.1.9.0/24".into()),
                    ..Default::default()
                },
                PolicyPeer {
                    site: Some("edge".into()),
                    ..Default::default()
                },
            ],
            ports: vec![],
        }]),
        None,
    );
    let c = compile_app(&app(), &m, &[(&key, &spec)]);
    assert_eq!(
        c.nodes["n1"].rules[0].peers,
        vec!["10.1.2.3/32".to_string(), "10.1.9.0/24".to_string()]
    );
    assert!(allowed(&c, &m, 1, 0, PolicyProtocol::Udp, 5));
    assert!(!allowed(&c, &m, 2, 0, PolicyProtocol::Udp, 5));
}

#[test]
fn workloads_without_address_are_in_no_set() {
    let w = World::demo();
    let mut m = w.members();
    m[0].address = None;
    let key = ObjectKey::new("demo", "p");
    let spec = pol(sel("role", "server"), Some(vec![]), None);
    let c = compile_app(&app(), &m, &[(&key, &spec)]);
    assert!(c.nodes.is_empty());
}

// ---- properties ----

const KEYS: [&str; 2] = ["role", "tier"];
const VALUES: [&str; 3] = ["a", "b", "c"];

fn arb_selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::default()),
        (0..2usize, 0..3usize).prop_map(|(k, v)| sel(KEYS[k], VALUES[v])),
    ]
}

fn arb_port() -> impl Strategy<Value = PolicyPort> {
    prop_oneof![
        (1u16..100, proptest::option::of(0u16..20)).prop_map(|(p, e)| PolicyPort {
            protocol: Some("TCP".into()),
            port: Some(p),
            end_port: e.map(|e| p + e),
        }),
        (1u16..100).prop_map(|p| PolicyPort {
            protocol: Some("UDP".into()),
            port: Some(p),
            end_port: None,
        }),
        Just(PolicyPort {
            protocol: Some("ICMP".into()),
            ..Default::default()
        }),
    ]
}

fn arb_peer() -> impl Strategy<Value = PolicyPeer> {
    prop_oneof![
        arb_selector().prop_map(|s| PolicyPeer {
            selector: Some(s),
            ..Default::default()
        }),
        (0u8..4).prop_map(|n| PolicyPeer {
            cidr: Some(format!("10.1.{n}.0/24")),
            ..Default::default()
        }),
    ]
}

fn arb_rule() -> impl Strategy<Value = PolicyRule> {
    (
        proptest::collection::vec(arb_peer(), 0..3),
        proptest::collection::vec(arb_port(), 0..3),
    )
        .prop_map(|(peers, ports)| PolicyRule { peers, ports })
}

fn arb_policy() -> impl Strategy<Value = MeshPolicySpec> {
    (
        arb_selector(),
        proptest::option::of(proptest::collection::vec(arb_rule(), 0..3)),
        proptest::option::of(proptest::collection::vec(arb_rule(), 0..3)),
    )
        .prop_map(|(s, i, e)| pol(s, i, e))
}

fn arb_labels() -> impl Strategy<Value = Vec<Labels>> {
    proptest::collection::vec((0..3usize, 0..3usize), 1..6).prop_map(|v| {
        v.into_iter()
            .map(|(a, b)| labels(&[("role", VALUES[a]), ("tier", VALUES[b])]))
            .collect()
    })
}

fn keys(n: usize) -> Vec<ObjectKey> {
    (0..n)
        .map(|i| ObjectKey::new("demo", format!("p{i}")))
        .collect()
}

fn every_flow(c: &CompiledApp, m: &[Member<'_>]) -> Vec<bool> {
    let mut out = Vec::new();
    for s in 0..m.len() {
        for d in 0..m.len() {
            for (proto, port) in [
                (PolicyProtocol::Tcp, 5),
                (PolicyProtocol::Tcp, 50),
                (PolicyProtocol::Tcp, 110),
                (PolicyProtocol::Udp, 50),
                (PolicyProtocol::Icmp, 0),
            ] {
                out.push(allowed(c, m, s, d, proto, port));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn compilation_is_deterministic_and_order_independent(
        l in arb_labels(),
        ps in proptest::collection::vec(arb_policy(), 0..4),
    ) {
        let w = World { labels: l };
        let m = w.members();
        let ks = keys(ps.len());
        let input: Vec<(&ObjectKey, &MeshPolicySpec)> = ks.iter().zip(&ps).collect();
        let a = compile_app(&app(), &m, &input);
        let b = compile_app(&app(), &m, &input);
        prop_assert_eq!(&a, &b);
        let mut rev = input.clone();
        rev.reverse();
        prop_assert_eq!(&a, &compile_app(&app(), &m, &rev));
    }

    #[test]
    fn no_policy_means_no_isolation(l in arb_labels()) {
        let w = World { labels: l };
        let m = w.members();
        let c = compile_app(&app(), &m, &[]);
        prop_assert!(c.nodes.is_empty());
        prop_assert!(every_flow(&c, &m).into_iter().all(|x| x));
    }

    #[test]
    fn adding_an_allow_never_removes_a_flow(
        l in arb_labels(),
        ps in proptest::collection::vec(arb_policy(), 1..4),
        which in 0..4usize,
        ingress in any::<bool>(),
        extra in arb_rule(),
    ) {
        let w = World { labels: l };
        let m = w.members();
        let ks = keys(ps.len());
        let before = {
            let input: Vec<_> = ks.iter().zip(&ps).collect();
            every_flow(&compile_app(&app(), &m, &input), &m)
        };
        let mut more = ps.clone();
        let p = &mut more[which % ps.len()];
        // Only add to a direction that is already isolating: adding a rule
        // to an absent list would isolate (that is not an allow).
        let list = if ingress { &mut p.ingress } else { &mut p.egress };
        if let Some(rules) = list {
            rules.push(extra);
        }
        let input: Vec<_> = ks.iter().zip(&more).collect();
        let after = every_flow(&compile_app(&app(), &m, &input), &m);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            prop_assert!(!b || *a, "flow {} was allowed before the extra rule, denied after", i);
        }
    }

    #[test]
    fn a_policy_only_restricts_what_it_selects(
        l in arb_labels(),
        p in arb_policy(),
    ) {
        let w = World { labels: l };
        let m = w.members();
        let k = ObjectKey::new("demo", "p");
        let c = compile_app(&app(), &m, &[(&k, &p)]);
        for pol in c.nodes.values() {
            for a in pol.ingress_isolated.iter().chain(&pol.egress_isolated) {
                let mem = m.iter().find(|x| x.address.unwrap().to_string() == *a).unwrap();
                prop_assert!(p.selector.matches(mem.labels));
            }
        }
    }
}

// ---- through the whole planner ----

fn snapshot_with(policies: &[(&str, MeshPolicySpec)]) -> super::super::Snapshot {
    use super::super::{NodeInfo, Snapshot};
    let mut s = Snapshot::default();
    s.nodes.insert(
        "n1".into(),
        NodeInfo {
            site: String::new(),
            address: "192.0.2.1".into(),
            lost: false,
        },
    );
    s.apps.insert(
        app(),
        weft_api::MeshAppSpec {
            address_space: Some("10.1.0.0/16".into()),
            selector: sel("tier", "web"),
            ..Default::default()
        },
    );
    for (i, role) in ["server", "client"].iter().enumerate() {
        let wk = ObjectKey::new("demo", format!("w{i}"));
        s.add_workload("n1", wk.clone(), labels(&[("tier", "web"), ("role", role)]));
        s.add_workload_address("n1", wk, format!("10.1.0.{}", i + 2));
    }
    for (name, p) in policies {
        s.policies.insert(ObjectKey::new("demo", *name), p.clone());
    }
    s
}

fn allow_clients() -> MeshPolicySpec {
    pol(
        sel("role", "server"),
        Some(vec![PolicyRule {
            peers: vec![PolicyPeer {
                selector: Some(sel("role", "client")),
                ..Default::default()
            }],
            ports: vec![tcp(80, None)],
        }]),
        None,
    )
}

#[test]
fn the_planner_puts_the_compiled_policy_on_the_attachment() {
    let plan = super::super::plan(&snapshot_with(&[]));
    assert!(
        plan.nodes["n1"].apps[0].policy.is_none(),
        "no policy, no table"
    );
    let plan = super::super::plan(&snapshot_with(&[("allow", allow_clients())]));
    let p = plan.nodes["n1"].apps[0].policy.as_ref().expect("compiled");
    assert_eq!(p.ingress_isolated, vec!["10.1.0.2".to_string()]);
    assert_eq!(p.rules[0].peers, vec!["10.1.0.3/32".to_string()]);
    assert!(plan.policies[&ObjectKey::new("demo", "allow")].accepted);
}

#[test]
fn an_invalid_policy_is_not_enforced_at_all_and_names_the_field() {
    let mut bad = allow_clients();
    bad.selector = Selector::default();
    bad.egress = Some(vec![]);
    bad.ingress.as_mut().unwrap()[0].ports = vec![tcp(80, None), tcp(90, Some(10))];
    let good_only = super::super::plan(&snapshot_with(&[("allow", allow_clients())]));
    let both = super::super::plan(&snapshot_with(&[("allow", allow_clients()), ("bad", bad)]));
    assert_eq!(
        good_only.nodes, both.nodes,
        "nothing of the bad policy is compiled"
    );
    let o = &both.policies[&ObjectKey::new("demo", "bad")];
    assert!(!o.accepted);
    assert_eq!(o.errors[0].field, "spec.ingress[0].ports[1].endPort");
}

#[test]
fn a_peer_in_an_unknown_app_is_rejected_naming_the_field() {
    let mut p = allow_clients();
    p.ingress.as_mut().unwrap()[0].peers[0] = PolicyPeer {
        app: Some("db".into()),
        ..Default::default()
    };
    let plan = super::super::plan(&snapshot_with(&[("x", p)]));
    let o = &plan.policies[&ObjectKey::new("demo", "x")];
    assert!(!o.accepted);
    assert_eq!(o.errors[0].field, "spec.ingress[0].peers[0].app");
    assert_eq!(o.errors[0].reason, "UnknownApp");
}

// ---- an invalid update keeps the last accepted version (fail closed) ----

type Breaker = Box<dyn Fn(&mut MeshPolicySpec)>;

/// Ways to break `allow_clients()`, each with the field the error names.
fn breakers() -> Vec<(&'static str, Breaker)> {
    fn peer(p: &mut MeshPolicySpec) -> &mut PolicyPeer {
        &mut p.ingress.as_mut().unwrap()[0].peers[0]
    }
    fn port(p: &mut MeshPolicySpec) -> &mut PolicyPort {
        &mut p.ingress.as_mut().unwrap()[0].ports[0]
    }
    vec![
        (
            "spec.ingress[0].peers[0].cidr",
            Box::new(|p| peer(p).cidr = Some("10.1.0.0/33".into())),
        ),
        (
            "spec.ingress[0].peers[0].cidr",
            Box::new(|p| peer(p).cidr = Some("10.9.0.0/16".into())),
        ),
        (
            "spec.ingress[0].peers[0].selector.matchExpressions[0]",
            Box::new(|p| {
                peer(p).selector = Some(Selector {
                    match_expressions: vec![weft_api::selector::SelectorRequirement {
                        key: "role".into(),
                        operator: weft_api::selector::SelectorOperator::In,
                        values: vec![],
                    }],
                    ..Default::default()
                })
            }),
        ),
        (
            "spec.ingress[0].ports[0].protocol",
            Box::new(|p| port(p).protocol = Some("SCTP".into())),
        ),
        (
            "spec.ingress[0].ports[0].endPort",
            Box::new(|p| port(p).end_port = Some(79)),
        ),
    ]
}

fn enforced(spec: MeshPolicySpec, generation: i64) -> weft_api::EnforcedPolicy {
    weft_api::EnforcedPolicy { generation, spec }
}

#[test]
fn an_invalid_update_keeps_enforcing_the_last_accepted_version() {
    let key = ObjectKey::new("demo", "allow");
    let accepted = super::super::plan(&snapshot_with(&[("allow", allow_clients())]));
    let open = super::super::plan(&snapshot_with(&[]));
    assert_ne!(accepted.nodes, open.nodes);
    for (field, breaker) in breakers() {
        let mut bad = allow_clients();
        breaker(&mut bad);
        let mut s = snapshot_with(&[("allow", bad)]);
        s.previous_policies
            .insert(key.clone(), enforced(allow_clients(), 3));
        let plan = super::super::plan(&s);
        assert_eq!(
            plan.nodes, accepted.nodes,
            "{field}: the accepted version stays in force"
        );
        let o = &plan.policies[&key];
        assert!(!o.accepted, "{field}");
        assert!(
            o.errors.iter().any(|e| e.field.starts_with(field)),
            "{field}: {:?}",
            o.errors
        );
        assert_eq!(o.still_enforced, Some(enforced(allow_clients(), 3)));
        // The status says so, and records what is enforced for the next pass.
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
        );
        let st = crate::status::policy_status(o, 4, None, &now);
        let c = &st.conditions[0];
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Accepted", "False"));
        assert!(c.message.contains(field), "{}", c.message);
        assert!(
            c.message.ends_with("still enforcing generation 3"),
            "{}",
            c.message
        );
        assert_eq!(st.enforced, Some(enforced(allow_clients(), 3)));
    }
}

#[test]
fn fixing_the_spec_enforces_the_new_version() {
    let key = ObjectKey::new("demo", "allow");
    let mut fixed = allow_clients();
    fixed.ingress.as_mut().unwrap()[0].ports = vec![tcp(8443, None)];
    let mut s = snapshot_with(&[("allow", fixed.clone())]);
    s.previous_policies
        .insert(key.clone(), enforced(allow_clients(), 3));
    let plan = super::super::plan(&s);
    let rules = &plan.nodes["n1"].apps[0].policy.as_ref().unwrap().rules;
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].port,
        Some(8443),
        "the new version, not the stored one"
    );
    let o = &plan.policies[&key];
    assert!(o.accepted && o.still_enforced.is_none());
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
    );
    let st = crate::status::policy_status(o, 5, None, &now);
    assert_eq!(st.enforced, Some(enforced(fixed, 5)));
}

#[test]
fn a_policy_never_accepted_enforces_nothing_and_a_deleted_one_is_gone() {
    let key = ObjectKey::new("demo", "allow");
    let open = super::super::plan(&snapshot_with(&[]));
    let mut bad = allow_clients();
    bad.ingress.as_mut().unwrap()[0].ports[0].protocol = Some("SCTP".into());
    let plan = super::super::plan(&snapshot_with(&[("allow", bad)]));
    assert_eq!(plan.nodes, open.nodes, "new and invalid: nothing enforced");
    let o = &plan.policies[&key];
    assert!(o.still_enforced.is_none());
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
    );
    let st = crate::status::policy_status(o, 1, None, &now);
    assert!(
        st.conditions[0]
            .message
            .ends_with("nothing of it is enforced"),
        "{}",
        st.conditions[0].message
    );
    assert_eq!(st.enforced, None);
    // Deleted: a stored enforced spec without the policy enforces nothing.
    let mut s = snapshot_with(&[]);
    s.previous_policies
        .insert(key, enforced(allow_clients(), 2));
    assert_eq!(super::super::plan(&s).nodes, open.nodes);
}
