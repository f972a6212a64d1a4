//! Which definition of each object is in force, and the part of the
//! planner's snapshot the manifests make, kept up to date file by file: a
//! pass whose manifests did not change costs nothing here, and one changed
//! file costs the objects it defines (10,000 manifest files otherwise cost
//! ~60 ms of entries, choices and snapshot per pass).
//!
//! The result is the one of choosing over every file at once (see
//! `choose_definitions`, the tests' reference): when two files define an object, the one
//! that defined it before (by its stored status) keeps it, else the first
//! in path order, and both files get the problem.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;

use weft_api::standalone::{ManifestFileStatus, ManifestProblem};

use super::manifests::{Entry, Kind, ManifestCache, ObjectRef};
use super::parts::Patch;
use super::StoredAll;
use crate::planner::incremental::Edit;
use crate::planner::ObjectKey;

/// The manifests' part of the planner's input, by file and by object.
#[derive(Default)]
pub(super) struct Definitions {
    /// The objects each file defines (its specs stay in the cache: a
    /// second copy of 10,000 specs is ~30 MB).
    by_file: BTreeMap<OsString, Vec<ObjectRef>>,
    /// Which files define each object.
    by_object: BTreeMap<ObjectRef, BTreeSet<OsString>>,
    /// Duplicate-definition problems of objects defined more than once.
    duplicates: BTreeMap<ObjectRef, Vec<(OsString, ManifestProblem)>>,
    /// Every file's status as `get manifests` shows it.
    statuses: BTreeMap<OsString, ManifestFileStatus>,
    /// Each of `statuses` as compact JSON: a change serialises only its
    /// own files, not 10,000 of them (~20 ms).
    rendered: BTreeMap<OsString, Vec<u8>>,
    /// Whether `statuses` changed since [`Self::statuses_changed`] was
    /// last cleared.
    statuses_dirty: bool,
    /// The file defining each object in force.
    pub sources: BTreeMap<ObjectRef, String>,
}

impl Definitions {
    /// Brings everything up to date with the files `changed` since the last
    /// call, and `out` (the snapshot of the last call, or an empty one when
    /// `fresh`) with its apps, policies, sites, hubs and input errors.
    /// `stored_moved`: the stored statuses changed since (they decide
    /// duplicates and what a broken file claimed before a restart).
    pub fn update(
        &mut self,
        cache: &ManifestCache,
        mut changed: BTreeSet<OsString>,
        stored: &StoredAll,
        stored_moved: bool,
        out: &mut Patch<'_>,
    ) {
        let fresh = out.fresh();
        let claimed = |p: &Path| stored.defined_by(&p.display().to_string());
        let mut objects: BTreeSet<ObjectRef> = BTreeSet::new();
        if stored_moved {
            changed.extend(cache.claiming().cloned());
            objects.extend(self.duplicates.keys().cloned());
        }
        let mut files: BTreeSet<OsString> = BTreeSet::new();
        // This update's entries by file (read from the cache once each).
        let mut memo: BTreeMap<OsString, Vec<Entry>> = BTreeMap::new();
        for name in changed {
            for object in self.by_file.remove(&name).unwrap_or_default() {
                if let Some(set) = self.by_object.get_mut(&object) {
                    set.remove(&name);
                    if set.is_empty() {
                        self.by_object.remove(&object);
                    }
                }
                objects.insert(object);
            }
            if let Some(entries) = cache.entries_of(&name, &claimed) {
                let defined: Vec<ObjectRef> = entries.iter().map(|e| e.object.clone()).collect();
                for object in &defined {
                    self.by_object
                        .entry(object.clone())
                        .or_default()
                        .insert(name.clone());
                    objects.insert(object.clone());
                }
                self.by_file.insert(name.clone(), defined);
                memo.insert(name.clone(), entries);
            }
            files.insert(name);
        }
        if fresh {
            objects.extend(self.by_object.keys().cloned());
        }
        for object in objects {
            for name in self.by_object.get(&object).into_iter().flatten() {
                if !memo.contains_key(name) {
                    let entries = cache.entries_of(name, &claimed).unwrap_or_default();
                    memo.insert(name.clone(), entries);
                }
            }
            self.choose(&object, stored, &memo, &mut files, out);
        }
        for name in files {
            let Some(mut status) = cache.file_status_of(&name) else {
                self.statuses_dirty |= self.statuses.remove(&name).is_some();
                self.rendered.remove(&name);
                continue;
            };
            let objects: BTreeSet<&ObjectRef> =
                self.by_file.get(&name).into_iter().flatten().collect();
            for object in objects {
                for (file, p) in self.duplicates.get(object).into_iter().flatten() {
                    if *file == name {
                        status.errors.push(p.clone());
                    }
                }
            }
            if self.statuses.get(&name) != Some(&status) {
                // A status is plain strings and lists: it always serialises.
                let body = serde_json::to_vec(&status).unwrap_or_default();
                self.rendered.insert(name.clone(), body);
                self.statuses.insert(name, status);
                self.statuses_dirty = true;
            }
        }
    }

    /// Chooses `object`'s definition anew and puts it into `part`; adds the
    /// files whose duplicate problems may change to `files`.
    fn choose(
        &mut self,
        object: &ObjectRef,
        stored: &StoredAll,
        memo: &BTreeMap<OsString, Vec<Entry>>,
        files: &mut BTreeSet<OsString>,
        out: &mut Patch<'_>,
    ) {
        if let Some(old) = self.duplicates.remove(object) {
            files.extend(old.into_iter().map(|(f, _)| f));
        }
        // In the snapshot exactly when it has a source (copy only then).
        if self.sources.contains_key(object) {
            remove(&mut out.edit(), object);
        }
        self.sources.remove(object);
        let defs: Vec<(&OsString, &Entry)> = self
            .by_object
            .get(object)
            .into_iter()
            .flatten()
            .filter_map(|name| Some((name, memo.get(name)?)))
            .flat_map(|(name, entries)| {
                entries
                    .iter()
                    .filter(|e| e.object == *object)
                    .map(move |e| (name, e))
            })
            .collect();
        let winner = match defs.len() {
            0 => return,
            1 => 0,
            _ => {
                let before = stored.source_of(object);
                let winner = defs
                    .iter()
                    .position(|(_, d)| Some(d.file.display().to_string().as_str()) == before)
                    .unwrap_or(0);
                let used = defs[winner].1.file.display().to_string();
                let all: Vec<String> = defs
                    .iter()
                    .map(|(_, d)| match d.document {
                        Some(i) => format!("{} (document {i})", d.file.display()),
                        None => d.file.display().to_string(),
                    })
                    .collect();
                let message = format!(
                    "{object} is defined more than once: {}; the definition in {used} is used, remove the others",
                    all.join(", ")
                );
                tracing::warn!(object = %object, "{message}");
                let problems: Vec<(OsString, ManifestProblem)> = defs
                    .iter()
                    .map(|(name, d)| {
                        (
                            (*name).clone(),
                            ManifestProblem {
                                document: d.document,
                                object: Some(object.to_string()),
                                field: "metadata.name".into(),
                                message: message.clone(),
                            },
                        )
                    })
                    .collect();
                files.extend(problems.iter().map(|(f, _)| f.clone()));
                self.duplicates.insert(object.clone(), problems);
                winner
            }
        };
        let entry = defs[winner].1;
        self.sources
            .insert(object.clone(), entry.file.display().to_string());
        super::add_entry(&mut out.edit(), entry);
    }

    /// Every file's status, in path order.
    #[cfg(test)]
    pub fn statuses(&self) -> Vec<ManifestFileStatus> {
        self.statuses.values().cloned().collect()
    }

    /// [`Self::statuses`] as a JSON array, one file a line.
    pub fn statuses_json(&self) -> Vec<u8> {
        let len: usize = self.rendered.values().map(|b| b.len() + 2).sum();
        let mut out = Vec::with_capacity(len + 4);
        out.push(b'[');
        for (i, body) in self.rendered.values().enumerate() {
            out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
            out.extend_from_slice(body);
        }
        out.extend_from_slice(b"\n]\n");
        out
    }

    /// Files with problems, as `(file, summary)`.
    pub fn errors(&self) -> Vec<(std::path::PathBuf, String)> {
        self.statuses
            .values()
            .filter(|f| !f.errors.is_empty())
            .map(|f| (f.file.clone().into(), super::manifest_summary(&f.errors)))
            .collect()
    }

    /// Whether the statuses changed since the last [`Self::statuses_recorded`].
    pub fn statuses_changed(&self) -> bool {
        self.statuses_dirty
    }

    /// The statuses were recorded.
    pub fn statuses_recorded(&mut self) {
        self.statuses_dirty = false;
    }
}

/// Takes `object` out of the snapshot part.
fn remove(e: &mut Edit<'_>, object: &ObjectRef) {
    match object.kind {
        Kind::App => e.put_app(ObjectKey::parse(&object.key), None),
        Kind::Policy => e.put_policy(ObjectKey::parse(&object.key), None),
        Kind::Site => e.put_site(object.key.clone(), None),
        Kind::Hub => e.put_hub(object.key.clone(), None),
    }
    e.put_input_errors(object.to_string(), None);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::incremental::Journal;
    use crate::planner::Snapshot;
    use crate::standalone::{add_entry, choose_definitions};

    fn app(name: &str, tier: &str) -> String {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  selector: {{matchLabels: {{tier: {tier}}}}}\n"
        )
    }

    /// What choosing over every file at once gives.
    fn whole(cache: &ManifestCache, stored: &StoredAll) -> (Snapshot, Vec<ManifestFileStatus>) {
        let entries = cache.entries(&|p: &Path| stored.defined_by(&p.display().to_string()));
        let mut statuses = cache.file_statuses();
        let chosen = choose_definitions(entries, stored, &mut statuses);
        let mut s = Snapshot::default();
        let mut scratch = Journal::default();
        let mut edit = Edit::new(&mut s, &mut scratch);
        for e in chosen.values() {
            add_entry(&mut edit, e);
        }
        (s, statuses)
    }

    /// Files added, edited, duplicated, broken and removed one at a time:
    /// the definitions kept file by file are always the whole choice.
    #[test]
    fn kept_file_by_file_they_match_choosing_over_every_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let write = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).unwrap();
        let steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| write("a.yaml", &app("web", "web"))),
            Box::new(|| {
                write(
                    "b.yaml",
                    &format!("{}---\n{}", app("db", "db"), app("web", "x")),
                )
            }),
            Box::new(|| write("c.yaml", "not: [yaml")),
            Box::new(|| write("a.yaml", &app("web", "y"))),
            Box::new(|| {
                write("a.yaml", "apiVersion: weft.dev/v1alpha1\nkind: MeshApp\nmetadata: {name: web}\nspec: {bogus: 1}\n")
            }),
            Box::new(|| std::fs::remove_file(dir.path().join("b.yaml")).unwrap()),
            Box::new(|| {
                write("d.json", "{\"apiVersion\": \"weft.dev/v1alpha1\", \"kind\": \"MeshSite\", \"metadata\": {\"name\": \"east\"}, \"spec\": {}}")
            }),
            Box::new(|| std::fs::remove_file(dir.path().join("a.yaml")).unwrap()),
        ];
        let stored = StoredAll::default();
        let mut cache = ManifestCache::default();
        let mut defs = Definitions::default();
        let mut part = Snapshot::default();
        let mut journal = Journal::default();
        for (i, step) in steps.iter().enumerate() {
            step();
            cache.refresh(dir.path()).unwrap();
            let changed = cache.take_changed();
            let mut patch = Patch::over(Edit::new(&mut part, &mut journal), i == 0);
            defs.update(&cache, changed, &stored, i == 0, &mut patch);
            drop(patch);
            let (snapshot, statuses) = whole(&cache, &stored);
            assert_eq!(part, snapshot, "step {i}");
            assert_eq!(defs.statuses(), statuses, "step {i}");
            let json: Vec<ManifestFileStatus> =
                serde_json::from_slice(&defs.statuses_json()).unwrap();
            assert_eq!(json, statuses, "step {i}: as written");
        }
    }
}
