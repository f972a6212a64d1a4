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

/// The apps of one namespace, indexed so a workload is checked only against
/// apps that could claim it: by name (the `weft.dev/app` label) and by one
/// `matchLabels` pair of each selector (a workload lacking that pair cannot
/// match). Apps whose selector has only expressions are always checked.
/// Without it every workload was checked against every app of its
/// namespace: 30,000 workloads x 10,000 apps per pass.
#[derive(Default)]
struct NamespaceIndex<'a> {
    by_name: BTreeMap<&'a str, usize>,
    by_pair: BTreeMap<(&'a str, &'a str), Vec<usize>>,
    always: Vec<usize>,
    /// In key order; candidates are positions here.
    apps: Vec<(&'a ObjectKey, &'a MeshAppSpec)>,
}

impl<'a> NamespaceIndex<'a> {
    fn add(&mut self, key: &'a ObjectKey, spec: &'a MeshAppSpec) {
        let i = self.apps.len();
        self.apps.push((key, spec));
        self.by_name.insert(key.name.as_str(), i);
        let sel = &spec.selector;
        if let Some((k, v)) = sel.match_labels.iter().next() {
            self.by_pair
                .entry((k.as_str(), v.as_str()))
                .or_default()
                .push(i);
        } else if !sel.match_expressions.is_empty() {
            self.always.push(i);
        }
    }

    /// Apps that claim a workload with `labels`, in key order.
    fn claimants(&self, namespace: &str, labels: &Labels) -> Vec<&'a ObjectKey> {
        let mut cand: BTreeSet<usize> = self.always.iter().copied().collect();
        if let Some(i) = labels
            .get(weft_api::labels::APP_LABEL)
            .and_then(|n| self.by_name.get(n.as_str()))
        {
            cand.insert(*i);
        }
        for (k, v) in labels {
            if let Some(is) = self.by_pair.get(&(k.as_str(), v.as_str())) {
                cand.extend(is.iter().copied());
            }
        }
        cand.into_iter()
            .map(|i| self.apps[i])
            .filter(|(key, spec)| claims(key, spec, namespace, labels))
            .map(|(key, _)| key)
            .collect()
    }
}

/// Places every workload of every node with at most one of `apps`.
pub fn assign_workloads(
    apps: &BTreeMap<ObjectKey, &MeshAppSpec>,
    workloads: &BTreeMap<String, BTreeMap<ObjectKey, Labels>>,
    previous_specs: &BTreeMap<String, MeshNodeSpec>,
) -> Membership {
    let mut by_namespace: BTreeMap<&str, NamespaceIndex<'_>> = BTreeMap::new();
    for (key, spec) in apps {
        by_namespace
            .entry(key.namespace.as_str())
            .or_default()
            .add(key, spec);
    }
    let mut out = Membership::default();
    for (node, on_node) in workloads {
        let previous = previous_specs.get(node);
        for (wl, labels) in on_node {
            let Some(index) = by_namespace.get(wl.namespace.as_str()) else {
                continue;
            };
            let claimants = index.claimants(&wl.namespace, labels);
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
    use proptest::prelude::*;
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

    fn labels_from(v: &[(u8, u8)]) -> Labels {
        v.iter()
            .map(|(k, v)| (format!("k{}", k % 4), format!("v{}", v % 3)))
            .collect()
    }

    proptest! {
        /// The index finds exactly the apps the rule says, in key order.
        #[test]
        fn the_index_finds_exactly_the_claimants(
            apps in prop::collection::vec((0u8..3, prop::collection::vec((any::<u8>(), any::<u8>()), 0..3), any::<bool>()), 0..12),
            workloads in prop::collection::vec((0u8..3, prop::collection::vec((any::<u8>(), any::<u8>()), 0..4), 0u8..14), 1..20),
        ) {
            let specs: Vec<(ObjectKey, MeshAppSpec)> = apps
                .iter()
                .enumerate()
                .map(|(i, (ns, ls, expr))| {
                    let mut sel = Selector {
                        match_labels: labels_from(ls),
                        ..Default::default()
                    };
                    if *expr {
                        sel.match_expressions.push(weft_api::selector::SelectorRequirement {
                            key: "k0".into(),
                            operator: weft_api::selector::SelectorOperator::Exists,
                            values: vec![],
                        });
                    }
                    (ObjectKey::new(format!("ns{ns}"), format!("a{i}")), app(&[], sel))
                })
                .collect();
            let map: BTreeMap<ObjectKey, &MeshAppSpec> = specs.iter().map(|(k, s)| (k.clone(), s)).collect();
            let mut by_ns: BTreeMap<&str, NamespaceIndex<'_>> = BTreeMap::new();
            for (k, s) in &map {
                by_ns.entry(k.namespace.as_str()).or_default().add(k, s);
            }
            for (ns, ls, named) in &workloads {
                let ns = format!("ns{ns}");
                let mut labels = labels_from(ls);
                labels.insert(weft_api::labels::APP_LABEL.into(), format!("a{named}"));
                let naive: Vec<&ObjectKey> = map
                    .iter()
                    .filter(|(k, s)| claims(k, s, &ns, &labels))
                    .map(|(k, _)| k)
                    .collect();
                let indexed = by_ns.get(ns.as_str()).map(|i| i.claimants(&ns, &labels)).unwrap_or_default();
                prop_assert_eq!(naive, indexed);
            }
        }
    }
}
