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
    /// The API server's URL and the context it came from, for messages.
    server: String,
    context: Option<String>,
    /// The limit of one request (connecting, at least), if any.
    timeout: Option<std::time::Duration>,
}

/// How to reach the API server.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// A kubeconfig file instead of `$KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// A context instead of the current one.
    pub context: Option<String>,
    /// How long one request may take, connecting included (`Some(ZERO)`:
    /// no limit); `None`: kube's defaults (30 s to connect, no limit after).
    pub request_timeout: Option<std::time::Duration>,
}

/// Parses a duration the way kubectl's `--request-timeout` takes it: a
/// number with a unit (`500ms`, `5s`, `2m`, `1h`), or plain seconds; `0`
/// means no limit.
pub fn parse_timeout(s: &str) -> Result<std::time::Duration> {
    use std::time::Duration;
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .with_context(|| format!("invalid timeout {s:?}: use e.g. 10s, 500ms, 2m or 0"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => anyhow::bail!("invalid timeout {s:?}: units are ms, s, m and h"),
    };
    Duration::try_from_secs_f64(secs).with_context(|| format!("invalid timeout {s:?}: too long"))
}

/// Where a kubeconfig was read from, for messages.
fn kubeconfig_origin(path: Option<&Path>) -> String {
    match (path, std::env::var_os("KUBECONFIG")) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(v)) if !v.is_empty() => format!("$KUBECONFIG ({})", v.to_string_lossy()),
        (None, _) => "~/.kube/config".to_string(),
    }
}

/// Checks that `context` is one of `kc`'s (or, when none is given, that
/// the file names a current context), naming the file and its contexts
/// otherwise: kube's own message ("failed to load current context: X")
/// names neither.
fn check_context(kc: &kube::config::Kubeconfig, context: Option<&str>, origin: &str) -> Result<()> {
    let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
    let have = if known.is_empty() {
        "it has no contexts".to_string()
    } else {
        format!("it has {}", known.join(", "))
    };
    match (context, kc.current_context.as_deref()) {
        (Some(c), _) | (None, Some(c)) if !known.contains(&c) => {
            let which = if context.is_some() { "" } else { "current " };
            anyhow::bail!("{which}context {c:?} not found in kubeconfig {origin} ({have})")
        }
        (None, None) => {
            anyhow::bail!("kubeconfig {origin} names no current context: give --context ({have})")
        }
        _ => Ok(()),
    }
}

impl KubeSource {
    /// Loads the configuration and builds a client (no request yet).
    pub fn connect(opts: &KubeOptions) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (mut config, context) = rt.block_on(async {
            let kc_opts = kube::config::KubeConfigOptions {
                context: opts.context.clone(),
                ..Default::default()
            };
            if opts.kubeconfig.is_none() && opts.context.is_none() {
                // Like kubectl: $KUBECONFIG or ~/.kube/config, else the
                // in-cluster account. A current context the file lacks is a
                // mistake to name; a file without one falls back like kube.
                let mut context = None;
                if let Ok(kc) = kube::config::Kubeconfig::read() {
                    if kc.current_context.is_some() {
                        check_context(&kc, None, &kubeconfig_origin(None))?;
                    }
                    context = kc.current_context;
                }
                let config = kube::Config::infer().await.context(
                    "no Kubernetes configuration (give --state DIR for a standalone mesh)",
                )?;
                return anyhow::Ok((config, context));
            }
            let origin = kubeconfig_origin(opts.kubeconfig.as_deref());
            let kc = match &opts.kubeconfig {
                Some(path) => kube::config::Kubeconfig::read_from(path),
                None => kube::config::Kubeconfig::read(),
            }
            .map_err(|e| match e {
                // Its message quotes the path again: the I/O error says it.
                kube::config::KubeconfigError::ReadConfig(io, _) => {
                    anyhow::anyhow!("cannot read kubeconfig {origin}: {io}")
                }
                e => anyhow::Error::new(e).context(format!("cannot read kubeconfig {origin}")),
            })?;
            check_context(&kc, opts.context.as_deref(), &origin)?;
            let context = opts.context.clone().or(kc.current_context.clone());
            let config = kube::Config::from_custom_kubeconfig(kc, &kc_opts)
                .await
                .with_context(|| format!("cannot load kubeconfig {origin}"))?;
            Ok((config, context))
        })?;
        if let Some(t) = opts.request_timeout {
            let limit = (!t.is_zero()).then_some(t);
            config.connect_timeout = limit;
            config.read_timeout = limit;
            config.write_timeout = limit;
        }
        let namespace = config.default_namespace.clone();
        let server = config.cluster_url.to_string();
        let timeout = config.connect_timeout;
        let client = {
            let _g = rt.enter();
            kube::Client::try_from(config).context("build Kubernetes client")?
        };
        Ok(KubeSource {
            rt,
            client,
            namespace,
            server: server.trim_end_matches('/').to_string(),
            context,
            timeout,
        })
    }

    fn fetch<K>(&self, api: kube::Api<K>) -> Result<Vec<K>>
    where
        K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let list = self
            .rt
            .block_on(api.list(&kube::api::ListParams::default()))
            .map_err(|e| self.list_error(e, &K::plural(&()), &K::group(&())))?;
        let mut items = list.items;
        items.sort_by(|a, b| {
            let key = |o: &K| (o.meta().namespace.clone(), o.meta().name.clone());
            key(a).cmp(&key(b))
        });
        Ok(items)
    }

    /// What went wrong listing `plural`, said plainly: the server's own
    /// message for a refusal (a hint when the kind is not served), the
    /// server and context when it cannot be reached.
    fn list_error(&self, e: kube::Error, plural: &str, group: &str) -> anyhow::Error {
        let ctx = match &self.context {
            Some(c) => format!(" (context {c:?})"),
            None => String::new(),
        };
        match e {
            // Listing in a namespace that does not exist gives an empty
            // list: a 404 means the kind itself is not served.
            kube::Error::Api(st) if st.code == 404 => anyhow::anyhow!(
                "list {plural}: the API server {}{ctx} does not serve {plural}.{group} \
                 (404): are Weft's CRDs installed (kubectl apply -k crds/)?",
                self.server
            ),
            kube::Error::Api(st) => {
                // kube's stand-in when the body is no Status: not a reason.
                let reason = match st.reason.as_str() {
                    "" | "Failed to parse error data" => String::new(),
                    r if r == st.message => String::new(),
                    r => format!(" {r}"),
                };
                anyhow::anyhow!(
                    "list {plural} from {}{ctx}: {} ({}{reason})",
                    self.server,
                    st.message.trim(),
                    st.code,
                )
            }
            kube::Error::Service(_) | kube::Error::HyperError(_) => {
                // kube and hyper wrap the cause a few times ("ServiceError:
                // client error (Connect): ..."): the innermost one says it.
                let mut cause: &dyn std::error::Error = &e;
                let mut timed_out = false;
                loop {
                    timed_out |= cause
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
                    match cause.source() {
                        Some(next) => cause = next,
                        None => break,
                    }
                }
                let why = match (timed_out, self.timeout) {
                    (true, Some(t)) => format!("timed out after {t:?} ({cause})"),
                    (true, None) => format!("timed out ({cause})"),
                    (false, _) => cause.to_string(),
                };
                anyhow::anyhow!(
                    "list {plural}: cannot reach the API server {}{ctx}: {why}",
                    self.server
                )
            }
            other => anyhow::Error::new(other)
                .context(format!("list {plural} from {}{ctx}", self.server)),
        }
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
    fn timeouts_parse_like_kubectls() {
        use std::time::Duration;
        assert_eq!(parse_timeout("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_timeout("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_timeout("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_timeout("0").unwrap().is_zero());
        for bad in ["", "s", "-1s", "5d", "1.2.3s", "99999999999999999999h"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_context_the_kubeconfig_lacks_is_named_with_those_it_has() {
        let kc: kube::config::Kubeconfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [], "users": [],
            "contexts": [
                {"name": "a", "context": {"cluster": "c", "user": "u"}},
                {"name": "b", "context": {"cluster": "c", "user": "u"}},
            ],
            "current-context": "gone",
        }))
        .unwrap();
        assert!(check_context(&kc, Some("a"), "F").is_ok());
        let e = check_context(&kc, Some("x"), "F").unwrap_err().to_string();
        assert_eq!(e, "context \"x\" not found in kubeconfig F (it has a, b)");
        let e = check_context(&kc, None, "F").unwrap_err().to_string();
        assert!(e.starts_with("current context \"gone\" not found"), "{e}");
        let none = kube::config::Kubeconfig::default();
        let e = check_context(&none, None, "F").unwrap_err().to_string();
        assert!(
            e.contains("no current context") && e.contains("no contexts"),
            "{e}"
        );
    }

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
