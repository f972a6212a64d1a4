//! The standalone (no Kubernetes) exchange between operator and daemons: a
//! shared state directory that plays the role of the API server. Types and
//! paths only; each binary does its own I/O (atomic write-then-rename).
//!
//! ```text
//! $STATE/nodes/<node>/node.json       daemon   -> operator  NodeRegistration (like a Node object)
//! $STATE/nodes/<node>/status.json     daemon   -> operator  MeshNodeStatus   (the status subresource)
//! $STATE/nodes/<node>/meshnode.json   operator -> daemon    MeshNode (spec + metadata.generation)
//! $STATE/nodes/<node>/workloads/*.json  workload source -> daemon  LocalWorkload (stand-in for CNI/Docker)
//! $STATE/status/<kind>/<ns>.<name>.json operator        StoredStatus of user objects
//! $STATE/selectors/<site>/<ns>.json   operator -> daemons   [AppSelector] of the namespace's apps spanning the site
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A node announcing itself (what a Node object says in Kubernetes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRegistration {
    /// Node name (also the MeshNode name).
    pub name: String,
    /// MeshSite the node belongs to.
    pub site: String,
    /// Address peers use to reach the node's WireGuard ports.
    pub address: String,
    /// Node labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A workload started on a node, as its runtime (CNI, Docker, or the demo)
/// announces it to the daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalWorkload {
    /// Workload name.
    pub name: String,
    /// Namespace of the workload.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Workload labels (`weft.dev/app` names its app).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Path of the workload's network namespace (e.g. `/run/netns/NAME`).
    pub netns: String,
}

/// A user object's status as the standalone operator stores it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredStatus<S> {
    /// `namespace/name` (or `name` for cluster-scoped kinds).
    pub key: String,
    /// When the operator first saw the object (RFC 3339), for AGE columns.
    pub first_seen: String,
    /// Generation the operator assigned (bumped when the spec changes).
    pub generation: i64,
    /// Hash of the last spec seen, to detect spec changes.
    pub spec_hash: String,
    /// The status itself.
    pub status: S,
    /// The manifest file that defined the object when this was written, so
    /// a file that stops parsing (even across an operator restart) keeps
    /// the objects it defined in force instead of deleting them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Longest file stem used as is for a stored status (255 bytes is the
/// usual file name limit).
const MAX_PLAIN_FILE_STEM: usize = 180;

/// A small stable hash for file names (not for security).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The state of one manifest file, as the standalone operator last read it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFileStatus {
    /// The file.
    pub file: String,
    /// Objects it defines, as `Kind namespace/name` (or `Kind name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    /// What is wrong with it; empty when every document was accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ManifestProblem>,
}

/// One problem of a manifest file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestProblem {
    /// Index of the document in the file (0-based); unset for the file as
    /// a whole (unreadable, not YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    /// The object the document defines, when it can be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The offending field, e.g. `spec.addressSpace`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn default_namespace() -> String {
    "default".into()
}

/// Paths inside a standalone state directory.
#[derive(Clone, Debug)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// Wraps a state directory path.
    pub fn new(p: impl Into<PathBuf>) -> Self {
        StateDir(p.into())
    }
    /// Directory holding one sub-directory per node.
    pub fn nodes_dir(&self) -> PathBuf {
        self.0.join("nodes")
    }
    /// Directory of one node.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.nodes_dir().join(node)
    }
    /// The node's registration (written by its daemon).
    pub fn registration(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("node.json")
    }
    /// The node's MeshNode status (written by its daemon).
    pub fn node_status(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("status.json")
    }
    /// The node's desired MeshNode (written by the operator).
    pub fn meshnode(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("meshnode.json")
    }
    /// Where workload announcements for the node are dropped.
    pub fn workloads_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("workloads")
    }
    /// Directory of stored statuses of one kind (`meshapps`, ...).
    pub fn status_dir(&self, plural: &str) -> PathBuf {
        self.0.join("status").join(plural)
    }
    /// Stored status file of one object: `<namespace>.<name>.json`, or for
    /// a key too long for one file name (a 63-character namespace and a
    /// 253-character name are both valid) its first 160 bytes and a hash.
    pub fn status_file(&self, plural: &str, key: &str) -> PathBuf {
        let flat = key.replace('/', ".");
        let name = if flat.len() <= MAX_PLAIN_FILE_STEM {
            flat
        } else {
            let mut cut = MAX_PLAIN_FILE_STEM - 20;
            while !flat.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}-{:016x}", &flat[..cut], fnv1a(key.as_bytes()))
        };
        self.status_dir(plural).join(format!("{name}.json"))
    }
    /// Where the standalone operator records the state of every manifest
    /// file (parsed, or why not), for `get manifests`.
    pub fn manifest_status(&self) -> PathBuf {
        self.0.join("status").join("manifests.json")
    }
    /// Directory of the per-site app selector files (see [`Self::selectors_file`]).
    pub fn selectors_dir(&self) -> PathBuf {
        self.0.join("selectors")
    }
    /// The selectors (a JSON `[AppSelector]`, sorted by app) of the apps of
    /// `namespace` that span `site`, written by the operator only while
    /// there is one; no file means no app there. A daemon reads the files
    /// of the namespaces of its own workloads only, so what it reads never
    /// grows with the apps elsewhere. `None` unless `site` is a DNS
    /// subdomain and `namespace` a DNS label (no app can live anywhere
    /// else); with those, `<site>/<namespace>.json` cannot collide.
    pub fn selectors_file(&self, site: &str, namespace: &str) -> Option<PathBuf> {
        crate::validation::dns_subdomain(site).ok()?;
        crate::validation::dns_label(namespace).ok()?;
        Some(
            self.selectors_dir()
                .join(site)
                .join(format!("{namespace}.json")),
        )
    }
    /// The root.
    pub fn root(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_files_live_per_site_and_namespace_and_refuse_other_names() {
        let d = StateDir::new("/state");
        assert_eq!(
            d.selectors_file("edge.example", "demo"),
            Some(PathBuf::from("/state/selectors/edge.example/demo.json"))
        );
        // A namespace is a DNS label: no dot, no path, so no two
        // (site, namespace) pairs share a file.
        for ns in ["", "a.b", "../nodes", "Demo", "x/y"] {
            assert_eq!(d.selectors_file("local", ns), None, "{ns:?}");
        }
        for site in ["", "..", "a/b", "-x"] {
            assert_eq!(d.selectors_file(site, "demo"), None, "{site:?}");
        }
    }
}
