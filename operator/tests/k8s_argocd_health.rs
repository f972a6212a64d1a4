//! The Argo CD health check in config/argocd/argocd-cm.yaml, run with a real
//! Lua interpreter against MeshApps in each state. Needs `lua5.4` (or `lua`);
//! without one the test prints SKIPPED (and fails under CI=true).

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

fn health_lua() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/argocd/argocd-cm.yaml");
    let cm: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cm["data"]["resource.customizations.health.weft.dev_MeshApp"]
        .as_str()
        .expect("health check key present")
        .to_string()
}

/// A Lua table literal for a JSON value.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn interpreter() -> Option<&'static str> {
    ["lua5.4", "lua"].into_iter().find(|bin| {
        Command::new(bin)
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn health(bin: &str, obj: &Value) -> String {
    let script = format!(
        "local obj = {}\nlocal function check()\n{}\nend\nlocal hs = check()\nio.write(hs.status)",
        lua(obj),
        health_lua()
    );
    let out = Command::new(bin).arg("-e").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn app(generation: i64, observed: Option<i64>, conditions: Value) -> Value {
    let mut status = json!({"conditions": conditions});
    if let Some(o) = observed {
        status["observedGeneration"] = json!(o);
    }
    json!({"metadata": {"name": "web", "generation": generation}, "status": status})
}

fn cond(type_: &str, status: &str, reason: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} {reason}")})
}

#[test]
fn meshapp_health_follows_its_conditions() {
    let Some(bin) = interpreter() else {
        // scripts/setup.sh installs lua5.4; under CI a skip would hide a regression.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but no lua5.4/lua interpreter is installed: the Argo CD health check cannot be tested (apt-get install lua5.4)"
        );
        println!("SKIPPED: no lua5.4 or lua interpreter to run the Argo CD health check");
        return;
    };
    let ready = json!([
        cond("Degraded", "False", "AsExpected"),
        cond("Ready", "True", "Ready")
    ]);
    assert_eq!(health(bin, &app(2, Some(2), ready.clone())), "Healthy");
    assert_eq!(
        health(bin, &app(3, Some(2), ready)),
        "Progressing",
        "a spec the operator has not seen yet"
    );
    let converging = json!([
        cond("Degraded", "True", "NodesNotReady"),
        cond("Ready", "False", "NodesNotReady")
    ]);
    assert_eq!(health(bin, &app(1, Some(1), converging)), "Progressing");
    let invalid = json!([
        cond("Degraded", "True", "InvalidCIDR"),
        cond("Ready", "False", "Invalid")
    ]);
    assert_eq!(health(bin, &app(1, Some(1), invalid)), "Degraded");
    assert_eq!(
        health(bin, &json!({"metadata": {"name": "web"}})),
        "Progressing",
        "no status yet"
    );
}
