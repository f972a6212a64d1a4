//! The manifests directory: every `*.yaml`, `*.yml` and `*.json` file, each
//! holding one or more documents (`apiVersion: weft.dev/v1alpha1`, `kind`,
//! `metadata`, `spec`). Every document is checked as the API server would
//! check it (names and labels by the Kubernetes rules, the CRD schema with
//! unknown fields refused, sizes), and every problem names the file, the
//! document and the field.
//!
//! Deleting a file (or a document) deletes its objects. Anything else that
//! goes wrong with a file (it stops parsing, becomes empty, a directory or a
//! dangling symlink, an object in it turns invalid, or is renamed in place)
//! deletes nothing: the file is *broken*, and the objects it defined when it
//! was last good stay, each marked with the file's problem, so the planner
//! keeps their last accepted spec in force.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use weft_api::standalone::{ManifestFileStatus, ManifestProblem};
use weft_api::validation::{self, MAX_MANIFEST_BYTES};
use weft_api::{MeshAppSpec, MeshHubSpec, MeshPolicySpec, MeshSiteSpec};

use super::schema::{self, Problem};
use super::stamp::LastRead;
use crate::planner::ObjectKey;

/// The apiVersion every document must carry.
pub const API_VERSION: &str = "weft.dev/v1alpha1";
/// Most bytes of annotations one object may carry (the API server's limit).
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// A Weft kind a manifest can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// MeshApp (namespaced).
    App,
    /// MeshPolicy (namespaced).
    Policy,
    /// MeshSite (cluster-scoped).
    Site,
    /// MeshHub (cluster-scoped).
    Hub,
}

impl Kind {
    /// The kind as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::App => "MeshApp",
            Kind::Policy => "MeshPolicy",
            Kind::Site => "MeshSite",
            Kind::Hub => "MeshHub",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [Kind::App, Kind::Policy, Kind::Site, Kind::Hub]
            .into_iter()
            .find(|k| k.name() == s)
    }

    fn namespaced(self) -> bool {
        matches!(self, Kind::App | Kind::Policy)
    }
}

/// Which object a document defines: kind and key (`namespace/name`, or
/// `name` for cluster-scoped kinds).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Kind.
    pub kind: Kind,
    /// Key.
    pub key: String,
}

impl fmt::Display for ObjectRef {
    /// `MeshApp demo/web`: the object name the planner's errors use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.key)
    }
}

/// One object read from a manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum Manifest {
    /// A MeshApp.
    App(ObjectKey, MeshAppSpec),
    /// A MeshPolicy.
    Policy(ObjectKey, MeshPolicySpec),
    /// A MeshSite (cluster-scoped).
    Site(String, MeshSiteSpec),
    /// A MeshHub (cluster-scoped).
    Hub(String, MeshHubSpec),
}

impl Manifest {
    /// The object this is.
    pub fn object(&self) -> ObjectRef {
        let (kind, key) = match self {
            Manifest::App(k, _) => (Kind::App, k.to_string()),
            Manifest::Policy(k, _) => (Kind::Policy, k.to_string()),
            Manifest::Site(n, _) => (Kind::Site, n.clone()),
            Manifest::Hub(n, _) => (Kind::Hub, n.clone()),
        };
        ObjectRef { kind, key }
    }
}

/// What one document of a file came to.
#[derive(Clone, Debug, PartialEq)]
pub struct DocResult {
    /// Index among the file's non-empty documents.
    pub index: usize,
    /// The object, when kind and names could be read.
    pub object: Option<ObjectRef>,
    /// The object, when the whole document was accepted.
    pub manifest: Option<Manifest>,
    /// Problems (empty when accepted).
    pub problems: Vec<Problem>,
}

/// A whole file, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileParse {
    /// Per document.
    pub docs: Vec<DocResult>,
    /// A problem of the file as a whole (unreadable, not YAML, empty).
    pub file_problem: Option<String>,
}

impl FileParse {
    fn broken(&self) -> bool {
        self.file_problem.is_some() || self.docs.iter().any(|d| !d.problems.is_empty())
    }
}

fn problem(field: &str, message: impl Into<String>) -> Problem {
    Problem {
        field: field.to_string(),
        message: message.into(),
    }
}

fn yaml_options() -> serde_saphyr::Options {
    // A 1 MiB file can still expand aliases into far more: keep the event
    // and alias budget small (real manifests use none or a few).
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 200_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_recorded_anchor_events: 100_000,
        },
    }
}

/// Parses a manifest file's text into its documents.
pub fn parse_manifest(path: &Path, text: &str) -> FileParse {
    let is_json = path.extension().is_some_and(|e| e == "json");
    let docs: Result<Vec<Value>, String> = if is_json {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(v) => Ok(vec![v]),
            Err(e) => Err(format!("not JSON: {e}")),
        }
    } else {
        serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options()).map_err(|e| {
            // The parser's message carries a source snippet over several
            // lines; its first line says what and where.
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            format!("not YAML: {}", validation::printable(first, 300))
        })
    };
    match docs {
        Err(e) => FileParse {
            docs: Vec::new(),
            file_problem: Some(e),
        },
        Ok(docs) => {
            let docs: Vec<DocResult> = docs
                .into_iter()
                .filter(|v| !v.is_null())
                .enumerate()
                .map(|(i, v)| parse_document(i, v))
                .collect();
            let file_problem = docs.is_empty().then(|| {
                "holds no document; delete the file to delete the objects it defined".to_string()
            });
            FileParse { docs, file_problem }
        }
    }
}

fn string_map(v: Option<&Value>, field: &str, out: &mut Vec<Problem>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, v) in o {
                match v {
                    Value::String(s) => {
                        m.insert(k.clone(), s.clone());
                    }
                    other => out.push(problem(
                        &format!("{field}[{}]", validation::printable(k, 80)),
                        format!(
                            "must be a string, not {}",
                            validation::printable(&other.to_string(), 40)
                        ),
                    )),
                }
            }
        }
        Some(_) => out.push(problem(field, "must be a map of strings")),
    }
    m
}

/// Reads metadata; returns the object's key when its names are valid.
fn read_metadata(
    kind: Option<Kind>,
    meta: Option<&Value>,
    out: &mut Vec<Problem>,
) -> Option<String> {
    let Some(meta) = meta else {
        out.push(problem("metadata", "required"));
        return None;
    };
    let Value::Object(meta) = meta else {
        out.push(problem("metadata", "must be an object"));
        return None;
    };
    for k in meta.keys() {
        if !matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations") {
            out.push(problem(
                &format!("metadata.{}", validation::printable(k, 80)),
                "unknown or unsupported field in standalone mode (name, namespace, labels and annotations are read)",
            ));
        }
    }
    let name = match meta.get("name") {
        Some(Value::String(n)) => match validation::dns_subdomain(n) {
            Ok(()) => Some(n.clone()),
            Err(e) => {
                out.push(problem("metadata.name", e));
                None
            }
        },
        None | Some(Value::Null) => {
            out.push(problem("metadata.name", "required"));
            None
        }
        Some(_) => {
            out.push(problem("metadata.name", "must be a string"));
            None
        }
    };
    let namespace = match meta.get("namespace") {
        None | Some(Value::Null) => Some("default".to_string()),
        Some(Value::String(ns)) => {
            if kind.is_some_and(|k| !k.namespaced()) {
                out.push(problem(
                    "metadata.namespace",
                    format!(
                        "{} is cluster-scoped and takes no namespace",
                        kind.map_or("", |k| k.name())
                    ),
                ));
                None
            } else {
                match validation::dns_label(ns) {
                    Ok(()) => Some(ns.clone()),
                    Err(e) => {
                        out.push(problem("metadata.namespace", e));
                        None
                    }
                }
            }
        }
        Some(_) => {
            out.push(problem("metadata.namespace", "must be a string"));
            None
        }
    };
    let labels = string_map(meta.get("labels"), "metadata.labels", out);
    for (f, m) in validation::labels(&labels) {
        out.push(problem(&format!("metadata.labels{f}"), m));
    }
    let annotations = string_map(meta.get("annotations"), "metadata.annotations", out);
    let mut size = 0;
    for (k, v) in &annotations {
        size += k.len() + v.len();
        if let Err(e) = validation::label_key(k) {
            out.push(problem(
                &format!("metadata.annotations[{}]", validation::printable(k, 80)),
                e.replace("label key", "annotation key"),
            ));
        }
    }
    if size > MAX_ANNOTATION_BYTES {
        out.push(problem(
            "metadata.annotations",
            format!("{size} bytes; at most {MAX_ANNOTATION_BYTES}"),
        ));
    }
    let (kind, name) = (kind?, name?);
    if kind.namespaced() {
        Some(format!("{}/{name}", namespace?))
    } else {
        namespace.map(|_| name)
    }
}

fn parse_document(index: usize, v: Value) -> DocResult {
    let mut problems = Vec::new();
    let fail = |problems| DocResult {
        index,
        object: None,
        manifest: None,
        problems,
    };
    let Value::Object(doc) = v else {
        return fail(vec![problem(
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec",
        )]);
    };
    for k in doc.keys() {
        if !matches!(
            k.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        ) {
            problems.push(problem(&validation::printable(k, 80), "unknown field"));
        }
    }
    match doc.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(v) => problems.push(problem(
            "apiVersion",
            format!(
                "{} is not {API_VERSION:?}",
                validation::printable(&v.to_string(), 80)
            ),
        )),
        None => problems.push(problem("apiVersion", "required")),
    }
    let kind = match doc.get("kind") {
        Some(Value::String(k)) => {
            let kind = Kind::parse(k);
            if kind.is_none() {
                problems.push(problem(
                    "kind",
                    format!(
                        "{:?} is not one of MeshApp, MeshPolicy, MeshSite, MeshHub",
                        validation::printable(k, 80)
                    ),
                ));
            }
            kind
        }
        Some(_) => {
            problems.push(problem("kind", "must be a string"));
            None
        }
        None => {
            problems.push(problem("kind", "required"));
            None
        }
    };
    let key = read_metadata(kind, doc.get("metadata"), &mut problems);
    let object = kind.zip(key).map(|(kind, key)| ObjectRef { kind, key });
    let Some(obj) = &object else {
        return fail(problems);
    };
    let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
    if spec.is_null() {
        problems.push(problem("spec", "required"));
    } else if let Some(s) = schema::spec_schema(obj.kind.name()) {
        schema::check(&spec, s, "spec", &mut problems);
    }
    let manifest = if problems.is_empty() {
        match to_manifest(obj, spec) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push(e);
                None
            }
        }
    } else {
        None
    };
    DocResult {
        index,
        object,
        manifest,
        problems,
    }
}

fn to_manifest(obj: &ObjectRef, spec: Value) -> Result<Manifest, Problem> {
    fn spec_of<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Problem> {
        serde_json::from_value(v).map_err(|e| problem("spec", e.to_string()))
    }
    Ok(match obj.kind {
        Kind::App => Manifest::App(ObjectKey::parse(&obj.key), spec_of(spec)?),
        Kind::Policy => Manifest::Policy(ObjectKey::parse(&obj.key), spec_of(spec)?),
        Kind::Site => Manifest::Site(obj.key.clone(), spec_of(spec)?),
        Kind::Hub => Manifest::Hub(obj.key.clone(), spec_of(spec)?),
    })
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

/// Reads a manifest file whole, refusing what is not a regular file or is
/// larger than [`MAX_MANIFEST_BYTES`] without reading past the bound.
fn read_bounded(path: &Path) -> Result<String, String> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if fs::symlink_metadata(path).is_ok() => {
            return Err(format!("a symlink whose target cannot be read: {e}"))
        }
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    if !meta.is_file() {
        return Err("not a regular file (a directory?)".into());
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(format!(
            "{} bytes; a manifest file may hold at most {MAX_MANIFEST_BYTES}",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!(
            "more than {MAX_MANIFEST_BYTES} bytes; a manifest file may hold at most that"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

#[derive(Clone, Debug)]
struct CachedFile {
    /// The file's path (`dir/name`).
    path: PathBuf,
    /// The stamp when it was last read, if it had settled.
    last_read: LastRead,
    /// What the last read gave (text or the read error), to re-parse only
    /// on change.
    read: Option<Result<String, String>>,
    /// The parse of that text.
    parse: FileParse,
    /// Problems found by comparing with the last good content (renames).
    renames: Vec<(usize, Problem)>,
    /// Objects of the last text that had no problem at all.
    good: Vec<Manifest>,
    /// Whether `good` was ever set since the operator started.
    ever_good: bool,
}

impl CachedFile {
    fn new(path: PathBuf) -> Self {
        CachedFile {
            path,
            last_read: LastRead::default(),
            read: None,
            parse: FileParse::default(),
            renames: Vec::new(),
            good: Vec::new(),
            ever_good: false,
        }
    }

    fn broken(&self) -> bool {
        self.parse.broken() || !self.renames.is_empty()
    }
}

/// One object as the manifests define it now.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The file defining it.
    pub file: PathBuf,
    /// Its document, when it is defined by a document of the current text.
    pub document: Option<usize>,
    /// The object.
    pub object: ObjectRef,
    /// Its current spec, when it was accepted.
    pub manifest: Option<Manifest>,
    /// Why its current spec is not there (empty when `manifest` is set).
    pub problems: Vec<Problem>,
}

/// Every manifest file, its current parse and its last good content. Files
/// are keyed by name (all live in one directory): byte order, which is also
/// path order, without comparing path components.
#[derive(Debug, Default)]
pub struct ManifestCache {
    files: BTreeMap<OsString, CachedFile>,
    /// Symlinked files: their target can change where no watch sees, so
    /// they are checked by stamp on every pass.
    links: BTreeSet<OsString>,
    /// Files whose entries or status may differ since [`Self::take_changed`].
    changed: BTreeSet<OsString>,
    /// Files read (opened) since the cache was made: tests check that a
    /// pass with nothing new reads none.
    reads: u64,
}

/// A manifests directory that cannot be listed: nothing is known, so
/// nothing may be deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirError(pub String);

impl ManifestCache {
    /// Re-reads the whole directory, reading the files whose stamp moved.
    /// Returns the files whose problems are new this time (each is reported
    /// once per change of its text).
    pub fn refresh(&mut self, dir: &Path) -> Result<Vec<(PathBuf, String)>, DirError> {
        let entries = fs::read_dir(dir).map_err(|e| {
            DirError(format!(
                "cannot read manifests directory {}: {e}",
                dir.display()
            ))
        })?;
        let mut names: Vec<(OsString, bool)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name();
                is_manifest(Path::new(&name)).then(|| {
                    let link = e.file_type().is_ok_and(|t| t.is_symlink());
                    (name, link)
                })
            })
            .collect();
        names.sort_unstable();
        let mut fresh = Vec::new();
        for (name, link) in &names {
            if *link {
                self.links.insert(name.clone());
            } else {
                self.links.remove(name);
            }
            self.load(dir, name, false, &mut fresh);
        }
        // `names` is sorted: a lookup, not a scan (a scan per file made this
        // quadratic).
        let gone: Vec<OsString> = self
            .files
            .keys()
            .filter(|n| names.binary_search_by(|(m, _)| m.cmp(n)).is_err())
            .cloned()
            .collect();
        for name in gone {
            self.files.remove(&name);
            self.links.remove(&name);
            self.changed.insert(name);
        }
        Ok(fresh)
    }

    /// Re-reads only the entries `names` of `dir` (from inotify: created,
    /// written, renamed in or out, deleted), and the symlinked files by
    /// stamp. Same result as [`Self::refresh`] when nothing else changed.
    pub fn refresh_names(
        &mut self,
        dir: &Path,
        names: &BTreeSet<OsString>,
    ) -> Vec<(PathBuf, String)> {
        let mut fresh = Vec::new();
        for name in names {
            if !is_manifest(Path::new(name)) {
                continue;
            }
            let path = dir.join(name);
            match fs::symlink_metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if self.files.remove(name).is_some() {
                        self.changed.insert(name.clone());
                    }
                    self.links.remove(name);
                    continue;
                }
                Ok(m) if m.file_type().is_symlink() => {
                    self.links.insert(name.clone());
                }
                _ => {
                    self.links.remove(name);
                }
            }
            self.load(dir, name, true, &mut fresh);
        }
        let links: Vec<OsString> = self
            .links
            .iter()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in links {
            if fs::symlink_metadata(dir.join(&name)).is_err() {
                // Gone: its deletion is an event of its own.
                continue;
            }
            self.load(dir, &name, false, &mut fresh);
        }
        fresh
    }

    /// Reads one file when `force`d or its stamp moved, and parses it when
    /// its text changed.
    fn load(
        &mut self,
        dir: &Path,
        name: &OsString,
        force: bool,
        fresh: &mut Vec<(PathBuf, String)>,
    ) {
        let cached = self
            .files
            .entry(name.clone())
            .or_insert_with(|| CachedFile::new(dir.join(name)));
        // A settled file whose stamp is the one of the last read has the
        // same content: no read (thousands of files per pass otherwise).
        let path = cached.path.clone();
        if !cached.last_read.must_read(&path) && cached.read.is_some() && !force {
            return;
        }
        self.reads += 1;
        let read = read_bounded(&path);
        if cached.read.as_ref() == Some(&read) {
            return;
        }
        cached.parse = match &read {
            Ok(text) => parse_manifest(&path, text),
            Err(e) => FileParse {
                docs: Vec::new(),
                file_problem: Some(e.clone()),
            },
        };
        cached.read = Some(read);
        cached.renames = renames(&cached.good, &cached.parse);
        if cached.broken() {
            fresh.push((path, summary(cached)));
        } else {
            cached.good = cached
                .parse
                .docs
                .iter()
                .filter_map(|d| d.manifest.clone())
                .collect();
            cached.ever_good = true;
        }
        self.changed.insert(name.clone());
    }

    /// The files whose entries or status may have changed since the last
    /// call (read anew with another text, added, removed).
    pub fn take_changed(&mut self) -> BTreeSet<OsString> {
        std::mem::take(&mut self.changed)
    }

    /// Files whose entries depend on `claimed_before` (broken and never
    /// good since the operator started): their entries are computed again
    /// whenever the stored statuses may have changed.
    pub fn claiming(&self) -> impl Iterator<Item = &OsString> {
        self.files
            .iter()
            .filter(|(_, f)| f.broken() && !f.ever_good)
            .map(|(n, _)| n)
    }

    /// How many files were read since the cache was made.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Every object the files define now. A broken file also keeps the
    /// objects of its last good content (or, right after a restart, those
    /// `claimed_before` says it defined), marked with its problems.
    pub fn entries(&self, claimed_before: &dyn Fn(&Path) -> Vec<ObjectRef>) -> Vec<Entry> {
        let mut out = Vec::new();
        for f in self.files.values() {
            entries_of(f, claimed_before, &mut out);
        }
        out
    }

    /// [`Self::entries`] of one file; `None` when there is no such file.
    pub fn entries_of(
        &self,
        name: &OsString,
        claimed_before: &dyn Fn(&Path) -> Vec<ObjectRef>,
    ) -> Option<Vec<Entry>> {
        let f = self.files.get(name)?;
        let mut out = Vec::new();
        entries_of(f, claimed_before, &mut out);
        Some(out)
    }

    /// The state of every file, for `get manifests`.
    pub fn file_statuses(&self) -> Vec<ManifestFileStatus> {
        self.files.values().map(file_status).collect()
    }

    /// [`Self::file_statuses`] of one file.
    pub fn file_status_of(&self, name: &OsString) -> Option<ManifestFileStatus> {
        self.files.get(name).map(file_status)
    }
}

fn entries_of(
    f: &CachedFile,
    claimed_before: &dyn Fn(&Path) -> Vec<ObjectRef>,
    out: &mut Vec<Entry>,
) {
    let path = &f.path;
    let mut here: BTreeSet<ObjectRef> = BTreeSet::new();
    for d in &f.parse.docs {
        let Some(object) = d.object.clone() else {
            continue;
        };
        let mut problems = d.problems.clone();
        problems.extend(
            f.renames
                .iter()
                .filter(|(i, _)| *i == d.index)
                .map(|(_, p)| p.clone()),
        );
        here.insert(object.clone());
        out.push(Entry {
            file: path.clone(),
            document: Some(d.index),
            object,
            manifest: if problems.is_empty() {
                d.manifest.clone()
            } else {
                None
            },
            problems,
        });
    }
    if !f.broken() {
        return;
    }
    let why = problem("", summary(f));
    let before: Vec<ObjectRef> = if f.ever_good {
        f.good.iter().map(Manifest::object).collect()
    } else {
        claimed_before(path)
    };
    for object in before {
        if here.insert(object.clone()) {
            out.push(Entry {
                file: path.clone(),
                document: None,
                object,
                manifest: None,
                problems: vec![why.clone()],
            });
        }
    }
}

fn file_status(f: &CachedFile) -> ManifestFileStatus {
    let mut errors = Vec::new();
    if let Some(p) = &f.parse.file_problem {
        errors.push(ManifestProblem {
            message: p.clone(),
            ..Default::default()
        });
    }
    for d in &f.parse.docs {
        let renamed = f
            .renames
            .iter()
            .filter(|(i, _)| *i == d.index)
            .map(|(_, p)| p);
        for p in d.problems.iter().chain(renamed) {
            errors.push(ManifestProblem {
                document: Some(d.index),
                object: d.object.as_ref().map(ToString::to_string),
                field: p.field.clone(),
                message: p.message.clone(),
            });
        }
    }
    ManifestFileStatus {
        file: f.path.display().to_string(),
        objects: f
            .parse
            .docs
            .iter()
            .filter_map(|d| d.object.as_ref().map(ToString::to_string))
            .collect(),
        errors,
    }
}

/// One line for a broken file: its first problem, and how many more.
fn summary(f: &CachedFile) -> String {
    let mut all: Vec<String> = f.parse.file_problem.iter().cloned().collect();
    for d in &f.parse.docs {
        let renamed = f
            .renames
            .iter()
            .filter(|(i, _)| *i == d.index)
            .map(|(_, p)| p);
        for p in d.problems.iter().chain(renamed) {
            let field = if p.field.is_empty() {
                String::new()
            } else {
                format!("{}: ", p.field)
            };
            all.push(format!("document {}: {field}{}", d.index, p.message));
        }
    }
    match all.len() {
        0 => "no problem".into(),
        1 => all.remove(0),
        n => format!("{} (and {} more)", all[0], n - 1),
    }
}

/// A document that now defines another object of the same kind than the
/// file's last good content did at the same place, while that object is
/// gone from the file: most likely a typo in a name or namespace, and
/// applying it would delete a working object on every node. Refused; the
/// user removes the old document (or file) first to really rename.
fn renames(good: &[Manifest], parse: &FileParse) -> Vec<(usize, Problem)> {
    let now: BTreeSet<ObjectRef> = parse.docs.iter().filter_map(|d| d.object.clone()).collect();
    let mut out = Vec::new();
    for d in &parse.docs {
        let (Some(new), Some(old)) = (&d.object, good.get(d.index).map(Manifest::object)) else {
            continue;
        };
        if new.kind == old.kind && *new != old && !now.contains(&old) {
            out.push((
                d.index,
                problem(
                    "metadata",
                    format!(
                        "{old} became {new}: renaming in place would delete {old} on every node; remove its document (or file) first, then add the new one"
                    ),
                ),
            ));
        }
    }
    out
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
