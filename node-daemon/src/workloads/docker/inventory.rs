//! The labelled containers the engine last told us about (pure). The
//! watcher fills it from a full listing (catch-up, resync) and from events;
//! the workload source reads it on every pass.

use std::collections::BTreeMap;

use weft_api::standalone::LocalWorkload;

use super::api::{self, Change, Container};

/// Identity of a network namespace (device and inode of its nsfs file):
/// a pid reused by another process has another one.
pub type NetnsId = (u64, u64);

/// How the engine connection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Not reached yet.
    Starting,
    /// Listed and watching events.
    Watching,
    /// Unreachable or failing; the message says why.
    Unreachable(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    workload: LocalWorkload,
    netns_id: NetnsId,
}

/// Running labelled containers by id.
#[derive(Debug)]
pub struct Inventory {
    entries: BTreeMap<String, Entry>,
    /// Containers that carry the app label but cannot be workloads, by id
    /// (each reason is logged once).
    rejected: BTreeMap<String, String>,
    engine: Engine,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory {
            entries: BTreeMap::new(),
            rejected: BTreeMap::new(),
            engine: Engine::Starting,
        }
    }
}

impl Inventory {
    /// Replaces everything with a complete listing (catch-up after a
    /// (re)connect): what is not listed any more is gone.
    pub fn resync(&mut self, containers: Vec<(Container, Option<NetnsId>)>) {
        let listed: std::collections::BTreeSet<String> =
            containers.iter().map(|(c, _)| c.id.clone()).collect();
        for (c, id) in containers {
            self.upsert(&c, id);
        }
        for (id, e) in &self.entries {
            if !listed.contains(id) {
                tracing::info!(container = %api::short(id), workload = %crate::workloads::key(&e.workload), "container no longer running; detaching");
            }
        }
        self.entries.retain(|id, _| listed.contains(id));
        self.rejected.retain(|id, _| listed.contains(id));
        self.engine = Engine::Watching;
    }

    /// Applies one event; `lookup` inspects a container (`Ok(None)`: it no
    /// longer exists).
    pub fn apply(
        &mut self,
        change: &Change,
        lookup: impl FnOnce(&str) -> Result<Option<(Container, Option<NetnsId>)>, String>,
    ) -> Result<(), String> {
        match change {
            Change::Gone(id) => {
                if let Some(e) = self.entries.remove(id) {
                    tracing::info!(container = %api::short(id), workload = %crate::workloads::key(&e.workload), "container stopped; detaching");
                }
                self.rejected.remove(id);
            }
            Change::Refresh(id) => match lookup(id)? {
                Some((c, netns)) => self.upsert(&c, netns),
                None => {
                    self.entries.remove(id);
                    self.rejected.remove(id);
                }
            },
        }
        Ok(())
    }

    /// Records what `c` is now (a workload, or refused: each reason is
    /// logged once).
    fn upsert(&mut self, c: &Container, netns_id: Option<NetnsId>) {
        let known = self.entries.remove(&c.id);
        let refused = self.rejected.remove(&c.id);
        let accepted = match api::to_workload(c) {
            None => return,
            Some(Ok(w)) => match netns_id {
                Some(id) => Ok((w, id)),
                None => Err(format!(
                    "container {} ({}): its network namespace {} is not visible here \
                     (the daemon must share the host's pid namespace)",
                    weft_api::validation::printable(&c.name, 80),
                    api::short(&c.id),
                    w.netns
                )),
            },
            Some(Err(why)) => Err(why),
        };
        match accepted {
            Ok((workload, netns_id)) => {
                if known.as_ref().is_none_or(|e| e.workload != workload) {
                    tracing::info!(container = %api::short(&c.id), workload = %crate::workloads::key(&workload), netns = %workload.netns, "labelled container running");
                }
                self.entries
                    .insert(c.id.clone(), Entry { workload, netns_id });
            }
            Err(why) => {
                if refused.as_ref() != Some(&why) {
                    tracing::warn!(container = %api::short(&c.id), "{why}; not attached");
                }
                self.rejected.insert(c.id.clone(), why);
            }
        }
    }

    /// Records that the engine cannot be reached (the entries stay: running
    /// containers outlive an engine restart; dead ones fail the netns check).
    pub fn set_unreachable(&mut self, why: String) {
        self.engine = Engine::Unreachable(why);
    }

    /// The connection state.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Workloads whose namespace is still the one recorded (`current` reads
    /// a netns id from a path; `None`: the process is gone), sorted by
    /// `namespace/name`.
    pub fn workloads(&self, current: impl Fn(&str) -> Option<NetnsId>) -> Vec<LocalWorkload> {
        let mut out: Vec<LocalWorkload> = self
            .entries
            .values()
            .filter(|e| current(&e.workload.netns) == Some(e.netns_id))
            .map(|e| e.workload.clone())
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        out
    }

    /// Labelled containers that cannot be attached, with the reason.
    pub fn rejected(&self) -> Vec<String> {
        self.rejected.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::labels::APP_LABEL;

    fn c(id: &str, app: &str, pid: u32) -> Container {
        Container {
            id: id.into(),
            name: format!("c-{id}"),
            labels: [(APP_LABEL.to_string(), app.to_string())].into(),
            running: pid != 0,
            pid,
            network_mode: "none".into(),
        }
    }

    fn alive(pids: &'static [(u32, u64)]) -> impl Fn(&str) -> Option<NetnsId> {
        move |path: &str| {
            pids.iter()
                .find(|(p, _)| api::netns_path(*p) == path)
                .map(|(_, ino)| (1, *ino))
        }
    }

    fn names(v: &[LocalWorkload]) -> Vec<&str> {
        v.iter().map(|w| w.name.as_str()).collect()
    }

    #[test]
    fn resync_replaces_and_events_update() {
        let mut inv = Inventory::default();
        assert_eq!(inv.engine(), &Engine::Starting);
        inv.resync(vec![
            (c("a", "web", 10), Some((1, 100))),
            (c("b", "db", 11), Some((1, 101))),
            (c("h", "web", 12), None),
        ]);
        // h: host network, rejected with a reason.
        let mut host = c("h", "web", 12);
        host.network_mode = "host".into();
        inv.apply(&Change::Refresh("h".into()), |_| Ok(Some((host, None))))
            .unwrap();
        assert_eq!(inv.engine(), &Engine::Watching);
        let live = alive(&[(10, 100), (11, 101), (12, 102), (13, 103)]);
        assert_eq!(names(&inv.workloads(&live)), vec!["c-a", "c-b"]);
        assert_eq!(inv.rejected().len(), 1);
        assert!(inv.rejected()[0].contains("NetworkMode"));
        // Running, but its pid is not visible from the daemon.
        inv.apply(&Change::Refresh("p".into()), |id| {
            Ok(Some((c(id, "web", 14), None)))
        })
        .unwrap();
        assert_eq!(inv.rejected().len(), 2);
        assert!(inv.rejected()[1].contains("/proc/14/ns/net is not visible"));
        inv.apply(&Change::Gone("p".into()), |_| unreachable!())
            .unwrap();
        assert_eq!(inv.rejected().len(), 1);

        inv.apply(&Change::Gone("a".into()), |_| panic!("no lookup for Gone"))
            .unwrap();
        inv.apply(&Change::Refresh("n".into()), |id| {
            Ok(Some((c(id, "web", 13), Some((1, 103)))))
        })
        .unwrap();
        assert_eq!(names(&inv.workloads(&live)), vec!["c-b", "c-n"]);
        // Inspected after it died already: removed.
        inv.apply(&Change::Refresh("b".into()), |id| {
            Ok(Some((c(id, "db", 0), None)))
        })
        .unwrap();
        inv.apply(&Change::Refresh("n".into()), |_| Ok(None))
            .unwrap();
        assert!(inv.workloads(&live).is_empty());
        assert!(inv
            .apply(&Change::Refresh("x".into()), |_| Err("engine gone".into()))
            .is_err());

        // A resync forgets what is no longer listed.
        inv.resync(vec![(c("a", "web", 10), Some((1, 100)))]);
        inv.set_unreachable("connection refused".into());
        assert_eq!(
            names(&inv.workloads(&live)),
            vec!["c-a"],
            "kept while the engine is away"
        );
        assert_eq!(
            inv.engine(),
            &Engine::Unreachable("connection refused".into())
        );
        inv.resync(vec![]);
        assert!(inv.workloads(&live).is_empty());
    }

    #[test]
    fn a_dead_or_reused_pid_is_not_a_workload() {
        let mut inv = Inventory::default();
        inv.resync(vec![(c("a", "web", 10), Some((1, 100)))]);
        assert_eq!(inv.workloads(alive(&[(10, 100)])).len(), 1);
        assert!(inv.workloads(alive(&[])).is_empty(), "process gone");
        assert!(inv.workloads(alive(&[(10, 999)])).is_empty(), "pid reused");
    }
}
