//! Reconnect delays: exponential backoff with full jitter from a seeded RNG.

use std::time::Duration;

use crate::rng::Rng;

/// The reconnect policy.
///
/// The delay before attempt `n` (counting from 1) is drawn uniformly from
/// `[min, min(max, min * 2^n)]` with the session's seeded RNG, so it is
/// always within `[min, max]`, grows exponentially, and clients that lost
/// the same server spread out instead of reconnecting in lock step — from
/// the first attempt on, which is drawn from `[min, 2 * min]`.
///
/// ```
/// use std::time::Duration;
/// use crdt_socket_sync::client::Backoff;
/// use crdt_socket_sync::rng::Rng;
///
/// let policy = Backoff::default();
/// let mut rng = Rng::new(7);
/// let d = policy.delay(3, &mut rng).unwrap();
/// assert!(d >= policy.min && d <= policy.max);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Shortest delay. Default 100 ms.
    pub min: Duration,
    /// Longest delay. Default 2.5 s: an interactive client should be back
    /// within a few seconds of its server.
    pub max: Duration,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
    /// A connection whose handshake succeeded and that then stayed up this
    /// long resets the attempt counter, so the next loss is retried after
    /// `min` again. Default 1 s: a server that restarts now and then is
    /// rejoined quickly each time, while one that accepts and drops every
    /// connection at once still backs off.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(2500),
            max_attempts: None,
            reset_after: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based), or `None` when the
    /// policy gives up.
    pub fn delay(&self, attempt: u32, rng: &mut Rng) -> Option<Duration> {
        if self.max_attempts.is_some_and(|cap| attempt > cap) {
            return None;
        }
        let min = self.min.min(self.max);
        // Even the first attempt gets a range as wide as `min`: clients cut
        // off together must not all come back after exactly `min`.
        let shift = attempt.min(63);
        let min_ns = u64::try_from(min.as_nanos()).unwrap_or(u64::MAX);
        let max_ns = u64::try_from(self.max.as_nanos()).unwrap_or(u64::MAX);
        let cap = min_ns.saturating_mul(1u64 << shift).min(max_ns).max(min_ns);
        let jitter = rng.below_or_equal(cap - min_ns);
        Some(Duration::from_nanos(min_ns + jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, proptest};

    proptest! {
        #[test]
        fn delays_stay_within_min_and_max(
            seed: u64,
            attempt in 1u32..200,
            min_ms in 0u64..5_000,
            max_ms in 0u64..100_000,
        ) {
            let policy = Backoff {
                min: Duration::from_millis(min_ms),
                max: Duration::from_millis(max_ms),
                ..Backoff::default()
            };
            let mut rng = Rng::new(seed);
            let d = policy.delay(attempt, &mut rng).unwrap();
            prop_assert!(d >= policy.min.min(policy.max));
            prop_assert!(d <= policy.max.max(policy.min.min(policy.max)));
        }
    }

    #[test]
    fn the_first_delay_is_jittered_too() {
        let policy = Backoff::default();
        let firsts: std::collections::BTreeSet<Duration> = (0..64)
            .map(|seed| policy.delay(1, &mut Rng::new(seed)).unwrap())
            .collect();
        assert!(firsts.len() > 60, "{} distinct first delays", firsts.len());
        assert!(
            firsts
                .iter()
                .all(|d| *d >= policy.min && *d <= policy.min * 2)
        );
    }

    #[test]
    fn gives_up_after_the_cap() {
        let policy = Backoff {
            max_attempts: Some(2),
            ..Backoff::default()
        };
        let mut rng = Rng::new(1);
        assert!(policy.delay(2, &mut rng).is_some());
        assert!(policy.delay(3, &mut rng).is_none());
    }

    #[test]
    fn grows_exponentially_on_average() {
        let policy = Backoff::default();
        let mut rng = Rng::new(3);
        let mean = |attempt, rng: &mut Rng| {
            (0..1000)
                .map(|_| policy.delay(attempt, rng).unwrap().as_secs_f64())
                .sum::<f64>()
                / 1000.0
        };
        let m1 = mean(1, &mut rng);
        let m4 = mean(4, &mut rng);
        let m20 = mean(20, &mut rng);
        assert!(
            m1 > 0.13 && m1 < 0.17,
            "attempt 1 averages (0.1+0.2)/2: {m1}"
        );
        assert!(m4 > 0.7 && m4 < 1.0, "attempt 4 averages (0.1+1.6)/2: {m4}");
        assert!(
            m20 > 1.2 && m20 < 1.4,
            "capped at max, averages (0.1+2.5)/2: {m20}"
        );
    }
}
