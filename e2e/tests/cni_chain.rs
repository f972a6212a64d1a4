//! End-to-end: pods made the way a container runtime makes them. On each of
//! two simulated nodes a pod netns gets its primary interface from Debian's
//! containernetworking-plugins (`bridge` + `host-local`), then `weft-cni`
//! chained after them attaches it to its app through the node daemon's
//! attach socket; the two pods talk through the app's tunnel.
//!
//! Needs root, `ip`, `ping`, /usr/lib/cni/{bridge,host-local} and the
//! workspace binaries (`cargo build --workspace`). Without them the test
//! prints `SKIPPED` — except under `CI=true`, where it fails naming what is
//! missing.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use weft_e2e::cluster::{assert_torn_down_cleanly, Cluster};
use weft_e2e::cni::{missing_cni_plugins, CniOutput, Runtime, DEBIAN_CNI_DIR};
use weft_e2e::netns::{ip_in, NetNs};
use weft_e2e::scenario::{self, NS};
use weft_e2e::traffic::{ping, ping_until_ok};
use weft_e2e::workload::{announce_pod, reported_address, WORKLOAD_IFACE};

const WAIT: Duration = Duration::from_secs(30);
const APP_RANGE: &str = "10.100.0.0/16"; // examples/web.yaml

fn runnable(test: &str) -> bool {
    scenario::require(
        test,
        missing_cni_plugins(),
        " (scripts/setup.sh installs containernetworking-plugins)",
    )
}

fn plugin(name: &str) -> PathBuf {
    PathBuf::from(DEBIAN_CNI_DIR).join(name)
}

/// The primary network's configuration on node `i`: a bridge in the node's
/// netns and a host-local range of the test's own, with its state in the
/// run directory.
fn bridge_conf(c: &Cluster, i: usize) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": format!("{}-pods", c.prefix()),
        "type": "bridge",
        "bridge": format!("cnibr{i}"),
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "subnet": format!("10.250.{i}.0/24"),
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": c.run_dir().join("cni-ipam").to_string_lossy(),
        }
    })
}

fn weft_conf(c: &Cluster, i: usize) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": format!("{}-pods", c.prefix()),
        "type": "weft-cni",
        "daemonSocket": c.attach_socket(i).to_string_lossy(),
    })
}

fn runtime(c: &Cluster, i: usize, pod: &NetNs, name: &str) -> Runtime {
    Runtime {
        node_netns: c.node_name(i),
        cni_path: format!(
            "{DEBIAN_CNI_DIR}:{}",
            weft_e2e::bin("weft-cni")
                .unwrap()
                .parent()
                .unwrap()
                .display()
        ),
        container_id: format!("{}-{name}", c.prefix()),
        pod_netns: pod.path(),
        ifname: "eth0".into(),
        pod: (NS.into(), name.into()),
    }
}

fn must(o: CniOutput, what: &str) -> Value {
    assert!(
        o.ok(),
        "{what}: exit {} stdout {} stderr {}",
        o.code,
        o.stdout,
        o.stderr
    );
    o.json
}

fn names(result: &Value) -> Vec<String> {
    result["interfaces"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|i| i["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn has_link(ns: &str, ifname: &str) -> bool {
    ip_in(ns, &["-o", "link", "show", "dev", ifname]).is_ok()
}

/// eth0's addresses and the default route: what Weft must never touch.
fn primary(ns: &str) -> (String, String) {
    (
        ip_in(ns, &["-4", "-o", "addr", "show", "dev", "eth0"]).unwrap(),
        ip_in(ns, &["route", "show", "default"]).unwrap(),
    )
}

fn wait_released(c: &Cluster, i: usize, name: &str) {
    let node = c.node_name(i);
    weft_e2e::wait_for(
        &format!("{node} to release the address of {NS}/{name}"),
        WAIT,
        Duration::from_millis(50),
        || {
            Ok(reported_address(c.state(), &node, NS, name)?
                .is_none()
                .then_some(()))
        },
    )
    .unwrap();
}

#[test]
fn pods_chained_after_bridge_talk_through_their_app() {
    if !runnable("pods_chained_after_bridge_talk_through_their_app") {
        return;
    }
    for b in ["weft-operator", "weft-node-daemon", "weft-cni"] {
        if let Err(e) = weft_e2e::bin(b) {
            panic!("{e:#}: run `cargo build --workspace` first");
        }
    }
    let weft = weft_e2e::bin("weft-cni").unwrap();
    let mut c = Cluster::new(2).expect("build the simulated network");
    c.enable_attach_sockets();
    c.start_all().expect("start operator and daemons");
    scenario::install_manifests(&c, &scenario::repo_examples_dir()).expect("write manifests");

    // One pod per node: metadata announced (no netns), netns from the runtime.
    let pods: Vec<NetNs> = (1..=2)
        .map(|i| NetNs::create(&format!("{}-pod-{i}", c.prefix())).unwrap())
        .collect();
    for i in 1..=2 {
        announce_pod(
            c.state(),
            &c.node_name(i),
            &format!("pod-{i}"),
            NS,
            &[("tier", "web")],
        )
        .unwrap();
    }

    let mut results = Vec::new();
    let mut primaries = Vec::new();
    for i in 1..=2 {
        let rt = runtime(&c, i, &pods[i - 1], &format!("pod-{i}"));
        let prev = must(
            rt.invoke(&plugin("bridge"), "ADD", &bridge_conf(&c, i))
                .unwrap(),
            "bridge ADD",
        );
        primaries.push(primary(pods[i - 1].name()));
        let res = must(
            rt.invoke_chained(&weft, "ADD", &weft_conf(&c, i), &prev)
                .unwrap(),
            "weft-cni ADD",
        );
        let n = names(&res);
        assert!(
            n.contains(&"eth0".to_string()) && n.contains(&WORKLOAD_IFACE.to_string()),
            "{res}"
        );
        let reported = reported_address(c.state(), &c.node_name(i), NS, &format!("pod-{i}"))
            .unwrap()
            .expect("the node reports the pod's address");
        let ips: Vec<&str> = res["ips"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["address"].as_str())
            .collect();
        assert!(
            ips.contains(&format!("{reported}/32").as_str()),
            "{reported} in {res}"
        );
        assert!(
            res["routes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == APP_RANGE),
            "{res}"
        );
        assert!(has_link(pods[i - 1].name(), WORKLOAD_IFACE));
        results.push((rt, prev, res, reported));
    }

    // Real packets: pod-1 -> pod-2 through the app's tunnel.
    let to: std::net::Ipv4Addr = results[1].3.parse().unwrap();
    ping_until_ok(pods[0].name(), to, WAIT).expect("pod-1 reaches pod-2 over the app");
    let r = ping(pods[0].name(), to, 3, Duration::from_secs(5)).unwrap();
    assert!(r.ok && r.received == r.transmitted, "{r:?}");
    for i in 0..2 {
        assert_eq!(
            primary(pods[i].name()),
            primaries[i],
            "primary interface and default route untouched"
        );
    }

    // ADD again: same result; CHECK passes.
    let (rt1, prev1, res1, _) = &results[0];
    let again = must(
        rt1.invoke_chained(&weft, "ADD", &weft_conf(&c, 1), prev1)
            .unwrap(),
        "repeated ADD",
    );
    assert_eq!(&again, res1, "ADD is idempotent");
    must(
        rt1.invoke_chained(&weft, "CHECK", &weft_conf(&c, 1), res1)
            .unwrap(),
        "CHECK",
    );

    // DEL (the runtime goes through the chain backwards): weft0 goes, the
    // address is released; DEL again is fine.
    must(
        rt1.invoke_chained(&weft, "DEL", &weft_conf(&c, 1), res1)
            .unwrap(),
        "DEL",
    );
    assert!(!has_link(pods[0].name(), WORKLOAD_IFACE), "weft0 removed");
    wait_released(&c, 1, "pod-1");
    must(
        rt1.invoke_chained(&weft, "DEL", &weft_conf(&c, 1), res1)
            .unwrap(),
        "DEL again",
    );
    must(
        rt1.invoke(&plugin("bridge"), "DEL", &bridge_conf(&c, 1))
            .unwrap(),
        "bridge DEL",
    );

    // DEL after the pod netns is gone.
    let (rt2, _, res2, _) = &results[1];
    let pod2 = pods.into_iter().nth(1).unwrap();
    drop(pod2);
    must(
        rt2.invoke_chained(&weft, "DEL", &weft_conf(&c, 2), res2)
            .unwrap(),
        "DEL without netns",
    );
    wait_released(&c, 2, "pod-2");
    must(
        rt2.invoke(&plugin("bridge"), "DEL", &bridge_conf(&c, 2))
            .unwrap(),
        "bridge DEL without netns",
    );

    // A pod nobody announced belongs to no app: passed through untouched.
    let stray = NetNs::create(&format!("{}-pod-3", c.prefix())).unwrap();
    let rt3 = runtime(&c, 1, &stray, "pod-3");
    let prev3 = must(
        rt3.invoke(&plugin("bridge"), "ADD", &bridge_conf(&c, 1))
            .unwrap(),
        "bridge ADD pod-3",
    );
    let res3 = must(
        rt3.invoke_chained(&weft, "ADD", &weft_conf(&c, 1), &prev3)
            .unwrap(),
        "weft-cni ADD of a pod of no app",
    );
    assert_eq!(res3, prev3, "prevResult unchanged");
    assert!(!has_link(stray.name(), WORKLOAD_IFACE));
    must(
        rt3.invoke_chained(&weft, "DEL", &weft_conf(&c, 1), &res3)
            .unwrap(),
        "DEL pod-3",
    );
    must(
        rt3.invoke(&plugin("bridge"), "DEL", &bridge_conf(&c, 1))
            .unwrap(),
        "bridge DEL pod-3",
    );
    drop(stray);

    // A pod announced (a Pod object exists) whose labels no app of this
    // node's site claims: the daemon knows from the operator's selector
    // file of the pod's namespace (not from its MeshNode, which lists only
    // its own apps) and passes it through at once, without waiting for the
    // operator (which never lists it; the ADD used to time out with code 11).
    let file = c.state().selectors_file("local", NS).unwrap();
    let sels: Vec<weft_api::AppSelector> =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(
        sels.iter().any(|a| a.app == format!("{NS}/web")),
        "{sels:?}"
    );
    let batch = NetNs::create(&format!("{}-pod-5", c.prefix())).unwrap();
    announce_pod(
        c.state(),
        &c.node_name(1),
        "pod-5",
        NS,
        &[("tier", "batch")],
    )
    .unwrap();
    let rt5 = runtime(&c, 1, &batch, "pod-5");
    let prev5 = must(
        rt5.invoke(&plugin("bridge"), "ADD", &bridge_conf(&c, 1))
            .unwrap(),
        "bridge ADD pod-5",
    );
    let res5 = must(
        rt5.invoke_chained(&weft, "ADD", &weft_conf(&c, 1), &prev5)
            .unwrap(),
        "weft-cni ADD of an announced pod no app claims",
    );
    assert_eq!(res5, prev5, "prevResult unchanged");
    assert!(!has_link(batch.name(), WORKLOAD_IFACE));
    must(
        rt5.invoke_chained(&weft, "DEL", &weft_conf(&c, 1), &res5)
            .unwrap(),
        "DEL pod-5",
    );
    must(
        rt5.invoke(&plugin("bridge"), "DEL", &bridge_conf(&c, 1))
            .unwrap(),
        "bridge DEL pod-5",
    );
    drop(batch);

    // The same in a namespace with no app at all (no selector file), even
    // labelled like an app of another namespace: apps claim their own
    // namespace's pods only.
    let other_ns = "no-apps-here";
    assert!(!c
        .state()
        .selectors_file("local", other_ns)
        .unwrap()
        .exists());
    let lone = NetNs::create(&format!("{}-pod-6", c.prefix())).unwrap();
    announce_pod(
        c.state(),
        &c.node_name(1),
        "pod-6",
        other_ns,
        &[("weft.dev/app", "web"), ("tier", "web")],
    )
    .unwrap();
    let mut rt6 = runtime(&c, 1, &lone, "pod-6");
    rt6.pod.0 = other_ns.into();
    let prev6 = must(
        rt6.invoke(&plugin("bridge"), "ADD", &bridge_conf(&c, 1))
            .unwrap(),
        "bridge ADD pod-6",
    );
    let res6 = must(
        rt6.invoke_chained(&weft, "ADD", &weft_conf(&c, 1), &prev6)
            .unwrap(),
        "weft-cni ADD of a pod in a namespace with no app",
    );
    assert_eq!(res6, prev6, "prevResult unchanged");
    assert!(!has_link(lone.name(), WORKLOAD_IFACE));
    must(
        rt6.invoke_chained(&weft, "DEL", &weft_conf(&c, 1), &res6)
            .unwrap(),
        "DEL pod-6",
    );
    must(
        rt6.invoke(&plugin("bridge"), "DEL", &bridge_conf(&c, 1))
            .unwrap(),
        "bridge DEL pod-6",
    );
    drop(lone);

    // The daemon is down: try again later (11), non-zero exit, nothing made.
    c.crash_daemon(2).unwrap();
    let down = NetNs::create(&format!("{}-pod-4", c.prefix())).unwrap();
    announce_pod(c.state(), &c.node_name(2), "pod-4", NS, &[("tier", "web")]).unwrap();
    let rt4 = runtime(&c, 2, &down, "pod-4");
    let prev4 = must(
        rt4.invoke(&plugin("bridge"), "ADD", &bridge_conf(&c, 2))
            .unwrap(),
        "bridge ADD pod-4",
    );
    let o = rt4
        .invoke_chained(&weft, "ADD", &weft_conf(&c, 2), &prev4)
        .unwrap();
    assert_ne!(o.code, 0, "{o:?}");
    assert_eq!(o.json["code"], 11, "{o:?}");
    assert!(
        o.json["msg"]
            .as_str()
            .unwrap_or("")
            .contains("not reachable"),
        "{o:?}"
    );
    assert!(!has_link(down.name(), WORKLOAD_IFACE));
    must(
        rt4.invoke(&plugin("bridge"), "DEL", &bridge_conf(&c, 2))
            .unwrap(),
        "bridge DEL pod-4",
    );
    drop(down);

    assert_torn_down_cleanly(c);
}
