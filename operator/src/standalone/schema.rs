//! Checks a manifest's `spec` against the CRD's own OpenAPI schema, as the
//! API server does before it stores an object: types, unknown fields,
//! required fields, enums, bounds, lengths, patterns, list sizes and
//! uniqueness. The schema is the generated one (`crds/`), so standalone
//! mode refuses exactly what a cluster would, with the field's path.
//!
//! Hand-written because the checks must follow the Kubernetes structural
//! schema subset (`x-kubernetes-*` extensions, pruning semantics), which the
//! general JSON Schema crates do not model. CEL rules are not evaluated
//! here; the operator's own validation covers what they say, in both modes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

/// One problem, with the path of the field (e.g. `spec.sites[2]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn spec_schema_of(crd: CustomResourceDefinition) -> Option<JSONSchemaProps> {
    let version = crd.spec.versions.into_iter().next()?;
    let root = version.schema?.open_api_v3_schema?;
    root.properties?.remove("spec")
}

/// The `spec` schema of a Weft kind (`MeshApp`, ...), built once.
pub fn spec_schema(kind: &str) -> Option<&'static JSONSchemaProps> {
    static SCHEMAS: OnceLock<BTreeMap<&'static str, JSONSchemaProps>> = OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            let mut m = BTreeMap::new();
            for k in ["MeshApp", "MeshPolicy", "MeshSite", "MeshHub"] {
                if let Some(s) = weft_api::crd::crd_of(k).and_then(spec_schema_of) {
                    m.insert(k, s);
                }
            }
            m
        })
        .get(kind)
}

fn regex_matches(pattern: &str, s: &str) -> Result<bool, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, regex::Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().map_err(|_| "schema regex cache poisoned")?;
    if !cache.contains_key(pattern) {
        let re = regex::Regex::new(pattern).map_err(|e| format!("bad schema pattern: {e}"))?;
        cache.insert(pattern.to_string(), re);
    }
    Ok(cache.get(pattern).is_some_and(|re| re.is_match(s)))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(v: &Value) -> String {
    let s = v.to_string();
    weft_api::validation::printable(&s, 60)
}

/// The closest known name, to suggest for a misspelt field.
fn suggestion<'a>(unknown: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    known
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().take(64).collect();
    let b: Vec<char> = b.to_lowercase().chars().take(64).collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Checks `value` (found at `path`) against `schema`, appending problems.
pub fn check(value: &Value, schema: &JSONSchemaProps, path: &str, out: &mut Vec<Problem>) {
    let mut push = |field: &str, message: String| {
        out.push(Problem {
            field: field.to_string(),
            message,
        })
    };
    if value.is_null() {
        // An explicit null is an absent field (server-side apply drops it).
        return;
    }
    if schema.x_kubernetes_int_or_string == Some(true) {
        if !matches!(value, Value::Number(_) | Value::String(_)) {
            push(
                path,
                format!("must be an integer or a string, not {}", type_name(value)),
            );
        }
        return;
    }
    if let Some(t) = schema.type_.as_deref() {
        let found = type_name(value);
        let ok = found == t || (t == "number" && found == "integer");
        if !ok {
            push(
                path,
                format!("must be {} {t}, not {found} {}", article(t), shown(value)),
            );
            return;
        }
    }
    if let Some(options) = &schema.enum_ {
        if !options.iter().any(|o| o.0 == *value) {
            let listed: Vec<String> = options.iter().map(|o| o.0.to_string()).collect();
            push(
                path,
                format!("{} is not one of {}", shown(value), listed.join(", ")),
            );
        }
    }
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = schema.minimum {
                if x < min {
                    push(path, format!("{n} is below the minimum {min}"));
                }
            }
            if let Some(max) = schema.maximum {
                if x > max {
                    push(path, format!("{n} is above the maximum {max}"));
                }
            }
        }
        Value::String(s) => {
            let len = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
            if let Some(max) = schema.max_length {
                if len > max {
                    push(path, format!("{len} characters; at most {max}"));
                }
            }
            if let Some(min) = schema.min_length {
                if len < min {
                    push(path, format!("{len} characters; at least {min}"));
                }
            }
            if let Some(p) = &schema.pattern {
                match regex_matches(p, s) {
                    Ok(true) => {}
                    Ok(false) => push(
                        path,
                        format!("{} does not match the pattern {p}", shown(value)),
                    ),
                    Err(e) => push(path, e),
                }
            }
        }
        Value::Array(items) => check_array(items, schema, path, out),
        Value::Object(map) => check_object(map, schema, path, out),
        _ => {}
    }
}

fn article(t: &str) -> &'static str {
    if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn check_array(items: &[Value], schema: &JSONSchemaProps, path: &str, out: &mut Vec<Problem>) {
    let n = i64::try_from(items.len()).unwrap_or(i64::MAX);
    if let Some(max) = schema.max_items {
        if n > max {
            out.push(Problem {
                field: path.into(),
                message: format!("{n} items; at most {max}"),
            });
            // Do not walk a list far over its bound item by item.
            return;
        }
    }
    if let Some(min) = schema.min_items {
        if n < min {
            out.push(Problem {
                field: path.into(),
                message: format!("{n} items; at least {min}"),
            });
        }
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
        for (i, v) in items.iter().enumerate() {
            check(v, item, &format!("{path}[{i}]"), out);
        }
    }
    match schema.x_kubernetes_list_type.as_deref() {
        Some("set") => {
            let mut seen = BTreeSet::new();
            for (i, v) in items.iter().enumerate() {
                if !seen.insert(v.to_string()) {
                    out.push(Problem {
                        field: format!("{path}[{i}]"),
                        message: format!("duplicate value {}", shown(v)),
                    });
                }
            }
        }
        Some("map") => {
            let keys = schema
                .x_kubernetes_list_map_keys
                .clone()
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            for (i, v) in items.iter().enumerate() {
                let id: Vec<String> = keys
                    .iter()
                    .map(|k| v.get(k).map(Value::to_string).unwrap_or_default())
                    .collect();
                if !seen.insert(id.clone()) {
                    out.push(Problem {
                        field: format!("{path}[{i}]"),
                        message: format!("duplicate entry for {} {}", keys.join(","), id.join(",")),
                    });
                }
            }
        }
        _ => {}
    }
}

fn check_object(
    map: &serde_json::Map<String, Value>,
    schema: &JSONSchemaProps,
    path: &str,
    out: &mut Vec<Problem>,
) {
    let n = i64::try_from(map.len()).unwrap_or(i64::MAX);
    if let Some(max) = schema.max_properties {
        if n > max {
            out.push(Problem {
                field: path.into(),
                message: format!("{n} entries; at most {max}"),
            });
            return;
        }
    }
    let props = schema.properties.as_ref();
    let additional = match &schema.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(s)) => Some(s.as_ref()),
        _ => None,
    };
    let preserve = schema.x_kubernetes_preserve_unknown_fields == Some(true)
        || matches!(
            schema.additional_properties,
            Some(JSONSchemaPropsOrBool::Bool(true))
        );
    for (k, v) in map {
        if let Some(p) = props.and_then(|p| p.get(k)) {
            check(v, p, &join(path, k), out);
        } else if let Some(a) = additional {
            let key = weft_api::validation::printable(k, 80);
            check(v, a, &format!("{path}[{key}]"), out);
        } else if !preserve {
            let hint = props
                .and_then(|p| suggestion(k, p.keys()))
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            out.push(Problem {
                field: join(path, k),
                message: format!("unknown field{hint}"),
            });
        }
    }
    for r in schema.required.iter().flatten() {
        if map.get(r).is_none_or(Value::is_null) {
            out.push(Problem {
                field: join(path, r),
                message: "required".into(),
            });
        }
    }
}

fn join(path: &str, key: &str) -> String {
    let key = weft_api::validation::printable(key, 80);
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(kind: &str, spec: Value) -> Vec<Problem> {
        let mut out = Vec::new();
        check(&spec, spec_schema(kind).expect("schema"), "spec", &mut out);
        out
    }

    #[test]
    fn a_valid_app_spec_has_no_problem() {
        let p = problems(
            "MeshApp",
            json!({"addressSpace": "10.100.0.0/16", "selector": {"matchLabels": {"tier": "web"}}, "mtu": 1420}),
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn misspelt_fields_are_named_with_a_suggestion() {
        let p = problems("MeshApp", json!({"addresSpace": "10.100.0.0/16"}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "spec.addresSpace");
        assert!(
            p[0].message.contains("did you mean \"addressSpace\""),
            "{}",
            p[0].message
        );
        let p = problems("MeshPolicy", json!({"app": "web", "ingres": []}));
        assert_eq!(p[0].field, "spec.ingres", "{p:?}");
    }

    #[test]
    fn bounds_and_types_name_the_field() {
        let p = problems("MeshApp", json!({"nodePrefixLength": -1}));
        assert_eq!(p[0].field, "spec.nodePrefixLength");
        assert!(p[0].message.contains("minimum"), "{p:?}");
        let p = problems("MeshApp", json!({"mtu": "big"}));
        assert_eq!(p[0].field, "spec.mtu");
        assert!(p[0].message.contains("must be an integer"), "{p:?}");
        let p = problems("MeshSite", json!({"kind": "Moon"}));
        assert_eq!(p[0].field, "spec.kind", "{p:?}");
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("addresSpace", "addressSpace"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
