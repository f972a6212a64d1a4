//! A member's side of federation across passes: which apps are shared and
//! through which hub, what the hubs say (the last good read is kept while
//! a hub cannot be read, so nothing is torn down), and writing this
//! member's records back.
//!
//! An app is shared when it spans a `Remote` MeshSite that says how to
//! reach its hub; the member's name on the hub is its `Local` MeshSite's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use weft_api::federation::{HubLayout, SiteRecordSpec, DEFAULT_BLOCK_SLICES};
use weft_api::SiteKind;

use super::hubdir::{self, MemberFiles};
use super::import::{self, HubView};
use crate::planner::snapshot::HubLink;
use crate::planner::{Federated, ObjectKey, Plan, Snapshot};

/// Seconds between heartbeats at most (and a third of `staleAfterSeconds`).
const BEAT_EVERY: u64 = 10;

struct HubConn {
    layout: HubLayout,
    /// The last view read, with the error of the last read if it failed.
    view: Option<HubView>,
    files: MemberFiles,
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
    hubs: BTreeMap<PathBuf, HubConn>,
    /// Shared app → its hub, as of the last [`Member::inputs`].
    shared: BTreeMap<ObjectKey, PathBuf>,
    name: Option<String>,
}

/// The member's name: its one `Local` site.
fn member_name(s: &Snapshot) -> Option<String> {
    let mut local = s.sites.iter().filter(|(_, x)| x.kind == SiteKind::Local);
    match (local.next(), local.next()) {
        (Some((name, _)), None) => Some(name.clone()),
        _ => None,
    }
}

/// Apps spanning a Remote site with a hub directory, with that directory.
fn shared_apps(s: &Snapshot) -> BTreeMap<ObjectKey, PathBuf> {
    let hub_of = |site: &String| {
        let spec = s.sites.get(site)?;
        (spec.kind == SiteKind::Remote).then_some(())?;
        spec.hub_access
            .as_ref()?
            .directory
            .as_ref()
            .map(PathBuf::from)
    };
    s.apps
        .iter()
        .filter_map(|(k, spec)| Some((k.clone(), spec.sites.iter().find_map(hub_of)?)))
        .collect()
}

impl Member {
    /// Whether any app is shared, or records of apps no longer shared are
    /// still to be removed from a hub (as of the last pass).
    pub fn active(&self) -> bool {
        !self.shared.is_empty() || !self.hubs.is_empty()
    }

    /// Reads the hubs of the shared apps of `s` and returns each one's
    /// federation input at `now` (seconds since the epoch), with how each
    /// Remote site behind a hub looks.
    pub fn inputs(
        &mut self,
        s: &Snapshot,
        now: u64,
    ) -> (BTreeMap<ObjectKey, Federated>, BTreeMap<String, HubLink>) {
        self.shared = shared_apps(s);
        self.name = member_name(s);
        let dirs: std::collections::BTreeSet<&PathBuf> = self.shared.values().collect();
        // A hub no shared app uses any more is kept until this member's
        // records there are gone (see `export`).
        for dir in dirs {
            let link = self.hubs.entry(dir.clone()).or_insert_with(|| HubConn {
                layout: HubLayout::new(dir),
                view: None,
                files: MemberFiles::default(),
                outage: None,
            });
            match hubdir::read_view(&link.layout) {
                Ok(mut v) => {
                    v.read_at = now;
                    if let Some(old) = link.view.as_ref().filter(|o| o.error.is_some()) {
                        tracing::info!(hub = %dir.display(), "hub readable again");
                        link.outage = Some((old.read_at, now));
                    }
                    if let Some(outage) = link.outage {
                        excuse_outage(&mut v, outage);
                    }
                    link.view = Some(v);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let view = link.view.get_or_insert_with(HubView::default);
                    if view.error.as_deref() != Some(&msg) {
                        tracing::warn!(hub = %dir.display(), error = %msg, "hub unreadable; keeping what it said last");
                    }
                    view.error = Some(msg);
                }
            }
        }
        // Members age from the last good read while a hub is unreadable.
        let at = |v: &HubView| if v.error.is_some() { v.read_at } else { now };
        let mut out = BTreeMap::new();
        for (app, dir) in &self.shared {
            let Some(view) = self.hubs.get(dir).and_then(|l| l.view.as_ref()) else {
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
        for (site, spec) in &s.sites {
            let Some(dir) = spec
                .hub_access
                .as_ref()
                .and_then(|a| a.directory.as_ref())
                .filter(|_| spec.kind == SiteKind::Remote)
            else {
                continue;
            };
            let Some(view) = self
                .hubs
                .get(&PathBuf::from(dir))
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

    /// Writes this member's records of `plan` to their hubs. Returns the
    /// files written; the first error stops nothing but is returned.
    pub fn export(&mut self, plan: &Plan, now: u64) -> anyhow::Result<usize> {
        let Some(member) = &self.name else {
            return Ok(0);
        };
        let mut writes = 0;
        let mut first_error = None;
        let mut done = Vec::new();
        for (dir, link) in &mut self.hubs {
            let records: BTreeMap<String, &SiteRecordSpec> = plan
                .exports
                .iter()
                .filter(|(k, _)| self.shared.get(*k) == Some(dir))
                .map(|(k, r)| (k.to_string(), r))
                .collect();
            let every = link
                .view
                .as_ref()
                .and_then(|v| v.state.as_ref())
                .map_or(BEAT_EVERY, |s| {
                    (u64::from(s.stale_after_seconds) / 3).clamp(1, BEAT_EVERY)
                });
            match link.files.sync(&link.layout, member, &records, now, every) {
                Ok(n) => {
                    writes += n;
                    // No shared app uses this hub and its records are gone.
                    if !self.shared.values().any(|d| d == dir) && !link.files.holds_records() {
                        done.push(dir.clone());
                    }
                }
                Err(e) => {
                    first_error
                        .get_or_insert(e.context(format!("writing to hub {}", dir.display())));
                }
            }
        }
        for dir in done {
            self.hubs.remove(&dir);
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
