//! Pure diff: the operations that turn `observed` into `desired`, in an order
//! the kernel accepts (namespaces, then devices, then what hangs off them;
//! removals before additions within an interface). Empty when converged.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;

use crate::core::ops::Op;
use crate::core::state::{AppNet, Device, NodeState, WorkloadLink};

/// Resolves a key for an app netns (the planner only carries public keys).
pub trait KeySource {
    /// The private key for the app whose netns is `netns`.
    fn private_key(&self, netns: &str) -> Option<crate::keys::PrivateKey>;
}

/// Operations turning `observed` into `desired`.
pub fn diff(desired: &NodeState, observed: &NodeState, keys: &dyn KeySource) -> Vec<Op> {
    let mut ops = Vec::new();
    // Apps that are gone: removing the netns removes everything inside it.
    for netns in observed
        .apps
        .keys()
        .filter(|n| !desired.apps.contains_key(*n))
    {
        ops.push(Op::DeleteNetns {
            netns: netns.clone(),
        });
    }
    for (netns, want) in &desired.apps {
        match observed.apps.get(netns) {
            None => {
                ops.push(Op::CreateNetns {
                    netns: netns.clone(),
                });
                diff_app(
                    want,
                    &AppNet {
                        netns: netns.clone(),
                        ..Default::default()
                    },
                    keys,
                    &mut ops,
                );
            }
            Some(have) => diff_app(want, have, keys, &mut ops),
        }
    }
    diff_links(desired, observed, &mut ops);
    ops
}

/// App links, once every netns exists (a pair spans two of them) and every
/// policy table is in place (a link must never carry traffic unfiltered).
/// The end whose netns sorts first creates the pair; each side routes its
/// own end.
fn diff_links(desired: &NodeState, observed: &NodeState, ops: &mut Vec<Op>) {
    let mut created: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (netns, want) in &desired.apps {
        let have = observed.apps.get(netns);
        for ifc in have
            .into_iter()
            .flat_map(|h| h.links.keys())
            .filter(|k| !want.links.contains_key(*k))
        {
            ops.push(Op::DeleteAppLink {
                netns: netns.clone(),
                interface: ifc.clone(),
            });
        }
        for (ifc, l) in &want.links {
            let present = have.is_some_and(|h| h.links.contains_key(ifc));
            // Both sides must want the pair: each side's table enforces its
            // half of a cross-app flow, so one side alone never links.
            let mutual = desired
                .apps
                .get(&l.peer_netns)
                .is_some_and(|p| p.links.contains_key(&l.peer_interface));
            if !present && mutual && l.owned_by(netns) {
                ops.push(Op::CreateAppLink {
                    netns: netns.clone(),
                    interface: ifc.clone(),
                    peer_netns: l.peer_netns.clone(),
                    peer_interface: l.peer_interface.clone(),
                });
                created.insert((netns, ifc));
                created.insert((&l.peer_netns, &l.peer_interface));
            }
        }
    }
    for (netns, want) in &desired.apps {
        for (ifc, l) in &want.links {
            let have_routes: &[Ipv4Net] = if created.contains(&(netns.as_str(), ifc.as_str())) {
                &[]
            } else {
                match observed.apps.get(netns).and_then(|h| h.links.get(ifc)) {
                    Some(h) => &h.routes,
                    // Not there and not ours to create: the other side's
                    // pass creates it.
                    None => continue,
                }
            };
            for r in have_routes.iter().filter(|r| !l.routes.contains(r)) {
                ops.push(Op::DeleteAppLinkRoute {
                    netns: netns.clone(),
                    interface: ifc.clone(),
                    destination: *r,
                });
            }
            for r in l.routes.iter().filter(|r| !have_routes.contains(r)) {
                ops.push(Op::AddAppLinkRoute {
                    netns: netns.clone(),
                    interface: ifc.clone(),
                    destination: *r,
                });
            }
        }
    }
}

fn diff_app(want: &AppNet, have: &AppNet, keys: &dyn KeySource, ops: &mut Vec<Op>) {
    let netns = &want.netns;
    // The policy table only names addresses, so it goes first: a workload
    // attached in this pass is already covered by it.
    if want.policy.as_ref().map(|p| &p.digest) != have.policy.as_ref().map(|p| &p.digest) {
        ops.push(Op::SetPolicy {
            netns: netns.clone(),
            policy: want.policy.clone(),
        });
    }
    // Workloads mirror the app's range at attach time, so a change of the
    // range means re-attaching them. Foreign /32s the tunnel carries for
    // cross-app flows come and go in place, like a linked app's range.
    let routes_changed = match (&want.device, &have.device) {
        (Some(w), Some(h)) => own_routes(&w.routes) != own_routes(&h.routes),
        _ => false,
    };
    // A linked app's range coming or going only changes the workloads'
    // routes, in place (their links and connections are untouched). The
    // kernel side compared is the app netns' link routes: while a link
    // cannot be created, the (idempotent) route update repeats every pass.
    let link_routes_changed = !routes_changed
        && want.device.is_some()
        && have.device.is_some()
        && want.workload_routes() != have.workload_routes();
    // Workload links that are gone or changed go first (they may hold addresses).
    for (host_if, link) in &have.workloads {
        if routes_changed
            || !want
                .workloads
                .get(host_if)
                .is_some_and(|w| same_link(w, link))
        {
            ops.push(Op::DetachWorkload {
                netns: netns.clone(),
                host_interface: host_if.clone(),
            });
        }
    }
    match (&want.device, &have.device) {
        (None, Some(d)) => ops.push(Op::DeleteDevice {
            netns: netns.clone(),
            interface: d.interface.clone(),
        }),
        (Some(w), Some(h)) if w.interface != h.interface => {
            ops.push(Op::DeleteDevice {
                netns: netns.clone(),
                interface: h.interface.clone(),
            });
            diff_device(netns, w, &Device::default(), true, keys, ops);
        }
        (Some(w), Some(h)) => diff_device(netns, w, h, false, keys, ops),
        (Some(w), None) => diff_device(netns, w, &Device::default(), true, keys, ops),
        (None, None) => {}
    }
    for (host_if, link) in &want.workloads {
        if routes_changed
            || !have
                .workloads
                .get(host_if)
                .is_some_and(|h| same_link(link, h))
        {
            ops.push(Op::AttachWorkload {
                netns: netns.clone(),
                host_interface: host_if.clone(),
                link: link.clone(),
                routes: want.workload_routes(),
            });
        } else if link_routes_changed {
            ops.push(Op::SetWorkloadRoutes {
                netns: netns.clone(),
                host_interface: host_if.clone(),
                workload_netns: link.workload_netns.clone(),
                routes: want.workload_routes(),
            });
        }
    }
}

/// The routes of a device that are the app's own range. The others are
/// single addresses of other apps' workloads that the tunnel carries for
/// cross-app flows: an app range is never a single address (it holds a
/// node slice with a tunnel address and workloads), a carried address
/// always is.
fn own_routes(routes: &[Ipv4Net]) -> Vec<Ipv4Net> {
    routes
        .iter()
        .filter(|r| r.prefix_len() < 32)
        .copied()
        .collect()
}

/// Workload links compare by what the kernel shows (address, MTU); names and
/// netns paths are bookkeeping the kernel cannot report back.
fn same_link(a: &WorkloadLink, b: &WorkloadLink) -> bool {
    a.address == b.address && a.mtu == b.mtu
}

fn diff_device(
    netns: &str,
    want: &Device,
    have: &Device,
    create: bool,
    keys: &dyn KeySource,
    ops: &mut Vec<Op>,
) {
    let (ns, ifc) = (netns.to_string(), want.interface.clone());
    let key = keys.private_key(netns);
    if create {
        match key {
            Some(private_key) => ops.push(Op::CreateDevice {
                netns: ns.clone(),
                interface: ifc.clone(),
                private_key,
                listen_port: want.listen_port,
            }),
            // No key, no device: the caller reports the app as not programmed.
            None => return,
        }
    } else if want.public_key != have.public_key || want.listen_port != have.listen_port {
        if let Some(private_key) = key {
            ops.push(Op::ConfigureDevice {
                netns: ns.clone(),
                interface: ifc.clone(),
                private_key,
                listen_port: want.listen_port,
            });
        }
    }
    if create || want.mtu != have.mtu || !have.up {
        ops.push(Op::SetLink {
            netns: ns.clone(),
            interface: ifc.clone(),
            mtu: want.mtu,
        });
    }
    for a in have
        .addresses
        .iter()
        .filter(|a| !want.addresses.contains(a))
    {
        ops.push(Op::DeleteAddress {
            netns: ns.clone(),
            interface: ifc.clone(),
            address: *a,
        });
    }
    for a in want
        .addresses
        .iter()
        .filter(|a| !have.addresses.contains(a))
    {
        ops.push(Op::AddAddress {
            netns: ns.clone(),
            interface: ifc.clone(),
            address: *a,
        });
    }
    for pk in have.peers.keys().filter(|k| !want.peers.contains_key(*k)) {
        ops.push(Op::RemovePeer {
            netns: ns.clone(),
            interface: ifc.clone(),
            public_key: pk.clone(),
        });
    }
    for (pk, p) in &want.peers {
        if have.peers.get(pk) != Some(p) {
            ops.push(Op::SetPeer {
                netns: ns.clone(),
                interface: ifc.clone(),
                public_key: pk.clone(),
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.clone(),
                persistent_keepalive: p.persistent_keepalive,
            });
        }
    }
    // Routes last: they need the interface up and addressed.
    for r in have.routes.iter().filter(|r| !want.routes.contains(r)) {
        ops.push(Op::DeleteRoute {
            netns: ns.clone(),
            interface: ifc.clone(),
            destination: *r,
        });
    }
    for r in want.routes.iter().filter(|r| !have.routes.contains(r)) {
        ops.push(Op::AddRoute {
            netns: ns.clone(),
            interface: ifc.clone(),
            destination: *r,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::WorkloadLink;
    use crate::keys::PrivateKey;

    struct OneKey(PrivateKey);
    impl KeySource for OneKey {
        fn private_key(&self, _: &str) -> Option<PrivateKey> {
            Some(self.0.clone())
        }
    }

    fn app(route: &str) -> NodeState {
        let mut st = NodeState::default();
        let link = WorkloadLink {
            workload: "d/w".into(),
            workload_netns: "/run/netns/w".into(),
            address: "10.1.1.2".parse().unwrap(),
            mtu: 1420,
        };
        st.apps.insert(
            "weft-n1-aaaaaaaaaa".into(),
            AppNet {
                app: String::new(),
                netns: "weft-n1-aaaaaaaaaa".into(),
                device: Some(Device {
                    interface: "wf".into(),
                    mtu: 1420,
                    up: true,
                    routes: vec![route.parse().unwrap()],
                    ..Default::default()
                }),
                workloads: [("wv1".to_string(), link)].into(),
                policy: None,
                links: Default::default(),
            },
        );
        st
    }

    #[test]
    fn a_route_change_reattaches_workloads_after_the_new_route() {
        let ops = diff(
            &app("10.2.0.0/16"),
            &app("10.1.0.0/16"),
            &OneKey(PrivateKey::generate()),
        );
        let names: Vec<&str> = ops.iter().map(|o| o.name()).collect();
        assert_eq!(
            names,
            vec![
                "detach_workload",
                "delete_route",
                "add_route",
                "attach_workload"
            ]
        );
    }

    /// Two apps linked to each other, on top of `app()`.
    fn linked_pair() -> NodeState {
        let mut st = app("10.1.0.0/16");
        let mut b = st.apps["weft-n1-aaaaaaaaaa"].clone();
        b.netns = "weft-n1-bbbbbbbbbb".into();
        b.device.as_mut().unwrap().routes = vec!["10.2.0.0/16".parse().unwrap()];
        b.workloads.clear();
        st.apps.insert(b.netns.clone(), b);
        let end = |peer: &str, peer_if: &str, range: &str| crate::core::state::AppLinkEnd {
            peer_netns: peer.into(),
            peer_interface: peer_if.into(),
            routes: vec![range.parse().unwrap()],
        };
        let a = st.apps.get_mut("weft-n1-aaaaaaaaaa").unwrap();
        a.links.insert(
            "wxb".into(),
            end("weft-n1-bbbbbbbbbb", "wxa", "10.2.0.0/16"),
        );
        let b = st.apps.get_mut("weft-n1-bbbbbbbbbb").unwrap();
        b.links.insert(
            "wxa".into(),
            end("weft-n1-aaaaaaaaaa", "wxb", "10.1.0.0/16"),
        );
        st
    }

    #[test]
    fn an_app_link_is_created_once_routed_on_both_ends_and_then_converged() {
        use crate::dataplane::fake::FakeDataplane;
        use crate::dataplane::Dataplane;
        let keys = OneKey(PrivateKey::generate());
        let mut want = linked_pair();
        for a in want.apps.values_mut() {
            a.device.as_mut().unwrap().public_key = keys.0.public_key();
        }
        let mut without = want.clone();
        for a in without.apps.values_mut() {
            a.links.clear();
        }
        let mut dp = FakeDataplane::default();
        for op in diff(&without, &dp.observe("weft-").unwrap().state, &keys) {
            dp.apply(&op).unwrap();
        }
        let ops = diff(&want, &dp.observe("weft-").unwrap().state, &keys);
        let names: Vec<&str> = ops.iter().map(|o| o.name()).collect();
        assert_eq!(
            names,
            vec![
                "set_workload_routes",
                "create_app_link",
                "add_app_link_route",
                "add_app_link_route"
            ],
            "the owner (first netns) creates the pair; the workload gets the new route in place"
        );
        match &ops[0] {
            Op::SetWorkloadRoutes { routes, .. } => {
                // Both app ranges and the resolver's address.
                assert_eq!(routes.len(), 3, "{routes:?}")
            }
            o => panic!("{o:?}"),
        }
        assert!(
            matches!(&ops[1], Op::CreateAppLink { netns, .. } if netns == "weft-n1-aaaaaaaaaa")
        );
        for op in &ops {
            dp.apply(op).unwrap();
        }
        assert!(diff(&want, &dp.observe("weft-").unwrap().state, &keys).is_empty());
        // Unlinking removes the pair through one end (both go) and converges.
        let ops = diff(&without, &dp.observe("weft-").unwrap().state, &keys);
        assert!(ops.iter().any(|o| o.name() == "delete_app_link"), "{ops:?}");
        for op in &ops {
            dp.apply(op).unwrap();
        }
        assert!(diff(&without, &dp.observe("weft-").unwrap().state, &keys).is_empty());
    }

    #[test]
    fn one_side_alone_never_links() {
        let keys = OneKey(PrivateKey::generate());
        let mut want = linked_pair();
        // B's side does not (or no longer, or not yet) want the pair.
        want.apps
            .get_mut("weft-n1-bbbbbbbbbb")
            .unwrap()
            .links
            .clear();
        let ops = diff(&want, &NodeState::default(), &keys);
        assert!(
            !ops.iter().any(|o| o.name() == "create_app_link"),
            "{ops:?}"
        );
    }

    #[test]
    fn a_carried_address_comes_and_goes_without_touching_workload_links() {
        use crate::dataplane::fake::FakeDataplane;
        use crate::dataplane::Dataplane;
        let keys = OneKey(PrivateKey::generate());
        let mut plain = app("10.1.0.0/16");
        for a in plain.apps.values_mut() {
            a.device.as_mut().unwrap().public_key = keys.0.public_key();
        }
        let mut carrying = plain.clone();
        let d = carrying
            .apps
            .values_mut()
            .next()
            .unwrap()
            .device
            .as_mut()
            .unwrap();
        d.routes.push("10.2.3.4/32".parse().unwrap());
        let mut dp = FakeDataplane::default();
        for op in diff(&plain, &dp.observe("weft-").unwrap().state, &keys) {
            dp.apply(&op).unwrap();
        }
        for (want, added) in [(&carrying, true), (&plain, false)] {
            let ops = diff(want, &dp.observe("weft-").unwrap().state, &keys);
            let names: Vec<&str> = ops.iter().map(|o| o.name()).collect();
            let route = if added { "add_route" } else { "delete_route" };
            assert_eq!(names, vec![route, "set_workload_routes"], "{ops:?}");
            for op in &ops {
                dp.apply(op).unwrap();
            }
            assert!(diff(want, &dp.observe("weft-").unwrap().state, &keys).is_empty());
        }
    }

    #[test]
    fn no_key_means_no_device_is_created() {
        struct NoKey;
        impl KeySource for NoKey {
            fn private_key(&self, _: &str) -> Option<PrivateKey> {
                None
            }
        }
        let ops = diff(&app("10.1.0.0/16"), &NodeState::default(), &NoKey);
        assert!(ops
            .iter()
            .all(|o| !matches!(o, Op::CreateDevice { .. } | Op::AddRoute { .. })));
    }
}
