//! Condition helpers. A condition's `lastTransitionTime` moves only when its
//! status flips, so writers can compare statuses without time noise.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types used across Weft resources.
pub mod types {
    /// Everything the object asks for is in place and working.
    pub const READY: &str = "Ready";
    /// The object is partly working; the reason says what is missing.
    pub const DEGRADED: &str = "Degraded";
    /// The object's spec was accepted (valid, references resolve).
    pub const ACCEPTED: &str = "Accepted";
}

/// Builds a condition; `last_transition_time` is filled by [`set`].
pub fn new(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Inserts or updates `cond` in `list`, keeping the old transition time unless
/// the status changed. Returns whether anything other than time changed.
pub fn set(list: &mut Vec<Condition>, mut cond: Condition, now: Time) -> bool {
    match list.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(old) => {
            cond.last_transition_time = if old.status == cond.status {
                old.last_transition_time.clone()
            } else {
                now
            };
            let changed = !same_ignoring_time(old, &cond);
            *old = cond;
            changed
        }
        None => {
            cond.last_transition_time = now;
            list.push(cond);
            list.sort_by(|a, b| a.type_.cmp(&b.type_));
            true
        }
    }
}

/// Finds a condition by type.
pub fn get<'a>(list: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    list.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present and `True`.
pub fn is_true(list: &[Condition], type_: &str) -> bool {
    get(list, type_).is_some_and(|c| c.status == "True")
}

/// Compares two conditions without their transition times.
pub fn same_ignoring_time(a: &Condition, b: &Condition) -> bool {
    a.type_ == b.type_
        && a.status == b.status
        && a.reason == b.reason
        && a.message == b.message
        && a.observed_generation == b.observed_generation
}

/// Compares two condition lists without transition times (order-insensitive).
pub fn lists_equal_ignoring_time(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| get(b, &x.type_).is_some_and(|y| same_ignoring_time(x, y)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut list = vec![];
        assert!(set(
            &mut list,
            new(types::READY, false, "Pending", "waiting", Some(1)),
            t(10)
        ));
        assert!(set(
            &mut list,
            new(types::READY, false, "Pending", "still waiting", Some(1)),
            t(20)
        ));
        assert_eq!(
            list[0].last_transition_time,
            t(10),
            "same status keeps the time"
        );
        assert!(!set(
            &mut list,
            new(types::READY, false, "Pending", "still waiting", Some(1)),
            t(30)
        ));
        assert!(set(
            &mut list,
            new(types::READY, true, "Ready", "ok", Some(1)),
            t(40)
        ));
        assert_eq!(list[0].last_transition_time, t(40));
        assert!(is_true(&list, types::READY));
    }
}
