//! `--node` is checked before the daemon does anything: it names the
//! MeshNode, the state directory `<state>/nodes/<node>` and every namespace
//! `weft-<node>-<appId>`, so a bad one would make a bad path.

use std::process::Command;

fn daemon(args: &[&str], node_env: Option<&str>) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weft-node-daemon"));
    c.args(args).env_remove("WEFT_NODE");
    if let Some(n) = node_env {
        c.env("WEFT_NODE", n);
    }
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_bad_node_name_is_refused_naming_the_flag() {
    let too_long = "a".repeat(240);
    let cases: [(&str, &str); 6] = [
        ("", "must not be empty"),
        ("Node1", "DNS-1123 subdomain"),
        ("../etc", "DNS-1123 subdomain"),
        ("n1/x", "DNS-1123 subdomain"),
        ("n1\nx", "DNS-1123 subdomain"),
        (&too_long, "use at most 239"),
    ];
    for sub in ["standalone", "kubernetes", "cleanup"] {
        for (node, want) in cases {
            let (code, err) = daemon(&[sub, "--node", node], None);
            assert_eq!(code, 2, "{sub} --node {node:?}: {err}");
            assert!(
                err.contains("invalid value") && err.contains("--node") && err.contains(want),
                "{sub} --node {node:?}: {err}"
            );
        }
    }
    // Through the environment as well.
    let (code, err) = daemon(&["cleanup"], Some("Bad_Node"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--node") && err.contains("Bad_Node"), "{err}");
}

#[test]
fn the_longest_node_name_that_fits_passes_the_check() {
    // 239 characters: weft-<node>-<appId> is 255 bytes. The daemon goes on
    // to complain about the next missing flag, not about --node.
    let node = "a".repeat(239);
    let (code, err) = daemon(&["standalone", "--node", &node], None);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("invalid value"), "{err}");
    assert!(err.contains("--state"), "{err}");
}
