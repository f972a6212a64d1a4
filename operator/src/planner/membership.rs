//! Which app each workload belongs to.
//!
//! A workload belongs to app A when it is in A's namespace and either carries
//! the label `weft.dev/app: <A's name>`, or A's selector is non-empty and
//! matches its labels. An EMPTY selector therefore selects only the labelled
//! workloads, never "everything in the namespace".
//!
//! A workload claimed by several apps goes to the app that already had it on
//! that node (per the previous MeshNode spec), otherwise to the lowest
//! `namespace/name`; every other claimant gets a `WorkloadClaimed` error.

use std::collections::{BTreeMap, BTreeSet};

use weft_api::labels::APP_LABEL;
use weft_api::{MeshAppSpec, MeshNodeSpec};

use super::error::{ErrorKind, PlanError};
use super::snapshot::{Labels, ObjectKey};
use super::validate::object_name;

/// Whether `app` claims a workload of `namespace` with `labels`.
pub fn claims(app: &ObjectKey, spec: &MeshAppSpec, namespace: &str, labels: &Labels) -> bool {
    if app.namespace != namespace {
        return false;
    }
    let selector = &spec.selector;
    let selector_empty = selector.match_labels.is_empty() && selector.match_expressions.is_empty();
    labels.get(APP_LABEL) == Some(&app.name) || (!selector_empty && selector.matches(labels))
}

/// Workloads per app and node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// app → node → workloads on that node.
    pub placements: BTreeMap<ObjectKey, BTreeMap<String, BTreeSet<ObjectKey>>>,
    /// `WorkloadClaimed` errors, by the app that lost the workload.
    pub errors: Vec<(ObjectKey, PlanError)>,
}

/// Places every workload of every node with at most one of `apps`.
pub fn assign_workloads(
    apps: &BTreeMap<ObjectKey, &MeshAppSpec>,
    workloads: &BTreeMap<String, BTreeMap<ObjectKey, Labels>>,
    previous_specs: &BTreeMap<String, MeshNodeSpec>,
) -> Membership {
    let mut by_namespace: BTreeMap<&str, Vec<(&ObjectKey, &MeshAppSpec)>> = BTreeMap::new();
    for (key, spec) in apps {
        by_namespace
            .entry(key.namespace.as_str())
            .or_default()
            .push((key, spec));
    }
    let mut out = Membership::default();
    for (node, on_node) in workloads {
        let previous = previous_specs.get(node);
        for (wl, labels) in on_node {
            let Some(candidates) = by_namespace.get(wl.namespace.as_str()) else {
                continue;
            };
            let claimants: Vec<&ObjectKey> = candidates
                .iter()
                .filter(|(key, spec)| claims(key, spec, &wl.namespace, labels))
                .map(|(key, _)| *key)
                .collect();
            let Some(lowest) = claimants.first() else {
                continue;
            };
            let wl_name = wl.to_string();
            let incumbent = previous.and_then(|p| {
                claimants.iter().find(|c| {
                    let c_name = c.to_string();
                    p.apps
                        .iter()
                        .any(|a| a.app == c_name && a.workloads.contains(&wl_name))
                })
            });
            let winner = *incumbent.unwrap_or(lowest);
            out.placements
                .entry(winner.clone())
                .or_default()
                .entry(node.clone())
                .or_default()
                .insert(wl.clone());
            for loser in claimants.iter().filter(|c| **c != winner) {
                out.errors.push((
                    (*loser).clone(),
                    PlanError::new(
                        ErrorKind::Conflict,
                        object_name("MeshApp", loser),
                        "spec.selector",
                        "WorkloadClaimed",
                        format!(
                            "workload {wl} on node {node} is also selected by MeshApp {winner}, which keeps it"
                        ),
                    ),
                ));
            }
        }
    }
    out
}
