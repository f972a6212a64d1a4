//! Where the daemon learns which workloads run on its node. Kubernetes (CNI)
//! and Docker sources come later; the standalone source reads announcement
//! files dropped into the node's workloads directory.

use std::path::PathBuf;

use weft_api::standalone::LocalWorkload;

/// A source of the node's current workloads.
pub trait WorkloadSource: Send {
    /// Current workloads, sorted by `namespace/name`. Unreadable entries are
    /// reported through `tracing` and skipped.
    fn list(&mut self) -> Vec<LocalWorkload>;
}

/// Reads `*.json` [`LocalWorkload`] files from a directory.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
}

impl DirSource {
    /// Watches `dir` (created if missing).
    pub fn new(dir: PathBuf) -> Self {
        let _ = std::fs::create_dir_all(&dir);
        DirSource { dir }
    }
}

impl WorkloadSource for DirSource {
    fn list(&mut self) -> Vec<LocalWorkload> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
                serde_json::from_slice::<LocalWorkload>(&b).map_err(|e| e.to_string())
            }) {
                Ok(w) if w.name.is_empty() || w.netns.is_empty() => {
                    tracing::warn!(file = %p.display(), "workload announcement needs non-empty name and netns; ignored")
                }
                Ok(w) => out.push(w),
                Err(err) => {
                    tracing::warn!(file = %p.display(), %err, "unreadable workload announcement; ignored")
                }
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        out
    }
}

/// `namespace/name` of a workload.
pub fn key(w: &LocalWorkload) -> String {
    format!("{}/{}", w.namespace, w.name)
}
