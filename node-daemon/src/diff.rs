//! Pure diff: the operations that turn `observed` into `desired`, in an order
//! the kernel accepts (namespaces, then devices, then what hangs off them;
//! removals before additions within an interface). Empty when converged.

use crate::ops::Op;
use crate::state::{AppNet, Device, NodeState, WorkloadLink};

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
    ops
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
    // Workloads mirror the app's routes at attach time, so a route change
    // means re-attaching them.
    let routes_changed = match (&want.device, &have.device) {
        (Some(w), Some(h)) => w.routes != h.routes,
        _ => false,
    };
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
            });
        }
    }
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
    use crate::keys::PrivateKey;
    use crate::state::WorkloadLink;

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
