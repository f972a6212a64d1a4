//! Which spec of each user object is in force. The current spec when it is
//! valid; otherwise the last accepted one (recorded in the object's status,
//! so it survives an operator restart), so a bad edit never tears down or
//! renumbers what works; nothing when no version was ever accepted.
//!
//! ```text
//!  current spec ─ input errors? ─ validate ─ immutable fields ─► accepted
//!                       └──────────┴───────────┴─ any error ─► last accepted (if still usable)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use weft_api::meshsite::SiteKind;
use weft_api::{validation, EnforcedApp, EnforcedSite, MeshAppSpec, MeshHubSpec, MeshSiteSpec};

use super::error::{ErrorKind, PlanError};
use super::snapshot::{ObjectKey, Snapshot};
use super::validate::{self, ValidApp};

/// What is decided for one MeshApp.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppDecision {
    /// Problems of the current spec (empty: accepted).
    pub errors: Vec<PlanError>,
    /// The spec in force and its checked values.
    pub effective: Option<(MeshAppSpec, ValidApp)>,
    /// While the current spec is rejected: the version still in force.
    pub still_enforced: Option<EnforcedApp>,
}

impl AppDecision {
    /// The current spec is the one in force.
    pub fn accepted(&self) -> bool {
        self.errors.is_empty() && self.effective.is_some()
    }
}

/// What is decided for one MeshSite.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteDecision {
    /// Problems of the current spec (empty: accepted).
    pub errors: Vec<PlanError>,
    /// The spec in force.
    pub effective: Option<MeshSiteSpec>,
    /// While the current spec is rejected: the version still in force.
    pub still_enforced: Option<EnforcedSite>,
}

/// Longest `description` of a MeshSite.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Most sites one app may span, and most members of a hub.
pub const MAX_SITES: usize = 64;
/// Most apps one hub member may export.
pub const MAX_EXPORTS: usize = 1024;

/// Display name of a cluster-scoped object.
pub fn cluster_object(kind: &str, name: &str) -> String {
    format!("{kind} {name}")
}

fn input_errors(s: &Snapshot, object: &str) -> Vec<PlanError> {
    s.input_errors.get(object).cloned().unwrap_or_default()
}

/// Problems of a MeshSite spec on its own.
pub fn site_errors(name: &str, spec: &MeshSiteSpec) -> Vec<PlanError> {
    let object = cluster_object("MeshSite", name);
    let mut errs = Vec::new();
    let mut err = |field: &str, reason: &str, msg: String| {
        errs.push(PlanError::new(
            ErrorKind::Invalid,
            &object,
            field,
            reason,
            msg,
        ));
    };
    if let Err(e) = validation::dns_subdomain(name) {
        err("metadata.name", "InvalidName", e);
    }
    match (&spec.kind, &spec.hub) {
        (SiteKind::Remote, None) => err(
            "spec.hub",
            "MissingHub",
            "a Remote site must name the MeshHub it is imported through".into(),
        ),
        (SiteKind::Remote, Some(hub)) => {
            if let Err(e) = validation::dns_subdomain(hub) {
                err("spec.hub", "InvalidHub", e);
            }
        }
        (kind, Some(_)) => err(
            "spec.hub",
            "InvalidHub",
            format!("only a Remote site names a hub; this site is of kind {kind:?}"),
        ),
        _ => {}
    }
    if let Some(access) = &spec.hub_access {
        if spec.kind != SiteKind::Remote {
            err(
                "spec.hubAccess",
                "InvalidHubAccess",
                format!(
                    "only a Remote site says how to reach a hub; this site is of kind {:?}",
                    spec.kind
                ),
            );
        }
        match (&access.directory, &access.kubeconfig_secret) {
            (Some(_), Some(_)) | (None, None) => err(
                "spec.hubAccess",
                "InvalidHubAccess",
                "give exactly one of directory (standalone) and kubeconfigSecret (Kubernetes)"
                    .into(),
            ),
            (Some(d), None) if !d.starts_with('/') => err(
                "spec.hubAccess.directory",
                "InvalidHubAccess",
                format!(
                    "{:?} must be an absolute path",
                    validation::printable(d, 80)
                ),
            ),
            (None, Some(secret)) => {
                if let Err(e) = validation::dns_subdomain(secret) {
                    err("spec.hubAccess.kubeconfigSecret", "InvalidHubAccess", e);
                }
            }
            _ => {}
        }
    }
    if let Some(d) = &spec.description {
        if d.len() > MAX_DESCRIPTION_LEN {
            err(
                "spec.description",
                "TooLong",
                format!("{} bytes; at most {MAX_DESCRIPTION_LEN}", d.len()),
            );
        }
    }
    errs
}

/// Decides every MeshSite.
pub fn decide_sites(s: &Snapshot) -> BTreeMap<String, SiteDecision> {
    let mut out = BTreeMap::new();
    for (name, spec) in &s.sites {
        let mut errors = input_errors(s, &cluster_object("MeshSite", name));
        if errors.is_empty() {
            errors = site_errors(name, spec);
        }
        errors.sort();
        let decision = if errors.is_empty() {
            SiteDecision {
                errors,
                effective: Some(spec.clone()),
                still_enforced: None,
            }
        } else {
            let prev = s
                .previous_sites
                .get(name)
                .filter(|p| site_errors(name, &p.spec).is_empty());
            SiteDecision {
                errors,
                effective: prev.map(|p| p.spec.clone()),
                still_enforced: prev.cloned(),
            }
        };
        out.insert(name.clone(), decision);
    }
    out
}

/// The kind of a site in force (`None`: unknown site, or none in force).
pub fn effective_site_kind(s: &Snapshot, site: &str) -> Option<SiteKind> {
    let spec = s.sites.get(site)?;
    let object = cluster_object("MeshSite", site);
    if input_errors(s, &object).is_empty() && site_errors(site, spec).is_empty() {
        return Some(spec.kind);
    }
    s.previous_sites
        .get(site)
        .filter(|p| site_errors(site, &p.spec).is_empty())
        .map(|p| p.spec.kind)
}

/// `spec.addressSpace` cannot change once the app has a range, nor be
/// removed once it was given.
fn immutable_errors(
    key: &ObjectKey,
    spec: &MeshAppSpec,
    s: &Snapshot,
    object: &str,
) -> Vec<PlanError> {
    let previous = s
        .previous_ranges
        .get(key)
        .and_then(|p| validate::parse_cidr(p).ok());
    let given_before = s
        .previous_apps
        .get(key)
        .is_some_and(|p| p.spec.address_space.is_some());
    let err = |msg: String| {
        vec![PlanError::new(
            ErrorKind::Invalid,
            object,
            "spec.addressSpace",
            "AddressSpaceImmutable",
            msg,
        )]
    };
    match (&spec.address_space, previous) {
        (Some(now), Some(prev)) => match validate::parse_cidr(now) {
            Ok(n) if n != prev => err(format!(
                "cannot change from {prev} to {n}: addressSpace is immutable, renumbering would cut every live connection; create a new MeshApp instead"
            )),
            _ => Vec::new(),
        },
        (None, Some(prev)) if given_before => err(format!(
            "cannot be removed (it is {prev}): addressSpace is immutable once set"
        )),
        _ => Vec::new(),
    }
}

/// Decides every MeshApp against the sites in force.
pub fn decide_apps(
    s: &Snapshot,
    sites: &BTreeMap<String, MeshSiteSpec>,
) -> BTreeMap<ObjectKey, AppDecision> {
    let mut out = BTreeMap::new();
    for (key, spec) in &s.apps {
        let object = validate::object_name("MeshApp", key);
        let mut errors = input_errors(s, &object);
        let mut current = None;
        if errors.is_empty() {
            match validate::validate_app(key, spec, sites, &s.config) {
                Ok(v) => current = Some(v),
                Err(e) => errors = e,
            }
            errors.extend(immutable_errors(key, spec, s, &object));
        }
        errors.sort();
        errors.dedup();
        let decision = match current {
            Some(v) if errors.is_empty() => AppDecision {
                errors,
                effective: Some((spec.clone(), v)),
                still_enforced: None,
            },
            _ => {
                // The last accepted version stays while it is still valid;
                // a site it named that is gone only shrinks where it runs.
                let prev = s.previous_apps.get(key).and_then(|p| {
                    let v = validate::validate_app_lenient(key, &p.spec, sites, &s.config)?;
                    Some((p, v))
                });
                AppDecision {
                    errors,
                    effective: prev.as_ref().map(|(p, v)| (p.spec.clone(), v.clone())),
                    still_enforced: prev.map(|(p, _)| p.clone()),
                }
            }
        };
        out.insert(key.clone(), decision);
    }
    out
}

/// Problems of a MeshHub spec.
pub fn hub_errors(name: &str, spec: &MeshHubSpec) -> Vec<PlanError> {
    let object = cluster_object("MeshHub", name);
    let mut errs = Vec::new();
    let mut err = |field: String, reason: &str, msg: String| {
        errs.push(PlanError::new(
            ErrorKind::Invalid,
            &object,
            field,
            reason,
            msg,
        ));
    };
    if let Err(e) = validation::dns_subdomain(name) {
        err("metadata.name".into(), "InvalidName", e);
    }
    if spec.members.len() > MAX_SITES {
        err(
            "spec.members".into(),
            "TooMany",
            format!("{} members; at most {MAX_SITES}", spec.members.len()),
        );
    }
    if let Some(pool) = &spec.pool {
        match pool.parse::<ipnet::Ipv4Net>() {
            Ok(net) if net.prefix_len() <= 30 => {}
            Ok(net) => err(
                "spec.pool".into(),
                "InvalidPool",
                format!("{net} is too small to hold an app range (at most /30)"),
            ),
            Err(_) => err(
                "spec.pool".into(),
                "InvalidPool",
                format!("{:?} is not an IPv4 CIDR", validation::printable(pool, 40)),
            ),
        }
    }
    if let Some(n) = spec.block_slices {
        if !n.is_power_of_two() || n > 65536 {
            err(
                "spec.blockSlices".into(),
                "InvalidBlockSlices",
                format!("{n} node slices per block; a power of two from 1 to 65536"),
            );
        }
    }
    let stale = spec
        .stale_after_seconds
        .unwrap_or(weft_api::federation::DEFAULT_STALE_AFTER_SECONDS);
    let prune = spec
        .prune_after_seconds
        .unwrap_or(weft_api::federation::DEFAULT_PRUNE_AFTER_SECONDS);
    if stale < 5 {
        err(
            "spec.staleAfterSeconds".into(),
            "InvalidInterval",
            format!("{stale} s; at least 5"),
        );
    }
    if prune <= stale {
        err(
            "spec.pruneAfterSeconds".into(),
            "InvalidInterval",
            format!("{prune} s must be longer than staleAfterSeconds ({stale} s)"),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, m) in spec.members.iter().enumerate() {
        if let Err(e) = validation::dns_subdomain(&m.site) {
            err(format!("spec.members[{i}].site"), "InvalidSite", e);
        } else if !seen.insert(m.site.as_str()) {
            err(
                format!("spec.members[{i}].site"),
                "DuplicateMember",
                format!("site {:?} is listed twice", m.site),
            );
        }
        if m.exports.len() > MAX_EXPORTS {
            err(
                format!("spec.members[{i}].exports"),
                "TooMany",
                format!("{} exports; at most {MAX_EXPORTS}", m.exports.len()),
            );
        }
        let mut apps = BTreeSet::new();
        for (j, x) in m.exports.iter().enumerate() {
            let field = format!("spec.members[{i}].exports[{j}]");
            match app_reference(x) {
                Err(e) => err(field, "InvalidExport", e),
                Ok(()) if !apps.insert(x.as_str()) => err(
                    field,
                    "DuplicateExport",
                    format!("{} is listed twice", validation::printable(x, 80)),
                ),
                Ok(()) => {}
            }
        }
    }
    errs
}

/// Checks a `namespace/name` reference to a MeshApp.
pub fn app_reference(s: &str) -> Result<(), String> {
    let Some((ns, name)) = s.split_once('/') else {
        return Err(format!(
            "{:?} must be namespace/name",
            validation::printable(s, 80)
        ));
    };
    validation::dns_label(ns).map_err(|e| format!("namespace {e}"))?;
    validation::dns_subdomain(name).map_err(|e| format!("name {e}"))
}
