//! The standalone operator's own loop ([`Standalone::tick`]) over a state
//! directory of fake node registrations and daemon reports, as `weft-operator
//! standalone` runs it each pass: every file read, every write fsynced.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use k8s_openapi::jiff::Timestamp;
use weft_api::standalone::{NodeRegistration, StateDir};
use weft_api::MeshNode;
use weft_operator::standalone::{Standalone, StandaloneConfig, TickReport};

use super::{emit, keys, median, node_address, node_name, Cluster};

/// Settings of a standalone run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Passes with nothing new to time.
    pub converged_passes: usize,
    /// MeshApps per manifest file (1: one file per app, as in a GitOps repo).
    pub apps_per_file: usize,
}

struct Env {
    cluster: Cluster,
    manifests: PathBuf,
    dir: StateDir,
    heartbeat: String,
}

impl Env {
    /// What a node's daemon would write: its registration once, its report
    /// whenever something changed. Plain writes: nothing reads them meanwhile.
    fn write_node(&self, n: usize, register: bool) -> Result<()> {
        let name = node_name(n);
        if register {
            fs::create_dir_all(self.dir.node_dir(&name))?;
            let reg = NodeRegistration {
                name: name.clone(),
                site: String::new(),
                address: node_address(n),
                labels: Default::default(),
            };
            fs::write(self.dir.registration(&name), serde_json::to_vec(&reg)?)?;
        }
        let status = self.cluster.node_status(n, &self.heartbeat);
        fs::write(self.dir.node_status(&name), serde_json::to_vec(&status)?)
            .with_context(|| format!("writing the status of {name}"))
    }

    fn write_apps(&self, file: &str, apps: impl Iterator<Item = usize>) -> Result<()> {
        let docs: Vec<String> = apps.map(|j| self.cluster.app_manifest(j)).collect();
        fs::write(self.manifests.join(file), docs.join("---\n"))
            .with_context(|| format!("writing manifest {file}"))
    }

    /// Largest MeshNode as stored (compact JSON), over every node.
    fn largest_meshnode(&self) -> Result<usize> {
        let mut largest = 0;
        for n in 0..self.cluster.size.nodes {
            let path = self.dir.meshnode(&node_name(n));
            let Ok(body) = fs::read(&path) else { continue };
            let obj: MeshNode = serde_json::from_slice(&body)
                .with_context(|| format!("parsing {}", path.display()))?;
            largest = largest.max(serde_json::to_vec(&obj)?.len());
        }
        Ok(largest)
    }
}

fn timed_tick(op: &mut Standalone, now: Timestamp) -> Result<(f64, TickReport)> {
    let started = Instant::now();
    let report = op.tick(now)?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(kind) = &report.planned {
        let phases: Vec<String> = report
            .phases
            .iter()
            .map(|(name, d)| format!("{name} {:.1}", d.as_secs_f64() * 1e3))
            .collect();
        eprintln!("  pass planned: {kind:?}; ms: {}", phases.join(", "));
    }
    Ok((secs, report))
}

fn others(r: &TickReport) -> f64 {
    (r.status_writes.len() + r.status_deletes.len()) as f64
}

/// Generates the cluster under `work` and measures every step.
pub fn run(cluster: Cluster, work: &Path, opts: &Options) -> Result<()> {
    let started = Instant::now();
    // One timestamp for every pass and heartbeat: no node goes stale, no
    // condition time moves, so only real changes can cause writes.
    let now = Timestamp::now();
    let env = Env {
        manifests: work.join("manifests"),
        dir: StateDir::new(work.join("state")),
        heartbeat: now.to_string(),
        cluster,
    };
    fs::create_dir_all(&env.manifests)?;
    fs::create_dir_all(env.dir.nodes_dir())?;
    let per_file = opts.apps_per_file.max(1);
    for first in (0..env.cluster.apps).step_by(per_file) {
        let last = (first + per_file).min(env.cluster.apps);
        env.write_apps(&format!("apps-{first:05}.yaml"), first..last)?;
    }
    for n in 0..env.cluster.size.nodes {
        env.write_node(n, true)?;
    }
    emit(keys::SETUP_S, started.elapsed().as_secs_f64());

    let mut cfg = StandaloneConfig::new(&env.manifests, env.dir.root());
    cfg.planner = env.cluster.planner_config();
    let mut op = Standalone::new(cfg.clone());
    let (secs, r) = timed_tick(&mut op, now)?;
    emit(keys::FULL_S, secs);
    emit(keys::FULL_MESHNODES, r.meshnode_writes.len() as f64);
    emit(keys::FULL_OTHER, others(&r));
    emit(keys::PLAN_ERRORS, r.errors.len() as f64);
    if let Some(e) = r.errors.first() {
        eprintln!("first plan error: {e}");
    }
    drop(r);
    emit(keys::LARGEST_MESHNODE, env.largest_meshnode()? as f64);

    converged(&mut op, now, opts.converged_passes)?;

    let mut env = env;
    let j = env.cluster.add_app();
    env.write_apps("apps-added.yaml", std::iter::once(j))?;
    for n in env.cluster.nodes_of(j) {
        env.write_node(n, false)?;
    }
    let (secs, r) = timed_tick(&mut op, now)?;
    emit(keys::ADD_S, secs);
    emit(keys::ADD_MESHNODES, r.meshnode_writes.len() as f64);

    env.cluster.report_keys(j);
    for n in env.cluster.nodes_of(j) {
        env.write_node(n, false)?;
    }
    let (secs, r) = timed_tick(&mut op, now)?;
    emit(keys::KEYS_S, secs);
    emit(keys::KEYS_MESHNODES, r.meshnode_writes.len() as f64);

    let (_, from, to) = env.cluster.move_workload();
    env.write_node(from, false)?;
    env.write_node(to, false)?;
    let (secs, r) = timed_tick(&mut op, now)?;
    emit(keys::MOVE_S, secs);
    emit(keys::MOVE_MESHNODES, r.meshnode_writes.len() as f64);

    // A new operator over the same directories: it must find everything
    // in place and rewrite nothing.
    drop(op);
    let mut op = Standalone::new(cfg);
    let (secs, r) = timed_tick(&mut op, now)?;
    emit(keys::RESTART_S, secs);
    emit(keys::RESTART_MESHNODES, r.meshnode_writes.len() as f64);
    Ok(())
}

fn converged(op: &mut Standalone, now: Timestamp, passes: usize) -> Result<()> {
    let (mut times, mut meshnodes, mut other) = (Vec::new(), 0.0f64, 0.0f64);
    for _ in 0..passes.max(1) {
        let (secs, r) = timed_tick(op, now)?;
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
    Ok(())
}
