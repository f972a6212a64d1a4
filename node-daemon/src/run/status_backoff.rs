//! Pacing and logging of failed status writes, for both transports (the
//! status subresource in Kubernetes, the status file in standalone mode).
//!
//! Without it the loop retried on every pass, so an API outage meant two log
//! lines per second per daemon. Now a failed write is retried after
//! [`API_RETRY`] (250 ms doubling to 4 s, jittered: still quick once the
//! server is back), and the log says what changed rather than what repeats:
//!
//! ```text
//!  first failure         warn  "cannot write MeshNode status" + error
//!  further failures      debug, and one warn summary per SUMMARY_EVERY
//!  first success after   info  "status write recovered after N failures over T s"
//! ```
//!
//! Nothing is lost by skipping passes: the loop keeps its last written
//! status, so the next write carries the status of the pass that makes it.
//! Pure: every method takes `now`, so tests need no sleeps.

use std::fmt::Display;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weft_api::backoff::{Exponential, Policy, API_RETRY};

/// While writes keep failing, one warn summary at most this often (each
/// failure in between is logged at debug).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// When the next status write may be attempted, and what to log.
#[derive(Debug)]
pub struct Backoff {
    delays: Exponential,
    failures: u32,
    first_failure: Option<Instant>,
    retry_at: Option<Instant>,
    last_line: Option<Instant>,
}

/// What [`Backoff::failed`] decided to log.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The first failure since the last success: a warning with the error.
    First {
        /// Wait before the next attempt.
        retry_in: Duration,
    },
    /// Still failing and [`SUMMARY_EVERY`] since the last line: one warning.
    Summary {
        /// Failures so far, this one included.
        failures: u32,
        /// Since the first of them.
        failing_for: Duration,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
    /// Still failing: debug only.
    Again {
        /// Failures so far, this one included.
        failures: u32,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
}

/// The first success after failures.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    /// How many writes failed.
    pub failures: u32,
    /// From the first failure to this success.
    pub over: Duration,
}

impl Backoff {
    /// Paced by `policy`, jitter from `seed`.
    pub fn new(policy: Policy, seed: u64) -> Self {
        Backoff {
            delays: Exponential::new(policy, seed),
            failures: 0,
            first_failure: None,
            retry_at: None,
            last_line: None,
        }
    }

    /// [`API_RETRY`], seeded from the clock so daemons do not retry in step.
    pub fn for_status_writes() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Backoff::new(API_RETRY, seed)
    }

    /// Whether a write may be attempted at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// Records a failed write at `now`: schedules the retry and says what
    /// to log.
    pub fn failed(&mut self, now: Instant) -> Failure {
        let retry_in = self
            .delays
            .next()
            .unwrap_or_else(|| self.delays.policy().max);
        self.retry_at = Some(now + retry_in);
        self.failures = self.failures.saturating_add(1);
        let Some(first) = self.first_failure else {
            self.first_failure = Some(now);
            self.last_line = Some(now);
            return Failure::First { retry_in };
        };
        if self
            .last_line
            .is_none_or(|t| now.duration_since(t) >= SUMMARY_EVERY)
        {
            self.last_line = Some(now);
            return Failure::Summary {
                failures: self.failures,
                failing_for: now.duration_since(first),
                retry_in,
            };
        }
        Failure::Again {
            failures: self.failures,
            retry_in,
        }
    }

    /// Records a successful write at `now`; after failures, says so once.
    pub fn succeeded(&mut self, now: Instant) -> Option<Recovered> {
        let first = self.first_failure.take();
        let failures = std::mem::take(&mut self.failures);
        self.retry_at = None;
        self.last_line = None;
        self.delays.reset();
        first.map(|t| Recovered {
            failures,
            over: now.duration_since(t),
        })
    }
}

impl Failure {
    /// Logs this failure of a write that failed with `error`.
    pub fn log(&self, error: &dyn Display) {
        match self {
            Failure::First { retry_in } => tracing::warn!(
                error = %error,
                retry_in_ms = retry_in.as_millis() as u64,
                "cannot write MeshNode status; retrying with backoff"
            ),
            Failure::Summary {
                failures,
                failing_for,
                retry_in,
            } => tracing::warn!(
                error = %error,
                failures,
                failing_for_s = failing_for.as_secs(),
                retry_in_ms = retry_in.as_millis() as u64,
                "still cannot write MeshNode status"
            ),
            Failure::Again { failures, retry_in } => tracing::debug!(
                error = %error,
                failures,
                retry_in_ms = retry_in.as_millis() as u64,
                "cannot write MeshNode status"
            ),
        }
    }
}

impl Recovered {
    /// Logs the recovery.
    pub fn log(&self) {
        tracing::info!(
            failures = self.failures,
            over_s = self.over.as_secs_f64(),
            "status write recovered after {} failures over {:.1} s",
            self.failures,
            self.over.as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn no_failure_no_wait_and_nothing_to_report() {
        let mut b = Backoff::new(API_RETRY, 1);
        let t0 = Instant::now();
        assert!(b.due(t0));
        assert_eq!(b.succeeded(t0), None);
        assert!(b.due(t0));
    }

    #[test]
    fn a_failure_waits_its_delay_and_the_delays_grow_to_the_cap() {
        let mut b = Backoff::new(API_RETRY, 2);
        let mut now = Instant::now();
        let Failure::First { retry_in } = b.failed(now) else {
            panic!("the first failure is reported as such");
        };
        assert!(retry_in <= API_RETRY.min);
        assert!(!b.due(now + retry_in - Duration::from_millis(1)));
        assert!(b.due(now + retry_in));
        let mut waits = vec![retry_in];
        for _ in 0..8 {
            now += waits[waits.len() - 1];
            let retry_in = match b.failed(now) {
                Failure::Again { retry_in, .. } | Failure::Summary { retry_in, .. } => retry_in,
                f => panic!("{f:?}"),
            };
            waits.push(retry_in);
        }
        assert!(waits.iter().all(|w| *w <= API_RETRY.max), "{waits:?}");
        assert!(
            waits[5..].iter().all(|w| *w >= API_RETRY.max / 2),
            "{waits:?}"
        );
        // At the cap within seconds: the waits before it add up to under 4 s.
        assert!(waits[..4].iter().sum::<Duration>() < secs(4.0), "{waits:?}");
    }

    /// A five-minute outage with a pass every second: one warning first,
    /// at most one summary a minute, retries a few seconds apart instead of
    /// every pass; then one recovery line, and the next failure is "first"
    /// again, back at the floor.
    #[test]
    fn an_outage_logs_once_per_state_change_and_recovery_is_reported_once() {
        let mut b = Backoff::new(API_RETRY, 3);
        let t0 = Instant::now();
        let (mut firsts, mut summaries, mut attempts) = (0, 0, 0);
        for pass in 0..300 {
            let now = t0 + secs(f64::from(pass));
            if !b.due(now) {
                continue;
            }
            attempts += 1;
            match b.failed(now) {
                Failure::First { .. } => firsts += 1,
                Failure::Summary { failing_for, .. } => {
                    assert!(failing_for >= SUMMARY_EVERY);
                    summaries += 1;
                }
                Failure::Again { .. } => {}
            }
        }
        assert_eq!(firsts, 1);
        assert!((1..=5).contains(&summaries), "{summaries} summaries");
        assert!(
            (300 / 4..=300 / 2 + 5).contains(&attempts),
            "{attempts} attempts in 300 passes"
        );
        // Back: the next due pass writes, and says so once.
        let mut now = t0 + secs(300.0);
        while !b.due(now) {
            now += secs(1.0);
        }
        assert!(now - (t0 + secs(300.0)) <= API_RETRY.max);
        let r = b.succeeded(now).expect("a recovery after failures");
        assert_eq!(r.failures, attempts);
        assert!(r.over >= secs(299.0), "{r:?}");
        assert_eq!(b.succeeded(now), None, "reported once");
        assert!(b.due(now));
        match b.failed(now) {
            Failure::First { retry_in } => assert!(retry_in <= API_RETRY.min),
            f => panic!("a new outage starts over: {f:?}"),
        }
    }
}
