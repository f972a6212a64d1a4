//! The Kubernetes mode's pass ([`reconcile_all`]) against the scripted
//! [`FakeApi`] over loopback HTTP. The reflectors are stood in for: the
//! stores are kept here and every write the fake records is folded back
//! into them, as the watches would, so the next pass sees what the last
//! one wrote.
//!
//! The fake runs in a process of its own ([`serve_fake`]), as an API server
//! would: its copies of the request bodies do not count in the operator's
//! RSS. After each pass it hands over what it saw, one request a line.
//!
//! ```text
//!  operator (this process) ──HTTP──► fake API process
//!        stdin:  LIST <json> (serve these objects) / SYNC (send what you saw)
//!        stdout: READY / ACK / SEEN <json>... SYNCED
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeStatus, Pod, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde_json::{json, Value};
use weft_api::{MeshApp, MeshAppStatus, MeshNode, MeshNodeSpec};
use weft_operator::k8s::trim::MeshNodeTrim;
use weft_operator::k8s::{
    reconcile_all, snapshot_from_stores, Observed, PassState, ReconcileReport,
};
use weft_operator::planner::{self, PlannerConfig};

use super::{
    app_name, app_namespace, emit, keys, median, node_address, node_name, workload_labels,
    workload_name, Cluster, Workload,
};
use crate::fakeapi::FakeApi;

const GROUP: &str = "/apis/weft.dev/v1alpha1/";

/// Settings of a Kubernetes-mode run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Passes with nothing new to time.
    pub converged_passes: usize,
}

/// What the reflector stores would hold.
#[derive(Default)]
struct Stores {
    apps: BTreeMap<(String, String), Arc<MeshApp>>,
    meshnodes: BTreeMap<String, Arc<MeshNode>>,
    pods: BTreeMap<(String, String), Arc<Pod>>,
    nodes: Vec<Arc<Node>>,
    /// What the operator's MeshNode watch does to each MeshNode.
    meshnode_trim: MeshNodeTrim,
    /// The last resourceVersion given out: every change gets a new one, as
    /// the API server gives (the operator tells changes by them).
    rv: u64,
}

/// The next resourceVersion.
fn next_rv(rv: &mut u64) -> Option<String> {
    *rv += 1;
    Some(rv.to_string())
}

impl Stores {
    fn observed(&self) -> Observed {
        Observed {
            apps: self.apps.values().cloned().collect(),
            meshnodes: self.meshnodes.values().cloned().collect(),
            pods: self.pods.values().cloned().collect(),
            nodes: self.nodes.clone(),
            ..Default::default()
        }
    }

    /// Applies one request of a pass, as the API server and then the
    /// watches would. Returns the size of a MeshNode it wrote (compact JSON
    /// of what the operator owns: metadata and spec), else 0.
    fn fold(&mut self, seen: Value) -> Result<usize> {
        let Seen { method, path, body } = Seen::from(seen);
        let Some(rest) = path.strip_prefix(GROUP).filter(|_| method == "PATCH") else {
            return Ok(0);
        };
        let mut body = body;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            ["meshnodes", name] => {
                let mut mn: MeshNode = serde_json::from_value(body)
                    .with_context(|| format!("MeshNode apply of {name}"))?;
                // The fake answers every MeshNode apply with generation 1;
                // the store says the same, or statuses computed from the
                // reply would differ from the next pass's.
                mn.metadata.generation = Some(1);
                let size = serde_json::to_vec(&mn)?.len();
                mn.status = self.meshnodes.get(*name).and_then(|old| old.status.clone());
                self.meshnode_trim.apply(&mut mn);
                mn.metadata.resource_version = next_rv(&mut self.rv);
                self.meshnodes.insert(name.to_string(), Arc::new(mn));
                return Ok(size);
            }
            ["namespaces", ns, "meshapps", name, "status"] => {
                let status: MeshAppStatus = serde_json::from_value(body["status"].take())
                    .with_context(|| format!("status of MeshApp {ns}/{name}"))?;
                if let Some(app) = self.apps.get_mut(&(ns.to_string(), name.to_string())) {
                    let app = Arc::make_mut(app);
                    app.status = Some(status);
                    app.metadata.resource_version = next_rv(&mut self.rv);
                }
            }
            ["namespaces", ns, "meshapps", name] => {
                let finalizers: Vec<String> =
                    serde_json::from_value(body["metadata"]["finalizers"].take())
                        .unwrap_or_default();
                if let Some(app) = self.apps.get_mut(&(ns.to_string(), name.to_string())) {
                    let app = Arc::make_mut(app);
                    app.metadata.finalizers = Some(finalizers);
                    app.metadata.resource_version = next_rv(&mut self.rv);
                }
            }
            _ => {}
        }
        Ok(0)
    }

    fn put_pod(&mut self, w: Workload, node: usize) {
        let (ns, name) = (app_namespace(w.app), workload_name(w.app, w.index));
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(workload_labels(w.app)),
                resource_version: next_rv(&mut self.rv),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node_name(node)),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        };
        self.pods.insert((ns, name), Arc::new(pod));
    }

    fn put_app(&mut self, cluster: &Cluster, j: usize) {
        let mut app = MeshApp::new(&app_name(j), cluster.app_spec(j));
        app.metadata.namespace = Some(app_namespace(j));
        app.metadata.generation = Some(1);
        app.metadata.resource_version = next_rv(&mut self.rv);
        app.metadata.uid = Some(format!("uid-{j}"));
        self.apps
            .insert((app_namespace(j), app_name(j)), Arc::new(app));
    }

    /// The daemon's report on node `n` (a MeshNode with no spec yet when
    /// the operator has not written one).
    fn put_node_status(&mut self, cluster: &Cluster, n: usize, heartbeat: &str) {
        let name = node_name(n);
        let status = cluster.node_status(n, heartbeat);
        let mn = self.meshnodes.entry(name.clone()).or_insert_with(|| {
            let mut mn = MeshNode::new(&name, MeshNodeSpec::default());
            mn.metadata.generation = Some(1);
            Arc::new(mn)
        });
        let mn = Arc::make_mut(mn);
        mn.status = Some(status);
        mn.metadata.resource_version = next_rv(&mut self.rv);
    }

    /// Serves the apps of namespace `ns`: status patches look them up.
    fn serve_namespace(&self, fake: &mut FakeProcess, ns: &str) -> Result<()> {
        let items = self
            .apps
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .map(|(_, a)| serde_json::to_value(a.as_ref()))
            .collect::<Result<Vec<Value>, _>>()?;
        fake.set_list(
            &format!("{GROUP}namespaces/{ns}/meshapps"),
            "MeshAppList",
            items,
        )
    }
}

fn k8s_node(n: usize) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(node_name(n)),
            resource_version: Some("1".into()),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: node_address(n),
            }]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

struct Bench {
    fake: FakeProcess,
    client: Client,
    config: PlannerConfig,
    stores: Stores,
    now: Timestamp,
    /// What the operator keeps between passes, as its run loop does.
    state: PassState,
    /// Seconds of the first reconcile of the last [`Bench::pass`].
    first_pass_secs: f64,
}

impl Bench {
    /// One pass, timed, then its writes folded into the stores; when the
    /// pass left status writes over its budget for the next (as the operator
    /// does at start-up), the following passes run too and count in the
    /// time and writes (the run loop's pacing pause between them does not).
    async fn pass(&mut self) -> Result<(f64, ReconcileReport, usize)> {
        let mut secs = 0.0;
        let mut total: Option<ReconcileReport> = None;
        let mut largest = 0;
        loop {
            let obs = self.stores.observed();
            let started = Instant::now();
            let report = reconcile_all(
                &self.client,
                &obs,
                &self.config,
                self.now,
                None,
                &mut self.state,
            )
            .await
            .context("reconcile pass")?;
            if total.is_none() {
                self.first_pass_secs = started.elapsed().as_secs_f64();
            }
            secs += started.elapsed().as_secs_f64();
            if let Some(kind) = &report.planned {
                let phases: Vec<String> = report
                    .phases
                    .iter()
                    .map(|(name, d)| format!("{name} {:.1}", d.as_secs_f64() * 1e3))
                    .collect();
                eprintln!("  pass planned: {kind:?}; ms: {}", phases.join(", "));
            }
            drop(obs);
            let stores = &mut self.stores;
            self.fake.sync(|seen| {
                largest = largest.max(stores.fold(seen)?);
                Ok(())
            })?;
            let deferred = report.statuses_deferred;
            total = Some(match total {
                None => report,
                Some(mut t) => {
                    t.meshnode_writes.extend(report.meshnode_writes);
                    t.status_writes.extend(report.status_writes);
                    t.finalizers_added.extend(report.finalizers_added);
                    t.finalizers_released.extend(report.finalizers_released);
                    t.statuses_deferred = deferred;
                    t
                }
            });
            if deferred == 0 {
                break;
            }
        }
        Ok((secs, total.unwrap_or_default(), largest))
    }
}

fn others(r: &ReconcileReport) -> f64 {
    (r.status_writes.len() + r.finalizers_added.len() + r.finalizers_released.len()) as f64
}

/// Builds the cluster's objects and measures every step.
pub async fn run(mut cluster: Cluster, work: &Path, opts: &Options) -> Result<()> {
    let started = Instant::now();
    let now = Timestamp::now();
    let heartbeat = now.to_string();
    let kubeconfig = work.join("kubeconfig");
    let mut fake = FakeProcess::start(&kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = Client::try_from(config)?;

    // A fresh install: apps without the finalizer, daemons that reported
    // their keys, no MeshNode spec written yet.
    let mut stores = Stores {
        nodes: (0..cluster.size.nodes)
            .map(|n| Arc::new(k8s_node(n)))
            .collect(),
        ..Default::default()
    };
    for j in 0..cluster.apps {
        stores.put_app(&cluster, j);
    }
    for n in 0..cluster.size.nodes {
        stores.put_node_status(&cluster, n, &heartbeat);
        for &w in &cluster.workloads[n] {
            stores.put_pod(w, n);
        }
    }
    for ns in (0..cluster.apps).step_by(100).map(app_namespace) {
        stores.serve_namespace(&mut fake, &ns)?;
    }
    let mut b = Bench {
        fake,
        client,
        config: cluster.planner_config(),
        stores,
        now,
        state: PassState::default(),
        first_pass_secs: 0.0,
    };
    emit(keys::SETUP_S, started.elapsed().as_secs_f64());

    let (secs, r, largest) = b.pass().await?;
    emit(keys::FULL_S, secs);
    emit(keys::FULL_FIRST_S, b.first_pass_secs);
    emit(keys::FULL_MESHNODES, r.meshnode_writes.len() as f64);
    emit(keys::FULL_OTHER, others(&r));
    emit(keys::PLAN_ERRORS, r.errors.len() as f64);
    if let Some(e) = r.errors.first() {
        eprintln!("first plan error: {e}");
    }
    emit(keys::LARGEST_MESHNODE, largest as f64);

    let (mut times, mut meshnodes, mut other) = (Vec::new(), 0.0f64, 0.0f64);
    for _ in 0..opts.converged_passes.max(1) {
        let (secs, r, _) = b.pass().await?;
        times.push(secs);
        meshnodes = meshnodes.max(r.meshnode_writes.len() as f64);
        other = other.max(others(&r));
    }
    emit(
        keys::CONVERGED_MAX_S,
        times.iter().copied().fold(0.0, f64::max),
    );
    emit(keys::CONVERGED_S, median(times));
    emit(keys::CONVERGED_MESHNODES, meshnodes);
    emit(keys::CONVERGED_OTHER, other);

    // The planner alone on the same input: what of a pass is planning.
    let obs = b.stores.observed();
    let t = Instant::now();
    let plan = planner::plan(&snapshot_from_stores(&obs, &b.config, now));
    emit(keys::PLAN_ONLY_S, t.elapsed().as_secs_f64());
    drop((plan, obs));

    let j = cluster.add_app();
    b.stores.put_app(&cluster, j);
    b.stores.serve_namespace(&mut b.fake, &app_namespace(j))?;
    for n in cluster.nodes_of(j) {
        for &w in cluster.workloads[n].iter().filter(|w| w.app == j) {
            b.stores.put_pod(w, n);
        }
    }
    let (secs, r, _) = b.pass().await?;
    emit(keys::ADD_S, secs);
    emit(keys::ADD_MESHNODES, r.meshnode_writes.len() as f64);

    cluster.report_keys(j);
    for n in cluster.nodes_of(j) {
        b.stores.put_node_status(&cluster, n, &heartbeat);
    }
    let (secs, r, _) = b.pass().await?;
    emit(keys::KEYS_S, secs);
    emit(keys::KEYS_MESHNODES, r.meshnode_writes.len() as f64);

    let (w, _, to) = cluster.move_workload();
    b.stores.put_pod(w, to);
    let (secs, r, _) = b.pass().await?;
    emit(keys::MOVE_S, secs);
    emit(keys::MOVE_MESHNODES, r.meshnode_writes.len() as f64);

    // A restarted operator: a new planner over the same stores.
    b.state = PassState::default();
    let (secs, r, _) = b.pass().await?;
    emit(keys::RESTART_S, secs);
    emit(keys::RESTART_MESHNODES, r.meshnode_writes.len() as f64);
    Ok(())
}

/// One request the fake saw, as it comes over the pipe.
struct Seen {
    method: String,
    path: String,
    body: Value,
}

impl From<Value> for Seen {
    fn from(mut v: Value) -> Seen {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Seen {
            method: text(&v["method"]),
            path: text(&v["path"]),
            body: v["body"].take(),
        }
    }
}

/// The fake API server's process, seen from the operator's side.
struct FakeProcess {
    child: std::process::Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl FakeProcess {
    /// Starts this binary's `fake-api` subcommand and waits until it serves.
    fn start(kubeconfig: &Path) -> Result<FakeProcess> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut child = Command::new(exe)
            .arg("fake-api")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the fake API server")?;
        let stdin = child.stdin.take().context("fake API stdin")?;
        let stdout = child.stdout.take().context("fake API stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let fake = FakeProcess {
            child,
            stdin,
            lines,
        };
        fake.expect("READY")?;
        Ok(fake)
    }

    fn next_line(&self) -> Result<String> {
        self.lines
            .recv_timeout(Duration::from_secs(600))
            .context("the fake API server stopped answering")
    }

    fn expect(&self, what: &str) -> Result<()> {
        match self.next_line()? {
            l if l == what => Ok(()),
            l => bail!("fake API server: expected {what}, got {l:.80}"),
        }
    }

    fn set_list(&mut self, path: &str, kind: &str, items: Vec<Value>) -> Result<()> {
        let cmd = json!({"path": path, "kind": kind, "items": items});
        writeln!(self.stdin, "LIST {cmd}")?;
        self.stdin.flush()?;
        self.expect("ACK")
    }

    /// Every request since the last sync, one at a time, in order.
    fn sync(&mut self, mut each: impl FnMut(Value) -> Result<()>) -> Result<()> {
        writeln!(self.stdin, "SYNC")?;
        self.stdin.flush()?;
        loop {
            let line = self.next_line()?;
            if line == "SYNCED" {
                return Ok(());
            }
            let Some(json) = line.strip_prefix("SEEN ") else {
                bail!("fake API server: unexpected {line:.80}");
            };
            each(serde_json::from_str(json)?)?;
        }
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        // Our own child, by its handle; it also exits when its stdin closes.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `fake-api` subcommand: serves [`FakeApi`] until stdin closes (the
/// benchmark child exited or was killed). What it sees is turned into
/// compact lines every few milliseconds, so the server never holds more
/// than the text of the requests of one pass.
pub fn serve_fake(kubeconfig: &Path) -> Result<()> {
    match serve_fake_until_closed(kubeconfig) {
        // The benchmark child was killed (over the memory cap) mid-answer.
        Err(e)
            if e.downcast_ref::<std::io::Error>().map(std::io::Error::kind)
                == Some(std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        r => r,
    }
}

fn serve_fake_until_closed(kubeconfig: &Path) -> Result<()> {
    let fake = Arc::new(FakeApi::start()?);
    fake.write_kubeconfig(kubeconfig)?;
    let pending: Arc<Mutex<Vec<String>>> = Arc::default();
    // Taking and queueing under one lock keeps the requests in order.
    let drain = |fake: &FakeApi, pending: &Mutex<Vec<String>>| {
        let mut queue = pending.lock().unwrap_or_else(|e| e.into_inner());
        queue.extend(
            fake.take_seen()
                .into_iter()
                .map(|s| json!({"method": s.method, "path": s.path, "body": s.body}).to_string()),
        );
    };
    {
        let (fake, pending) = (fake.clone(), pending.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(5));
            drain(&fake, &pending);
        });
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if let Some(cmd) = line.strip_prefix("LIST ") {
            let mut cmd: Value = serde_json::from_str(cmd)?;
            let items = match cmd["items"].take() {
                Value::Array(items) => items,
                _ => Vec::new(),
            };
            fake.set_list(
                cmd["path"].as_str().unwrap_or_default(),
                cmd["kind"].as_str().unwrap_or_default(),
                items,
            );
            writeln!(out, "ACK")?;
        } else if line == "SYNC" {
            drain(&fake, &pending);
            let queue = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
            for l in queue {
                writeln!(out, "SEEN {l}")?;
            }
            writeln!(out, "SYNCED")?;
        }
        out.flush()?;
    }
    Ok(())
}
