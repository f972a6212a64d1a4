//! A Kubernetes cluster with a real control plane ([`crate::apiserver`]) and
//! simulated nodes: no kubelet runs here, so this module plays it.
//!
//! * every simulated node (a network namespace on the WAN, as in
//!   [`crate::topology`]) gets a Node object, Ready, with its WAN address as
//!   InternalIP;
//! * the operator and the node daemons run as processes with the container
//!   arguments and environment of the Deployment and DaemonSet that
//!   `kubectl apply -k config/default` stored, read back from the API
//!   server; each authenticates as its ServiceAccount with a token from the
//!   TokenRequest API bound to a Pod object on its node, so RBAC applies as in
//!   a cluster. The host paths of the DaemonSet's volumes map to a directory
//!   per node (`/run/netns` stays the machine's: namespace names are global);
//! * pods are created through the API with `spec.nodeName`; for each one the
//!   node's CNI chain runs exactly as a runtime runs it: the plugins of the
//!   first conflist in the node's CNI configuration directory (a bridge
//!   network written here, with `weft-cni` chained by the daemon), in order
//!   for ADD with each result passed on, in reverse for DEL.
//!
//! [`KubeCluster::teardown`] (also on drop) removes pods, daemons (then runs
//! `weft-node-daemon cleanup` on each node), operators, the control plane,
//! the namespaces and the run directory.
//!
//! [`KubeCluster::join_wan`] builds a further cluster on an existing one's
//! WAN (for federation): everything of its own (prefix, control plane at
//! 192.0.2.251, operators at 230 + k, nodes after the first's), so either can
//! be torn down first; the WAN goes with the last.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::apiserver::ControlPlane;
use crate::cni::{CniOutput, Runtime, DEBIAN_CNI_DIR};
use crate::netns::NetNs;
use crate::procs::{bin, run_to_completion, Proc};
use crate::topology::Sim;

/// The namespace `config/` installs Weft into.
pub const SYSTEM_NS: &str = "weft-system";
/// WAN address of the control plane's namespace.
pub const CONTROL_PLANE_OCTET: u8 = 250;
/// Operator replica `k` of a cluster runs at octet `OPERATOR_OCTET_BASE + k`.
pub const OPERATOR_OCTET_BASE: u8 = 240;
/// How far the octets of each further cluster on one WAN
/// ([`KubeCluster::join_wan`]) move: its control plane one up from the
/// previous one's (251, 252, ...), its operators' base ten down (230 + k,
/// 220 + k, ...), so each cluster has room for 9 replicas.
const JOINED_OPERATOR_STEP: u8 = 10;
/// Clusters one WAN holds (the last one's operators start at 201).
const MAX_CLUSTERS_PER_WAN: usize = 5;
/// Host paths that stay the machine's own (named network namespaces).
const SHARED_HOST_PATHS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// A container's command line and environment as a manifest gives them.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// `args`.
    pub args: Vec<String>,
    /// `env`: literal values, and `fieldRef` paths as `@fieldPath`.
    pub env: Vec<(String, String)>,
    /// `mountPath` → `hostPath` of hostPath volumes.
    pub mounts: Vec<(String, String)>,
    /// `serviceAccountName` of the pod template.
    pub service_account: String,
    /// Labels of the pod template.
    pub labels: BTreeMap<String, String>,
}

impl ContainerSpec {
    /// Reads the first container of a workload object (Deployment/DaemonSet JSON).
    pub fn from_workload(obj: &Value) -> Result<ContainerSpec> {
        let pod = &obj["spec"]["template"];
        let c = &pod["spec"]["containers"][0];
        let mut s = ContainerSpec {
            service_account: pod["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
            ..Default::default()
        };
        for a in c["args"].as_array().into_iter().flatten() {
            s.args
                .push(a.as_str().context("non-string arg")?.to_string());
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().context("env without name")?.to_string();
            let value = match (
                e["value"].as_str(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Some(v), _) => v.to_string(),
                (None, Some(path)) => format!("@{path}"),
                _ => bail!("env {name}: only value and fieldRef are simulated"),
            };
            s.env.push((name, value));
        }
        let mut host_paths = BTreeMap::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            if let (Some(n), Some(p)) = (v["name"].as_str(), v["hostPath"]["path"].as_str()) {
                host_paths.insert(n.to_string(), p.to_string());
            }
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if let (Some(n), Some(p)) = (m["name"].as_str(), m["mountPath"].as_str()) {
                if let Some(h) = host_paths.get(n) {
                    s.mounts.push((p.to_string(), h.clone()));
                }
            }
        }
        if let Some(l) = pod["metadata"]["labels"].as_object() {
            for (k, v) in l {
                s.labels
                    .insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
        }
        Ok(s)
    }

    /// The environment for one pod: `fieldRef`s resolved from `fields`.
    pub fn resolve_env(&self, fields: &BTreeMap<&str, String>) -> Result<Vec<(String, String)>> {
        self.env
            .iter()
            .map(|(k, v)| match v.strip_prefix('@') {
                Some(path) => fields
                    .get(path)
                    .map(|f| (k.clone(), f.clone()))
                    .with_context(|| format!("env {k}: fieldRef {path} is not simulated")),
                None => Ok((k.clone(), v.clone())),
            })
            .collect()
    }

    /// The arguments for one pod: `$(VAR)` expanded from `env`, then every
    /// path under a hostPath mount rewritten to `host_root` + host path
    /// (except the shared ones), and `image_paths` replaced.
    pub fn resolve_args(
        &self,
        env: &[(String, String)],
        host_root: &Path,
        image_paths: &[(&str, PathBuf)],
    ) -> Vec<String> {
        let mut mounts = self.mounts.clone();
        // Longest mount path first, so /var/run/netns wins over /var/run.
        mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
        self.args
            .iter()
            .map(|a| {
                let mut a = a.clone();
                for (k, v) in env {
                    a = a.replace(&format!("$({k})"), v);
                }
                for (from, to) in image_paths {
                    a = a.replace(from, &to.to_string_lossy());
                }
                for (mount, host) in &mounts {
                    if let Some(pos) = a.find(mount.as_str()) {
                        let rest = &a[pos + mount.len()..];
                        if !(rest.is_empty() || rest.starts_with('/')) {
                            continue;
                        }
                        let host_path = if SHARED_HOST_PATHS.contains(&host.as_str()) {
                            PathBuf::from(host)
                        } else {
                            host_root.join(host.trim_start_matches('/'))
                        };
                        a = format!("{}{}{}", &a[..pos], host_path.display(), rest);
                        break;
                    }
                }
                a
            })
            .collect()
    }
}

/// A pod this harness started on a node (API object, netns, CNI results).
pub struct PodRun {
    /// Namespace of the Pod object.
    pub namespace: String,
    /// Name of the Pod object.
    pub name: String,
    /// Node index (1-based).
    pub node: usize,
    /// The pod's network namespace.
    pub netns: NetNs,
    /// The result of the whole ADD chain (what DEL gets as prevResult).
    pub result: Value,
    /// The conflist the chain ran with.
    pub conflist: Value,
    /// Wall time of the ADD chain alone (every plugin, in order).
    pub add_took: std::time::Duration,
}

impl PodRun {
    /// The address `weft0` (the app's interface) carries in the pod, if any.
    pub fn app_address(&self) -> Result<Option<Ipv4Addr>> {
        let out = crate::netns::ip_in(
            self.netns.name(),
            &[
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                crate::workload::WORKLOAD_IFACE,
            ],
        );
        let Ok(text) = out else { return Ok(None) };
        let Some(cidr) = text.split_whitespace().skip_while(|w| *w != "inet").nth(1) else {
            return Ok(None);
        };
        let ip = cidr.split('/').next().unwrap_or(cidr);
        Ok(Some(
            ip.parse().with_context(|| format!("address {cidr:?}"))?,
        ))
    }

    /// The interfaces in the pod's namespace (`ip -o link` names).
    pub fn links(&self) -> Result<Vec<String>> {
        let text = crate::netns::ip_in(self.netns.name(), &["-o", "link"])?;
        Ok(text
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .collect())
    }
}

/// The simulated cluster.
pub struct KubeCluster {
    // Field order is drop order where teardown did not run.
    pods: Vec<PodRun>,
    daemons: Vec<Option<Proc>>,
    operators: Vec<Option<Proc>>,
    cp: Option<ControlPlane>,
    sim: Option<Sim>,
    prefix: String,
    run_dir: Option<tempfile::TempDir>,
    run_path: PathBuf,
    daemon_spec: Option<ContainerSpec>,
    operator_spec: Option<ContainerSpec>,
    operator_hosts: Vec<String>,
    /// How many nodes of other clusters precede this one's node 1 on the WAN.
    node_offset: usize,
    cp_octet: u8,
    operator_octet_base: u8,
    torn_down: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `path` inside the repository, as text.
pub fn repo_path(p: &str) -> String {
    repo().join(p).to_string_lossy().into_owned()
}

fn now_rfc3339() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "2026-01-01T00:00:00Z".into())
}

impl KubeCluster {
    /// The WAN with `n_nodes` nodes and the control plane, started and ready.
    pub fn new(n_nodes: usize) -> Result<KubeCluster> {
        let prefix = crate::unique_prefix();
        let sim = Sim::with_prefix(&prefix, n_nodes)?;
        Self::start(prefix, sim)
    }

    /// A second (third, ...) cluster on `first`'s WAN: its own control plane
    /// (own etcd and API server, at octet 251 for the second cluster), its
    /// own operator hosts (230 + k), its own `n_nodes` nodes
    /// `<prefix>-n1..` under a prefix of its own, at the WAN addresses after
    /// every node already there. The clusters share nothing but the WAN,
    /// which lives until both are torn down, in either order.
    pub fn join_wan(first: &KubeCluster, n_nodes: usize) -> Result<KubeCluster> {
        let prefix = crate::unique_prefix();
        let sim = Sim::join(
            first.sim.as_ref().context("first cluster torn down")?,
            &prefix,
            n_nodes,
        )?;
        Self::start(prefix, sim)
    }

    fn start(prefix: String, mut sim: Sim) -> Result<KubeCluster> {
        let m = sim.index();
        anyhow::ensure!(
            m < MAX_CLUSTERS_PER_WAN,
            "at most {MAX_CLUSTERS_PER_WAN} clusters on one WAN"
        );
        // m < 5, so these stay within 201..=254.
        let cp_octet = CONTROL_PLANE_OCTET + m as u8;
        let operator_octet_base = OPERATOR_OCTET_BASE - JOINED_OPERATOR_STEP * m as u8;
        let n_nodes = sim.n_nodes();
        let run_dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-run-"))
            .tempdir()?;
        let run_path = run_dir.path().to_path_buf();
        std::fs::create_dir_all(run_path.join("logs"))?;
        let cp_ns = sim.add_host("cp", cp_octet)?;
        let mut c = KubeCluster {
            pods: Vec::new(),
            daemons: (0..n_nodes).map(|_| None).collect(),
            operators: Vec::new(),
            cp: None,
            node_offset: sim.node_offset(),
            sim: Some(sim),
            prefix,
            run_dir: Some(run_dir),
            run_path: run_path.clone(),
            daemon_spec: None,
            operator_spec: None,
            operator_hosts: Vec::new(),
            cp_octet,
            operator_octet_base,
            torn_down: false,
        };
        let cp = ControlPlane::start(
            &cp_ns,
            Ipv4Addr::new(192, 0, 2, cp_octet),
            &run_path.join("control-plane"),
        )?;
        c.cp = Some(cp);
        Ok(c)
    }

    /// The control plane.
    pub fn cp(&self) -> &ControlPlane {
        self.cp.as_ref().expect("control plane")
    }

    /// The control plane, mutably (stop/start the API server).
    pub fn cp_mut(&mut self) -> &mut ControlPlane {
        self.cp.as_mut().expect("control plane")
    }

    /// The run's name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_path
    }

    /// The simulated WAN.
    pub fn sim(&self) -> &Sim {
        self.sim.as_ref().expect("sim")
    }

    /// Number of nodes.
    pub fn n_nodes(&self) -> usize {
        self.daemons.len()
    }

    /// Node `i`'s name (its namespace's name).
    pub fn node_name(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// WAN address of node `i` (1-based, in this cluster's numbering).
    pub fn node_wan_addr(&self, i: usize) -> Ipv4Addr {
        Sim::node_addr(self.node_offset + i)
    }

    /// WAN address of the control plane (where the API server listens).
    pub fn control_plane_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, self.cp_octet)
    }

    /// Namespace of operator replica `k` (1-based), once started.
    pub fn operator_netns(&self, k: usize) -> Option<&str> {
        self.operator_hosts.get(k - 1).map(String::as_str)
    }

    /// Node `i`'s root for the DaemonSet's host paths.
    pub fn node_root(&self, i: usize) -> PathBuf {
        self.run_path.join("nodes").join(format!("n{i}"))
    }

    fn logs(&self) -> PathBuf {
        self.run_path.join("logs")
    }

    /// `kubectl ARGS` as the admin (stdout, or an error carrying stderr).
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.cp().kubectl(args)
    }

    /// Creates (or replaces) an object from JSON as the admin.
    pub fn apply_json(&self, obj: &Value) -> Result<String> {
        self.cp()
            .kubectl_stdin(&["apply", "-f", "-"], &obj.to_string())
    }

    /// `kubectl apply -k DIR EXTRA...` (`DIR` relative to the repository) as
    /// the admin. On servers that know every kind it must succeed; on older
    /// ones (before 1.30) only the ValidatingAdmissionPolicy objects may be
    /// refused. Prints `NOT CHECKED on <version>: ...` for what the server
    /// could not check. Returns kubectl's stdout.
    pub fn apply_kustomization(&self, dir: &str, extra: &[&str]) -> Result<String> {
        let cp = self.cp();
        let path = repo_path(dir);
        let mut args = vec!["apply", "-k", &path];
        args.extend_from_slice(extra);
        if cp.version() < (1, 25) && (dir == "config/default" || dir == "config/hub") {
            // It holds the CRDs. Before 1.25 the server's schema of CRDs has no
            // x-kubernetes-validations, so kubectl's client-side validation
            // refuses the field; the server itself drops it and keeps the rest.
            args.push("--validate=false");
            println!(
                "NOT CHECKED on {}: {dir}: CRD validation rules (x-kubernetes-validations need 1.25)",
                cp.version_text()
            );
        }
        let out = cp.kubectl_output(&args, None)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        if cp.version() >= (1, 30) {
            bail!("kubectl apply -k {dir} failed:\n{stdout}\n{stderr}");
        }
        let refused: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("ensure CRDs are installed first"))
            .collect();
        if let Some(l) = refused
            .iter()
            .find(|l| !l.contains("ValidatingAdmissionPolicy"))
        {
            bail!(
                "kubectl apply -k {dir} refused more than the admission policies a {} server lacks: {l}\n{stderr}",
                cp.version_text()
            );
        }
        println!(
            "NOT CHECKED on {}: {} ValidatingAdmissionPolicy objects of {dir} (the API needs 1.30)",
            cp.version_text(),
            refused.len()
        );
        Ok(stdout)
    }

    /// Registers every node as a Ready Node object with its WAN address, the
    /// way a kubelet registers its node.
    pub fn register_nodes(&self) -> Result<()> {
        let now = now_rfc3339();
        for i in 1..=self.n_nodes() {
            let name = self.node_name(i);
            let node = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": self.node_wan_addr(i).to_string()}],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "simulated by the e2e harness",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
                },
            });
            // Nodes take their status on create (kubelets register that way).
            self.cp()
                .kubectl_stdin(&["create", "-f", "-"], &node.to_string())?;
        }
        Ok(())
    }

    /// Reads the operator's Deployment and the daemon's DaemonSet back from
    /// the API server (after `kubectl apply -k config/default`).
    pub fn load_workload_specs(&mut self) -> Result<()> {
        let ds = self
            .cp()
            .get_json(&["daemonset", "-n", SYSTEM_NS, "weft-node-daemon"])?;
        let dep = self
            .cp()
            .get_json(&["deployment", "-n", SYSTEM_NS, "weft-operator"])?;
        self.daemon_spec = Some(ContainerSpec::from_workload(&ds)?);
        self.operator_spec = Some(ContainerSpec::from_workload(&dep)?);
        Ok(())
    }

    /// Creates Pod object `ns/name` on node `node_name` (no containers run).
    pub fn create_pod_object(
        &self,
        ns: &str,
        name: &str,
        node_name: &str,
        labels: &BTreeMap<String, String>,
        service_account: &str,
    ) -> Result<()> {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "nodeName": node_name,
                "serviceAccountName": service_account,
                // The harness hands out tokens itself (TokenRequest); without a
                // token controller there is no Secret to mount.
                "automountServiceAccountToken": false,
                "containers": [{"name": "main", "image": "weft-e2e:sim"}],
            },
        });
        self.cp()
            .kubectl_stdin(&["create", "-f", "-"], &pod.to_string())?;
        Ok(())
    }

    /// Makes sure ServiceAccount `default` exists in `ns` (no controller
    /// manager runs to create it, and pods need it to be admitted).
    pub fn ensure_default_service_account(&self, ns: &str) -> Result<()> {
        self.apply_json(&json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": ns},
        }))?;
        Ok(())
    }

    fn token_kubeconfig(&self, sa: &str, pod: &str, file: &str) -> Result<PathBuf> {
        let path = self.run_path.join("kubeconfigs").join(file);
        std::fs::create_dir_all(path.parent().context("kubeconfig dir")?)?;
        let server = self.cp().server_url();
        self.cp()
            .service_account_kubeconfig(SYSTEM_NS, sa, Some(pod), &server, &path)?;
        Ok(path)
    }

    /// A kubeconfig for `kubectl` in the control plane's namespace as
    /// ServiceAccount `namespace/sa` (token bound to `pod` when given).
    pub fn local_kubeconfig_as(
        &self,
        namespace: &str,
        sa: &str,
        pod: Option<&str>,
    ) -> Result<PathBuf> {
        let path = self
            .run_path
            .join("kubeconfigs")
            .join(format!("local-{namespace}-{sa}.kubeconfig"));
        std::fs::create_dir_all(path.parent().context("kubeconfig dir")?)?;
        let server = self.cp().local_url();
        self.cp()
            .service_account_kubeconfig(namespace, sa, pod, &server, &path)?;
        Ok(path)
    }

    /// Writes node `i`'s primary CNI network (a bridge with a host-local
    /// range of its own), as a cluster's primary plugin would have.
    fn write_primary_conflist(&self, i: usize) -> Result<()> {
        let root = self.node_root(i);
        let dir = root.join("etc/cni/net.d");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(root.join("opt/cni/bin"))?;
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    // Numbered on the WAN, so clusters sharing it get disjoint pod ranges.
                    "ranges": [[{"subnet": format!("10.244.{}.0/24", self.node_offset + i)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": root.join("var/lib/cni/networks").to_string_lossy(),
                },
            }],
        });
        let path = dir.join("10-k8s-pod-network.conflist");
        if !path.exists() {
            std::fs::write(path, conf.to_string())?;
        }
        Ok(())
    }

    /// Starts node `i`'s daemon as the DaemonSet's container would run on it.
    pub fn start_daemon(&mut self, i: usize) -> Result<()> {
        let spec = self
            .daemon_spec
            .clone()
            .context("load_workload_specs first")?;
        let node = self.node_name(i);
        let pod = format!("weft-node-daemon-{node}");
        if self
            .cp()
            .kubectl_output(&["get", "pod", "-n", SYSTEM_NS, &pod], None)?
            .status
            .success()
            .then_some(())
            .is_none()
        {
            self.create_pod_object(SYSTEM_NS, &pod, &node, &spec.labels, &spec.service_account)?;
        }
        let kubeconfig =
            self.token_kubeconfig(&spec.service_account, &pod, &format!("{node}.kubeconfig"))?;
        self.write_primary_conflist(i)?;
        let fields = BTreeMap::from([
            ("spec.nodeName", node.clone()),
            ("status.hostIP", self.node_wan_addr(i).to_string()),
            ("metadata.name", pod.clone()),
            ("metadata.namespace", SYSTEM_NS.to_string()),
        ]);
        let mut env = spec.resolve_env(&fields)?;
        let root = self.node_root(i);
        let args = spec.resolve_args(&env, &root, &[("/opt/weft/cni/weft-cni", bin("weft-cni")?)]);
        for (_, host) in &spec.mounts {
            if !SHARED_HOST_PATHS.contains(&host.as_str()) {
                std::fs::create_dir_all(root.join(host.trim_start_matches('/')))?;
            }
        }
        env.push((
            "KUBECONFIG".into(),
            kubeconfig.to_string_lossy().into_owned(),
        ));
        std::fs::create_dir_all(self.logs())?;
        let p = Proc::spawn(
            &format!("weft-node-daemon {node}"),
            &bin("weft-node-daemon")?,
            &args,
            &env,
            Some(&node),
            &self.logs().join(format!("daemon-n{i}.log")),
        )?;
        self.daemons[i - 1] = Some(p);
        Ok(())
    }

    /// Starts every node's daemon and waits until each has chained weft-cni
    /// into its node's CNI configuration (it does once its socket listens).
    pub fn start_daemons(&mut self) -> Result<()> {
        for i in 1..=self.n_nodes() {
            self.start_daemon(i)?;
        }
        for i in 1..=self.n_nodes() {
            self.wait_cni_chained(i)?;
        }
        Ok(())
    }

    /// Waits until node `i`'s conflist ends with weft-cni.
    pub fn wait_cni_chained(&mut self, i: usize) -> Result<()> {
        let res = crate::wait_for(
            &format!("weft-cni chained on node {i}"),
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let c = self.conflist(i)?;
                Ok(c["plugins"]
                    .as_array()
                    .and_then(|p| p.last())
                    .is_some_and(|l| l["type"] == "weft-cni")
                    .then_some(()))
            },
        );
        res.map_err(|e| e.context(self.daemon_log_tail(i, 30)))
    }

    /// Node `i`'s daemon, if started.
    pub fn daemon(&mut self, i: usize) -> Result<&mut Proc> {
        self.daemons[i - 1].as_mut().context("daemon not started")
    }

    /// The last lines of node `i`'s daemon log.
    pub fn daemon_log_tail(&self, i: usize, n: usize) -> String {
        self.daemons[i - 1]
            .as_ref()
            .map(|p| format!("daemon n{i} log:\n{}", p.log_tail(n)))
            .unwrap_or_default()
    }

    /// The last lines of every operator replica's log.
    pub fn operator_log_tail(&self, n: usize) -> String {
        self.operators
            .iter()
            .enumerate()
            .filter_map(|(k, p)| {
                p.as_ref()
                    .map(|p| format!("operator {} log:\n{}", k + 1, p.log_tail(n)))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// WAN octet of operator replica `k` (1-based): 9 replicas per cluster,
    /// so no cluster's reach another's octets.
    fn operator_octet(&self, k: usize) -> Result<u8> {
        anyhow::ensure!(
            (1..=9).contains(&k),
            "operator replica {k}: a simulated cluster has at most 9"
        );
        Ok(self.operator_octet_base + k as u8)
    }

    /// Starts operator replica `k` (1-based) as the Deployment's container
    /// would run in a pod of its own: its own namespace on the WAN, a Pod
    /// object on node 1 for its token, `POD_NAME` set.
    pub fn start_operator(&mut self, k: usize) -> Result<()> {
        let spec = self
            .operator_spec
            .clone()
            .context("load_workload_specs first")?;
        while self.operators.len() < k {
            self.operators.push(None);
        }
        let pod = format!("weft-operator-{k}");
        if self.operator_hosts.len() < k {
            let octet = self.operator_octet(k)?;
            let host = self
                .sim
                .as_mut()
                .context("sim")?
                .add_host(&format!("op{k}"), octet)?;
            self.operator_hosts.push(host);
            let node = self.node_name(1);
            self.create_pod_object(SYSTEM_NS, &pod, &node, &spec.labels, &spec.service_account)?;
        }
        let kubeconfig =
            self.token_kubeconfig(&spec.service_account, &pod, &format!("{pod}.kubeconfig"))?;
        let fields = BTreeMap::from([
            ("metadata.name", pod.clone()),
            ("metadata.namespace", SYSTEM_NS.to_string()),
            ("spec.nodeName", self.node_name(1)),
        ]);
        let mut env = spec.resolve_env(&fields)?;
        let args = spec.resolve_args(&env, &self.run_path.join(&pod), &[]);
        env.push((
            "KUBECONFIG".into(),
            kubeconfig.to_string_lossy().into_owned(),
        ));
        std::fs::create_dir_all(self.logs())?;
        let p = Proc::spawn(
            &pod,
            &bin("weft-operator")?,
            &args,
            &env,
            Some(&self.operator_hosts[k - 1].clone()),
            &self.logs().join(format!("{pod}.log")),
        )?;
        self.operators[k - 1] = Some(p);
        Ok(())
    }

    /// Operator replica `k`'s process.
    pub fn operator(&mut self, k: usize) -> Result<&mut Proc> {
        self.operators
            .get_mut(k - 1)
            .and_then(Option::as_mut)
            .context("operator not started")
    }

    /// Node `i`'s first conflist, as a runtime picks it.
    pub fn conflist(&self, i: usize) -> Result<Value> {
        let dir = self.node_root(i).join("etc/cni/net.d");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
            })
            .collect();
        files.sort();
        let f = files
            .first()
            .with_context(|| format!("no CNI config in {}", dir.display()))?;
        Ok(serde_json::from_slice(&std::fs::read(f)?)?)
    }

    fn runtime(&self, i: usize, ns: &str, name: &str, pod_netns: &NetNs) -> Runtime {
        Runtime {
            node_netns: self.node_name(i),
            cni_path: format!(
                "{}:{DEBIAN_CNI_DIR}",
                self.node_root(i).join("opt/cni/bin").display()
            ),
            container_id: format!("{}-{ns}-{name}", self.prefix),
            pod_netns: pod_netns.path(),
            ifname: "eth0".into(),
            pod: (ns.into(), name.into()),
        }
    }

    fn plugin_path(rt: &Runtime, ty: &str) -> Result<PathBuf> {
        rt.cni_path
            .split(':')
            .map(|d| Path::new(d).join(ty))
            .find(|p| p.is_file())
            .with_context(|| format!("CNI plugin {ty} not in {}", rt.cni_path))
    }

    /// Runs the chain of `conflist` for `command` (ADD in order, DEL in
    /// reverse with `cached` as prevResult); stops at the first failure.
    fn run_chain(rt: &Runtime, conflist: &Value, command: &str, cached: &Value) -> Result<Value> {
        let plugins = conflist["plugins"].as_array().context("conflist plugins")?;
        let mut order: Vec<&Value> = plugins.iter().collect();
        if command == "DEL" {
            order.reverse();
        }
        let mut prev = cached.clone();
        for (n, p) in order.into_iter().enumerate() {
            let mut conf = p.clone();
            conf["cniVersion"] = conflist["cniVersion"].clone();
            conf["name"] = conflist["name"].clone();
            let ty = p["type"].as_str().context("plugin type")?;
            let plugin = Self::plugin_path(rt, ty)?;
            let out: CniOutput = if (command == "ADD" && n == 0) || prev.is_null() {
                rt.invoke(&plugin, command, &conf)?
            } else {
                rt.invoke_chained(&plugin, command, &conf, &prev)?
            };
            if !out.ok() {
                bail!(
                    "CNI {command} of {}/{} failed in {ty} (exit {}): {} {}",
                    rt.pod.0,
                    rt.pod.1,
                    out.code,
                    out.stdout.trim(),
                    out.stderr.trim()
                );
            }
            if command == "ADD" {
                prev = out.json;
            }
        }
        Ok(prev)
    }

    /// A pod as a kubelet starts one: the Pod object on node `i`, its
    /// network namespace, the node's CNI chain ADD. Returns its index.
    pub fn run_pod(
        &mut self,
        ns: &str,
        name: &str,
        i: usize,
        labels: &[(&str, &str)],
    ) -> Result<usize> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.create_pod_object(ns, name, &self.node_name(i), &labels, "default")?;
        let netns = NetNs::create(&format!("{}-p{}-{name}", self.prefix, self.pods.len()))?;
        let conflist = self.conflist(i)?;
        let rt = self.runtime(i, ns, name, &netns);
        let started = std::time::Instant::now();
        let result = Self::run_chain(&rt, &conflist, "ADD", &Value::Null)
            .map_err(|e| e.context(self.daemon_log_tail(i, 30)))?;
        let add_took = started.elapsed();
        self.pods.push(PodRun {
            namespace: ns.into(),
            name: name.into(),
            node: i,
            netns,
            result,
            conflist,
            add_took,
        });
        Ok(self.pods.len() - 1)
    }

    /// Pod `k` (from [`KubeCluster::run_pod`]).
    pub fn pod(&self, k: usize) -> &PodRun {
        &self.pods[k]
    }

    /// Stops pod `k` as a kubelet does: CNI DEL, namespace gone, object deleted.
    pub fn delete_pod(&mut self, k: usize) -> Result<()> {
        let p = self.pods.remove(k);
        let rt = self.runtime(p.node, &p.namespace, &p.name, &p.netns);
        let res = Self::run_chain(&rt, &p.conflist, "DEL", &p.result);
        drop(p.netns);
        self.kubectl(&["delete", "pod", "-n", &p.namespace, &p.name, "--wait=false"])?;
        res.map(|_| ())
    }

    /// Tears everything down in order; returns the problems met (empty when clean).
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut warnings = Vec::new();
        while let Some(p) = self.pods.pop() {
            let rt = self.runtime(p.node, &p.namespace, &p.name, &p.netns);
            if let Err(e) = Self::run_chain(&rt, &p.conflist, "DEL", &p.result) {
                warnings.push(format!("{e:#}"));
            }
        }
        for (i, d) in self.daemons.iter_mut().enumerate() {
            if let Some(mut p) = d.take() {
                let (_, killed) = p.stop(Duration::from_secs(20));
                if killed {
                    warnings.push(format!("daemon n{} ignored SIGTERM", i + 1));
                }
            }
        }
        // What a node's cleanup leaves: the daemon's app namespaces and devices.
        if let Ok(daemon) = bin("weft-node-daemon") {
            for i in 1..=self.daemons.len() {
                let node = self.node_name(i);
                let data = self.node_root(i).join("var/lib/weft");
                let args = vec![
                    "cleanup".into(),
                    "--node".into(),
                    node.clone(),
                    "--data-dir".into(),
                    data.to_string_lossy().into_owned(),
                ];
                let log = self.logs().join(format!("cleanup-n{i}.log"));
                match run_to_completion(&daemon, &args, Some(&node), &log, Duration::from_secs(60))
                {
                    Ok(st) if st.success() => {}
                    Ok(st) => warnings.push(format!("cleanup on {node} exited {st}")),
                    Err(e) => warnings.push(format!("cleanup on {node}: {e:#}")),
                }
            }
        }
        for (k, o) in self.operators.iter_mut().enumerate() {
            if let Some(mut p) = o.take() {
                let (_, killed) = p.stop(Duration::from_secs(15));
                if killed {
                    warnings.push(format!("operator {} ignored SIGTERM", k + 1));
                }
            }
        }
        self.cp = None;
        // A WAN another cluster still uses is not left behind: it goes with
        // the last sim on it.
        let spared: Vec<String> = self
            .sim
            .as_ref()
            .filter(|s| s.wan_shared())
            .map(|s| s.wan_netns().to_string())
            .into_iter()
            .collect();
        self.sim = None;
        let leftovers = crate::cleanup::cleanup_run_leftovers_sparing(&self.prefix, &spared);
        if !leftovers.is_empty() {
            warnings.push(format!("left behind: {leftovers}"));
        }
        if std::env::var_os("WEFT_E2E_KEEP").is_some() {
            if let Some(d) = self.run_dir.take() {
                eprintln!("keeping {}", d.keep().display());
            }
        } else {
            self.run_dir = None;
        }
        warnings
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        for w in self.teardown() {
            eprintln!("warning: {w}");
        }
    }
}
