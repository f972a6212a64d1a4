//! Workloads announced as files: a directory of `*.json` [`LocalWorkload`]s
//! ([`DirSource`]), and the standalone daemon's announcements, which add the
//! apps' selectors from the operator's files ([`StateAnnouncements`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use weft_api::standalone::{LocalWorkload, StateDir};
use weft_api::AppSelector;

use super::{key, Announcements, WorkloadSource};
use crate::storage;

/// A bare directory of announcements knows nothing of the apps: an announced
/// workload waits for its MeshNode (see
/// [`StateAnnouncements`] for the standalone daemon's).
impl Announcements for DirSource {
    fn scan(&self) -> Vec<LocalWorkload> {
        DirSource::scan(self)
    }

    fn selectors(&self, _site: &str, _namespaces: &BTreeSet<String>) -> Option<Vec<AppSelector>> {
        None
    }
}

/// Reads `*.json` [`LocalWorkload`] files from a directory.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    /// Each file as last parsed, with what identified its content then: a
    /// file is read and parsed again only when it changed (every pass
    /// reads the directory; 200 files parsed per pass showed in the
    /// daemon's CPU at rest), and a bad one is logged once, not per pass.
    parsed: RefCell<BTreeMap<PathBuf, (Stamp, Option<LocalWorkload>)>>,
}

/// Inode, size, modification and change time: a write in place or a
/// rename over the file changes at least one.
type Stamp = (u64, u64, i64, i64, i64, i64);

fn stamp(md: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (
        md.ino(),
        md.len(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
    )
}

impl DirSource {
    /// Watches `dir` (created if missing).
    pub fn new(dir: PathBuf) -> Self {
        let _ = std::fs::create_dir_all(&dir);
        DirSource {
            dir,
            parsed: RefCell::new(BTreeMap::new()),
        }
    }
}

/// Reads and parses one announcement file (logging why it is ignored).
fn parse(p: &std::path::Path) -> Option<LocalWorkload> {
    match std::fs::read(p)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<LocalWorkload>(&b).map_err(|e| e.to_string()))
    {
        Ok(w) if w.name.is_empty() => {
            tracing::warn!(file = %p.display(), "workload announcement needs a non-empty name; ignored");
            None
        }
        Ok(w) => Some(w),
        Err(err) => {
            tracing::warn!(file = %p.display(), %err, "unreadable workload announcement; ignored");
            None
        }
    }
}

impl DirSource {
    /// Every readable announcement with a name, sorted and deduplicated by
    /// `namespace/name`; the netns may be empty ("the runtime will tell").
    pub fn scan(&self) -> Vec<LocalWorkload> {
        let mut out = Vec::new();
        let mut parsed = self.parsed.borrow_mut();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            parsed.clear();
            return out;
        };
        let mut seen = BTreeSet::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let Ok(md) = std::fs::metadata(&p) else {
                continue; // gone since the listing
            };
            let st = stamp(&md);
            let w = match parsed.get(&p) {
                Some((s, w)) if *s == st => w.clone(),
                _ => {
                    let w = parse(&p);
                    parsed.insert(p.clone(), (st, w.clone()));
                    w
                }
            };
            out.extend(w);
            seen.insert(p);
        }
        parsed.retain(|p, _| seen.contains(p));
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        out
    }
}

impl WorkloadSource for DirSource {
    fn list(&mut self) -> Vec<LocalWorkload> {
        let mut out = self.scan();
        out.retain(|w| {
            if w.netns.is_empty() {
                tracing::warn!(workload = %key(w), "workload announcement needs a netns (no attach socket to learn it from); ignored");
            }
            !w.netns.is_empty()
        });
        out
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

    #[test]
    fn a_changed_announcement_is_read_again_and_a_removed_one_goes() {
        let d = tempfile::tempdir().unwrap();
        let src = DirSource::new(d.path().to_path_buf());
        let write = |name: &str, label: &str| {
            let w = LocalWorkload {
                name: name.into(),
                namespace: "demo".into(),
                labels: [("tier".to_string(), label.to_string())].into(),
                netns: "/run/netns/x".into(),
            };
            std::fs::write(
                d.path().join(format!("{name}.json")),
                serde_json::to_vec(&w).unwrap(),
            )
            .unwrap();
        };
        let tiers = || {
            src.scan()
                .iter()
                .map(|w| format!("{}={}", w.name, w.labels["tier"]))
                .collect::<Vec<_>>()
        };
        write("a", "web");
        write("b", "api");
        assert_eq!(tiers(), ["a=web", "b=api"]);
        // Rewritten in place with content of the same size: still seen.
        write("a", "db1");
        assert_eq!(tiers(), ["a=db1", "b=api"]);
        std::fs::remove_file(d.path().join("b.json")).unwrap();
        std::fs::write(d.path().join("c.json"), b"{not json").unwrap();
        assert_eq!(tiers(), ["a=db1"]);
        assert_eq!(
            src.parsed.borrow().len(),
            2,
            "b forgotten, c remembered as bad"
        );
    }

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
