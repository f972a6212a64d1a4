//! Where objects come from: the Kubernetes API (the user's kubeconfig and
//! context, like kubectl) or a standalone state directory. Both give the
//! same typed objects, so `get` and `graph` do not care which.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde::de::DeserializeOwned;
use weft_api::standalone::{NodeRegistration, StateDir, StoredStatus};
use weft_api::{
    MeshApp, MeshAppSpec, MeshAppStatus, MeshHub, MeshHubSpec, MeshHubStatus, MeshNode,
    MeshNodeSpec, MeshNodeStatus, MeshPolicy, MeshPolicySpec, MeshPolicyStatus, MeshSite,
    MeshSiteSpec, MeshSiteStatus,
};
use weft_operator::standalone::files::read_json;

/// Which namespaces a list of a namespaced kind covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (`-A`).
    All,
    /// One namespace (`-n NS`).
    Namespace(String),
}

impl Scope {
    /// Whether an object of `namespace` is in scope.
    pub fn contains(&self, namespace: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) => namespace == Some(ns.as_str()),
        }
    }
}

/// A place to read Weft objects from.
pub trait Source {
    /// The scope used when neither `-n` nor `-A` is given.
    fn default_scope(&self) -> Scope;
    /// MeshApps in `scope`, sorted by namespace and name.
    fn meshapps(&self, scope: &Scope) -> Result<Vec<MeshApp>>;
    /// MeshPolicies in `scope`, sorted by namespace and name.
    fn meshpolicies(&self, scope: &Scope) -> Result<Vec<MeshPolicy>>;
    /// Every MeshNode (cluster-scoped), with its status, sorted by name.
    fn meshnodes(&self) -> Result<Vec<MeshNode>>;
    /// Every MeshSite, sorted by name.
    fn meshsites(&self) -> Result<Vec<MeshSite>>;
    /// Every MeshHub, sorted by name.
    fn meshhubs(&self) -> Result<Vec<MeshHub>>;
}

/// A standalone state directory (`--state DIR`).
pub struct StateSource {
    state: StateDir,
}

impl StateSource {
    /// Reads from `dir`, which must exist.
    pub fn new(dir: &Path) -> Result<Self> {
        anyhow::ensure!(
            dir.is_dir(),
            "state directory {} does not exist",
            dir.display()
        );
        Ok(StateSource {
            state: StateDir::new(dir),
        })
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        self.state.root()
    }

    fn stored<S: DeserializeOwned>(&self, plural: &str) -> Result<Vec<StoredStatus<S>>> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(self.state.status_dir(plural)) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Some(s) = read_json::<StoredStatus<S>>(&p)? {
                    out.push(s);
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// Metadata of a stored object: `key` is `namespace/name` or `name`.
fn meta(key: &str, first_seen: &str, generation: i64) -> ObjectMeta {
    let (namespace, name) = match key.split_once('/') {
        Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
        None => (None, key.to_string()),
    };
    ObjectMeta {
        name: Some(name),
        namespace,
        generation: Some(generation),
        creation_timestamp: first_seen.parse::<Timestamp>().ok().map(Time),
        ..Default::default()
    }
}

impl Source for StateSource {
    fn default_scope(&self) -> Scope {
        // No kubeconfig context names a namespace here: show them all.
        Scope::All
    }

    fn meshapps(&self, scope: &Scope) -> Result<Vec<MeshApp>> {
        Ok(self
            .stored::<MeshAppStatus>("meshapps")?
            .into_iter()
            .map(|s| {
                let spec = s.status.enforced.as_ref().map(|e| e.spec.clone());
                MeshApp {
                    metadata: meta(&s.key, &s.first_seen, s.generation),
                    spec: spec.unwrap_or_else(MeshAppSpec::default),
                    status: Some(s.status),
                }
            })
            .filter(|a| scope.contains(a.metadata.namespace.as_deref()))
            .collect())
    }

    fn meshpolicies(&self, scope: &Scope) -> Result<Vec<MeshPolicy>> {
        Ok(self
            .stored::<MeshPolicyStatus>("meshpolicies")?
            .into_iter()
            .map(|s| {
                let spec = s.status.enforced.as_ref().map(|e| e.spec.clone());
                MeshPolicy {
                    metadata: meta(&s.key, &s.first_seen, s.generation),
                    spec: spec.unwrap_or_else(MeshPolicySpec::default),
                    status: Some(s.status),
                }
            })
            .filter(|p| scope.contains(p.metadata.namespace.as_deref()))
            .collect())
    }

    fn meshnodes(&self) -> Result<Vec<MeshNode>> {
        let mut names: Vec<String> = fs::read_dir(self.state.nodes_dir())
            .map(|it| {
                it.flatten()
                    .filter(|e| e.path().join("node.json").is_file())
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let reg = read_json::<NodeRegistration>(&self.state.registration(&name))
                .ok()
                .flatten()
                .unwrap_or_default();
            let status = read_json::<MeshNodeStatus>(&self.state.node_status(&name))
                .with_context(|| format!("status of node {name}"))?;
            let mut node = read_json::<MeshNode>(&self.state.meshnode(&name))
                .with_context(|| format!("MeshNode {name}"))?
                .unwrap_or_else(|| {
                    let site = if reg.site.is_empty() {
                        weft_api::labels::LOCAL_SITE.to_string()
                    } else {
                        reg.site.clone()
                    };
                    MeshNode::new(&name, MeshNodeSpec { site, apps: vec![] })
                });
            if node.metadata.creation_timestamp.is_none() {
                node.metadata.creation_timestamp = fs::metadata(self.state.registration(&name))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| Timestamp::try_from(t).ok())
                    .map(Time);
            }
            node.status = status.map(|mut s| {
                if s.endpoint_address.is_none() && !reg.address.is_empty() {
                    s.endpoint_address = Some(reg.address.clone());
                }
                s
            });
            out.push(node);
        }
        Ok(out)
    }

    fn meshsites(&self) -> Result<Vec<MeshSite>> {
        Ok(self
            .stored::<MeshSiteStatus>("meshsites")?
            .into_iter()
            .map(|s| {
                let spec = s.status.enforced.as_ref().map(|e| e.spec.clone());
                MeshSite {
                    metadata: meta(&s.key, &s.first_seen, s.generation),
                    spec: spec.unwrap_or_else(MeshSiteSpec::default),
                    status: Some(s.status),
                }
            })
            .collect())
    }

    fn meshhubs(&self) -> Result<Vec<MeshHub>> {
        Ok(self
            .stored::<MeshHubStatus>("meshhubs")?
            .into_iter()
            .map(|s| MeshHub {
                metadata: meta(&s.key, &s.first_seen, s.generation),
                spec: MeshHubSpec::default(),
                status: Some(s.status),
            })
            .collect())
    }
}

/// The Kubernetes API, reached like kubectl does: `--kubeconfig` or
/// `$KUBECONFIG` or `~/.kube/config` (or the in-cluster account), and
/// `--context` or the current context.
pub struct KubeSource {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    namespace: String,
}

/// How to reach the API server.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// A kubeconfig file instead of `$KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// A context instead of the current one.
    pub context: Option<String>,
}

impl KubeSource {
    /// Loads the configuration and builds a client (no request yet).
    pub fn connect(opts: &KubeOptions) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let config = rt.block_on(async {
            let kc_opts = kube::config::KubeConfigOptions {
                context: opts.context.clone(),
                ..Default::default()
            };
            match (&opts.kubeconfig, &opts.context) {
                (Some(path), _) => {
                    let kc = kube::config::Kubeconfig::read_from(path)
                        .with_context(|| format!("read kubeconfig {}", path.display()))?;
                    kube::Config::from_custom_kubeconfig(kc, &kc_opts)
                        .await
                        .context("load kubeconfig")
                }
                (None, Some(_)) => kube::Config::from_kubeconfig(&kc_opts)
                    .await
                    .context("load kubeconfig"),
                (None, None) => kube::Config::infer().await.context(
                    "no Kubernetes configuration (give --state DIR for a standalone mesh)",
                ),
            }
        })?;
        let namespace = config.default_namespace.clone();
        let client = {
            let _g = rt.enter();
            kube::Client::try_from(config).context("build Kubernetes client")?
        };
        Ok(KubeSource {
            rt,
            client,
            namespace,
        })
    }

    fn fetch<K>(&self, api: kube::Api<K>) -> Result<Vec<K>>
    where
        K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let list = self
            .rt
            .block_on(api.list(&kube::api::ListParams::default()))
            .with_context(|| format!("list {}", K::plural(&())))?;
        let mut items = list.items;
        items.sort_by(|a, b| {
            let key = |o: &K| (o.meta().namespace.clone(), o.meta().name.clone());
            key(a).cmp(&key(b))
        });
        Ok(items)
    }

    /// A namespaced kind: one namespace (needs only that namespace's
    /// rights, like kubectl) or all.
    fn list_namespaced<K>(&self, scope: &Scope) -> Result<Vec<K>>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api = match scope {
            Scope::Namespace(ns) => kube::Api::namespaced(self.client.clone(), ns),
            Scope::All => kube::Api::all(self.client.clone()),
        };
        self.fetch(api)
    }

    fn list_cluster<K>(&self) -> Result<Vec<K>>
    where
        K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        self.fetch(kube::Api::all(self.client.clone()))
    }
}

impl Source for KubeSource {
    fn default_scope(&self) -> Scope {
        Scope::Namespace(self.namespace.clone())
    }
    fn meshapps(&self, scope: &Scope) -> Result<Vec<MeshApp>> {
        self.list_namespaced(scope)
    }
    fn meshpolicies(&self, scope: &Scope) -> Result<Vec<MeshPolicy>> {
        self.list_namespaced(scope)
    }
    fn meshnodes(&self) -> Result<Vec<MeshNode>> {
        self.list_cluster()
    }
    fn meshsites(&self) -> Result<Vec<MeshSite>> {
        self.list_cluster()
    }
    fn meshhubs(&self) -> Result<Vec<MeshHub>> {
        self.list_cluster()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_apps_and_nodes_from_a_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let app = StoredStatus {
            key: "demo/web".to_string(),
            first_seen: "2025-01-01T00:00:00Z".into(),
            generation: 2,
            spec_hash: String::new(),
            status: MeshAppStatus {
                peers: Some("1/1".into()),
                ..Default::default()
            },
            source: None,
        };
        let f = state.status_file("meshapps", "demo/web");
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, serde_json::to_vec(&app).unwrap()).unwrap();
        fs::create_dir_all(state.node_dir("n1")).unwrap();
        let reg = NodeRegistration {
            name: "n1".into(),
            site: "edge".into(),
            address: "192.0.2.1".into(),
            ..Default::default()
        };
        fs::write(state.registration("n1"), serde_json::to_vec(&reg).unwrap()).unwrap();

        let src = StateSource::new(dir.path()).unwrap();
        let apps = src.meshapps(&Scope::All).unwrap();
        assert_eq!(apps.len(), 1);
        assert_eq!(apps[0].metadata.namespace.as_deref(), Some("demo"));
        assert_eq!(apps[0].metadata.name.as_deref(), Some("web"));
        assert!(apps[0].metadata.creation_timestamp.is_some());
        assert!(src
            .meshapps(&Scope::Namespace("other".into()))
            .unwrap()
            .is_empty());
        let nodes = src.meshnodes().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].spec.site, "edge");
        assert!(nodes[0].status.is_none());
    }
}
