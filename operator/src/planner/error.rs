//! Errors the planner attaches to objects. They never abort planning: an
//! object with an error is left out (wholly or partly) and everything else
//! still plans.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of problem a [`PlanError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The spec itself is invalid (bad CIDR, unknown reference, bad selector).
    Invalid,
    /// The object conflicts with another object that wins (overlapping
    /// ranges, a workload claimed by two apps).
    Conflict,
    /// A finite resource ran out (address pool, node slices, listen ports).
    Exhausted,
}

/// One problem found while planning, named by object and field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanError {
    /// Category of the problem.
    pub kind: ErrorKind,
    /// The object, as `Kind namespace/name` (or `Kind name`), e.g. `MeshApp default/web`.
    pub object: String,
    /// The offending field, e.g. `spec.addressSpace` or `spec.sites[1]`.
    pub field: String,
    /// CamelCase reason, usable as a condition reason.
    pub reason: String,
    /// What was expected and what was found.
    pub message: String,
}

impl PlanError {
    /// Builds an error.
    pub fn new(
        kind: ErrorKind,
        object: impl Into<String>,
        field: impl Into<String>,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        PlanError {
            kind,
            object: object.into(),
            field: field.into(),
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {} ({})",
            self.object, self.field, self.message, self.reason
        )
    }
}
