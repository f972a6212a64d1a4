//! Standalone transport: the state directory stands in for the API server.
//! The daemon registers its node, reads its MeshNode, and writes its status.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::PathBuf;

use weft_api::standalone::{LocalWorkload, NodeRegistration, StateDir};
use weft_api::MeshNodeStatus;
use weft_api::{AppSelector, MeshNode};

use crate::error::Error;
use crate::runner::Transport;
use crate::storage;
use crate::workloads::{Announcements, DirSource};

/// File-based exchange with the standalone operator.
#[derive(Debug)]
pub struct FileTransport {
    state: StateDir,
    node: String,
    /// Copy of the last spec that parsed, so a torn or corrupt file (or a
    /// restart) never leaves the daemon without desired state.
    cache_path: PathBuf,
    last_good: Option<MeshNode>,
    last_error: Option<String>,
}

impl FileTransport {
    /// Opens the transport; `data_dir` holds the cached spec.
    pub fn new(state: StateDir, node: &str, data_dir: &std::path::Path) -> Self {
        let cache_path = data_dir.join("last-meshnode.json");
        let last_good = storage::read_json(&cache_path).ok().flatten();
        FileTransport {
            state,
            node: node.into(),
            cache_path,
            last_good,
            last_error: None,
        }
    }

    /// Announces the node (like a Node object appearing).
    pub fn register(&self, reg: &NodeRegistration) -> Result<(), Error> {
        storage::write_json(&self.state.registration(&self.node), reg, 0o644)
    }

    /// The desired MeshNode: the file if it parses, else the last good one.
    pub fn read_spec(&mut self) -> Option<MeshNode> {
        match storage::read_json::<MeshNode>(&self.state.meshnode(&self.node)) {
            Ok(Some(mn)) => {
                self.last_error = None;
                if self
                    .last_good
                    .as_ref()
                    .map(|g| (&g.metadata.generation, &g.spec))
                    != Some((&mn.metadata.generation, &mn.spec))
                {
                    if let Err(e) = storage::write_json_private(&self.cache_path, &mn) {
                        tracing::warn!(error = %e, "cannot cache MeshNode spec");
                    }
                    self.last_good = Some(mn);
                }
            }
            Ok(None) => {}
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, "unreadable MeshNode spec; keeping the last good one");
                    self.last_error = Some(msg);
                }
            }
        }
        self.last_good.clone()
    }

    /// Publishes the status (the status subresource).
    pub fn write_status(&self, status: &MeshNodeStatus) -> Result<(), Error> {
        storage::write_json(&self.state.node_status(&self.node), status, 0o644)
    }
}

impl Transport for FileTransport {
    fn mode(&self) -> &'static str {
        "standalone"
    }
    fn read_spec(&mut self) -> Option<MeshNode> {
        FileTransport::read_spec(self)
    }
    fn write_status(&mut self, status: &MeshNodeStatus) -> anyhow::Result<()> {
        Ok(FileTransport::write_status(self, status)?)
    }
}

/// The standalone daemon's announcements: workload files from its
/// workloads directory, app selectors from the operator's per-namespace
/// selector files (only those of its workloads' namespaces are read).
pub struct StateAnnouncements {
    workloads: DirSource,
    state: StateDir,
    /// The last selector file problem logged (logged once, not every pass).
    last_error: RefCell<Option<String>>,
}

impl StateAnnouncements {
    /// Announcements of `node` in `state`.
    pub fn new(state: StateDir, node: &str) -> Self {
        StateAnnouncements {
            workloads: DirSource::new(state.workloads_dir(node)),
            state,
            last_error: RefCell::new(None),
        }
    }

    fn note(&self, problem: Option<String>) {
        let mut last = self.last_error.borrow_mut();
        if *last != problem {
            if let Some(p) = &problem {
                tracing::warn!(error = %p, "cannot read the apps' selectors; new workloads wait");
            }
            *last = problem;
        }
    }
}

impl Announcements for StateAnnouncements {
    fn scan(&self) -> Vec<LocalWorkload> {
        self.workloads.scan()
    }

    /// A missing file means no app in that namespace (the operator removes
    /// it when the last one goes); an unreadable one means "cannot tell".
    fn selectors(&self, site: &str, namespaces: &BTreeSet<String>) -> Option<Vec<AppSelector>> {
        if weft_api::validation::dns_subdomain(site).is_err() {
            self.note(Some(format!("site {site:?} is not a DNS subdomain")));
            return None;
        }
        let mut out = Vec::new();
        for ns in namespaces {
            // Not a DNS label: no app can live in such a namespace.
            let Some(path) = self.state.selectors_file(site, ns) else {
                continue;
            };
            match storage::read_json::<Vec<AppSelector>>(&path) {
                Ok(Some(v)) => out.extend(v),
                Ok(None) => {}
                Err(e) => {
                    self.note(Some(e.to_string()));
                    return None;
                }
            }
        }
        self.note(None);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn apps(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn selectors_come_from_the_files_of_the_namespaces_asked() {
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::new(d.path());
        let write = |site: &str, namespace: &str, body: &[u8]| {
            let p = state.selectors_file(site, namespace).unwrap();
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        };
        let sel = |app: &str| AppSelector {
            app: app.into(),
            selector: Default::default(),
        };
        write(
            "local",
            "demo",
            &serde_json::to_vec(&[sel("demo/db"), sel("demo/web")]).unwrap(),
        );
        write(
            "local",
            "ops",
            &serde_json::to_vec(&[sel("ops/api")]).unwrap(),
        );
        write(
            "edge",
            "demo",
            &serde_json::to_vec(&[sel("demo/far")]).unwrap(),
        );
        let a = StateAnnouncements::new(state.clone(), "n1");
        let names = |site: &str, namespaces: &[&str]| {
            a.selectors(site, &ns(namespaces))
                .map(|v| v.into_iter().map(|s| s.app).collect::<Vec<_>>())
        };
        assert_eq!(
            names("local", &["demo"]),
            Some(apps(&["demo/db", "demo/web"]))
        );
        assert_eq!(names("edge", &["demo", "ops"]), Some(apps(&["demo/far"])));
        // No file: no app there, known at once. Nor in a namespace that
        // cannot exist.
        assert_eq!(
            names("local", &["nothing-here", "Not.A.Label"]),
            Some(vec![])
        );
        // Unreadable: cannot tell.
        write("local", "broken", b"{not json");
        assert_eq!(names("local", &["demo", "broken"]), None);
        assert_eq!(names("../x", &["demo"]), None);
    }
}
