//! A member's side of federation across passes: which apps are shared and
//! through which hub, what the hubs say (the last good read is kept while
//! a hub cannot be read, so nothing is torn down), and what to write back.
//!
//! An app is shared when it spans a `Remote` MeshSite that says how to
//! reach its hub; the member's name on the hub is its `Local` MeshSite's.
//! Reading and writing go through a transport: a hub directory here
//! ([`Member::inputs`], [`Member::export`]), a hub cluster in
//! `k8s::federation`; both feed [`Member::absorb`] and read
//! [`Member::outgoing`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use weft_api::federation::{HubLayout, SiteRecordSpec, DEFAULT_BLOCK_SLICES};
use weft_api::{MeshSiteSpec, SiteKind};

use super::hubdir::{self, MemberFiles};
use super::import::{self, HubView};
use crate::planner::snapshot::HubLink;
use crate::planner::{Federated, ObjectKey, Plan, Snapshot};

/// Seconds between heartbeats at most (and a third of `staleAfterSeconds`).
const BEAT_EVERY: u64 = 10;

/// Where a hub is reached.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HubRef {
    /// A directory the hub serves (standalone members).
    Directory(PathBuf),
    /// A hub cluster: the MeshHub's name there, and the Secret in the
    /// operator's namespace holding a kubeconfig for it.
    Cluster {
        /// The MeshHub's name.
        hub: String,
        /// The Secret's name.
        secret: String,
    },
}

impl std::fmt::Display for HubRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubRef::Directory(d) => write!(f, "hub directory {}", d.display()),
            HubRef::Cluster { hub, secret } => {
                write!(f, "MeshHub {hub} (kubeconfig Secret {secret})")
            }
        }
    }
}

/// How a Remote site reaches its hub, if it says.
pub fn hub_ref(spec: &MeshSiteSpec) -> Option<HubRef> {
    if spec.kind != SiteKind::Remote {
        return None;
    }
    let access = spec.hub_access.as_ref()?;
    match (&access.directory, &access.kubeconfig_secret) {
        (Some(d), None) => Some(HubRef::Directory(PathBuf::from(d))),
        (None, Some(secret)) => Some(HubRef::Cluster {
            hub: spec.hub.clone()?,
            secret: secret.clone(),
        }),
        _ => None,
    }
}

/// What a member writes to one hub this pass.
pub struct Outgoing<'a> {
    /// The hub.
    pub hub: HubRef,
    /// This member's name on it.
    pub member: &'a str,
    /// Its records there, by app (`namespace/name`).
    pub records: BTreeMap<String, &'a SiteRecordSpec>,
    /// Seconds between heartbeats.
    pub beat_every: u64,
}

#[derive(Default)]
struct HubConn {
    /// The last view read, with the error of the last read if it failed.
    view: Option<HubView>,
    /// The last time the hub could not be read, from the last good read
    /// before it to the first one after (seconds since the epoch).
    outage: Option<(u64, u64)>,
}

/// Heartbeats as if written when the hub came back, for members that were
/// fresh when it went away: nobody could write to it meanwhile, so the gap
/// says nothing about them (else every member would look pruned the moment
/// a long outage ends).
fn excuse_outage(view: &mut HubView, outage: (u64, u64)) {
    let (from, to) = outage;
    let stale = view
        .state
        .as_ref()
        .map_or(0, |s| u64::from(s.stale_after_seconds));
    for beat in view.heartbeats.values_mut() {
        if *beat < to && *beat + stale >= from {
            *beat = to;
        }
    }
}

/// This member's federation state.
#[derive(Default)]
pub struct Member {
    hubs: BTreeMap<HubRef, HubConn>,
    /// Shared app → its hub, as of the last [`Member::wanted`].
    shared: BTreeMap<ObjectKey, HubRef>,
    name: Option<String>,
    /// What was last written to each hub directory.
    files: BTreeMap<PathBuf, MemberFiles>,
    /// Hub clusters are written by the Kubernetes transport (else no
    /// transport reaches them, and [`Member::export`] lets them go).
    clusters_elsewhere: bool,
}

/// The member's name: its one `Local` site.
fn member_name(sites: &BTreeMap<String, MeshSiteSpec>) -> Option<String> {
    let mut local = sites.iter().filter(|(_, x)| x.kind == SiteKind::Local);
    match (local.next(), local.next()) {
        (Some((name, _)), None) => Some(name.clone()),
        _ => None,
    }
}

/// Apps spanning a Remote site that says how to reach its hub, with the hub.
fn shared_apps<'a>(
    sites: &BTreeMap<String, MeshSiteSpec>,
    apps: impl IntoIterator<Item = (ObjectKey, &'a [String])>,
) -> BTreeMap<ObjectKey, HubRef> {
    let hub_of = |site: &String| hub_ref(sites.get(site)?);
    apps.into_iter()
        .filter_map(|(k, spans)| Some((k, spans.iter().find_map(hub_of)?)))
        .collect()
}

impl Member {
    /// A member whose hub clusters a transport outside this module writes
    /// (the Kubernetes operator's).
    pub fn with_cluster_transport() -> Member {
        Member {
            clusters_elsewhere: true,
            ..Default::default()
        }
    }

    /// Whether any app is shared, or records of apps no longer shared are
    /// still to be removed from a hub (as of the last pass).
    pub fn active(&self) -> bool {
        !self.shared.is_empty() || !self.hubs.is_empty()
    }

    /// Whether a site of `sites` reaches a hub (else, with nothing
    /// [`active`](Member::active), there is nothing to do).
    pub fn any_hub(sites: &BTreeMap<String, MeshSiteSpec>) -> bool {
        sites.values().any(|s| hub_ref(s).is_some())
    }

    /// Takes the shared apps among `apps` (key, sites each spans) and
    /// returns the hubs to read this pass.
    pub fn wanted<'a>(
        &mut self,
        sites: &BTreeMap<String, MeshSiteSpec>,
        apps: impl IntoIterator<Item = (ObjectKey, &'a [String])>,
    ) -> Vec<HubRef> {
        self.shared = shared_apps(sites, apps);
        self.name = member_name(sites);
        let hubs: std::collections::BTreeSet<HubRef> = self.shared.values().cloned().collect();
        // A hub no shared app uses any more is kept until this member's
        // records there are gone (see `exported`).
        for hub in &hubs {
            self.hubs.entry(hub.clone()).or_default();
        }
        hubs.into_iter().collect()
    }

    /// What reading `hub` at `now` gave. A failed read keeps the last view
    /// in force (with the error); the first good read after an outage
    /// excuses the members that were fresh when it began.
    pub fn absorb(&mut self, hub: &HubRef, read: anyhow::Result<HubView>, now: u64) {
        let conn = self.hubs.entry(hub.clone()).or_default();
        match read {
            Ok(mut v) => {
                v.read_at = now;
                if let Some(old) = conn.view.as_ref().filter(|o| o.error.is_some()) {
                    tracing::info!(%hub, "hub readable again");
                    conn.outage = Some((old.read_at, now));
                }
                if let Some(outage) = conn.outage {
                    excuse_outage(&mut v, outage);
                }
                conn.view = Some(v);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let view = conn.view.get_or_insert_with(HubView::default);
                if view.error.as_deref() != Some(&msg) {
                    tracing::warn!(%hub, error = %msg, "hub unreadable; keeping what it said last");
                }
                view.error = Some(msg);
            }
        }
    }

    /// Each shared app's federation input at `now` (seconds since the
    /// epoch) from the views absorbed, with how each Remote site behind a
    /// hub looks.
    pub fn imports(
        &self,
        sites: &BTreeMap<String, MeshSiteSpec>,
        now: u64,
    ) -> (BTreeMap<ObjectKey, Federated>, BTreeMap<String, HubLink>) {
        // Members age from the last good read while a hub is unreadable.
        let at = |v: &HubView| if v.error.is_some() { v.read_at } else { now };
        let mut out = BTreeMap::new();
        for (app, hub) in &self.shared {
            let Some(view) = self.hubs.get(hub).and_then(|l| l.view.as_ref()) else {
                continue;
            };
            let now = at(view);
            let f = match &self.name {
                Some(member) => {
                    let blocks = view
                        .state
                        .as_ref()
                        .map_or(DEFAULT_BLOCK_SLICES, |s| s.block_slices);
                    let mut f = import::federated(member, blocks, app, view, now);
                    f.problems.sort();
                    f
                }
                None => Federated {
                    problems: vec![(
                        "spec.sites".into(),
                        "shared through a hub, but no single Local MeshSite names this member"
                            .into(),
                    )],
                    ..Default::default()
                },
            };
            out.insert(app.clone(), f);
        }
        let mut links = BTreeMap::new();
        for (site, spec) in sites {
            let Some(view) = hub_ref(spec)
                .and_then(|h| self.hubs.get(&h))
                .and_then(|l| l.view.as_ref())
            else {
                continue;
            };
            let prefix = format!("{site}/");
            let nodes = out
                .values()
                .flat_map(|f: &Federated| &f.remote)
                .filter(|n| n.id.starts_with(&prefix))
                .count();
            let liveness = view.liveness(site, at(view));
            links.insert(
                site.clone(),
                HubLink {
                    error: view.error.clone(),
                    stale: liveness == import::Liveness::Stale,
                    gone: liveness == import::Liveness::Pruned,
                    last_sync: view.heartbeats.get(site).copied(),
                    nodes: u32::try_from(nodes).unwrap_or(u32::MAX),
                },
            );
        }
        (out, links)
    }

    /// Reads the hub directories of the shared apps of `s` and returns
    /// [`Member::imports`] (the standalone transport). A hub cluster cannot
    /// be reached from here: its apps say so.
    pub fn inputs(
        &mut self,
        s: &Snapshot,
        now: u64,
    ) -> (BTreeMap<ObjectKey, Federated>, BTreeMap<String, HubLink>) {
        let apps = s.apps.iter().map(|(k, a)| (k.clone(), a.sites.as_slice()));
        for hub in self.wanted(&s.sites, apps) {
            let read = match &hub {
                HubRef::Directory(d) => hubdir::read_view(&HubLayout::new(d)),
                HubRef::Cluster { .. } => Err(anyhow::anyhow!(
                    "a hub cluster (hubAccess.kubeconfigSecret) is reached by an operator in \
                     Kubernetes mode; a standalone operator needs hubAccess.directory"
                )),
            };
            self.absorb(&hub, read, now);
        }
        self.imports(&s.sites, now)
    }

    /// What to write to each hub this member uses: its records of `plan`
    /// (none for a hub no shared app uses any more) and how often to beat.
    pub fn outgoing<'a>(&'a self, plan: &'a Plan) -> Vec<Outgoing<'a>> {
        let Some(member) = &self.name else {
            return Vec::new();
        };
        self.hubs
            .iter()
            .map(|(hub, conn)| Outgoing {
                hub: hub.clone(),
                member,
                records: plan
                    .exports
                    .iter()
                    .filter(|(k, _)| self.shared.get(*k) == Some(hub))
                    .map(|(k, r)| (k.to_string(), r))
                    .collect(),
                beat_every: conn
                    .view
                    .as_ref()
                    .and_then(|v| v.state.as_ref())
                    .map_or(BEAT_EVERY, |s| {
                        (u64::from(s.stale_after_seconds) / 3).clamp(1, BEAT_EVERY)
                    }),
            })
            .collect()
    }

    /// Whether `hub` is still one this member reads or writes.
    pub fn is_used(&self, hub: &HubRef) -> bool {
        self.hubs.contains_key(hub)
    }

    /// A transport wrote [`Outgoing`] to `hub`; `holds_records` says
    /// whether records of this member are still there. A hub no shared app
    /// uses and without records is let go.
    pub fn exported(&mut self, hub: &HubRef, holds_records: bool) {
        if !holds_records && !self.shared.values().any(|h| h == hub) {
            self.hubs.remove(hub);
            if let HubRef::Directory(d) = hub {
                self.files.remove(d);
            }
        }
    }

    /// Writes this member's records of `plan` to its hub directories (hub
    /// clusters are left to their transport).
    /// Returns the files written; the first error stops nothing but is
    /// returned.
    pub fn export(&mut self, plan: &Plan, now: u64) -> anyhow::Result<usize> {
        let mut writes = 0;
        let mut first_error = None;
        let mut done = Vec::new();
        let mut all_files = std::mem::take(&mut self.files);
        for out in self.outgoing(plan) {
            let HubRef::Directory(dir) = &out.hub else {
                if !self.clusters_elsewhere {
                    // Nothing was ever written there from here.
                    done.push((out.hub.clone(), false));
                }
                continue;
            };
            let files = all_files.entry(dir.clone()).or_default();
            match files.sync(
                &HubLayout::new(dir),
                out.member,
                &out.records,
                now,
                out.beat_every,
            ) {
                Ok(n) => {
                    writes += n;
                    done.push((out.hub.clone(), files.holds_records()));
                }
                Err(e) => {
                    first_error.get_or_insert(e.context(format!("writing to {}", out.hub)));
                }
            }
        }
        self.files = all_files;
        for (hub, holds) in done {
            self.exported(&hub, holds);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(writes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::federation::HubState;
    use weft_api::{HubAccess, MeshAppSpec, MeshSiteSpec};

    fn snapshot(hub: &std::path::Path, shared: bool) -> Snapshot {
        let mut s = Snapshot::default();
        s.sites.insert("a".into(), MeshSiteSpec::default());
        s.sites.insert(
            "b".into(),
            MeshSiteSpec {
                kind: SiteKind::Remote,
                hub: Some("hub".into()),
                hub_access: Some(HubAccess {
                    directory: Some(hub.to_string_lossy().into_owned()),
                    kubeconfig_secret: None,
                }),
                ..Default::default()
            },
        );
        let sites = if shared {
            vec!["a".into(), "b".into()]
        } else {
            vec!["a".into()]
        };
        s.apps.insert(
            ObjectKey::new("demo", "web"),
            MeshAppSpec {
                sites,
                ..Default::default()
            },
        );
        s
    }

    #[test]
    fn records_of_an_app_no_longer_shared_are_taken_off_the_hub() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HubLayout::new(dir.path());
        crate::standalone::files::write_json_atomic(
            &layout.state(),
            &HubState {
                hub: "hub".into(),
                stale_after_seconds: 30,
                prune_after_seconds: 300,
                ..Default::default()
            },
        )
        .unwrap();
        let mut m = Member::default();
        let (fed, links) = m.inputs(&snapshot(dir.path(), true), 100);
        assert_eq!(fed.len(), 1);
        assert_eq!(m.name.as_deref(), Some("a"));
        assert!(links["b"].gone, "b never synced: {:?}", links["b"]);
        let key = ObjectKey::new("demo", "web");
        let mut plan = Plan::default();
        plan.exports.insert(
            key.clone(),
            SiteRecordSpec {
                site: "a".into(),
                app: "demo/web".into(),
                ..Default::default()
            },
        );
        assert_eq!(m.export(&plan, 100).unwrap(), 1);
        assert!(layout.record("a", "demo/web").exists());
        assert!(layout.heartbeat("a").exists());

        // The app stops spanning b: its record goes, then the hub is let go.
        let (fed, _) = m.inputs(&snapshot(dir.path(), false), 101);
        assert!(fed.is_empty());
        assert!(m.active(), "the record is still to be removed");
        m.export(&Plan::default(), 101).unwrap();
        assert!(!layout.record("a", "demo/web").exists());
        assert!(!m.active());
    }

    #[test]
    fn members_fresh_when_the_hub_went_away_are_not_aged_by_the_outage() {
        let mut v = HubView {
            state: Some(HubState {
                stale_after_seconds: 30,
                prune_after_seconds: 300,
                ..Default::default()
            }),
            ..Default::default()
        };
        // a beat just before the outage, b long before it, c after it.
        v.heartbeats = BTreeMap::from([
            ("a".to_string(), 990),
            ("b".to_string(), 100),
            ("c".to_string(), 2100),
        ]);
        excuse_outage(&mut v, (1000, 2000));
        assert_eq!(v.heartbeats["a"], 2000);
        assert_eq!(v.heartbeats["b"], 100, "already stale: stays so");
        assert_eq!(v.heartbeats["c"], 2100);
        assert_eq!(v.liveness("a", 2010), import::Liveness::Fresh);
    }
}
