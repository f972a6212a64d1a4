//! Properties of the pure diff, checked through the in-memory data plane:
//! from any starting state, applying the diff converges to the desired state,
//! and a converged state produces no operations.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use weft_node_daemon::core::diff::{diff, KeySource};
use weft_node_daemon::core::state::{AppNet, Device, NodeState, Peer, Ruleset, WorkloadLink};
use weft_node_daemon::dataplane::fake::FakeDataplane;
use weft_node_daemon::dataplane::Dataplane;
use weft_node_daemon::keys::PrivateKey;

/// Deterministic keys per netns (the fake derives public keys from them).
struct Keys(BTreeMap<String, PrivateKey>);
impl KeySource for Keys {
    fn private_key(&self, netns: &str) -> Option<PrivateKey> {
        self.0.get(netns).cloned()
    }
}

fn net(a: u8, b: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, a, b, 0), len)
        .unwrap()
        .trunc()
}

/// (has device, mtu, listen port, peer indexes, workload host octets, address variant)
type AppShape = (bool, u16, u16, Vec<u8>, Vec<u8>, u8);

fn app_strategy() -> impl Strategy<Value = AppShape> {
    (
        any::<bool>(),
        1280u16..1500,
        51820u16..51830,
        proptest::collection::vec(0u8..6, 0..4),
        proptest::collection::vec(2u8..9, 0..4),
        0u8..3,
    )
}

fn build(
    apps: &[AppShape],
    keys: &BTreeMap<String, PrivateKey>,
    peer_keys: &[String],
) -> NodeState {
    let mut st = NodeState::default();
    for (i, (has_dev, mtu, port, peers, wls, addr_variant)) in apps.iter().enumerate() {
        let netns = format!("weft-n1-app{i:07}");
        let device = has_dev.then(|| Device {
            interface: format!("wfapp{i}"),
            mtu: *mtu,
            up: true,
            addresses: vec![
                Ipv4Net::new(Ipv4Addr::new(10, i as u8, 1, 1 + addr_variant), 32).unwrap(),
            ],
            routes: vec![net(i as u8, 0, 16)],
            listen_port: *port,
            public_key: keys[&netns].public_key(),
            peers: peers
                .iter()
                .map(|p| {
                    (
                        peer_keys[*p as usize].clone(),
                        Peer {
                            endpoint: Some(format!("192.0.2.{}:51820", p + 2).parse().unwrap()),
                            allowed_ips: vec![net(i as u8, p + 2, 24)],
                            persistent_keepalive: 0,
                        },
                    )
                })
                .collect(),
        });
        let workloads = wls
            .iter()
            .map(|w| {
                (
                    format!("wv{i}x{w}"),
                    WorkloadLink {
                        workload: String::new(),
                        workload_netns: String::new(),
                        address: Ipv4Addr::new(10, i as u8, 1, *w),
                        mtu: *mtu,
                    },
                )
            })
            .collect();
        // The policy varies with the address variant too (none, or an
        // ingress isolation of one workload address).
        let policy = (*addr_variant > 0).then(|| {
            Ruleset {
                app_range: Some(net(i as u8, 0, 16)),
                ingress_isolated: vec![Ipv4Addr::new(10, i as u8, 1, *addr_variant)],
                ..Default::default()
            }
            .into_table()
        });
        st.apps.insert(
            netns.clone(),
            AppNet {
                app: String::new(),
                netns,
                device,
                workloads,
                policy,
                links: Default::default(),
            },
        );
    }
    st
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn applying_the_diff_converges_and_then_nothing_is_left_to_do(
        want in proptest::collection::vec(app_strategy(), 0..4),
        have in proptest::collection::vec(app_strategy(), 0..4),
    ) {
        let keys: BTreeMap<String, PrivateKey> = (0..4).map(|i| (format!("weft-n1-app{i:07}"), PrivateKey::generate())).collect();
        let peer_keys: Vec<String> = (0..6).map(|_| PrivateKey::generate().public_key()).collect();
        let desired = build(&want, &keys, &peer_keys);
        let start = build(&have, &keys, &peer_keys);
        let mut dp = FakeDataplane { state: start, ..Default::default() };
        let ks = Keys(keys);
        let ops = diff(&desired, &dp.observe("weft-n1-").unwrap().state, &ks);
        for op in &ops {
            dp.apply(op).unwrap();
        }
        let after = dp.observe("weft-n1-").unwrap().state;
        prop_assert_eq!(&after, &desired);
        prop_assert!(diff(&desired, &after, &ks).is_empty());
    }
}
