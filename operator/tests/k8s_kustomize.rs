//! `config/default` renders with kustomize and says what RBAC promises: least
//! privilege, no Secrets, the daemon limited to MeshNodes and their status.
//! Needs `kubectl` (with kustomize); without it the test says SKIPPED, and
//! under CI=true a missing kubectl is a failure.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn render(dir: &str) -> Option<Vec<Value>> {
    let out = match Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join(dir))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("kubectl is needed under CI to render {dir}: {e}");
            }
            println!("SKIPPED: kubectl not found ({e}); cannot render {dir}");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(serde_saphyr::from_multiple::<Value>(&text).unwrap())
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} missing from config/default"))
}

fn rules(role: &Value) -> Vec<(Vec<String>, Vec<String>)> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let strings = |k: &str| {
                r[k].as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default()
            };
            (strings("resources"), strings("verbs"))
        })
        .collect()
}

#[test]
fn config_default_renders_everything_weft_needs() {
    let Some(docs) = render("config/default") else {
        return;
    };
    let crds = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .count();
    assert_eq!(crds, 5);
    find(&docs, "Namespace", "weft-system");
    let op = find(&docs, "Deployment", "weft-operator");
    let args = &op["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args[0], "kubernetes");
    assert!(args
        .to_string()
        .contains("--leader-lease=weft-system/weft-operator"));
    let container = &op["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let ds = find(&docs, "DaemonSet", "weft-node-daemon");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let mounts = pod["containers"][0]["volumeMounts"].to_string();
    assert!(mounts.contains("/run/netns") && mounts.contains("/var/lib/weft"));
    let args = &pod["containers"][0]["args"];
    assert_eq!(args[0], "kubernetes");
    // The CNI chain: the socket on a host path the plugin reaches, the
    // conflist and binary directories of the host.
    let args = args.to_string();
    assert!(
        args.contains("--attach-socket=/run/weft/attach.sock")
            && args.contains("--cni-conf-dir=/host/etc/cni/net.d")
            && args.contains("--cni-plugin=/opt/weft/cni/weft-cni"),
        "{args}"
    );
    let volumes = pod["volumes"].to_string();
    for host in ["/run/weft", "/etc/cni/net.d", "/opt/cni/bin"] {
        assert!(volumes.contains(host), "{host} is not mounted: {volumes}");
    }
}

#[test]
fn rbac_is_least_privilege_and_reads_one_secret_by_name() {
    let Some(docs) = render("config/default") else {
        return;
    };
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        // The one Secret: the operator's hub kubeconfig, `get` by name in
        // its own namespace (a Role, not a ClusterRole).
        let hub_access = d["kind"] == "Role"
            && d["metadata"]["name"] == "weft-operator-hub-access"
            && d["metadata"]["namespace"] == "weft-system";
        if hub_access {
            let rules = d["rules"].as_array().unwrap();
            assert_eq!(rules.len(), 1, "{d}");
            assert_eq!(rules[0]["resources"], serde_json::json!(["secrets"]), "{d}");
            assert_eq!(rules[0]["verbs"], serde_json::json!(["get"]), "{d}");
            assert_eq!(
                rules[0]["resourceNames"],
                serde_json::json!(["weft-hub-kubeconfig"]),
                "{d}"
            );
            continue;
        }
        for (resources, verbs) in rules(d) {
            assert!(
                !resources
                    .iter()
                    .any(|r| r == "*" || r.starts_with("secrets")),
                "{d}"
            );
            assert!(
                !verbs
                    .iter()
                    .any(|v| v == "*" || v == "delete" || v == "deletecollection"),
                "{d}"
            );
        }
    }
    let daemon = rules(find(&docs, "ClusterRole", "weft-node-daemon"));
    assert_eq!(
        daemon,
        [
            (
                vec!["meshnodes".to_string()],
                vec!["get".into(), "list".into(), "watch".into()]
            ),
            (vec!["meshnodes/status".to_string()], vec!["patch".into()]),
            (
                vec!["pods".to_string()],
                vec!["get".into(), "list".into(), "watch".into()]
            ),
            (
                vec!["meshapps".to_string()],
                vec!["get".into(), "list".into(), "watch".into()]
            ),
        ],
        "the daemon reads MeshNodes, MeshApps and its pods, and writes only MeshNode status"
    );
    let operator = rules(find(&docs, "ClusterRole", "weft-operator"));
    for (resources, verbs) in &operator {
        let user_owned = resources
            .iter()
            .any(|r| ["meshpolicies", "meshsites"].contains(&r.as_str()));
        if user_owned {
            assert!(
                verbs.iter().all(|v| ["get", "list", "watch"].contains(&v.as_str())),
                "the operator never writes MeshPolicy/MeshSite objects, only their status: {verbs:?}"
            );
        }
        assert!(
            !verbs.iter().any(|v| v == "update"),
            "no full-object writes: {resources:?}"
        );
    }
}

#[test]
fn an_edge_host_may_touch_only_its_own_meshnode() {
    let Some(docs) = render("config/edge") else {
        return;
    };
    let role = rules(find(&docs, "ClusterRole", "weft-edge-edge-1"));
    let raw = find(&docs, "ClusterRole", "weft-edge-edge-1")["rules"].clone();
    for (i, (resources, verbs)) in role.iter().enumerate() {
        assert!(
            resources.iter().all(|r| r.starts_with("meshnodes")),
            "an edge host reads nothing but its MeshNode: {resources:?}"
        );
        if verbs != &["create".to_string()] {
            // Everything but create (which RBAC cannot scope; the admission
            // policy does) names the one object.
            assert_eq!(raw[i]["resourceNames"], serde_json::json!(["edge-1"]));
        }
    }
    let policy = find(&docs, "ValidatingAdmissionPolicy", "weft-edge-own-meshnode");
    let text = policy.to_string();
    assert!(
        text.contains("weft-edge-' + object.metadata.name"),
        "creates are held to the host's own name: {text}"
    );
    assert!(
        text.contains("object.spec.site == 'edge'"),
        "an edge host cannot claim another site: {text}"
    );
    find(
        &docs,
        "ValidatingAdmissionPolicyBinding",
        "weft-edge-own-meshnode",
    );
    find(&docs, "ServiceAccount", "weft-edge-edge-1");
}

/// Request fields the API server omits when empty: reading one that is absent
/// fails the CEL expression with "no such key", and the user sees that raw
/// error instead of the policy's message (or, in a match condition under
/// `failurePolicy: Fail`, every such request is refused).
const OPTIONAL_REQUEST_FIELDS: [&str; 6] = [
    "request.subResource",
    "request.name",
    "request.namespace",
    "request.userInfo.extra",
    "request.userInfo.groups",
    "request.userInfo.uid",
];

/// Bare reads of [`OPTIONAL_REQUEST_FIELDS`] in `expr` that no earlier
/// `has(<field>) &&` guards. A lint, not a CEL evaluator: it catches the
/// unguarded read, not every way a guard can be misplaced.
fn unguarded_reads(expr: &str) -> Vec<&'static str> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut bad = Vec::new();
    for field in OPTIONAL_REQUEST_FIELDS {
        let guard = format!("has({field}) &&");
        let guarded_from = expr.find(&guard).map(|i| i + guard.len());
        for (at, _) in expr.match_indices(field) {
            let whole_word = !expr[at + field.len()..].starts_with(is_ident);
            let is_the_guard = expr[..at].ends_with("has(");
            if whole_word && !is_the_guard && guarded_from.is_none_or(|g| at < g) {
                bad.push(field);
            }
        }
    }
    bad
}

/// Every CEL expression of a ValidatingAdmissionPolicy.
fn cel_expressions(policy: &Value) -> Vec<String> {
    let spec = &policy["spec"];
    let mut out = Vec::new();
    for (list, keys) in [
        ("matchConditions", &["expression"][..]),
        ("validations", &["expression", "messageExpression"][..]),
        ("variables", &["expression"][..]),
        ("auditAnnotations", &["valueExpression"][..]),
    ] {
        for item in spec[list].as_array().into_iter().flatten() {
            for key in keys {
                if let Some(e) = item[*key].as_str() {
                    out.push(e.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn the_guard_lint_tells_a_bare_optional_read_from_a_guarded_one() {
    assert_eq!(
        unguarded_reads("request.subResource == 'status' || object.spec.site == 'edge'"),
        ["request.subResource"]
    );
    assert_eq!(
        unguarded_reads("'k' in request.userInfo.extra"),
        ["request.userInfo.extra"]
    );
    assert!(
        unguarded_reads("(has(request.subResource) && request.subResource == 'status') || x")
            .is_empty()
    );
    // A guard after the read does not count.
    assert_eq!(
        unguarded_reads("request.subResource == 's' || has(request.subResource) && true"),
        ["request.subResource"]
    );
    // A longer field name is not the optional one.
    assert!(unguarded_reads("request.namespaceSelector == 1").is_empty());
}

/// Read from the files themselves (no kubectl needed): every admission
/// policy under config/ reads optional request fields only behind `has()`.
#[test]
fn admission_policies_never_read_an_absent_request_field() {
    let mut policies = 0;
    let mut stack = vec![repo().join("config")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let docs = serde_saphyr::from_multiple::<Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for policy in docs
                .iter()
                .filter(|d| d["kind"] == "ValidatingAdmissionPolicy")
            {
                policies += 1;
                for expr in cel_expressions(policy) {
                    let bad = unguarded_reads(&expr);
                    assert!(
                        bad.is_empty(),
                        "{}: {bad:?} read without has(...) &&: {expr}",
                        path.display()
                    );
                }
            }
        }
    }
    assert!(
        policies >= 2,
        "the edge and node-daemon policies are under config/: found {policies}"
    );
}

#[test]
fn a_hub_member_writes_only_its_own_namespace_and_reads_the_rest() {
    let (Some(hub), Some(member)) = (render("config/hub"), render("config/hub/member-cluster-a"))
    else {
        return;
    };
    for kind in ["MeshHub", "MeshSiteRecord", "MeshHubAllocation"] {
        assert!(
            hub.iter()
                .any(|d| d["kind"] == "CustomResourceDefinition"
                    && d["spec"]["names"]["kind"] == kind),
            "config/hub installs the {kind} CRD"
        );
    }
    // Cluster-wide, a member only reads.
    for (resources, verbs) in rules(find(&hub, "ClusterRole", "weft-hub-member")) {
        assert!(
            verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
            "{resources:?} {verbs:?}"
        );
        assert!(!resources.iter().any(|r| r == "secrets"));
    }
    // It writes only in its namespace, and only records (and its lease).
    let role = find(&member, "Role", "weft-member");
    assert_eq!(role["metadata"]["namespace"], "weft-hub-cluster-a");
    for (resources, _) in rules(role) {
        assert!(
            resources
                .iter()
                .all(|r| r == "meshsiterecords" || r == "leases"),
            "{resources:?}"
        );
    }
    let ns = find(&member, "Namespace", "weft-hub-cluster-a");
    assert_eq!(ns["metadata"]["labels"]["weft.dev/hub-member"], "cluster-a");
    assert!(
        !member.iter().any(|d| d["kind"] == "ClusterRole"),
        "a member's copy adds no cluster-wide rights of its own"
    );
    let policy = find(&hub, "ValidatingAdmissionPolicy", "weft-hub-own-records").to_string();
    for needle in [
        "namespaceObject.metadata.labels['weft.dev/hub-member']",
        ":weft-member",
        "replace('/', '.')",
    ] {
        assert!(
            policy.contains(needle),
            "the policy checks {needle}: {policy}"
        );
    }
    // The hub's loop runs as one replica, never two at once, as its account.
    let deploy = find(&hub, "Deployment", "weft-hub-operator");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "weft-hub-operator");
    assert_eq!(pod["containers"][0]["args"][0], "hub-kubernetes");
    // The hub operator writes allocations only in its own namespace.
    let hub_role = find(&hub, "Role", "weft-hub-operator");
    assert_eq!(hub_role["metadata"]["namespace"], "weft-hub");
    for (resources, verbs) in rules(find(&hub, "ClusterRole", "weft-hub-operator")) {
        assert!(!resources.iter().any(|r| r == "secrets"), "{resources:?}");
        assert!(
            verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
                || resources == ["meshhubs/status"],
            "{resources:?} {verbs:?}"
        );
    }
}
