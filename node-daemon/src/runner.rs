//! The daemon's main loop in standalone mode: poll spec and workloads, run a
//! reconcile pass, publish status when it changed (or as a heartbeat).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use weft_api::standalone::{NodeRegistration, StateDir};

use crate::dataplane::Dataplane;
use crate::error::Error;
use crate::reconcile::Reconciler;
use crate::standalone::FileTransport;
use crate::status;
use crate::workloads::{DirSource, WorkloadSource};

/// Settings of the standalone loop.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Node name.
    pub node: String,
    /// Site of the node.
    pub site: String,
    /// Address peers reach this node at.
    pub advertise_address: String,
    /// Shared state directory.
    pub state_dir: std::path::PathBuf,
    /// Private data directory (keys, caches).
    pub data_dir: std::path::PathBuf,
    /// Time between passes.
    pub interval: Duration,
    /// Time between status writes when nothing changed.
    pub heartbeat: Duration,
}

/// Current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs until `stop` is set.
pub fn run<D: Dataplane>(cfg: &RunConfig, dp: D, stop: Arc<AtomicBool>) -> Result<(), Error> {
    let state = StateDir::new(&cfg.state_dir);
    let mut transport = FileTransport::new(state.clone(), &cfg.node, &cfg.data_dir);
    transport.register(&NodeRegistration {
        name: cfg.node.clone(),
        site: cfg.site.clone(),
        address: cfg.advertise_address.clone(),
        labels: Default::default(),
    })?;
    let mut source = DirSource::new(state.workloads_dir(&cfg.node));
    let mut rec = Reconciler::new(&cfg.node, &cfg.advertise_address, dp, &cfg.data_dir)?;
    let mut last_status = None;
    let mut last_write = Instant::now();
    let mut last_errors: Vec<String> = Vec::new();
    tracing::info!(node = %cfg.node, address = %cfg.advertise_address, "node daemon running (standalone)");
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let spec = transport.read_spec();
        let local = source.list();
        let report = rec.pass(spec.as_ref(), &local, now());
        if report.errors != last_errors {
            for e in report.errors.iter().filter(|e| !last_errors.contains(e)) {
                tracing::warn!(node = %cfg.node, error = %e, "reconcile problem");
            }
            last_errors = report.errors.clone();
        }
        if report.writes > 0 {
            tracing::info!(node = %cfg.node, writes = report.writes, "data plane updated");
        }
        let due = last_write.elapsed() >= cfg.heartbeat;
        if due
            || last_status
                .as_ref()
                .is_none_or(|old| status::changed(old, &report.status))
        {
            match transport.write_status(&report.status) {
                Ok(()) => {
                    last_write = Instant::now();
                    last_status = Some(report.status);
                }
                Err(e) => tracing::warn!(error = %e, "cannot write status"),
            }
        }
        let elapsed = started.elapsed();
        let mut left = cfg.interval.saturating_sub(elapsed);
        while left > Duration::ZERO && !stop.load(Ordering::Relaxed) {
            let step = left.min(Duration::from_millis(50));
            std::thread::sleep(step);
            left = left.saturating_sub(step);
        }
    }
    tracing::info!(node = %cfg.node, "node daemon stopping");
    Ok(())
}
