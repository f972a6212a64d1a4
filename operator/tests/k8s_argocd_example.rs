//! The Argo CD example in examples/argocd/: the Application installs this
//! repository's config/default, the examples Application syncs examples/, the
//! repoURL is an obvious placeholder, and the health check in config/argocd is
//! registered for exactly the MeshApp kind the CRD defines. It also checks the
//! examples stay in a subdirectory the standalone operator does not read.

use std::path::{Path, PathBuf};

use serde_json::Value;
use weft_operator::standalone::manifests::ManifestCache;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml(path: &str) -> Value {
    let text =
        std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

fn check_application(app: &Value, path: &str) {
    assert_eq!(app["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(app["kind"], "Application");
    assert_eq!(app["metadata"]["namespace"], "argocd");
    let source = &app["spec"]["source"];
    assert_eq!(source["path"], path);
    let url = source["repoURL"].as_str().expect("repoURL");
    assert!(
        url.contains("REPLACE-ME"),
        "repoURL must be a clearly marked placeholder: {url}"
    );
    assert!(
        repo().join(path).join("kustomization.yaml").is_file(),
        "{path} must be a kustomize base Argo CD can render"
    );
    assert_eq!(
        app["spec"]["destination"]["server"],
        "https://kubernetes.default.svc"
    );
}

#[test]
fn application_installs_config_default() {
    let app = yaml("examples/argocd/application.yaml");
    check_application(&app, "config/default");
    assert_eq!(app["spec"]["destination"]["namespace"], "weft-system");
    assert_eq!(app["spec"]["syncPolicy"]["automated"]["selfHeal"], true);
}

#[test]
fn examples_application_syncs_the_examples() {
    let app = yaml("examples/argocd/examples-application.yaml");
    check_application(&app, "examples");
    assert_eq!(app["spec"]["destination"]["namespace"], "demo");
}

#[test]
fn health_check_key_matches_the_meshapp_crd() {
    let crd = yaml("crds/meshapps.weft.dev.yaml");
    let group = crd["spec"]["group"].as_str().unwrap();
    let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
    assert_eq!((group, kind), ("weft.dev", "MeshApp"));

    let cm = yaml("config/argocd/argocd-cm.yaml");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    // Argo CD's key format: resource.customizations.health.<group>_<kind>.
    let key = format!("resource.customizations.health.{group}_{kind}");
    let data = cm["data"].as_object().expect("data");
    let lua = data
        .get(&key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{key} missing; keys: {:?}", data.keys()));
    for status in ["Healthy", "Progressing", "Degraded"] {
        assert!(lua.contains(status), "the health check never says {status}");
    }
}

#[test]
fn argocd_examples_are_not_read_by_the_standalone_operator() {
    // The standalone operator reads only top-level files of examples/ (as do
    // the e2e scenario and `kubectl apply -k examples/`): the Applications
    // live in a subdirectory, and reading examples/ sees none of them and
    // reports no error.
    assert!(repo().join("examples/argocd/application.yaml").is_file());
    let mut cache = ManifestCache::default();
    let errors = cache
        .refresh(&repo().join("examples"))
        .expect("examples/ is readable");
    assert!(errors.is_empty(), "{errors:?}");
    let entries = cache.entries(&|_: &Path| Vec::new());
    assert!(!entries.is_empty());
    for e in &entries {
        assert!(e.problems.is_empty(), "{e:?}");
        let f = e.file.as_path();
        assert!(
            !f.components().any(|c| c.as_os_str() == "argocd"),
            "{} read from a subdirectory",
            f.display()
        );
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!text.contains("argoproj.io"), "{}", f.display());
    }
}
