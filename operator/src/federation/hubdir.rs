//! The directory hub: the standalone stand-in for a hub cluster's API, as
//! the state directory stands in for a cluster's (see
//! [`weft_api::federation::HubLayout`]). Members write only their own
//! `members/<site>/`; the hub writes `hub.json` and `allocations/`. Every
//! file is replaced whole (write, then rename), so a reader never sees half
//! of one.
//!
//! What a record claims is trusted only as far as its place: a record
//! found under `members/<site>/` that names another site is refused by the
//! hub and by every importer (see `import`).

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::Context;
use weft_api::federation::{
    app_of_stem, HubAllocationSpec, HubLayout, HubState, MemberHeartbeat, SiteRecordSpec,
};

use super::import::HubView;
use crate::standalone::files::{read_json, write_json_atomic};

/// `*.json` files of `dir` by stem; a missing directory has none.
fn json_files(dir: &Path) -> anyhow::Result<Vec<(String, std::path::PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|x| x == "json") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                out.push((stem.to_string(), path.clone()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Member directories under `members/`.
fn member_sites(layout: &HubLayout) -> anyhow::Result<Vec<String>> {
    let dir = layout.members();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(name) = entry.file_name().to_str() {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Records by (member, app), and heartbeats by member.
pub type Members = (
    BTreeMap<(String, String), SiteRecordSpec>,
    BTreeMap<String, u64>,
);

/// Every member's records and heartbeats. A record that does not parse is
/// skipped with a warning (its member's other records still count).
pub fn read_members(layout: &HubLayout) -> anyhow::Result<Members> {
    let mut records = BTreeMap::new();
    let mut beats = BTreeMap::new();
    for site in member_sites(layout)? {
        if let Some(b) = read_json::<MemberHeartbeat>(&layout.heartbeat(&site))
            .map_err(|e| tracing::warn!(site, error = %format!("{e:#}"), "unreadable heartbeat"))
            .ok()
            .flatten()
        {
            beats.insert(site.clone(), b.time);
        }
        for (stem, path) in json_files(&layout.records(&site))? {
            let Some(app) = app_of_stem(&stem) else {
                continue;
            };
            match read_json::<SiteRecordSpec>(&path) {
                Ok(Some(r)) => {
                    records.insert((site.clone(), app), r);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(site, app, error = %format!("{e:#}"), "unreadable record"),
            }
        }
    }
    Ok((records, beats))
}

/// Everything a member reads from a directory hub.
pub fn read_view(layout: &HubLayout) -> anyhow::Result<HubView> {
    if !layout.root().is_dir() {
        anyhow::bail!("{} is not a directory", layout.root().display());
    }
    // A hub that has not published (or a directory that is not the hub's)
    // says nothing: what the last good read said stays in force.
    let state = read_json::<HubState>(&layout.state())?.with_context(|| {
        format!(
            "{} holds no hub.json: no hub serves it",
            layout.root().display()
        )
    })?;
    let mut allocations = BTreeMap::new();
    for (stem, path) in json_files(&layout.allocations())? {
        if let (Some(app), Some(a)) = (app_of_stem(&stem), read_json::<HubAllocationSpec>(&path)?) {
            if a.app == app {
                allocations.insert(app, a);
            }
        }
    }
    let (records, heartbeats) = read_members(layout)?;
    Ok(HubView {
        state: Some(state),
        allocations,
        records,
        heartbeats,
        error: None,
        read_at: 0,
    })
}

/// What one member last wrote to its hub, so unchanged records are not
/// written again.
#[derive(Default)]
pub struct MemberFiles {
    written: BTreeMap<String, SiteRecordSpec>,
    listed: bool,
    last_beat: Option<u64>,
}

impl MemberFiles {
    /// Whether any record this member wrote is still on the hub.
    pub fn holds_records(&self) -> bool {
        !self.written.is_empty()
    }

    /// Brings `members/<site>/` in line with `records` (by app), and beats
    /// when `beat_every` seconds have passed.
    pub fn sync(
        &mut self,
        layout: &HubLayout,
        site: &str,
        records: &BTreeMap<String, &SiteRecordSpec>,
        now: u64,
        beat_every: u64,
    ) -> anyhow::Result<usize> {
        // Only the hub makes its directory: a member writing into a hub
        // that is away must not create an empty one in its place.
        if !layout.root().is_dir() {
            anyhow::bail!("{} is not a directory", layout.root().display());
        }
        if !self.listed {
            // Records a previous run left: known, so stale ones go.
            for (stem, path) in json_files(&layout.records(site))? {
                if let (Some(app), Ok(Some(r))) = (app_of_stem(&stem), read_json(&path)) {
                    self.written.insert(app, r);
                }
            }
            self.listed = true;
        }
        let mut writes = 0;
        for (app, r) in records {
            if self.written.get(app) != Some(*r) {
                write_json_atomic(&layout.record(site, app), r)?;
                self.written.insert(app.clone(), (*r).clone());
                writes += 1;
            }
        }
        let gone: Vec<String> = self
            .written
            .keys()
            .filter(|a| !records.contains_key(*a))
            .cloned()
            .collect();
        for app in gone {
            match fs::remove_file(layout.record(site, &app)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("removing a record"),
            }
            self.written.remove(&app);
            writes += 1;
        }
        if self.last_beat.is_none_or(|b| now >= b + beat_every) || writes > 0 {
            let beat = MemberHeartbeat {
                site: site.to_string(),
                time: now,
            };
            write_json_atomic(&layout.heartbeat(site), &beat)?;
            self.last_beat = Some(now);
        }
        Ok(writes)
    }
}

/// What the hub last wrote, so unchanged files are not written again.
#[derive(Default)]
pub struct HubFiles {
    state: Option<HubState>,
    allocations: Option<BTreeMap<String, HubAllocationSpec>>,
}

impl HubFiles {
    /// The allocations stored (read once).
    pub fn allocations(
        &mut self,
        layout: &HubLayout,
    ) -> anyhow::Result<&BTreeMap<String, HubAllocationSpec>> {
        if self.allocations.is_none() {
            let mut out = BTreeMap::new();
            for (stem, path) in json_files(&layout.allocations())? {
                if let (Some(app), Some(a)) =
                    (app_of_stem(&stem), read_json::<HubAllocationSpec>(&path)?)
                {
                    out.insert(app, a);
                }
            }
            self.allocations = Some(out);
        }
        Ok(self.allocations.get_or_insert_with(BTreeMap::new))
    }

    /// Publishes `state` and `allocations`, writing only what changed.
    pub fn publish(
        &mut self,
        layout: &HubLayout,
        state: &HubState,
        allocations: BTreeMap<String, HubAllocationSpec>,
    ) -> anyhow::Result<usize> {
        let mut writes = 0;
        if self.state.as_ref() != Some(state) {
            write_json_atomic(&layout.state(), state)?;
            self.state = Some(state.clone());
            writes += 1;
        }
        let old = self.allocations(layout)?.clone();
        for (app, a) in &allocations {
            if old.get(app) != Some(a) {
                write_json_atomic(&layout.allocation(app), a)?;
                writes += 1;
            }
        }
        for app in old.keys().filter(|a| !allocations.contains_key(*a)) {
            match fs::remove_file(layout.allocation(app)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("removing an allocation"),
            }
            writes += 1;
        }
        self.allocations = Some(allocations);
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::hub::Hub;
    use weft_api::meshhub::HubMember;
    use weft_api::MeshHubSpec;

    fn record(site: &str) -> SiteRecordSpec {
        SiteRecordSpec {
            site: site.into(),
            app: "demo/web".into(),
            want_blocks: 1,
            ..Default::default()
        }
    }

    fn hub_spec() -> MeshHubSpec {
        MeshHubSpec {
            members: ["a", "b"]
                .map(|s| HubMember {
                    site: s.into(),
                    exports: vec!["demo/web".into()],
                })
                .to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_that_does_not_parse_is_skipped_and_the_others_count() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HubLayout::new(dir.path());
        write_json_atomic(&layout.record("a", "demo/web"), &record("a")).unwrap();
        std::fs::create_dir_all(layout.records("b")).unwrap();
        std::fs::write(layout.record("b", "demo/web"), b"{not json").unwrap();
        let (records, _) = read_members(&layout).unwrap();
        assert_eq!(records.len(), 1);
        assert!(records.contains_key(&("a".to_string(), "demo/web".to_string())));
    }

    #[test]
    fn the_hub_refuses_a_record_in_another_members_place_and_allocates_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HubLayout::new(dir.path());
        write_json_atomic(&layout.record("a", "demo/web"), &record("a")).unwrap();
        // b's directory holds a record claiming to be a's.
        write_json_atomic(&layout.record("b", "demo/web"), &record("a")).unwrap();
        // and a site the MeshHub does not list writes one.
        write_json_atomic(&layout.record("x", "demo/web"), &record("x")).unwrap();
        let mut hub = Hub::new("hub", layout.clone());
        let report = hub.pass(&hub_spec(), 100).unwrap();
        assert_eq!(report.refused.len(), 2, "{:?}", report.refused);
        assert!(report
            .refused
            .iter()
            .any(|r| r.contains("members/b") && r.contains("site \"a\"")));
        assert!(report
            .refused
            .iter()
            .any(|r| r.contains("members/x") && r.contains("does not list")));
        let view = read_view(&layout).unwrap();
        let blocks = &view.allocations["demo/web"].blocks;
        assert!(blocks.iter().all(|b| b.site == "a"), "{blocks:?}");
        // A second pass with nothing new writes nothing.
        assert_eq!(hub.pass(&hub_spec(), 101).unwrap().writes, 0);
    }

    #[test]
    fn a_broken_hub_spec_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HubLayout::new(dir.path());
        let mut spec = hub_spec();
        spec.block_slices = Some(6);
        let report = Hub::new("hub", layout.clone()).pass(&spec, 100).unwrap();
        assert!(
            report.errors.iter().any(|e| e.contains("spec.blockSlices")),
            "{:?}",
            report.errors
        );
        assert!(!layout.state().exists());
    }

    #[test]
    fn a_member_never_creates_the_hub_directory() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HubLayout::new(dir.path().join("away"));
        let r = record("a");
        let records = BTreeMap::from([("demo/web".to_string(), &r)]);
        let err = MemberFiles::default()
            .sync(&layout, "a", &records, 100, 10)
            .unwrap_err();
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
        assert!(!layout.root().exists());
        assert!(read_view(&layout).is_err());
    }
}
