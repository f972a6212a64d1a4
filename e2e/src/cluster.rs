//! A whole simulated Weft deployment on one host: the WAN and nodes
//! ([`Sim`]), a state directory, the standalone operator, one daemon per node
//! and the workloads. [`Cluster::teardown`] (also run on drop) removes it all
//! in order: daemons, their `cleanup`, the operator, workloads, leftover app
//! namespaces, nodes and WAN, and the run directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use weft_api::standalone::StateDir;
use weft_api::{MeshAppStatus, MeshNodeStatus};

use crate::cleanup::{find_leftovers, wireguard_sockets, wireguard_sockets_in, Leftovers};
use crate::netns::{delete_netns, list_netns};
use crate::procs::{bin, run_to_completion, Proc};
use crate::status::{self, write_atomic};
use crate::topology::Sim;
use crate::workload::Workload;

/// What [`Cluster::teardown`] found and did.
#[derive(Clone, Debug, Default)]
pub struct TeardownReport {
    /// Problems during teardown (a process needing SIGKILL, a failed cleanup...).
    pub warnings: Vec<String>,
    /// What remained afterwards (should be nothing).
    pub leftovers: Leftovers,
    /// WireGuard UAPI sockets that appeared during the run and are still
    /// there: new ones in /var/run/wireguard, and anything left in a node's
    /// socket directory (as `n<i>/<name>`).
    pub new_wg_sockets: Vec<String>,
    /// The run directory, if it was kept.
    pub kept_run_dir: Option<PathBuf>,
}

impl TeardownReport {
    /// Whether everything is gone.
    pub fn clean(&self) -> bool {
        self.leftovers.is_empty() && self.new_wg_sockets.is_empty()
    }
}

/// Tears `c` down and panics unless it went without a warning and left no
/// namespace, WireGuard socket or child process behind (for tests).
pub fn assert_torn_down_cleanly(mut c: Cluster) {
    let rep = c.teardown();
    assert!(
        rep.warnings.is_empty(),
        "teardown warnings: {:?}",
        rep.warnings
    );
    assert!(rep.leftovers.is_empty(), "left behind: {}", rep.leftovers);
    assert!(
        rep.new_wg_sockets.is_empty(),
        "WireGuard sockets left behind: {:?}",
        rep.new_wg_sockets
    );
    let children = crate::procs::registered_children();
    assert!(children.is_empty(), "children still running: {children:?}");
}

/// Where each simulated node's daemon serves `/metrics`, `/healthz` and
/// `/readyz`, inside that node's namespace.
pub const DAEMON_METRICS_ADDRESS: &str = "127.0.0.1:9464";

/// A simulated deployment.
pub struct Cluster {
    prefix: String,
    run_dir: Option<tempfile::TempDir>,
    run_path: PathBuf,
    state: StateDir,
    manifests: PathBuf,
    interval_ms: u64,
    operator: Option<Proc>,
    daemons: Vec<Option<Proc>>,
    workloads: Vec<Workload>,
    sim: Option<Sim>,
    wg_before: BTreeSet<String>,
    keep_run_dir: bool,
    attach_sockets: bool,
    /// Extra daemon arguments per node (1-based index).
    daemon_args: std::collections::BTreeMap<usize, Vec<String>>,
    /// Other federation members sharing the WAN, each with its own state
    /// directory and operator (the cluster's own is the first member).
    members: Vec<Member>,
    /// The directory hub's process (`weft-operator hub`).
    hub: Option<Proc>,
    torn_down: bool,
}

/// Another control plane on the same WAN: a federation member.
struct Member {
    name: String,
    state: StateDir,
    manifests: PathBuf,
    nodes: Vec<usize>,
    operator: Option<Proc>,
}

impl Cluster {
    /// Builds the WAN and `n_nodes` nodes and the run directory (under the
    /// system temp dir); no process is started yet.
    pub fn new(n_nodes: usize) -> Result<Cluster> {
        let prefix = crate::unique_prefix();
        let wg_before = wireguard_sockets();
        let run_dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-run-"))
            .tempdir()?;
        let run_path = run_dir.path().to_path_buf();
        let state = StateDir::new(run_path.join("state"));
        let manifests = run_path.join("manifests");
        for d in [
            state.root().to_path_buf(),
            manifests.clone(),
            run_path.join("logs"),
            run_path.join("data"),
        ] {
            std::fs::create_dir_all(d)?;
        }
        let sim = Sim::with_prefix(&prefix, n_nodes)?;
        Ok(Cluster {
            prefix,
            run_dir: Some(run_dir),
            run_path,
            state,
            manifests,
            interval_ms: 100,
            operator: None,
            daemons: (0..n_nodes).map(|_| None).collect(),
            workloads: Vec::new(),
            sim: Some(sim),
            wg_before,
            keep_run_dir: std::env::var_os("WEFT_E2E_KEEP").is_some(),
            attach_sockets: false,
            daemon_args: Default::default(),
            members: Vec::new(),
            hub: None,
            torn_down: false,
        })
    }

    /// The run's name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The run directory (logs, state, manifests, data dirs).
    pub fn run_dir(&self) -> &Path {
        &self.run_path
    }
    /// Directory of the logs.
    pub fn log_dir(&self) -> PathBuf {
        self.run_path.join("logs")
    }
    /// The standalone state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }
    /// The operator's manifests directory.
    pub fn manifests_dir(&self) -> &Path {
        &self.manifests
    }
    /// The topology.
    pub fn sim(&self) -> &Sim {
        self.sim.as_ref().expect("cluster torn down")
    }
    /// Number of nodes.
    pub fn n_nodes(&self) -> usize {
        self.daemons.len()
    }
    /// Name of node `i` (1-based); equal to its namespace name.
    pub fn node_name(&self, i: usize) -> String {
        self.sim().node_netns(i).to_string()
    }
    /// Data directory of node `i`'s daemon.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.run_path.join("data").join(format!("n{i}"))
    }
    /// Keep the run directory after teardown (logs for debugging).
    pub fn keep_run_dir(&mut self, keep: bool) {
        self.keep_run_dir = keep;
    }

    /// Daemons started from now on serve the CNI attach protocol on
    /// [`Cluster::attach_socket`] (one per node: the nodes share the host's
    /// filesystem).
    pub fn enable_attach_sockets(&mut self) {
        self.attach_sockets = true;
    }

    /// Extra arguments for node `i`'s daemon from its next start on (e.g.
    /// `--site edge --workloads docker`).
    pub fn set_daemon_args(&mut self, i: usize, args: &[&str]) {
        self.daemon_args
            .insert(i, args.iter().map(|a| a.to_string()).collect());
    }

    /// The directory node `i`'s daemon serves its WireGuard devices to `wg`
    /// in (`--wg-socket-dir`). One per node: the nodes share the host's
    /// filesystem, and an app's device has the same name on every node.
    /// `wg` reads only /var/run/wireguard, so run it with this directory
    /// mounted there (a private mount namespace).
    pub fn wg_socket_dir(&self, i: usize) -> PathBuf {
        self.run_path.join("wg").join(format!("n{i}"))
    }

    /// Node `i`'s attach socket (when enabled).
    pub fn attach_socket(&self, i: usize) -> PathBuf {
        self.run_path.join("attach").join(format!("n{i}.sock"))
    }

    /// Makes nodes `nodes` (1-based) a separate member `name` of a
    /// federation: its own state directory and operator
    /// ([`Cluster::start_member_operator`]); the other nodes stay with the
    /// cluster's own control plane.
    pub fn add_member(&mut self, name: &str, nodes: &[usize]) -> Result<()> {
        let root = self.run_path.join("members").join(name);
        let state = StateDir::new(root.join("state"));
        let manifests = root.join("manifests");
        std::fs::create_dir_all(state.root())?;
        std::fs::create_dir_all(&manifests)?;
        self.members.push(Member {
            name: name.into(),
            state,
            manifests,
            nodes: nodes.to_vec(),
            operator: None,
        });
        Ok(())
    }

    fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// The state directory node `i` reports to.
    pub fn state_of(&self, i: usize) -> &StateDir {
        self.members
            .iter()
            .find(|m| m.nodes.contains(&i))
            .map_or(&self.state, |m| &m.state)
    }

    /// A member's state directory.
    pub fn member_state(&self, name: &str) -> &StateDir {
        &self.member(name).state
    }

    /// Writes a manifest into a member's manifests directory.
    pub fn apply_member_manifest(&self, name: &str, file: &str, yaml: &str) -> Result<()> {
        write_atomic(&self.member(name).manifests.join(file), yaml.as_bytes())
    }

    /// Starts a member's operator.
    pub fn start_member_operator(&mut self, name: &str) -> Result<()> {
        let (manifests, state) = {
            let m = self.member(name);
            (m.manifests.clone(), m.state.root().to_path_buf())
        };
        let p = self.spawn_operator(&manifests, &state, &format!("operator-{name}"))?;
        let idx = self
            .members
            .iter()
            .position(|m| m.name == name)
            .expect("member");
        self.members[idx].operator = Some(p);
        Ok(())
    }

    /// Stops a member's operator (SIGTERM); its nodes' daemons go on.
    pub fn stop_member_operator(&mut self, name: &str) -> Result<()> {
        let idx = self
            .members
            .iter()
            .position(|m| m.name == name)
            .context("no such member")?;
        if let Some(mut p) = self.members[idx].operator.take() {
            p.stop(Duration::from_secs(5));
        }
        Ok(())
    }

    /// The directory hub's directory.
    pub fn hub_dir(&self) -> PathBuf {
        self.run_path.join("hub")
    }

    /// Starts `weft-operator hub` over [`Cluster::hub_dir`] with this
    /// MeshHub manifest.
    pub fn start_hub(&mut self, manifest: &str) -> Result<()> {
        let file = self.run_path.join("hub.yaml");
        write_atomic(&file, manifest.as_bytes())?;
        std::fs::create_dir_all(self.hub_dir())?;
        let args = vec![
            "hub".into(),
            "--dir".into(),
            self.hub_dir().to_string_lossy().into_owned(),
            "--manifest".into(),
            file.to_string_lossy().into_owned(),
            "--interval-ms".into(),
            self.interval_ms.to_string(),
        ];
        let p = Proc::spawn(
            "weft-operator hub",
            &bin("weft-operator")?,
            &args,
            &log_env(),
            None,
            &self.log_dir().join("hub.log"),
        )?;
        self.hub = Some(p);
        Ok(())
    }

    /// The hub process.
    pub fn hub(&mut self) -> Result<&mut Proc> {
        self.hub.as_mut().context("hub not started")
    }

    /// Starts `weft-operator standalone` in the host namespace.
    pub fn start_operator(&mut self) -> Result<()> {
        let (manifests, state) = (self.manifests.clone(), self.state.root().to_path_buf());
        let p = self.spawn_operator(&manifests, &state, "operator")?;
        self.operator = Some(p);
        Ok(())
    }

    fn spawn_operator(&self, manifests: &Path, state: &Path, log: &str) -> Result<Proc> {
        let args = vec![
            "standalone".into(),
            "--manifests".into(),
            manifests.to_string_lossy().into_owned(),
            "--state".into(),
            state.to_string_lossy().into_owned(),
            "--interval-ms".into(),
            self.interval_ms.to_string(),
            // Tests and the demo read fresh traffic figures from MeshApp
            // status; production keeps the once-a-minute default.
            "--traffic-refresh-seconds".into(),
            "1".into(),
        ];
        Proc::spawn(
            &format!("weft-{log}"),
            &bin("weft-operator")?,
            &args,
            &log_env(),
            None,
            &self.log_dir().join(format!("{log}.log")),
        )
    }

    /// Starts node `i`'s daemon inside the node's namespace.
    pub fn start_daemon(&mut self, i: usize) -> Result<()> {
        let node = self.node_name(i);
        let data = self.data_dir(i);
        std::fs::create_dir_all(&data)?;
        let args = vec![
            "standalone".into(),
            "--node".into(),
            node.clone(),
            "--state".into(),
            self.state_of(i).root().to_string_lossy().into_owned(),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
            "--advertise-address".into(),
            Sim::node_addr(i).to_string(),
            "--interval-ms".into(),
            self.interval_ms.to_string(),
            "--idle-interval-ms".into(),
            self.interval_ms.to_string(),
            // Each daemon runs in its node's namespace, so every node has its
            // own loopback and the same port serves them all.
            "--metrics-address".into(),
            DAEMON_METRICS_ADDRESS.into(),
            "--wg-socket-dir".into(),
            self.wg_socket_dir(i).to_string_lossy().into_owned(),
        ];
        let mut args = args;
        if self.attach_sockets {
            args.push("--attach-socket".into());
            args.push(self.attach_socket(i).to_string_lossy().into_owned());
        }
        args.extend(self.daemon_args.get(&i).cloned().unwrap_or_default());
        let p = Proc::spawn(
            &format!("weft-node-daemon {node}"),
            &bin("weft-node-daemon")?,
            &args,
            &log_env(),
            Some(&node),
            &self.log_dir().join(format!("daemon-n{i}.log")),
        )?;
        self.daemons[i - 1] = Some(p);
        if self.attach_sockets {
            // A runtime would retry on "try again later"; tests wait until the
            // daemon serves its socket instead.
            let sock = self.attach_socket(i);
            crate::wait_for(
                &format!("daemon {i} to serve {}", sock.display()),
                Duration::from_secs(15),
                Duration::from_millis(20),
                || Ok(sock.exists().then_some(())),
            )?;
        }
        Ok(())
    }

    /// GETs `path` (`/metrics`, `/healthz`, `/readyz`) from node `i`'s
    /// daemon, from inside the node's namespace; returns status line and body.
    pub fn daemon_http_get(&self, i: usize, path: &str) -> Result<(String, String)> {
        let (host, port) = DAEMON_METRICS_ADDRESS
            .split_once(':')
            .context("metrics address")?;
        let script = format!(
            "exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.1\\r\\nhost: x\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let out = crate::netns::exec_in(&self.node_name(i), "bash", &["-c", &script])?;
        anyhow::ensure!(
            out.status.success(),
            "GET {path} on node {i}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("GET {path} on node {i}: no HTTP response: {text:?}"))?;
        let status = head.lines().next().unwrap_or_default().to_string();
        Ok((status, body.to_string()))
    }

    /// Starts the operator and every daemon.
    pub fn start_all(&mut self) -> Result<()> {
        self.start_operator()?;
        for i in 1..=self.n_nodes() {
            self.start_daemon(i)?;
        }
        Ok(())
    }

    /// Node `i`'s daemon process.
    pub fn daemon(&mut self, i: usize) -> Result<&mut Proc> {
        self.daemons[i - 1].as_mut().context("daemon not started")
    }

    /// The operator process.
    pub fn operator(&mut self) -> Result<&mut Proc> {
        self.operator.as_mut().context("operator not started")
    }

    /// Fails (with the log tail) if the operator or a daemon died.
    pub fn check_alive(&mut self) -> Result<()> {
        let mut dead = Vec::new();
        let others = self
            .members
            .iter_mut()
            .filter_map(|m| m.operator.as_mut())
            .chain(self.hub.as_mut());
        for p in others {
            if !p.is_running() {
                dead.push(format!(
                    "{} exited ({:?}); log tail:\n{}",
                    p.name(),
                    p.exit_status(),
                    p.log_tail(20)
                ));
            }
        }
        if let Some(p) = self.operator.as_mut() {
            if !p.is_running() {
                dead.push(format!(
                    "{} exited ({:?}); log tail:\n{}",
                    p.name(),
                    p.exit_status(),
                    p.log_tail(20)
                ));
            }
        }
        for p in self.daemons.iter_mut().flatten() {
            if !p.is_running() {
                dead.push(format!(
                    "{} exited ({:?}); log tail:\n{}",
                    p.name(),
                    p.exit_status(),
                    p.log_tail(20)
                ));
            }
        }
        if !dead.is_empty() {
            bail!("{}", dead.join("\n"));
        }
        Ok(())
    }

    /// Kills node `i`'s daemon with SIGKILL (a crash: nothing is cleaned up).
    pub fn crash_daemon(&mut self, i: usize) -> Result<()> {
        self.daemon(i)?.kill_hard();
        Ok(())
    }

    /// Restarts node `i`'s daemon with the same arguments (stopping it first
    /// with SIGTERM if it runs).
    pub fn restart_daemon(&mut self, i: usize) -> Result<()> {
        let p = self.daemon(i)?;
        p.stop(Duration::from_secs(5));
        p.restart()
    }

    /// Creates a workload namespace `<prefix>-w-<name>` on node `i` and
    /// announces it.
    pub fn add_workload(
        &mut self,
        i: usize,
        name: &str,
        namespace: &str,
        labels: &[(&str, &str)],
    ) -> Result<&Workload> {
        let node = self.node_name(i);
        let w = Workload::create(
            self.state_of(i),
            &node,
            &format!("{}-w-{name}", self.prefix),
            name,
            namespace,
            labels,
        )?;
        self.workloads.push(w);
        Ok(self.workloads.last().expect("just pushed"))
    }

    /// A workload by name.
    pub fn workload(&self, name: &str) -> &Workload {
        self.workloads
            .iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no workload {name}"))
    }

    /// Withdraws and deletes a workload.
    pub fn remove_workload(&mut self, name: &str) {
        self.workloads.retain(|w| w.name != name);
    }

    /// Waits for a workload's address (failing early if a process died).
    pub fn wait_address(&mut self, name: &str, timeout: Duration) -> Result<std::net::Ipv4Addr> {
        self.check_alive()?;
        let r = self.workload(name).wait_address(timeout);
        if r.is_err() {
            self.check_alive()?;
        }
        r
    }

    /// Writes a manifest file (atomically) into the operator's manifests dir.
    pub fn apply_manifest(&self, file: &str, yaml: &str) -> Result<()> {
        write_atomic(&self.manifests.join(file), yaml.as_bytes())
    }

    /// Deletes a manifest file.
    pub fn delete_manifest(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.manifests.join(file))
            .with_context(|| format!("delete manifest {file}"))
    }

    /// Waits until MeshApp `ns/name` is Ready (failing early if a process died).
    pub fn wait_ready(&mut self, ns: &str, name: &str, timeout: Duration) -> Result<MeshAppStatus> {
        self.check_alive()?;
        let r = status::wait_for_ready(&self.state, ns, name, timeout);
        if r.is_err() {
            self.check_alive()?;
        }
        r
    }

    /// The app's stored status.
    pub fn app_status(&self, ns: &str, name: &str) -> Result<Option<MeshAppStatus>> {
        Ok(status::read_app_status(&self.state, ns, name)?.map(|s| s.status))
    }

    /// Node `i`'s reported status.
    pub fn node_status(&self, i: usize) -> Result<Option<MeshNodeStatus>> {
        status::read_node_status(self.state_of(i), &self.node_name(i))
    }

    /// `weft-operator get meshapps` output.
    pub fn get_meshapps(&self, wide: bool) -> Result<String> {
        status::get_meshapps(&self.state, wide)
    }

    /// App namespaces (`weft-<node>-*`) that exist for node `i`.
    pub fn weft_netns(&self, i: usize) -> Vec<String> {
        let p = format!("weft-{}-", self.node_name(i));
        list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&p))
            .collect()
    }

    /// Name of the namespace the operator assigned to app `ns/name` on node
    /// `i` (from meshnode.json: `spec.apps[].netns` where `app` matches).
    pub fn app_netns(&self, i: usize, app: &str) -> Result<Option<String>> {
        let Some(v) = status::read_meshnode(self.state_of(i), &self.node_name(i))? else {
            return Ok(None);
        };
        let apps = v
            .pointer("/spec/apps")
            .or_else(|| v.get("apps"))
            .and_then(|a| a.as_array());
        Ok(apps.and_then(|apps| {
            apps.iter()
                .find(|a| a.get("app").and_then(|x| x.as_str()) == Some(app))
                .and_then(|a| a.get("netns").and_then(|x| x.as_str()))
                .map(|s| s.rsplit('/').next().unwrap_or(s).to_string())
        }))
    }

    /// Listen ports the nodes report for their apps (for capture filters).
    pub fn listen_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = (1..=self.n_nodes())
            .filter_map(|i| self.node_status(i).ok().flatten())
            .flat_map(|s| s.apps.into_iter().map(|a| a.listen_port))
            .filter(|p| *p != 0)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Removes everything, in order, and reports what (if anything) is left.
    pub fn teardown(&mut self) -> TeardownReport {
        let mut rep = TeardownReport::default();
        if self.torn_down {
            return rep;
        }
        self.torn_down = true;
        // 1. Daemons stop (SIGTERM). One that stopped cleanly has removed
        // its WireGuard sockets itself (`cleanup` below only clears a dead
        // daemon's, so it must not hide a clean exit that forgot them).
        let dirs: Vec<PathBuf> = (1..=self.daemons.len())
            .map(|i| self.wg_socket_dir(i))
            .collect();
        for (p, dir) in self.daemons.iter_mut().zip(&dirs) {
            let Some(p) = p else { continue };
            let was_running = p.is_running();
            let (_, killed) = p.stop(Duration::from_secs(5));
            if killed {
                rep.warnings
                    .push(format!("{} ignored SIGTERM and was killed", p.name()));
            } else if was_running {
                let left = wireguard_sockets_in(dir);
                if !left.is_empty() {
                    rep.warnings.push(format!(
                        "{} exited but left WireGuard sockets: {left:?}",
                        p.name()
                    ));
                }
            }
        }
        // 2. Each node's daemon removes what it created (inside the node netns).
        if let (Ok(daemon_bin), Some(sim)) = (bin("weft-node-daemon"), self.sim.as_ref()) {
            for i in 1..=self.daemons.len() {
                if self.daemons[i - 1].is_none() {
                    continue;
                }
                let node = sim.node_netns(i).to_string();
                let args = vec![
                    "cleanup".into(),
                    "--node".into(),
                    node.clone(),
                    "--data-dir".into(),
                    self.data_dir(i).to_string_lossy().into_owned(),
                    "--wg-socket-dir".into(),
                    self.wg_socket_dir(i).to_string_lossy().into_owned(),
                ];
                let log = self.log_dir().join(format!("cleanup-n{i}.log"));
                match run_to_completion(
                    &daemon_bin,
                    &args,
                    Some(&node),
                    &log,
                    Duration::from_secs(20),
                ) {
                    Ok(st) if st.success() => {}
                    Ok(st) => rep.warnings.push(format!(
                        "weft-node-daemon cleanup --node {node} exited {st}"
                    )),
                    Err(e) => rep.warnings.push(format!("{e:#}")),
                }
            }
        }
        self.daemons.iter_mut().for_each(|d| *d = None);
        // 3. Operators and the hub.
        let others: Vec<Proc> = self
            .members
            .iter_mut()
            .filter_map(|m| m.operator.take())
            .chain(self.hub.take())
            .collect();
        for mut p in self.operator.take().into_iter().chain(others) {
            let (_, killed) = p.stop(Duration::from_secs(5));
            if killed {
                rep.warnings
                    .push(format!("{} ignored SIGTERM and was killed", p.name()));
            }
        }
        // 4. Workloads.
        self.workloads.clear();
        // 5. App namespaces the daemons failed to remove.
        for n in list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&format!("weft-{}-", self.prefix)))
        {
            rep.warnings.push(format!(
                "app netns {n} was still there after cleanup; deleting it"
            ));
            if let Err(e) = delete_netns(&n) {
                rep.warnings.push(format!("{e:#}"));
            }
        }
        // 6. Nodes and WAN.
        self.sim = None;
        rep.leftovers = find_leftovers(&self.prefix);
        rep.new_wg_sockets = wireguard_sockets()
            .difference(&self.wg_before)
            .cloned()
            .collect();
        for (i, dir) in dirs.iter().enumerate() {
            rep.new_wg_sockets.extend(
                wireguard_sockets_in(dir)
                    .into_iter()
                    .map(|s| format!("n{}/{s}", i + 1)),
            );
        }
        // 7. Run directory.
        let keep = self.keep_run_dir
            || std::thread::panicking()
            || !rep.clean()
            || !rep.warnings.is_empty();
        if let Some(d) = self.run_dir.take() {
            if keep {
                rep.kept_run_dir = Some(d.keep());
            }
        }
        rep
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let rep = self.teardown();
        for w in &rep.warnings {
            eprintln!("teardown warning: {w}");
        }
        if !rep.clean() {
            eprintln!(
                "teardown left behind: {}; new WireGuard sockets: {:?}",
                rep.leftovers, rep.new_wg_sockets
            );
        }
        if let Some(d) = rep.kept_run_dir {
            eprintln!("logs and state kept in {}", d.display());
        }
    }
}

fn log_env() -> Vec<(String, String)> {
    vec![(
        "RUST_LOG".into(),
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    )]
}
