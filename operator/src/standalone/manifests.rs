//! The manifests directory: every `*.yaml`, `*.yml` and `*.json` file, each
//! holding one or more documents (`apiVersion: weft.dev/v1alpha1`, `kind`,
//! `metadata`, `spec`). A file that stops parsing keeps its last good
//! content, so a typo never tears down what works; a deleted file drops its
//! objects.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use weft_api::{MeshAppSpec, MeshHubSpec, MeshPolicySpec, MeshSiteSpec};

use crate::planner::ObjectKey;

/// The apiVersion every document must carry.
pub const API_VERSION: &str = "weft.dev/v1alpha1";

/// One object read from a manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum Manifest {
    /// A MeshApp.
    App(ObjectKey, MeshAppSpec),
    /// A MeshPolicy.
    Policy(ObjectKey, MeshPolicySpec),
    /// A MeshSite (cluster-scoped).
    Site(String, MeshSiteSpec),
    /// A MeshHub (accepted, not used by the standalone operator).
    Hub(String, MeshHubSpec),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Value,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

fn spec_of<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    let v = if v.is_null() {
        Value::Object(Default::default())
    } else {
        v
    };
    serde_json::from_value(v).map_err(|e| format!("spec: {e}"))
}

fn parse_document(v: Value) -> Result<Manifest, String> {
    let doc: Document = serde_json::from_value(v).map_err(|e| e.to_string())?;
    if doc.api_version != API_VERSION {
        return Err(format!(
            "apiVersion {:?} is not {API_VERSION:?}",
            doc.api_version
        ));
    }
    if doc.metadata.name.is_empty() {
        return Err("metadata.name must not be empty".into());
    }
    let ns = || {
        ObjectKey::new(
            doc.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            doc.metadata.name.clone(),
        )
    };
    match doc.kind.as_str() {
        "MeshApp" => Ok(Manifest::App(ns(), spec_of(doc.spec)?)),
        "MeshPolicy" => Ok(Manifest::Policy(ns(), spec_of(doc.spec)?)),
        "MeshSite" => Ok(Manifest::Site(doc.metadata.name, spec_of(doc.spec)?)),
        "MeshHub" => Ok(Manifest::Hub(doc.metadata.name, spec_of(doc.spec)?)),
        other => Err(format!(
            "kind {other:?} is not one of MeshApp, MeshPolicy, MeshSite, MeshHub"
        )),
    }
}

/// Parses a manifest file's text; the error names the document index.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Vec<Manifest>, String> {
    let is_json = path.extension().is_some_and(|e| e == "json");
    let docs: Vec<Value> = if is_json {
        match serde_json::from_str::<Value>(text).map_err(|e| format!("document 0: {e}"))? {
            Value::Array(items) => items,
            v => vec![v],
        }
    } else {
        serde_saphyr::from_multiple::<Value>(text).map_err(|e| format!("YAML: {e}"))?
    };
    docs.into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .map(|(i, v)| parse_document(v).map_err(|e| format!("document {i}: {e}")))
        .collect()
}

/// Whether the file is a manifest by its name. Hidden files and kustomize's
/// `kustomization.yaml` (the same directory doubles as a kustomize base) are not.
pub fn is_manifest(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let hidden = name.starts_with('.');
    let kustomization = matches!(
        name,
        "kustomization.yaml" | "kustomization.yml" | "Kustomization"
    );
    !hidden
        && !kustomization
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

#[derive(Clone, Debug, Default)]
struct CachedFile {
    /// Text last read (good or bad), to re-parse only on change.
    text: Option<String>,
    /// Objects of the last text that parsed.
    objects: Vec<Manifest>,
}

/// A problem with one manifest file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong (document index and the parser's message).
    pub message: String,
}

/// Last good objects of every manifest file.
#[derive(Debug, Default)]
pub struct ManifestCache {
    files: BTreeMap<PathBuf, CachedFile>,
    errors: BTreeMap<PathBuf, String>,
}

impl ManifestCache {
    /// Re-reads the directory. Returns the errors that are NEW this time (a
    /// file is reported again only when its text changes).
    pub fn refresh(&mut self, dir: &Path) -> Vec<ManifestError> {
        let mut fresh = Vec::new();
        let mut present = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                let msg = format!("cannot read manifests directory: {e}");
                if self.errors.get(dir) != Some(&msg) {
                    self.errors.insert(dir.to_path_buf(), msg.clone());
                    fresh.push(ManifestError {
                        file: dir.to_path_buf(),
                        message: msg,
                    });
                }
                // Keep everything we had: an unreadable directory is not a deletion.
                return fresh;
            }
        };
        self.errors.remove(dir);
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_manifest(p))
            .collect();
        paths.sort();
        for path in paths {
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    let msg = format!("cannot read: {e}");
                    if self.errors.get(&path) != Some(&msg) {
                        fresh.push(ManifestError {
                            file: path.clone(),
                            message: msg.clone(),
                        });
                        self.errors.insert(path.clone(), msg);
                    }
                    present.push(path);
                    continue;
                }
            };
            present.push(path.clone());
            let cached = self.files.entry(path.clone()).or_default();
            if cached.text.as_deref() == Some(text.as_str()) {
                continue;
            }
            cached.text = Some(text.clone());
            match parse_manifest(&path, &text) {
                Ok(objects) => {
                    cached.objects = objects;
                    self.errors.remove(&path);
                }
                Err(msg) => {
                    fresh.push(ManifestError {
                        file: path.clone(),
                        message: msg.clone(),
                    });
                    self.errors.insert(path, msg);
                }
            }
        }
        self.files.retain(|p, _| present.contains(p));
        self.errors.retain(|p, _| present.contains(p) || p == dir);
        fresh
    }

    /// Every object, files in path order.
    pub fn objects(&self) -> impl Iterator<Item = (&Path, &Manifest)> {
        self.files
            .iter()
            .flat_map(|(p, f)| f.objects.iter().map(move |o| (p.as_path(), o)))
    }

    /// Files whose current text does not parse, with the reason.
    pub fn current_errors(&self) -> &BTreeMap<PathBuf, String> {
        &self.errors
    }
}

#[cfg(test)]
mod name_tests {
    use super::is_manifest;
    use std::path::Path;

    #[test]
    fn kustomization_and_hidden_files_are_not_manifests() {
        assert!(is_manifest(Path::new("examples/apps.yaml")));
        assert!(is_manifest(Path::new("x/app.json")));
        assert!(!is_manifest(Path::new("examples/kustomization.yaml")));
        assert!(!is_manifest(Path::new("examples/.apps.yaml.swp")));
        assert!(!is_manifest(Path::new("examples/README.md")));
    }
}
