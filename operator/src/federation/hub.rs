//! The hub's loop over a directory hub: publish the MeshHub's members and
//! timings, read every member's records and heartbeat, allocate, and write
//! the allocations that changed. Only the hub writes here; a member that
//! writes outside its own directory is refused (its record names another
//! site, or sits under a site the MeshHub does not list).

use ipnet::Ipv4Net;
use weft_api::federation::{
    HubLayout, HubState, DEFAULT_BLOCK_SLICES, DEFAULT_PRUNE_AFTER_SECONDS,
    DEFAULT_STALE_AFTER_SECONDS,
};
use weft_api::MeshHubSpec;

use super::allocate::{allocate, HubSettings};
use super::hubdir::{self, HubFiles};
use super::import::{HubView, Liveness};
use crate::planner::accept;
use crate::planner::snapshot::{DEFAULT_APP_PREFIX_LEN, DEFAULT_POOL};

/// One member as the hub sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberReport {
    /// The member.
    pub site: String,
    /// Last heartbeat (seconds since the epoch), if any.
    pub last_sync: Option<u64>,
    /// Whether it is fresh, stale or pruned.
    pub liveness: Liveness,
    /// Apps it has a record of.
    pub records: usize,
}

/// What one hub pass did.
#[derive(Clone, Debug, Default)]
pub struct HubReport {
    /// Members listed by the MeshHub.
    pub members: Vec<MemberReport>,
    /// Shared apps allocated.
    pub apps: usize,
    /// Files written.
    pub writes: usize,
    /// Records refused, with why.
    pub refused: Vec<String>,
    /// Problems of the MeshHub spec itself (nothing is published then).
    pub errors: Vec<String>,
}

/// A hub serving one directory.
pub struct Hub {
    name: String,
    layout: HubLayout,
    files: HubFiles,
}

impl Hub {
    /// The hub `name` over `layout`.
    pub fn new(name: impl Into<String>, layout: HubLayout) -> Self {
        Hub {
            name: name.into(),
            layout,
            files: HubFiles::default(),
        }
    }

    /// One pass at `now` (seconds since the epoch).
    pub fn pass(&mut self, spec: &MeshHubSpec, now: u64) -> anyhow::Result<HubReport> {
        if let Err(report) = check(&self.name, spec) {
            return Ok(report);
        }
        let (records, heartbeats) = hubdir::read_members(&self.layout)?;
        let previous = self.files.allocations(&self.layout)?.clone();
        let decided = decide(
            &self.name,
            spec,
            records,
            &heartbeats,
            &previous,
            now,
            |site| format!("members/{site}"),
        );
        let mut report = decided.report;
        report.writes = self
            .files
            .publish(&self.layout, &decided.state, decided.allocations)?;
        Ok(report)
    }
}

/// A MeshHub spec's problems, as a report that publishes nothing: members
/// keep what the last good spec gave them.
pub fn check(name: &str, spec: &MeshHubSpec) -> Result<(), HubReport> {
    let errors = accept::hub_errors(name, spec);
    if errors.is_empty() {
        return Ok(());
    }
    Err(HubReport {
        errors: errors.iter().map(ToString::to_string).collect(),
        ..Default::default()
    })
}

impl HubReport {
    /// The MeshHub's `Ready` condition: true when every member syncs; else
    /// which do not (or what is wrong with the spec). Refused records are
    /// named too: a member writing out of its place is worth a look.
    pub fn ready(
        &self,
        generation: Option<i64>,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        use weft_api::conditions::{new, types::READY};
        if let Some(first) = self.errors.first() {
            return new(READY, false, "Invalid", first.clone(), generation);
        }
        let late: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.liveness != Liveness::Fresh)
            .map(|m| {
                let state = if m.liveness == Liveness::Stale {
                    "stale"
                } else {
                    "gone"
                };
                format!("{} {state}", m.site)
            })
            .collect();
        let refused = if self.refused.is_empty() {
            String::new()
        } else {
            format!(
                "; {} record(s) refused: {}",
                self.refused.len(),
                self.refused[0]
            )
        };
        if late.is_empty() {
            let msg = format!("{} members syncing{refused}", self.members.len());
            new(READY, true, "MembersSyncing", msg, generation)
        } else {
            let msg = format!(
                "{} of {} members not syncing: {}{refused}",
                late.len(),
                self.members.len(),
                late.join(", ")
            );
            new(READY, false, "MembersNotSyncing", msg, generation)
        }
    }
}

/// What one hub pass decides, whatever the transport.
pub struct Decided {
    /// Members, refusals, apps (writes left to the transport).
    pub report: HubReport,
    /// What the hub publishes for members.
    pub state: HubState,
    /// Every shared app's allocation.
    pub allocations: std::collections::BTreeMap<String, weft_api::federation::HubAllocationSpec>,
}

/// The pure part of a hub pass: refuse records out of their member's place
/// (`place` names it in messages), judge liveness, allocate.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    name: &str,
    spec: &MeshHubSpec,
    mut records: std::collections::BTreeMap<(String, String), weft_api::federation::SiteRecordSpec>,
    heartbeats: &std::collections::BTreeMap<String, u64>,
    previous: &std::collections::BTreeMap<String, weft_api::federation::HubAllocationSpec>,
    now: u64,
    place: impl Fn(&str) -> String,
) -> Decided {
    let mut report = HubReport::default();
    let state = HubState {
        hub: name.to_string(),
        members: spec.members.clone(),
        stale_after_seconds: spec
            .stale_after_seconds
            .unwrap_or(DEFAULT_STALE_AFTER_SECONDS),
        prune_after_seconds: spec
            .prune_after_seconds
            .unwrap_or(DEFAULT_PRUNE_AFTER_SECONDS),
        block_slices: spec.block_slices.unwrap_or(DEFAULT_BLOCK_SLICES),
    };
    records.retain(|(site, app), r| {
        let listed = spec.members.iter().any(|m| m.site == *site);
        let ok = listed && r.site == *site && r.app == *app;
        if !ok {
            report.refused.push(format!(
                "record of {app} under {} refused: {}",
                place(site),
                if listed {
                    format!("it says site {:?}, app {:?}", r.site, r.app)
                } else {
                    "the MeshHub does not list that site".into()
                }
            ));
        }
        ok
    });
    let view = HubView {
        state: Some(state.clone()),
        heartbeats: heartbeats.clone(),
        ..Default::default()
    };
    for m in &spec.members {
        report.members.push(MemberReport {
            site: m.site.clone(),
            last_sync: heartbeats.get(&m.site).copied(),
            liveness: view.liveness(&m.site, now),
            records: records.keys().filter(|(s, _)| *s == m.site).count(),
        });
    }
    let pool: Ipv4Net = spec
        .pool
        .as_deref()
        .unwrap_or(DEFAULT_POOL)
        .parse()
        .unwrap_or_default();
    let settings = HubSettings {
        members: spec.members.clone(),
        pool,
        app_prefix_len: DEFAULT_APP_PREFIX_LEN.max(pool.prefix_len()),
        block_slices: state.block_slices,
    };
    let allocations = allocate(&settings, &records, previous);
    report.apps = allocations.len();
    Decided {
        report,
        state,
        allocations,
    }
}

/// The members of the hub at `layout` as published, without writing.
pub fn report(layout: &HubLayout, now: u64) -> anyhow::Result<HubReport> {
    let state =
        crate::standalone::files::read_json::<HubState>(&layout.state())?.ok_or_else(|| {
            anyhow::anyhow!(
                "{} holds no hub.json: no hub serves it yet",
                layout.root().display()
            )
        })?;
    let (records, heartbeats) = hubdir::read_members(layout)?;
    let view = HubView {
        state: Some(state.clone()),
        heartbeats: heartbeats.clone(),
        ..Default::default()
    };
    let mut apps: std::collections::BTreeSet<&String> = std::collections::BTreeSet::new();
    let mut out = HubReport::default();
    for m in &state.members {
        out.members.push(MemberReport {
            site: m.site.clone(),
            last_sync: heartbeats.get(&m.site).copied(),
            liveness: view.liveness(&m.site, now),
            records: records.keys().filter(|(s, _)| *s == m.site).count(),
        });
        apps.extend(m.exports.iter());
    }
    out.apps = apps.len();
    Ok(out)
}

/// A table of the hub's members for people.
pub fn render(report: &HubReport, now: u64) -> String {
    let mut rows = vec![[
        "MEMBER".to_string(),
        "STATE".to_string(),
        "LAST-SYNC".to_string(),
        "RECORDS".to_string(),
    ]];
    let mut members: Vec<&MemberReport> = report.members.iter().collect();
    members.sort_by(|a, b| a.site.cmp(&b.site));
    for m in members {
        let state = match m.liveness {
            Liveness::Fresh => "Syncing",
            Liveness::Stale => "Stale",
            Liveness::Pruned => "Gone",
        };
        let sync = m.last_sync.map_or("never".to_string(), |t| {
            format!("{}s ago", now.saturating_sub(t))
        });
        rows.push([m.site.clone(), state.into(), sync, m.records.to_string()]);
    }
    let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0);
    let widths = [width(0), width(1), width(2)];
    let mut out = String::new();
    for r in &rows {
        out.push_str(&format!(
            "{:<w0$}   {:<w1$}   {:<w2$}   {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_is_ready_when_every_member_syncs_and_says_who_does_not() {
        let member = |site: &str, liveness| MemberReport {
            site: site.into(),
            last_sync: Some(1),
            liveness,
            records: 1,
        };
        let mut report = HubReport {
            members: vec![
                member("cluster-a", Liveness::Fresh),
                member("cluster-b", Liveness::Fresh),
            ],
            ..Default::default()
        };
        let c = report.ready(Some(3));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "MembersSyncing")
        );
        assert_eq!(c.observed_generation, Some(3));
        report.members[1].liveness = Liveness::Stale;
        report.refused = vec!["record x refused: out of place".into()];
        let c = report.ready(Some(3));
        assert_eq!(c.status, "False");
        assert_eq!(
            c.message,
            "1 of 2 members not syncing: cluster-b stale; 1 record(s) refused: record x refused: out of place"
        );
        report.errors = vec!["spec.members[0].site: bad".into()];
        assert_eq!(report.ready(None).reason, "Invalid");
    }

    #[test]
    fn the_member_table_names_state_and_last_sync() {
        let report = HubReport {
            members: vec![
                MemberReport {
                    site: "cluster-b".into(),
                    last_sync: Some(990),
                    liveness: Liveness::Stale,
                    records: 2,
                },
                MemberReport {
                    site: "a".into(),
                    last_sync: None,
                    liveness: Liveness::Pruned,
                    records: 0,
                },
            ],
            ..Default::default()
        };
        let t = render(&report, 1000);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("MEMBER      STATE"), "{t}");
        assert!(
            lines[1].starts_with("a ") && lines[1].contains("Gone") && lines[1].contains("never"),
            "{t}"
        );
        assert!(
            lines[2].contains("Stale") && lines[2].contains("10s ago"),
            "{t}"
        );
    }
}
