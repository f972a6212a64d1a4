//! Workloads a container runtime attaches over the attach socket: the
//! metadata from [`Announcements`], the netns from the runtime's ADD.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_api::attach::WorkloadRef;
use weft_api::standalone::LocalWorkload;
use weft_api::{MeshNode, MeshNodeStatus};

use super::attach::publish::{self, LinkReader};
use super::attach::{registry, Shared};
use super::{key, Announcements, SandboxChanges, WorkloadSource};

/// Announcements merged with what the runtime registered over the attach socket.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Workloads to attach (each with its netns).
    pub attach: Vec<LocalWorkload>,
    /// Announced with an empty netns and not registered yet: status only.
    pub pending: Vec<LocalWorkload>,
    /// `namespace/name` → labels of every announcement (attachable or not).
    pub announced: BTreeMap<String, BTreeMap<String, String>>,
}

/// Merges announcements with the attach registry: an announcement with an
/// empty netns takes the netns of the registry entry with its
/// `namespace/name`; without one it is pending. An announcement that names
/// its netns is used as it is.
pub fn merge(announced: Vec<LocalWorkload>, registered: &[WorkloadRef]) -> Merged {
    let mut m = Merged::default();
    for mut w in announced {
        let k = key(&w);
        m.announced.insert(k.clone(), w.labels.clone());
        if w.netns.is_empty() {
            match registered
                .iter()
                .find(|r| registry::key(r) == k && !r.netns.is_empty())
            {
                Some(r) => w.netns = r.netns.clone(),
                None => {
                    m.pending.push(w);
                    continue;
                }
            }
        }
        m.attach.push(w);
    }
    m
}

/// Workloads a runtime attaches over the attach socket: metadata from
/// [`Announcements`] (files in standalone mode, the Pod watch in Kubernetes
/// mode), the netns from the runtime's ADD. After each pass it publishes one
/// outcome per registered workload.
pub struct RuntimeSource {
    dir: Box<dyn Announcements>,
    shared: Arc<Shared>,
    /// The registry as of the last `list` (outcomes must describe the pass
    /// that saw exactly these registrations).
    registered: Vec<WorkloadRef>,
    merged: Merged,
    sandboxes: SandboxChanges,
    read_link: LinkReader,
    /// When each announcement was first seen (see [`SETTLE`]).
    first_seen: BTreeMap<String, Instant>,
    /// Whether attachments name the app's resolver.
    dns: bool,
}

/// How long an announcement must be known before it may pass through as
/// belonging to no app: the standalone operator's selector files may have
/// been written before it saw an app created together with the workload,
/// and the daemon's own MeshApp watch may lag behind its pod watch.
pub const SETTLE: Duration = Duration::from_secs(3);

impl RuntimeSource {
    /// Announcements from `dir`, netns from `shared`.
    pub fn new(dir: impl Announcements + 'static, shared: Arc<Shared>) -> Self {
        Self::with_link_reader(dir, shared, Box::new(publish::read_workload_link))
    }

    /// With an injected reader of the workload's `weft0` (tests).
    pub fn with_link_reader(
        dir: impl Announcements + 'static,
        shared: Arc<Shared>,
        read_link: LinkReader,
    ) -> Self {
        RuntimeSource {
            dir: Box::new(dir),
            shared,
            registered: Vec::new(),
            merged: Merged::default(),
            sandboxes: SandboxChanges::default(),
            read_link,
            first_seen: BTreeMap::new(),
            dns: false,
        }
    }

    /// Whether the app netns have their resolver: attachments then name it
    /// (the CNI result's `dns`).
    pub fn with_dns(mut self, on: bool) -> Self {
        self.dns = on;
        self
    }
}

impl WorkloadSource for RuntimeSource {
    fn list(&mut self) -> Vec<LocalWorkload> {
        self.registered = self.shared.registered();
        self.merged = merge(self.dir.scan(), &self.registered);
        let now = Instant::now();
        self.first_seen
            .retain(|k, _| self.merged.announced.contains_key(k));
        for k in self.merged.announced.keys() {
            self.first_seen.entry(k.clone()).or_insert(now);
        }
        self.sandboxes.filter(self.merged.attach.clone())
    }

    fn pending(&self) -> Vec<LocalWorkload> {
        self.merged.pending.clone()
    }

    /// Only workloads the spec does not attach yet are matched, so a node
    /// at rest (every workload placed) matches nothing.
    fn claimed_apps(&self, site: &str, placed: &BTreeSet<&str>) -> Option<BTreeSet<String>> {
        let unplaced: Vec<(&String, &BTreeMap<String, String>)> = self
            .merged
            .announced
            .iter()
            .filter(|(k, _)| !placed.contains(k.as_str()))
            .collect();
        if unplaced.is_empty() {
            return Some(BTreeSet::new());
        }
        let namespaces: BTreeSet<String> = unplaced
            .iter()
            .filter_map(|(k, _)| k.split_once('/').map(|(ns, _)| ns.to_string()))
            .collect();
        let selectors = self.dir.selectors(site, &namespaces)?;
        Some(
            selectors
                .into_iter()
                .filter(|sel| {
                    unplaced.iter().any(|(k, labels)| {
                        let ns = k.split_once('/').map_or("", |(ns, _)| ns);
                        sel.claims(ns, labels)
                    })
                })
                .map(|sel| sel.app)
                .collect(),
        )
    }

    fn after_pass(&mut self, spec: Option<&MeshNode>, status: &MeshNodeStatus) {
        // Only the namespaces of this node's registered, announced
        // workloads: all that `outcomes` decides about.
        let namespaces: BTreeSet<String> = self
            .registered
            .iter()
            .filter(|r| self.merged.announced.contains_key(&registry::key(r)))
            .map(|r| r.namespace.clone())
            .collect();
        let selectors = spec.and_then(|s| self.dir.selectors(&s.spec.site, &namespaces));
        let unsettled: BTreeSet<String> = self
            .first_seen
            .iter()
            .filter(|(_, t)| t.elapsed() < SETTLE)
            .map(|(k, _)| k.clone())
            .collect();
        let o = publish::outcomes(
            &self.registered,
            &publish::Claims {
                announced: &self.merged.announced,
                complete: self.dir.complete(),
                selectors: selectors.as_deref(),
                unsettled: &unsettled,
                dns: self.dns,
            },
            spec,
            status,
            &*self.read_link,
        );
        self.shared.publish(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::attach::Outcome;
    use crate::workloads::DirSource;

    fn announce(dir: &std::path::Path, name: &str, netns: &str) {
        let w = LocalWorkload {
            name: name.into(),
            namespace: "demo".into(),
            labels: [("weft.dev/app".to_string(), "web".to_string())].into(),
            netns: netns.into(),
        };
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec(&w).unwrap(),
        )
        .unwrap();
    }

    fn reg(name: &str) -> WorkloadRef {
        WorkloadRef {
            container_id: format!("c-{name}"),
            netns: format!("/run/netns/{name}"),
            namespace: "demo".into(),
            name: name.into(),
        }
    }

    #[test]
    fn announcements_take_their_netns_from_the_runtime() {
        let d = tempfile::tempdir().unwrap();
        announce(d.path(), "hand", "/run/netns/hand"); // wired by hand: as before
        announce(d.path(), "pod-1", ""); // the runtime will tell
        announce(d.path(), "pod-2", ""); // not added yet
        let shared = Arc::new(Shared::in_memory());
        shared.register(reg("pod-1"));
        shared.register(reg("stray")); // never announced
        let mut src = RuntimeSource::with_link_reader(
            DirSource::new(d.path().to_path_buf()),
            shared.clone(),
            Box::new(|_: &str| None),
        );
        let listed = src.list();
        let names: Vec<(&str, &str)> = listed
            .iter()
            .map(|w| (w.name.as_str(), w.netns.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![("hand", "/run/netns/hand"), ("pod-1", "/run/netns/pod-1")]
        );
        let pending: Vec<String> = src.pending().iter().map(key).collect();
        assert_eq!(pending, vec!["demo/pod-2".to_string()]);

        src.after_pass(None, &MeshNodeStatus::default());
        assert_eq!(shared.outcome("demo/stray"), Some(Outcome::NotMeshed));
        assert_eq!(shared.outcome("demo/pod-1"), None, "not attached yet");

        // A plain DirSource ignores what it cannot attach.
        let plain: Vec<String> = DirSource::new(d.path().to_path_buf())
            .list()
            .iter()
            .map(key)
            .collect();
        assert_eq!(plain, vec!["demo/hand".to_string()]);
    }

    #[test]
    fn outcomes_describe_the_registrations_the_pass_saw() {
        let d = tempfile::tempdir().unwrap();
        let shared = Arc::new(Shared::in_memory());
        let mut src = RuntimeSource::with_link_reader(
            DirSource::new(d.path().to_path_buf()),
            shared.clone(),
            Box::new(|_: &str| None),
        );
        src.list();
        // Registered after the pass listed its workloads: no outcome yet, so
        // an ADD waits for the next pass instead of reading a stale one.
        shared.register(reg("late"));
        src.after_pass(None, &MeshNodeStatus::default());
        assert_eq!(shared.outcome("demo/late"), None);
        src.list();
        src.after_pass(None, &MeshNodeStatus::default());
        assert_eq!(shared.outcome("demo/late"), Some(Outcome::NotMeshed));
    }

    #[test]
    fn a_new_sandbox_of_the_same_pod_is_detached_then_attached() {
        let d = tempfile::tempdir().unwrap();
        announce(d.path(), "pod-1", "");
        let shared = Arc::new(Shared::in_memory());
        shared.register(reg("pod-1"));
        let mut src = RuntimeSource::with_link_reader(
            DirSource::new(d.path().to_path_buf()),
            shared.clone(),
            Box::new(|_: &str| None),
        );
        assert_eq!(src.list().len(), 1);
        let mut again = reg("pod-1");
        again.netns = "/run/netns/pod-1-new".into();
        shared.register(again);
        assert!(src.list().is_empty(), "old attachment goes first");
        let l = src.list();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].netns, "/run/netns/pod-1-new");
        assert_eq!(src.list().len(), 1, "then it stays");
    }

    /// Announcements with fixed workloads and app selectors.
    struct Fixed(Vec<LocalWorkload>, Option<Vec<weft_api::AppSelector>>);
    impl Announcements for Fixed {
        fn scan(&self) -> Vec<LocalWorkload> {
            self.0.clone()
        }
        fn selectors(
            &self,
            _site: &str,
            namespaces: &BTreeSet<String>,
        ) -> Option<Vec<weft_api::AppSelector>> {
            assert_eq!(namespaces.iter().collect::<Vec<_>>(), ["demo"]);
            self.1.clone()
        }
    }

    #[test]
    fn apps_claiming_unplaced_workloads_are_named_for_their_keys() {
        let wl = |name: &str, tier: &str| LocalWorkload {
            name: name.into(),
            namespace: "demo".into(),
            labels: [("tier".to_string(), tier.to_string())].into(),
            netns: String::new(),
        };
        let sel = |app: &str, tier: &str| weft_api::AppSelector {
            app: app.into(),
            selector: weft_api::selector::Selector {
                match_labels: [("tier".to_string(), tier.to_string())].into(),
                ..Default::default()
            },
        };
        let selectors = vec![
            sel("demo/web", "web"),
            sel("demo/db", "db"),
            sel("demo/idle", "x"),
        ];
        let mut src = RuntimeSource::with_link_reader(
            Fixed(vec![wl("w1", "web"), wl("d1", "db")], Some(selectors)),
            Arc::new(Shared::in_memory()),
            Box::new(|_: &str| None),
        );
        src.list();
        let got = src.claimed_apps("local", &BTreeSet::new()).unwrap();
        assert_eq!(got, ["demo/db".to_string(), "demo/web".to_string()].into());
        // Placed workloads are not matched again: the web app is planned here.
        let got = src.claimed_apps("local", &["demo/w1"].into()).unwrap();
        assert_eq!(got, ["demo/db".to_string()].into());
        // Everything placed: nothing to match (and no selector asked for).
        let got = src
            .claimed_apps("local", &["demo/w1", "demo/d1"].into())
            .unwrap();
        assert!(got.is_empty());
        // Selectors not known yet: cannot tell.
        let mut src = RuntimeSource::with_link_reader(
            Fixed(vec![wl("w1", "web")], None),
            Arc::new(Shared::in_memory()),
            Box::new(|_: &str| None),
        );
        src.list();
        assert_eq!(src.claimed_apps("local", &BTreeSet::new()), None);
    }
}
