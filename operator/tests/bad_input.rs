//! The bad-input corpus: every case puts one malformed or hostile input
//! next to (or in place of) a working set-up of two apps and a policy on two
//! nodes, runs the standalone operator, and checks that
//! - the problem is reported with the field (and file) it concerns, and
//! - every working node's app entries (`spec.apps` of its MeshNode, what
//!   its data plane is programmed from) are byte-for-byte what they were.
//!
//! Edits of the working app's own manifest also check that the app says
//! which generation stays in force. Grow the table with every bug of this kind.

use std::fs;
use std::path::Path;

use k8s_openapi::jiff::Timestamp;
use tempfile::TempDir;
use weft_api::conditions::{self, types};
use weft_api::standalone::{NodeRegistration, StateDir, StoredStatus};
use weft_api::{AppStatus, MeshAppStatus, MeshNodeStatus, WorkloadStatus};
use weft_operator::standalone::files::write_json_atomic;
use weft_operator::standalone::get::{self, Output};
use weft_operator::standalone::{Standalone, StandaloneConfig};

const WEB: &str = "apiVersion: weft.dev/v1alpha1
kind: MeshApp
metadata: {name: web, namespace: demo}
spec:
  addressSpace: 10.100.0.0/16
  selector: {matchLabels: {tier: web}}
";
const DB: &str = "apiVersion: weft.dev/v1alpha1
kind: MeshApp
metadata: {name: db, namespace: demo}
spec:
  addressSpace: 10.101.0.0/16
  selector: {matchLabels: {tier: db}}
";
const POLICY: &str = "apiVersion: weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: web-ingress, namespace: demo}
spec:
  app: web
  ingress:
    - peers: [{selector: {matchLabels: {tier: web}}}]
      ports: [{protocol: TCP, port: 80}]
";
const SITES: &str = "apiVersion: weft.dev/v1alpha1
kind: MeshSite
metadata: {name: local}
spec: {kind: Local}
---
apiVersion: weft.dev/v1alpha1
kind: MeshSite
metadata: {name: edge}
spec: {kind: Edge, description: edge hosts}
";

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

/// What a case does to the working set-up.
enum Change {
    /// A new manifest file next to the working ones.
    Extra(&'static str, String),
    /// `apps.yaml` with the web document replaced (db stays as it was).
    EditWeb(String),
    /// `policies.yaml` replaced.
    EditPolicy(String),
    /// `sites.yaml` replaced.
    EditSites(String),
    /// `apps.yaml` replaced by raw bytes.
    AppsBytes(Vec<u8>),
    /// `apps.yaml` becomes a directory.
    AppsDirectory,
    /// `apps.yaml` becomes a symlink to nowhere.
    AppsDanglingSymlink,
    /// A node directory with this name and `node.json` content.
    Node(String, Vec<u8>),
}

struct Case {
    name: &'static str,
    change: Change,
    /// Every one must appear in what the operator reports.
    expect: Vec<String>,
}

fn case(name: &'static str, change: Change, expect: &[&str]) -> Case {
    Case {
        name,
        change,
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

fn app(meta: &str, spec: &str) -> String {
    format!("apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {meta}\nspec: {spec}\n")
}
fn web_spec(spec: &str) -> Change {
    Change::EditWeb(app("{name: web, namespace: demo}", spec))
}
fn web_meta(meta: &str) -> Change {
    Change::EditWeb(app(
        meta,
        "{addressSpace: 10.100.0.0/16, selector: {matchLabels: {tier: web}}}",
    ))
}
fn policy(spec: &str) -> Change {
    Change::EditPolicy(format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: web-ingress, namespace: demo}}\nspec: {spec}\n"
    ))
}
fn site(meta: &str, spec: &str) -> Change {
    Change::Extra(
        "site-bad.yaml",
        format!("apiVersion: weft.dev/v1alpha1\nkind: MeshSite\nmetadata: {meta}\nspec: {spec}\n"),
    )
}
fn hub(meta: &str, spec: &str) -> Change {
    Change::Extra(
        "hub.yaml",
        format!("apiVersion: weft.dev/v1alpha1\nkind: MeshHub\nmetadata: {meta}\nspec: {spec}\n"),
    )
}
fn node(dir: &str, json: &str) -> Change {
    Change::Node(dir.to_string(), json.as_bytes().to_vec())
}

fn corpus() -> Vec<Case> {
    let long = "x".repeat(254);
    let sixty_five_sites: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let many_labels: Vec<String> = (0..65).map(|i| format!("k{i}: v")).collect();
    let laughs = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
    vec![
        // --- MeshApp: the working app's own manifest edited badly.
        case("prefix /33", web_spec("{addressSpace: 10.100.0.0/33}"), &["spec.addressSpace"]),
        case("host bits set", web_spec("{addressSpace: 10.100.0.1/16}"), &["spec.addressSpace", "host bits"]),
        case("address space changed", web_spec("{addressSpace: 10.200.0.0/16, selector: {matchLabels: {tier: web}}}"), &["spec.addressSpace", "immutable"]),
        case("address space removed", web_spec("{selector: {matchLabels: {tier: web}}}"), &["spec.addressSpace", "cannot be removed"]),
        case("multicast range", web_spec("{addressSpace: 224.0.0.0/16}"), &["spec.addressSpace", "multicast"]),
        case("loopback range", web_spec("{addressSpace: 127.0.0.0/16}"), &["spec.addressSpace", "loopback"]),
        case("broadcast range", web_spec("{addressSpace: 255.255.0.0/16}"), &["spec.addressSpace", "broadcast"]),
        case("link-local range", web_spec("{addressSpace: 169.254.0.0/16}"), &["spec.addressSpace", "link-local"]),
        case("whole internet", web_spec("{addressSpace: 0.0.0.0/0}"), &["spec.addressSpace"]),
        case("prefix too wide", web_spec("{addressSpace: 10.0.0.0/4}"), &["spec.addressSpace"]),
        case("range not a cidr", web_spec("{addressSpace: banana}"), &["spec.addressSpace", "pattern"]),
        case("range a number", web_spec("{addressSpace: 42}"), &["spec.addressSpace", "must be a string"]),
        case("mtu 9000", web_spec("{addressSpace: 10.100.0.0/16, mtu: 9000}"), &["spec.mtu", "maximum"]),
        case("mtu 100", web_spec("{addressSpace: 10.100.0.0/16, mtu: 100}"), &["spec.mtu", "minimum"]),
        case("mtu a string", web_spec("{addressSpace: 10.100.0.0/16, mtu: '1400'}"), &["spec.mtu", "must be an integer"]),
        case("mtu negative", web_spec("{addressSpace: 10.100.0.0/16, mtu: -1}"), &["spec.mtu"]),
        case("node prefix wider than range", web_spec("{addressSpace: 10.100.0.0/16, nodePrefixLength: 12}"), &["spec.nodePrefixLength"]),
        case("node prefix 31", web_spec("{addressSpace: 10.100.0.0/16, nodePrefixLength: 31}"), &["spec.nodePrefixLength", "maximum"]),
        case("node prefix negative", web_spec("{addressSpace: 10.100.0.0/16, nodePrefixLength: -1}"), &["spec.nodePrefixLength", "minimum"]),
        case("node prefix fractional", web_spec("{addressSpace: 10.100.0.0/16, nodePrefixLength: 24.5}"), &["spec.nodePrefixLength", "integer"]),
        case("keepalive 65535", web_spec("{addressSpace: 10.100.0.0/16, persistentKeepalive: 65535}"), &["spec.persistentKeepalive"]),
        case("keepalive negative", web_spec("{addressSpace: 10.100.0.0/16, persistentKeepalive: -5}"), &["spec.persistentKeepalive"]),
        case("unknown site", web_spec("{addressSpace: 10.100.0.0/16, sites: [nowhere]}"), &["spec.sites[0]", "nowhere"]),
        case("site name upper case", web_spec("{addressSpace: 10.100.0.0/16, sites: [Edge]}"), &["spec.sites[0]"]),
        case("site listed twice", web_spec("{addressSpace: 10.100.0.0/16, sites: [local, local]}"), &["spec.sites[1]"]),
        case("sites not a list", web_spec("{addressSpace: 10.100.0.0/16, sites: local}"), &["spec.sites", "must be an array"]),
        case("65 sites", web_spec(&format!("{{addressSpace: 10.100.0.0/16, sites: [{}]}}", sixty_five_sites.join(","))), &["spec.sites", "at most 64"]),
        case("In without values", web_spec("{addressSpace: 10.100.0.0/16, selector: {matchExpressions: [{key: tier, operator: In}]}}"), &["spec.selector.matchExpressions[0].values"]),
        case("NotIn without values", web_spec("{addressSpace: 10.100.0.0/16, selector: {matchExpressions: [{key: tier, operator: NotIn}]}}"), &["spec.selector.matchExpressions[0].values"]),
        case("Exists with values", web_spec("{addressSpace: 10.100.0.0/16, selector: {matchExpressions: [{key: tier, operator: Exists, values: [a]}]}}"), &["spec.selector.matchExpressions[0].values"]),
        case("unknown operator", web_spec("{addressSpace: 10.100.0.0/16, selector: {matchExpressions: [{key: tier, operator: Like, values: [a]}]}}"), &["spec.selector.matchExpressions[0].operator"]),
        case("empty selector key", web_spec("{addressSpace: 10.100.0.0/16, selector: {matchExpressions: [{key: '', operator: Exists}]}}"), &["spec.selector.matchExpressions[0].key"]),
        case("selector key with space", web_spec("{addressSpace: 10.100.0.0/16, selector: {matchExpressions: [{key: 'a b', operator: Exists}]}}"), &["spec.selector.matchExpressions[0].key"]),
        case("label value too long", web_spec(&format!("{{addressSpace: 10.100.0.0/16, selector: {{matchLabels: {{tier: {}}}}}}}", "v".repeat(64))), &["spec.selector.matchLabels[tier]"]),
        case("label key two slashes", web_spec("{addressSpace: 10.100.0.0/16, selector: {matchLabels: {'a/b/c': web}}}"), &["spec.selector.matchLabels[a/b/c]"]),
        case("label value a number", web_spec("{addressSpace: 10.100.0.0/16, selector: {matchLabels: {tier: 5}}}"), &["spec.selector.matchLabels[tier]", "must be a string"]),
        case("65 match labels", web_spec(&format!("{{addressSpace: 10.100.0.0/16, selector: {{matchLabels: {{{}}}}}}}", many_labels.join(", "))), &["spec.selector.matchLabels", "at most 64"]),
        case("label value with newline", web_spec("{addressSpace: 10.100.0.0/16, selector: {matchLabels: {tier: \"we\\nb\"}}}"), &["spec.selector.matchLabels[tier]"]),
        case("misspelt addressSpace", web_spec("{addresSpace: 10.100.0.0/16}"), &["spec.addresSpace", "unknown field", "addressSpace"]),
        case("misspelt matchLabels", web_spec("{addressSpace: 10.100.0.0/16, selector: {matchLabel: {tier: web}}}"), &["spec.selector.matchLabel", "unknown field"]),
        case("spec left out", Change::EditWeb("apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: web, namespace: demo}\n".into()), &["spec", "required"]),
        case("spec a list", web_spec("[]"), &["spec", "must be an object"]),
        case("spec a string", web_spec("text"), &["spec", "must be an object"]),
        case("name upper case", web_meta("{name: Web, namespace: demo}"), &["metadata.name", "DNS-1123"]),
        case("name with slash", web_meta("{name: a/b, namespace: demo}"), &["metadata.name"]),
        case("name dot dot", web_meta("{name: '..', namespace: demo}"), &["metadata.name"]),
        case("name with newline", web_meta("{name: \"we\\nb\", namespace: demo}"), &["metadata.name"]),
        case("name with space", web_meta("{name: 'w eb', namespace: demo}"), &["metadata.name"]),
        case("name leading dash", web_meta("{name: -web, namespace: demo}"), &["metadata.name"]),
        case("name 254 characters", web_meta(&format!("{{name: {long}, namespace: demo}}")), &["metadata.name", "longer than 253"]),
        case("name missing", web_meta("{namespace: demo}"), &["metadata.name", "required"]),
        case("name a number", web_meta("{name: 7, namespace: demo}"), &["metadata.name", "must be a string"]),
        case("namespace empty", web_meta("{name: web, namespace: ''}"), &["metadata.namespace", "empty"]),
        case("namespace upper case", web_meta("{name: web, namespace: Demo}"), &["metadata.namespace"]),
        case("namespace with dot", web_meta("{name: web, namespace: de.mo}"), &["metadata.namespace"]),
        case("namespace typo", web_meta("{name: web, namespace: dmeo}"), &["MeshApp demo/web became MeshApp dmeo/web"]),
        case("renamed in place", web_meta("{name: web2, namespace: demo}"), &["became MeshApp demo/web2"]),
        case("metadata missing", Change::EditWeb("apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nspec: {}\n".into()), &["metadata", "required"]),
        case("metadata a string", web_meta("web"), &["metadata", "must be an object"]),
        case("metadata uid", web_meta("{name: web, namespace: demo, uid: x}"), &["metadata.uid", "unsupported"]),
        case("metadata label key bad", web_meta("{name: web, namespace: demo, labels: {'-x': y}}"), &["metadata.labels[-x]"]),
        case("metadata label value long", web_meta(&format!("{{name: web, namespace: demo, labels: {{x: {}}}}}", "y".repeat(70))), &["metadata.labels[x]"]),
        case("annotation key bad", web_meta("{name: web, namespace: demo, annotations: {'a b': y}}"), &["metadata.annotations[a b]"]),
        case("wrong apiVersion", Change::EditWeb(WEB.replace("weft.dev/v1alpha1", "weft.dev/v1")), &["apiVersion"]),
        case("apiVersion missing", Change::EditWeb(WEB.replace("apiVersion: weft.dev/v1alpha1\n", "")), &["apiVersion", "required"]),
        case("kind missing", Change::EditWeb(WEB.replace("kind: MeshApp\n", "")), &["kind", "required"]),
        case("unknown kind", Change::EditWeb(WEB.replace("MeshApp", "MeshWidget")), &["kind", "MeshWidget"]),
        case("kind a number", Change::EditWeb(WEB.replace("kind: MeshApp", "kind: 5")), &["kind", "must be a string"]),
        case("unknown top-level field", Change::EditWeb(WEB.replace("spec:", "specs:")), &["specs", "unknown field"]),
        case("document a list", Change::EditWeb("- a\n- b\n".into()), &["document 0", "mapping"]),
        case("document a scalar", Change::EditWeb("hello\n".into()), &["document 0", "mapping"]),
        case("YAML unclosed bracket", Change::EditWeb("apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: web\n".into()), &["apps.yaml", "not YAML"]),
        case("YAML bad indentation", Change::EditWeb("apiVersion: x\n  kind: y\n kind: z\n".into()), &["apps.yaml", "not YAML"]),
        case("YAML duplicate key", Change::EditWeb(format!("{WEB}spec: {{}}\n")), &["apps.yaml", "not YAML"]),
        case("YAML alias bomb", Change::EditWeb(laughs.into()), &["apps.yaml", "not YAML"]),
        case("not UTF-8", Change::AppsBytes(b"apiVersion: \xff\xfe\n".to_vec()), &["apps.yaml", "not UTF-8"]),
        case("file emptied", Change::AppsBytes(Vec::new()), &["apps.yaml", "holds no document"]),
        case("file only comments", Change::AppsBytes(b"# nothing here\n".to_vec()), &["apps.yaml", "holds no document"]),
        case("file only separators", Change::AppsBytes(b"---\n---\n".to_vec()), &["apps.yaml", "holds no document"]),
        case("file of 2 MiB", Change::AppsBytes(format!("{WEB}# {}\n", "x".repeat(2 << 20)).into_bytes()), &["apps.yaml", "at most"]),
        case("file became a directory", Change::AppsDirectory, &["apps.yaml", "not a regular file"]),
        case("file became a dangling symlink", Change::AppsDanglingSymlink, &["apps.yaml", "symlink"]),
        case("a JSON file that is not JSON", Change::Extra("more.json", "{\"apiVersion\": ".into()), &["more.json", "not JSON"]),
        case("the same app in a second file", Change::Extra("zz-copy.yaml", WEB.replace("10.100.0.0/16", "10.150.0.0/16")), &["defined more than once", "zz-copy.yaml", "apps.yaml"]),
        case("a new app overlapping a working one", Change::Extra("other.yaml", app("{name: other, namespace: demo}", "{addressSpace: 10.100.128.0/17}")), &["MeshApp demo/other", "spec.addressSpace"]),
        case("a new app with a bad range", Change::Extra("other.yaml", app("{name: other, namespace: demo}", "{addressSpace: 300.1.1.0/24}")), &["MeshApp demo/other", "spec.addressSpace"]),
        case("a new app in a bad namespace", Change::Extra("other.yaml", app("{name: other, namespace: 'a b'}", "{}")), &["other.yaml", "metadata.namespace"]),
        case("a new app with an unknown field", Change::Extra("other.yaml", app("{name: other, namespace: demo}", "{colour: blue}")), &["MeshApp demo/other", "spec.colour", "unknown field"]),
        case("a new app without spec", Change::Extra("other.yaml", "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: other, namespace: demo}\n".into()), &["MeshApp demo/other", "spec", "required"]),
        // --- MeshPolicy: the working policy edited badly.
        case("policy misspelt ingress", policy("{app: web, ingres: []}"), &["spec.ingres", "unknown field", "still enforcing generation 1"]),
        case("policy without app", policy("{ingress: []}"), &["spec.app", "required"]),
        case("policy app empty", policy("{app: '', ingress: []}"), &["spec.app"]),
        case("policy app unknown", policy("{app: nope, ingress: []}"), &["spec.app", "nope"]),
        case("policy app upper case", policy("{app: Web, ingress: []}"), &["spec.app"]),
        case("policy protocol SCTP", policy("{app: web, ingress: [{ports: [{protocol: SCTP}]}]}"), &["spec.ingress[0].ports[0].protocol"]),
        case("policy port 0", policy("{app: web, ingress: [{ports: [{protocol: TCP, port: 0}]}]}"), &["spec.ingress[0].ports[0].port"]),
        case("policy port 70000", policy("{app: web, ingress: [{ports: [{protocol: TCP, port: 70000}]}]}"), &["spec.ingress[0].ports[0].port", "maximum"]),
        case("policy port a name", policy("{app: web, egress: [{ports: [{protocol: TCP, port: http}]}]}"), &["spec.egress[0].ports[0].port", "integer"]),
        case("policy endPort below port", policy("{app: web, ingress: [{ports: [{protocol: TCP, port: 90, endPort: 80}]}]}"), &["spec.ingress[0].ports[0].endPort"]),
        case("policy endPort alone", policy("{app: web, ingress: [{ports: [{protocol: TCP, endPort: 80}]}]}"), &["spec.ingress[0].ports[0].endPort"]),
        case("policy ICMP with a port", policy("{app: web, ingress: [{ports: [{protocol: ICMP, port: 8}]}]}"), &["spec.ingress[0].ports[0].port"]),
        case("policy cidr not a cidr", policy("{app: web, ingress: [{peers: [{cidr: banana}]}]}"), &["spec.ingress[0].peers[0].cidr"]),
        case("policy cidr outside the app", policy("{app: web, ingress: [{peers: [{cidr: 10.9.0.0/16}]}]}"), &["spec.ingress[0].peers[0].cidr", "outside"]),
        case("policy unknown site", policy("{app: web, ingress: [{peers: [{site: moon}]}]}"), &["spec.ingress[0].peers[0].site"]),
        case("policy peer selector In without values", policy("{app: web, ingress: [{peers: [{selector: {matchExpressions: [{key: a, operator: In}]}}]}]}"), &["spec.ingress[0].peers[0].selector.matchExpressions[0].values"]),
        case("policy unknown peer app", policy("{app: web, egress: [{peers: [{app: nope}]}]}"), &["spec.egress[0].peers[0].app"]),
        case("policy ingress a string", policy("{app: web, ingress: all}"), &["spec.ingress", "must be an array"]),
        case("policy selector bad value", policy("{app: web, selector: {matchLabels: {tier: '-x'}}, ingress: []}"), &["spec.selector.matchLabels[tier]"]),
        case("policy peer field misspelt", policy("{app: web, ingress: [{peer: []}]}"), &["spec.ingress[0].peer", "unknown field"]),
        case("policy name invalid", Change::EditPolicy(POLICY.replace("web-ingress", "Web_Ingress")), &["metadata.name"]),
        // --- MeshSite.
        case("site kind Moon", site("{name: moon}", "{kind: Moon}"), &["spec.kind", "Moon"]),
        case("remote site without hub", site("{name: far}", "{kind: Remote}"), &["MeshSite far", "spec.hub"]),
        case("local site with a hub", site("{name: near}", "{kind: Local, hub: h}"), &["MeshSite near", "spec.hub"]),
        case("site description too long", site("{name: chatty}", &format!("{{kind: Edge, description: {}}}", "d".repeat(2000))), &["spec.description"]),
        case("site name invalid", site("{name: Edge_1}", "{kind: Edge}"), &["metadata.name"]),
        case("site with a namespace", site("{name: e2, namespace: demo}", "{kind: Edge}"), &["metadata.namespace", "cluster-scoped"]),
        case("site hub name invalid", site("{name: far}", "{kind: Remote, hub: 'Hub!'}"), &["spec.hub"]),
        case("site unknown field", site("{name: far}", "{kind: Edge, region: eu}"), &["spec.region", "unknown field"]),
        case("working site edited to kind Moon", Change::EditSites(SITES.replace("kind: Edge", "kind: Moon")), &["spec.kind", "Moon"]),
        case("working site edited to Remote without hub", Change::EditSites(SITES.replace("kind: Edge", "kind: Remote")), &["MeshSite edge", "spec.hub", "still enforcing generation 1"]),
        // --- MeshHub.
        case("hub member site invalid", hub("{name: hub}", "{members: [{site: 'Site A'}]}"), &["spec.members[0].site"]),
        case("hub member twice", hub("{name: hub}", "{members: [{site: a}, {site: a}]}"), &["spec.members[1]"]),
        case("hub export without namespace", hub("{name: hub}", "{members: [{site: a, exports: [web]}]}"), &["spec.members[0].exports[0]"]),
        case("hub export twice", hub("{name: hub}", "{members: [{site: a, exports: [demo/web, demo/web]}]}"), &["spec.members[0].exports[1]"]),
        case("hub members a string", hub("{name: hub}", "{members: x}"), &["spec.members", "must be an array"]),
        case("hub 65 members", hub("{name: hub}", &format!("{{members: [{}]}}", (0..65).map(|i| format!("{{site: s{i}}}")).collect::<Vec<_>>().join(","))), &["spec.members", "at most 64"]),
        case("hub misspelt members", hub("{name: hub}", "{member: []}"), &["spec.member", "unknown field"]),
        case("hub export upper case", hub("{name: hub}", "{members: [{site: a, exports: [Demo/web]}]}"), &["spec.members[0].exports[0]"]),
        case("hub name invalid", hub("{name: 'hub 1'}", "{members: []}"), &["metadata.name"]),
        case("hub pool not a CIDR", hub("{name: hub}", "{pool: 'ten/8'}"), &["MeshHub hub", "spec.pool"]),
        case("hub pool too small", hub("{name: hub}", "{pool: 10.0.0.0/31}"), &["spec.pool", "at most /30"]),
        case("hub block not a power of two", hub("{name: hub}", "{blockSlices: 6}"), &["spec.blockSlices", "power of two"]),
        case("hub prune before stale", hub("{name: hub}", "{staleAfterSeconds: 60, pruneAfterSeconds: 30}"), &["spec.pruneAfterSeconds", "longer than"]),
        case("site hub access on a local site", site("{name: near}", "{kind: Local, hubAccess: {directory: /h}}"), &["MeshSite near", "spec.hubAccess"]),
        case("site hub access with both", site("{name: far}", "{kind: Remote, hub: h, hubAccess: {directory: /h, kubeconfigSecret: s}}"), &["spec.hubAccess", "exactly one"]),
        case("site hub directory relative", site("{name: far}", "{kind: Remote, hub: h, hubAccess: {directory: hub}}"), &["spec.hubAccess.directory", "absolute"]),
        case("hub member without site", hub("{name: hub}", "{members: [{exports: [demo/web]}]}"), &["spec.members[0].site", "required"]),
        // --- Node registrations.
        case("node name differs from its directory", node("n3", r#"{"name":"n4","site":"local","address":"192.0.2.3"}"#), &["MeshNode n3", "registration.name"]),
        case("node directory upper case", node("N3", r#"{"name":"N3","site":"local","address":"192.0.2.3"}"#), &["MeshNode N3", "registration.name"]),
        case("node site invalid", node("n3", r#"{"name":"n3","site":"Edge Site","address":"192.0.2.3"}"#), &["MeshNode n3", "registration.site"]),
        case("node address not an IP", node("n3", r#"{"name":"n3","site":"local","address":"not-an-ip"}"#), &["MeshNode n3", "registration.address"]),
        case("node address empty", node("n3", r#"{"name":"n3","site":"local","address":""}"#), &["MeshNode n3", "registration.address"]),
        case("node label key invalid", node("n3", r#"{"name":"n3","site":"local","address":"192.0.2.3","labels":{"a b":"c"}}"#), &["MeshNode n3", "registration.labels[a b]"]),
        case("node registration not JSON", node("n3", "{\"name\": "), &["MeshNode n3", "registration", "parsing"]),
        case("node registration a list", node("n3", "[]"), &["MeshNode n3", "registration", "parsing"]),
        case("node name a number", node("n3", r#"{"name":3,"site":"local","address":"192.0.2.3"}"#), &["MeshNode n3", "registration", "parsing"]),
        case("node registration 5 MiB", Change::Node("n3".into(), format!("{{\"name\":\"n3\",\"site\":\"local\",\"address\":\"192.0.2.3\",\"pad\":\"{}\"}}", "x".repeat(5 << 20)).into_bytes()), &["MeshNode n3", "larger than"]),
        case("node name too long for its namespaces", node(&"n".repeat(240), &format!(r#"{{"name":"{}","site":"local","address":"192.0.2.3"}}"#, "n".repeat(240))), &["registration.name", "at most 239"]),
        case("node name 254 characters", node(&long, &format!(r#"{{"name":"{long}","site":"local","address":"192.0.2.3"}}"#)), &["registration.name", "longer than 253"]),
    ]
}

/// Two nodes running web (both) and db (n1), a policy, two sites.
struct World {
    manifests: TempDir,
    state: TempDir,
    op: Standalone,
}

fn workload(name: &str, tier: &str) -> WorkloadStatus {
    WorkloadStatus {
        name: name.into(),
        namespace: "demo".into(),
        labels: [("tier".to_string(), tier.to_string())].into(),
        ..Default::default()
    }
}

impl World {
    fn new() -> World {
        let manifests = TempDir::new().unwrap();
        let state = TempDir::new().unwrap();
        let m = manifests.path();
        fs::write(m.join("apps.yaml"), format!("{WEB}---\n{DB}")).unwrap();
        fs::write(m.join("policies.yaml"), POLICY).unwrap();
        fs::write(m.join("sites.yaml"), SITES).unwrap();
        let dir = StateDir::new(state.path());
        for (n, addr, wls) in [
            (
                "n1",
                "192.0.2.1",
                vec![workload("w1", "web"), workload("d1", "db")],
            ),
            ("n2", "192.0.2.2", vec![workload("w2", "web")]),
        ] {
            let reg = NodeRegistration {
                name: n.into(),
                site: "local".into(),
                address: addr.into(),
                labels: Default::default(),
            };
            write_json_atomic(&dir.registration(n), &reg).unwrap();
            let st = MeshNodeStatus {
                heartbeat: Some(t(0).to_string()),
                workloads: wls,
                apps: ["demo/web", "demo/db"]
                    .iter()
                    .map(|a| AppStatus {
                        app: a.to_string(),
                        public_key: format!("key-{n}-{a}"),
                        programmed: true,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            write_json_atomic(&dir.node_status(n), &st).unwrap();
        }
        let op = Standalone::new(StandaloneConfig::new(m, state.path()));
        World {
            manifests,
            state,
            op,
        }
    }

    /// The working nodes' app entries (`spec.apps`), serialised: what
    /// their data planes are programmed from.
    fn meshnodes(&self) -> Vec<(String, Vec<u8>)> {
        let dir = StateDir::new(self.state.path());
        ["n1", "n2"]
            .iter()
            .map(|n| {
                let mn: weft_api::MeshNode =
                    serde_json::from_slice(&fs::read(dir.meshnode(n)).unwrap()).unwrap();
                (n.to_string(), serde_json::to_vec(&mn.spec.apps).unwrap())
            })
            .collect()
    }

    fn app_status(&self, key: &str) -> StoredStatus<MeshAppStatus> {
        let path = StateDir::new(self.state.path()).status_file("meshapps", key);
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    }

    fn apply(&self, change: &Change) {
        let m = self.manifests.path();
        let apps = m.join("apps.yaml");
        match change {
            Change::Extra(name, text) => fs::write(m.join(name), text).unwrap(),
            Change::EditWeb(doc) => fs::write(&apps, format!("{doc}---\n{DB}")).unwrap(),
            Change::EditPolicy(text) => fs::write(m.join("policies.yaml"), text).unwrap(),
            Change::EditSites(text) => fs::write(m.join("sites.yaml"), text).unwrap(),
            Change::AppsBytes(b) => fs::write(&apps, b).unwrap(),
            Change::AppsDirectory => {
                fs::remove_file(&apps).unwrap();
                fs::create_dir(&apps).unwrap();
            }
            Change::AppsDanglingSymlink => {
                fs::remove_file(&apps).unwrap();
                std::os::unix::fs::symlink(m.join("gone.yaml"), &apps).unwrap();
            }
            Change::Node(name, body) => {
                let dir = StateDir::new(self.state.path());
                fs::create_dir_all(dir.node_dir(name)).unwrap();
                fs::write(dir.registration(name), body).unwrap();
            }
        }
    }
}

/// Everything the operator says about problems after a tick.
fn said(w: &mut World, at: i64) -> String {
    let r = w.op.tick(t(at)).unwrap();
    let mut out: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
    out.extend(
        r.manifest_errors
            .iter()
            .map(|(f, m)| format!("{}: {m}", f.display())),
    );
    for kind in [
        "manifests",
        "meshapps",
        "meshpolicies",
        "meshsites",
        "meshhubs",
    ] {
        out.push(get::render(kind, w.state.path(), Output::Wide, t(at)).unwrap());
    }
    out.join("\n")
}

#[test]
fn the_corpus_is_large_enough() {
    assert!(corpus().len() >= 130, "{} cases", corpus().len());
}

#[test]
fn every_bad_input_is_named_and_leaves_working_nodes_untouched() {
    let mut failures = Vec::new();
    let cases = corpus();
    for c in &cases {
        let mut w = World::new();
        let base = said(&mut w, 1);
        assert!(
            !base.contains("Invalid") && !base.contains(" problems"),
            "the working set-up has problems: {base}"
        );
        let before = w.meshnodes();
        w.apply(&c.change);
        let text = said(&mut w, 2);
        // A second pass changes nothing either (no flapping).
        said(&mut w, 3);
        let missing: Vec<&String> = c
            .expect
            .iter()
            .filter(|e| !text.contains(e.as_str()))
            .collect();
        if !missing.is_empty() {
            failures.push(format!("{}: missing {missing:?} in:\n{text}", c.name));
        }
        for ((node, a), (_, b)) in before.iter().zip(w.meshnodes()) {
            if *a != b {
                failures.push(format!("{}: MeshNode {node} changed", c.name));
            }
        }
        if matches!(
            c.change,
            Change::EditWeb(_)
                | Change::AppsBytes(_)
                | Change::AppsDirectory
                | Change::AppsDanglingSymlink
        ) {
            let web = w.app_status("demo/web");
            let ready = conditions::get(&web.status.conditions, types::READY).unwrap();
            if !ready.message.contains("still enforcing generation 1") || ready.status != "False" {
                failures.push(format!(
                    "{}: web does not say what stays in force: {ready:?}",
                    c.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn a_bad_edit_stays_refused_across_an_operator_restart() {
    let mut w = World::new();
    said(&mut w, 1);
    let before = w.meshnodes();
    for change in [
        web_spec("{addressSpace: 10.200.0.0/16, selector: {matchLabels: {tier: web}}}"),
        Change::AppsBytes(b"not: [yaml".to_vec()),
    ] {
        w.apply(&change);
        said(&mut w, 2);
        // A new operator process: only the state directory is left.
        w.op = Standalone::new(StandaloneConfig::new(w.manifests.path(), w.state.path()));
        let text = said(&mut w, 3);
        assert!(text.contains("apps.yaml"), "{text}");
        assert_eq!(w.meshnodes(), before);
        let web = w.app_status("demo/web");
        assert_eq!(web.status.enforced.as_ref().map(|e| e.generation), Some(1));
        let ready = conditions::get(&web.status.conditions, types::READY).unwrap();
        assert!(
            ready.message.contains("still enforcing generation 1"),
            "{ready:?}"
        );
    }
    // Fixing the file brings the app back to its own spec, still nothing
    // rewritten on the nodes.
    fs::write(
        w.manifests.path().join("apps.yaml"),
        format!("{WEB}---\n{DB}"),
    )
    .unwrap();
    said(&mut w, 4);
    said(&mut w, 5);
    assert_eq!(w.meshnodes(), before);
    let web = w.app_status("demo/web");
    let ready = conditions::get(&web.status.conditions, types::READY).unwrap();
    assert!(!ready.message.contains("still enforcing"), "{ready:?}");
}

#[test]
fn a_valid_edit_is_taken_and_recorded_as_enforced() {
    let mut w = World::new();
    said(&mut w, 1);
    w.apply(&web_spec(
        "{addressSpace: 10.100.0.0/16, mtu: 1380, selector: {matchLabels: {tier: web}}}",
    ));
    said(&mut w, 2);
    let web = w.app_status("demo/web");
    let enforced = web.status.enforced.expect("enforced");
    assert_eq!(enforced.generation, 2);
    assert_eq!(enforced.spec.mtu, Some(1380));
    let n1: weft_api::MeshNode =
        serde_json::from_slice(&fs::read(StateDir::new(w.state.path()).meshnode("n1")).unwrap())
            .unwrap();
    assert!(n1
        .spec
        .apps
        .iter()
        .any(|a| a.app == "demo/web" && a.mtu == 1380));
}

#[test]
fn get_escapes_control_characters() {
    let mut w = World::new();
    said(&mut w, 1);
    w.apply(&Change::Extra(
        "evil.yaml",
        app("{name: \"x\\n\\u001b[31mred\", namespace: demo}", "{}"),
    ));
    said(&mut w, 2);
    let out = get::render("manifests", w.state.path(), Output::Wide, t(2)).unwrap();
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(out.contains("\\u{1b}"), "{out}");
    for line in out.lines() {
        assert!(!line.is_empty() || out.ends_with('\n'));
    }
    let table_rows = out.lines().count();
    let files = fs::read_dir(w.manifests.path()).unwrap().count();
    assert!(
        table_rows <= files + 3,
        "a name broke the table into lines:\n{out}"
    );
}

#[test]
fn two_definitions_keep_the_first_after_a_restart_too() {
    let mut w = World::new();
    said(&mut w, 1);
    let before = w.meshnodes();
    // "aa-" sorts before apps.yaml: path order alone would pick the copy.
    w.apply(&Change::Extra(
        "aa-copy.yaml",
        WEB.replace("10.100.0.0/16", "10.150.0.0/16"),
    ));
    let text = said(&mut w, 2);
    assert!(text.contains("the definition in"), "{text}");
    assert!(text.contains(&format!(
        "{}",
        Path::new(w.manifests.path()).join("apps.yaml").display()
    )));
    assert_eq!(w.meshnodes(), before);
    w.op = Standalone::new(StandaloneConfig::new(w.manifests.path(), w.state.path()));
    said(&mut w, 3);
    assert_eq!(w.meshnodes(), before);
}
