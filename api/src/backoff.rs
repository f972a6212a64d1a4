//! Retry delays against the API server, shared by the operator and the node
//! daemon: exponential from a floor to a cap, jittered, started over after a
//! success. Pure: the caller seeds the jitter (and keeps the clock).
//!
//! ```text
//!  attempt   1     2     3    4    5+
//!  base      250ms 500ms 1s   2s   4s (cap)     delay = base × [0.5, 1.0)
//! ```

use std::time::Duration;

/// Floor and cap of an exponential backoff (the factor is always 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Base delay of the first retry.
    pub min: Duration,
    /// Longest delay; the jittered delay never exceeds it.
    pub max: Duration,
}

/// The one policy for every watch and for the daemon's status writes.
///
/// The cap is what bounds recovery after an API server outage: a client
/// deep in its backoff notices the server is back at most this long after
/// it is. kube-runtime's default (client-go's 800 ms to 30 s) left watches
/// and CNI ADDs waiting up to a minute. Four seconds keeps recovery in
/// seconds; the requests are cheap (each daemon watches only its own
/// MeshNode and pods, the operator is one replica), and the jitter spreads
/// a fleet of daemons over half the interval so they do not retry in step.
pub const API_RETRY: Policy = Policy {
    min: Duration::from_millis(250),
    max: Duration::from_secs(4),
};

impl Policy {
    /// The delay before retry `attempt` (0-based) without jitter: `min`
    /// doubled `attempt` times, capped at `max`.
    pub fn base(&self, attempt: u32) -> Duration {
        self.min
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// The delays of one retry sequence: an endless iterator, restarted with
/// [`Exponential::reset`] after a success.
#[derive(Clone, Debug)]
pub struct Exponential {
    policy: Policy,
    attempt: u32,
    rng: u64,
}

impl Exponential {
    /// A fresh sequence; `seed` picks the jitter (give each client its own,
    /// e.g. from the clock, so a fleet spreads out).
    pub fn new(policy: Policy, seed: u64) -> Self {
        Exponential {
            policy,
            attempt: 0,
            rng: seed,
        }
    }

    /// Starts over at [`Policy::min`].
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The policy in use.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// splitmix64: a few lines of well-spread bits, no dependency.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Iterator for Exponential {
    type Item = Duration;

    /// The next delay: the base of this attempt scaled by a factor in
    /// [0.5, 1.0), so it never exceeds the cap.
    fn next(&mut self) -> Option<Duration> {
        let base = self.policy.base(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        // 53 random bits as a fraction in [0, 1).
        let fraction = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        Some(base.mul_f64(1.0 - fraction / 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_doubles_from_the_floor_to_the_cap_and_stays_there() {
        let bases: Vec<Duration> = (0..7).map(|a| API_RETRY.base(a)).collect();
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(
            bases,
            [
                ms(250),
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(4000),
                ms(4000)
            ]
        );
        assert_eq!(API_RETRY.base(u32::MAX), API_RETRY.max, "no overflow");
    }

    #[test]
    fn the_cap_is_reached_within_seconds_and_never_exceeded() {
        for seed in 0..200 {
            let delays: Vec<Duration> = Exponential::new(API_RETRY, seed).take(50).collect();
            for (i, d) in delays.iter().enumerate() {
                let base = API_RETRY.base(i as u32);
                assert!(*d >= base / 2 && *d <= base, "{i}: {d:?}");
            }
            // Everything before the first capped retry adds up to under 4 s.
            let before_cap: Duration = delays[..4].iter().sum();
            assert!(before_cap < Duration::from_secs(4), "{before_cap:?}");
            assert!(delays.iter().all(|d| *d <= API_RETRY.max));
        }
    }

    #[test]
    fn reset_starts_over_at_the_floor() {
        let mut b = Exponential::new(API_RETRY, 7);
        for _ in 0..10 {
            b.next();
        }
        assert!(b.next().unwrap() >= API_RETRY.max / 2);
        b.reset();
        assert!(b.next().unwrap() <= API_RETRY.min);
    }

    #[test]
    fn jitter_spreads_clients_with_different_seeds() {
        let capped = |seed| Exponential::new(API_RETRY, seed).nth(10).unwrap();
        let distinct: std::collections::BTreeSet<Duration> = (0..20).map(capped).collect();
        assert!(distinct.len() > 10, "{distinct:?}");
        assert_eq!(
            capped(3),
            capped(3),
            "the same seed gives the same sequence"
        );
    }
}
