//! Property tests of the standalone operator's readers of outside input:
//! manifest files and node registrations. Arbitrary bytes and mutations of
//! valid input must give a result or a problem naming where, never a panic;
//! a file over its bound is refused without being read whole.

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use tempfile::TempDir;
use weft_api::standalone::NodeRegistration;
use weft_operator::standalone::manifests::{parse_manifest, ManifestCache};
use weft_operator::standalone::registration;

const VALID: &str = "apiVersion: weft.dev/v1alpha1
kind: MeshApp
metadata: {name: web, namespace: demo, labels: {a: b}}
spec:
  addressSpace: 10.100.0.0/16
  selector: {matchLabels: {tier: web}, matchExpressions: [{key: x, operator: In, values: [a]}]}
  sites: [local]
  mtu: 1420
---
apiVersion: weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: p, namespace: demo}
spec:
  app: web
  ingress: [{peers: [{cidr: 10.100.0.0/24}], ports: [{protocol: TCP, port: 80, endPort: 90}]}]
";

/// A valid manifest with a few bytes replaced, inserted or cut.
fn mutated() -> impl Strategy<Value = String> {
    let edits = prop::collection::vec((0..VALID.len(), any::<u8>(), 0u8..3), 1..8);
    edits.prop_map(|edits| {
        let mut b = VALID.as_bytes().to_vec();
        for (at, byte, how) in edits {
            let at = at.min(b.len().saturating_sub(1));
            match how {
                // A cut may have emptied the buffer: then replacing inserts.
                0 if b.is_empty() => b.push(byte),
                0 => b[at] = byte,
                1 => b.insert(at, byte),
                _ => {
                    b.truncate(at);
                }
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

fn check_parse(text: &str) {
    for name in ["m.yaml", "m.json"] {
        let parsed = parse_manifest(Path::new(name), text);
        // Every problem is one line: messages never carry raw control
        // characters (they end up in tables and logs).
        let problems = parsed
            .docs
            .iter()
            .flat_map(|d| {
                d.problems
                    .iter()
                    .map(|p| format!("{}: {}", p.field, p.message))
            })
            .chain(parsed.file_problem.clone());
        for p in problems {
            assert!(!p.contains('\n') && !p.contains('\u{1b}'), "{p:?}");
            assert!(p.len() < 4096, "{} bytes", p.len());
        }
        // A document is accepted only with its object named.
        for d in &parsed.docs {
            if d.manifest.is_some() {
                assert!(d.problems.is_empty() && d.object.is_some());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics_the_manifest_parser(text in ".{0,400}") {
        check_parse(&text);
    }

    #[test]
    fn damaged_manifests_never_panic_and_name_the_problem(text in mutated()) {
        check_parse(&text);
        let parsed = parse_manifest(Path::new("m.yaml"), &text);
        let accepted = parsed.docs.iter().filter(|d| d.manifest.is_some()).count();
        let refused = parsed.docs.iter().filter(|d| !d.problems.is_empty()).count();
        prop_assert!(parsed.file_problem.is_some() || accepted + refused == parsed.docs.len());
    }

    #[test]
    fn arbitrary_registrations_never_panic(
        name in "[a-zA-Z0-9.\\- /\n]{0,300}",
        site in ".{0,80}",
        address in ".{0,40}",
        key in ".{0,80}",
        value in ".{0,80}",
    ) {
        let reg = NodeRegistration {
            name: name.clone(),
            site,
            address,
            labels: [(key, value)].into(),
        };
        for (field, msg) in registration::errors(&name, &reg) {
            prop_assert!(!field.contains('\n') && !msg.contains('\n'), "{field}: {msg}");
        }
        // And through JSON, as the file is read.
        let json = serde_json::to_string(&reg).unwrap();
        let back: NodeRegistration = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, reg);
    }

    #[test]
    fn arbitrary_bytes_as_node_json_are_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = TempDir::new().unwrap();
        let p = dir.path().join("node.json");
        fs::write(&p, &bytes).unwrap();
        let r = weft_operator::standalone::files::read_json::<NodeRegistration>(&p);
        if let Ok(Some(reg)) = r {
            // Whatever parsed is then checked by the rules.
            let _ = registration::errors("n1", &reg);
        }
    }
}

#[test]
fn an_oversized_manifest_is_refused_without_parsing() {
    let dir = TempDir::new().unwrap();
    let big = format!("{VALID}# {}\n", "x".repeat(3 << 20));
    fs::write(dir.path().join("big.yaml"), big).unwrap();
    let mut cache = ManifestCache::default();
    let fresh = cache.refresh(dir.path()).unwrap();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(fresh[0].1.contains("at most"), "{fresh:?}");
    assert!(cache.entries(&|_: &Path| Vec::new()).is_empty());
}

#[test]
fn an_oversized_node_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("node.json");
    fs::write(&p, format!("{{\"pad\":\"{}\"}}", "x".repeat(5 << 20))).unwrap();
    let e = weft_operator::standalone::files::read_json::<serde_json::Value>(&p).unwrap_err();
    assert!(format!("{e:#}").contains("larger than"), "{e:#}");
}
