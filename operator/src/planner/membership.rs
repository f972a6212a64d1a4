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

use weft_api::{AppSelector, MeshAppSpec, MeshNodeSpec};

use super::error::{ErrorKind, PlanError};
use super::snapshot::{Labels, ObjectKey};
use super::validate::object_name;

/// Whether `app` claims a workload of `namespace` with `labels` (the rule is
/// shared with the daemon: [`weft_api::meshnode::claims`]).
pub fn claims(app: &ObjectKey, spec: &MeshAppSpec, namespace: &str, labels: &Labels) -> bool {
    weft_api::meshnode::claims(&app.namespace, &app.name, &spec.selector, namespace, labels)
}

/// The selectors of the apps that span `site`, by the apps' namespace (an
/// app claims workloads of its own namespace only, so a daemon needs just
/// the namespaces of its workloads). The rule is shared with the daemon:
/// [`weft_api::meshnode::selectors_for_site`].
pub fn site_selectors<'a>(
    apps: impl IntoIterator<Item = (&'a ObjectKey, &'a MeshAppSpec)>,
    site: &str,
) -> BTreeMap<String, Vec<AppSelector>> {
    let mut by_namespace: BTreeMap<&str, Vec<(String, &MeshAppSpec)>> = BTreeMap::new();
    for (k, spec) in apps {
        by_namespace
            .entry(k.namespace.as_str())
            .or_default()
            .push((k.to_string(), spec));
    }
    by_namespace
        .into_iter()
        .map(|(ns, apps)| {
            let sels = weft_api::meshnode::selectors_for_site(apps, site);
            (ns.to_string(), sels)
        })
        .filter(|(_, sels)| !sels.is_empty())
        .collect()
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

#[cfg(test)]
mod tests {
    use weft_api::Selector;

    use super::*;

    fn app(sites: &[&str], selector: Selector) -> MeshAppSpec {
        MeshAppSpec {
            sites: sites.iter().map(|s| s.to_string()).collect(),
            selector,
            ..Default::default()
        }
    }

    #[test]
    fn a_node_gets_the_selectors_of_the_apps_of_its_site() {
        let web = ObjectKey::new("demo", "web");
        let edge = ObjectKey::new("demo", "edge-app");
        let both = ObjectKey::new("ops", "both");
        let apps = [
            (web.clone(), app(&[], Selector::labels([("tier", "web")]))),
            (edge.clone(), app(&["edge"], Selector::default())),
            (both.clone(), app(&["local", "edge"], Selector::default())),
        ];
        let names = |site: &str| -> Vec<(String, Vec<String>)> {
            site_selectors(apps.iter().map(|(k, s)| (k, s)), site)
                .into_iter()
                .map(|(ns, sels)| (ns, sels.into_iter().map(|a| a.app).collect()))
                .collect()
        };
        let pairs = |v: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
            v.iter()
                .map(|(ns, a)| (ns.to_string(), a.iter().map(|x| x.to_string()).collect()))
                .collect()
        };
        assert_eq!(
            names("local"),
            pairs(&[("demo", &["demo/web"]), ("ops", &["ops/both"])]),
            "no sites = local only"
        );
        assert_eq!(
            names("edge"),
            pairs(&[("demo", &["demo/edge-app"]), ("ops", &["ops/both"])])
        );
        let local = site_selectors(apps.iter().map(|(k, s)| (k, s)), "local");
        assert_eq!(
            local["demo"][0].selector,
            Selector::labels([("tier", "web")])
        );
    }

    #[test]
    fn the_daemon_and_the_planner_agree_on_claims() {
        let key = ObjectKey::new("demo", "web");
        let spec = app(&[], Selector::labels([("tier", "web")]));
        let sel = &site_selectors([(&key, &spec)], "local")["demo"][0];
        for (ns, labels, want) in [
            ("demo", vec![("tier", "web")], true),
            ("demo", vec![("weft.dev/app", "web")], true),
            ("demo", vec![("tier", "db")], false),
            ("other", vec![("tier", "web")], false),
        ] {
            let labels: Labels = labels
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(claims(&key, &spec, ns, &labels), want, "{ns} {labels:?}");
            assert_eq!(sel.claims(ns, &labels), want, "{ns} {labels:?}");
        }
    }
}
