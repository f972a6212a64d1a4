//! Label selectors (the `matchLabels` / `matchExpressions` shape users know from
//! Kubernetes), with evaluation so the planner and the daemon agree on matches.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Selects workloads by their labels. An empty selector matches every workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// Labels that must all be present with exactly these values (keys and
    /// values by the Kubernetes label rules, at most 64 entries).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"}))]
    pub match_labels: BTreeMap<String, String>,
    /// Extra requirements, all of which must hold (at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One requirement of a [`Selector`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelectorRequirement {
    /// Label key the requirement applies to.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// How the label's value is compared with `values`.
    pub operator: SelectorOperator,
    /// Values for `In` / `NotIn` (at least one, at most 64); must be empty
    /// for `Exists` / `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Vec<String>,
}

/// Comparison used by a [`SelectorRequirement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    /// The label is present and its value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl Selector {
    /// A selector requiring exactly these labels.
    pub fn labels<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Selector {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether a workload with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Problems that make the selector unusable, as `(field, message)` pairs
    /// relative to the selector (e.g. `matchExpressions[0].values`).
    pub fn validate(&self) -> Vec<(String, String)> {
        use crate::validation;
        let mut errs: Vec<(String, String)> = validation::labels(&self.match_labels)
            .into_iter()
            .map(|(f, m)| (format!("matchLabels{f}"), m))
            .collect();
        if self.match_expressions.len() > validation::MAX_LABELS {
            errs.push((
                "matchExpressions".into(),
                format!(
                    "{} requirements; at most {}",
                    self.match_expressions.len(),
                    validation::MAX_LABELS
                ),
            ));
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            if !r.key.is_empty() {
                if let Err(e) = validation::label_key(&r.key) {
                    errs.push((format!("matchExpressions[{i}].key"), e));
                }
            }
            if r.values.len() > validation::MAX_SELECTOR_VALUES {
                errs.push((
                    format!("matchExpressions[{i}].values"),
                    format!(
                        "{} values; at most {}",
                        r.values.len(),
                        validation::MAX_SELECTOR_VALUES
                    ),
                ));
            }
            for (j, v) in r.values.iter().enumerate() {
                if let Err(e) = validation::label_value(v) {
                    errs.push((format!("matchExpressions[{i}].values[{j}]"), e));
                }
            }
            let needs_values = matches!(r.operator, SelectorOperator::In | SelectorOperator::NotIn);
            if needs_values && r.values.is_empty() {
                errs.push((
                    format!("matchExpressions[{i}].values"),
                    format!("operator {:?} needs at least one value", r.operator),
                ));
            }
            if !needs_values && !r.values.is_empty() {
                errs.push((
                    format!("matchExpressions[{i}].values"),
                    format!("operator {:?} takes no values", r.operator),
                ));
            }
            if r.key.is_empty() {
                errs.push((
                    format!("matchExpressions[{i}].key"),
                    "must not be empty".into(),
                ));
            }
        }
        errs
    }
}

impl SelectorRequirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => v.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => v.is_some(),
            SelectorOperator::DoesNotExist => v.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(Selector::default().matches(&l(&[])));
        assert!(Selector::default().matches(&l(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_combine() {
        let mut s = Selector::labels([("app", "web")]);
        s.match_expressions.push(SelectorRequirement {
            key: "tier".into(),
            operator: SelectorOperator::NotIn,
            values: vec!["canary".into()],
        });
        assert!(s.matches(&l(&[("app", "web")])));
        assert!(s.matches(&l(&[("app", "web"), ("tier", "main")])));
        assert!(!s.matches(&l(&[("app", "web"), ("tier", "canary")])));
        assert!(!s.matches(&l(&[("app", "db")])));
    }

    #[test]
    fn in_without_values_is_rejected_with_field() {
        let s = Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![SelectorRequirement {
                key: "x".into(),
                operator: SelectorOperator::In,
                values: vec![],
            }],
        };
        let errs = s.validate();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "matchExpressions[0].values");
    }
}
