//! The checked-in CRD YAML must match the Rust types; run `make crds` after changing them.

#[test]
fn checked_in_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut stale = Vec::new();
    for (name, yaml) in weft_api::crd::all_crds_yaml() {
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        if on_disk != yaml {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/ is stale for {stale:?}: run `make crds` and commit the result"
    );
}

#[test]
fn meshapp_crd_has_printer_columns_status_and_cel_rules() {
    let all = weft_api::crd::all_crds_yaml();
    let (_, app) = all
        .iter()
        .find(|(n, _)| n == "meshapps.weft.dev.yaml")
        .unwrap();
    for needle in [
        "name: Ready",
        "name: Nodes",
        "name: Peers",
        "name: CIDR",
        "name: Age",
        "status: {}",
        "isCIDR(self)",
        "oldSelf.spec.addressSpace",
    ] {
        assert!(app.contains(needle), "MeshApp CRD lacks {needle:?}");
    }
}

#[test]
fn every_schema_property_is_documented() {
    // `kubectl explain` is only useful if every field has a description.
    for (name, yaml) in weft_api::crd::all_crds_yaml() {
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let schema = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk(schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "{name}: undocumented fields {missing:?}"
        );
    }
}

fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            let p = format!("{path}.{k}");
            // metadata/apiVersion/kind come from Kubernetes itself; conditions are metav1.Condition.
            let inherited =
                path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata");
            let in_condition = path.ends_with(".conditions");
            if v.get("description").is_none() && !inherited && !in_condition {
                missing.push(p.clone());
            }
            walk(v, &p, missing);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(items, &format!("{path}[]"), missing);
    }
}

#[test]
fn conditions_merge_by_type_under_server_side_apply() {
    for (name, yaml) in weft_api::crd::all_crds_yaml() {
        // MeshNode's conditions are the daemon's; hub records and
        // allocations have no status at all.
        if name.starts_with("meshnodes") || name.starts_with("hub/") {
            continue;
        }
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let c = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["conditions"];
        assert_eq!(c["x-kubernetes-list-type"], "map", "{name}");
        assert_eq!(c["x-kubernetes-list-map-keys"][0], "type", "{name}");
    }
}
