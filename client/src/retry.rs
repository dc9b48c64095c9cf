//! The one retry rule of the house: exponential back-off with jitter.
//!
//! Every retried operation (a flush to ClickHouse, a restore, a publish to Kafka, a webhook
//! delivery, a redelivery round) waits `delay(attempt)` between attempts:
//!
//! - the **ceiling** doubles from `initial` with each attempt, up to `max`;
//! - the **delay** is drawn uniformly between half the ceiling and the ceiling ("equal jitter"):
//!   many clients that failed together (every partition of a flush, every alerter replica after a
//!   broker restart) spread their retries instead of hammering the recovering service in step,
//!   and no delay is ever shorter than half its ceiling, so a loop never spins.
//!
//! The randomness comes from the standard library's per-process hash keys: no random-number crate,
//! so embedded libraries stay lean.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Exponential back-off from `initial` doubling to `max`, with equal jitter (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// From `initial` (the first retry's ceiling) doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max }
    }

    /// The ceiling of retry number `attempt` (0 for the first retry): `initial × 2^attempt`, at
    /// most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `attempt`: uniform in `[ceiling / 2, ceiling]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            random_u64() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// A sequence of delays starting at retry 0.
    pub fn attempts(self) -> Attempts {
        Attempts {
            backoff: self,
            attempt: 0,
        }
    }
}

/// The delays of successive retries of one operation ([`Backoff::attempts`]).
#[derive(Debug, Clone)]
pub struct Attempts {
    backoff: Backoff,
    attempt: u32,
}

impl Attempts {
    /// The delay before the next retry; each call moves one attempt on.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The ceiling of the next delay (to check whether it still fits a deadline).
    pub fn next_ceiling(&self) -> Duration {
        self.backoff.ceiling(self.attempt)
    }

    /// Retries made so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts again from the first retry (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random `u64`: a fresh `RandomState` carries fresh keys (per process, then incremented).
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_maximum() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ceilings: Vec<u128> = (0..9).map(|a| backoff.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn delays_stay_between_half_the_ceiling_and_the_ceiling_and_vary() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..10 {
            let ceiling = backoff.ceiling(attempt);
            let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(attempt)).collect();
            assert!(delays.iter().all(|d| *d >= ceiling / 2 && *d <= ceiling));
            let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
            assert!(distinct.len() > 10, "no jitter at attempt {attempt}");
        }
    }

    #[test]
    fn a_sequence_moves_on_and_resets() {
        let mut attempts =
            Backoff::new(Duration::from_millis(10), Duration::from_millis(40)).attempts();
        assert_eq!(attempts.next_ceiling(), Duration::from_millis(10));
        attempts.next_delay();
        attempts.next_delay();
        assert_eq!(attempts.attempt(), 2);
        assert_eq!(attempts.next_ceiling(), Duration::from_millis(40));
        attempts.reset();
        assert_eq!(attempts.next_ceiling(), Duration::from_millis(10));
    }

    #[test]
    fn a_zero_backoff_never_waits() {
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::ZERO).delay(3),
            Duration::ZERO
        );
    }
}
