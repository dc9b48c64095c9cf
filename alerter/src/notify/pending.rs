//! Notifications kept for a later try: a delivery that failed in a way that may pass later
//! ([`NotifyError::is_retryable`](super::NotifyError::is_retryable): rate limited, server error,
//! unreachable, TLS handshake) after its notifier's attempts ran out is kept here and offered again
//! after a delay that doubles per round (30 s, 1 min, ... up to 10 min by default), until it is
//! delivered or refused for good. A receiver that is down, or whose certificate is being replaced,
//! therefore delays notifications instead of losing them.
//!
//! Pure and without IO, like [`super::grouping`]: the caller sends, and hands back what failed.
//!
//! # Bounds and what can still be lost
//! At most [`RedeliveryPolicy::capacity`] notifications wait (per destination: the service runs
//! one dispatcher per webhook); when full, the oldest is handed back
//! to the caller to be logged and counted as dropped (a webhook down long enough to fill it has
//! been alerting on its own failures for a while). The queue lives in memory: notifications still
//! pending when the alerter stops are logged with their number and not kept across restarts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::grouping::Grouped;
use super::{Notice, NotifyError};

/// How failed notifications are kept and offered again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedeliveryPolicy {
    /// Notifications waiting at most; a thousand notices is far more than one incident produces,
    /// and little memory.
    pub capacity: usize,
    /// Delay before the first redelivery round; doubles after each failed round. Thirty seconds:
    /// the notifier has just spent its own attempts (about a minute with the default retry policy).
    pub initial_delay_ms: u64,
    /// Upper bound of the doubling delay: how stale a notification can get once the receiver is
    /// back.
    pub max_delay_ms: u64,
}

impl Default for RedeliveryPolicy {
    fn default() -> Self {
        Self {
            capacity: 1_000,
            initial_delay_ms: 30_000,
            max_delay_ms: 600_000,
        }
    }
}

impl RedeliveryPolicy {
    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), NotifyError> {
        if self.capacity == 0 {
            return Err(NotifyError::Config(
                "redelivery.capacity must be at least 1".to_string(),
            ));
        }
        if self.initial_delay_ms == 0 || self.initial_delay_ms > self.max_delay_ms {
            return Err(NotifyError::Config(format!(
                "redelivery.initial_delay_ms ({}) must be positive and at most redelivery.max_delay_ms ({})",
                self.initial_delay_ms, self.max_delay_ms
            )));
        }
        Ok(())
    }

    /// Delay after the `round`-th failed round (1 for the first).
    /// Rounds are per destination (one worker each), not a crowd retrying in step, so the delay
    /// is the rule's ceiling, without jitter: a kept notification comes back when announced.
    pub fn delay(&self, round: u32) -> Duration {
        self.rule().ceiling(round.saturating_sub(1))
    }

    /// The back-off rule of rounds: from `initial_delay_ms` doubling to `max_delay_ms`
    /// ([`infra::retry`]).
    pub fn rule(&self) -> infra::retry::Backoff {
        infra::retry::Backoff::new(
            Duration::from_millis(self.initial_delay_ms),
            Duration::from_millis(self.max_delay_ms),
        )
    }
}

/// One notification to send again.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// A Slack message (the webhook is looked up again from the notice's channel).
    Slack(Grouped),
    /// A PagerDuty trigger or resolve (the routing key is looked up again from the notice).
    PagerDuty(Notice),
    /// A notice for the generic signed webhook (signed again, with a fresh timestamp, each round).
    Webhook(Notice),
}

/// A delivery waiting for its next round.
#[derive(Debug)]
struct Waiting {
    delivery: Delivery,
    /// Failed rounds so far.
    rounds: u32,
    /// When it may be sent again.
    due_at: Instant,
}

/// Failed deliveries waiting for their next round, oldest first.
#[derive(Debug)]
pub struct Pending {
    policy: RedeliveryPolicy,
    waiting: VecDeque<Waiting>,
}

impl Pending {
    /// An empty queue following `policy`.
    pub fn new(policy: RedeliveryPolicy) -> Self {
        Self {
            policy,
            waiting: VecDeque::new(),
        }
    }

    /// Keeps `delivery`, which has now failed `rounds` rounds (1 after the notifier's first
    /// attempts), until its next round is due. Returns the oldest delivery when it had to make room.
    pub fn keep(&mut self, delivery: Delivery, rounds: u32, now: Instant) -> Option<Delivery> {
        let dropped = if self.waiting.len() >= self.policy.capacity.max(1) {
            self.waiting.pop_front().map(|waiting| waiting.delivery)
        } else {
            None
        };
        self.waiting.push_back(Waiting {
            delivery,
            rounds,
            due_at: now + self.policy.delay(rounds),
        });
        dropped
    }

    /// Removes and returns the deliveries due at `now`, with the rounds each has failed, oldest
    /// first.
    pub fn due(&mut self, now: Instant) -> Vec<(Delivery, u32)> {
        let (due, waiting): (VecDeque<_>, VecDeque<_>) = self
            .waiting
            .drain(..)
            .partition(|waiting| waiting.due_at <= now);
        self.waiting = waiting;
        due.into_iter()
            .map(|waiting| (waiting.delivery, waiting.rounds))
            .collect()
    }

    /// Forgets the deliveries `obsolete` says are no longer worth sending (e.g. a PagerDuty trigger
    /// whose incident is being resolved); returns how many.
    pub fn discard(&mut self, obsolete: impl Fn(&Delivery) -> bool) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(|waiting| !obsolete(&waiting.delivery));
        before - self.waiting.len()
    }

    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::tests::sample_notice;

    fn policy(capacity: usize) -> RedeliveryPolicy {
        RedeliveryPolicy {
            capacity,
            initial_delay_ms: 1_000,
            max_delay_ms: 5_000,
        }
    }

    fn pagerduty(policy_id: &str) -> Delivery {
        let mut notice = sample_notice();
        notice.policy_id = policy_id.to_string();
        Delivery::PagerDuty(notice)
    }

    #[test]
    fn delay_doubles_per_round_up_to_the_bound() {
        let delays: Vec<u64> = (1..=5)
            .map(|round| policy(1).delay(round).as_millis() as u64)
            .collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 5_000, 5_000]);
        assert_eq!(policy(1).delay(u32::MAX), Duration::from_millis(5_000));
        assert_eq!(policy(1).delay(0), Duration::from_millis(1_000));
    }

    #[test]
    fn a_delivery_comes_back_once_its_delay_has_passed() {
        let start = Instant::now();
        let mut pending = Pending::new(policy(10));
        assert_eq!(pending.keep(pagerduty("a"), 1, start), None);
        assert_eq!(pending.keep(pagerduty("b"), 2, start), None);
        assert!(pending.due(start + Duration::from_millis(999)).is_empty());
        assert_eq!(
            pending.due(start + Duration::from_millis(1_000)),
            [(pagerduty("a"), 1)]
        );
        assert_eq!(pending.len(), 1);
        assert_eq!(
            pending.due(start + Duration::from_millis(2_000)),
            [(pagerduty("b"), 2)]
        );
        assert!(pending.is_empty());
    }

    #[test]
    fn a_full_queue_hands_back_its_oldest() {
        let now = Instant::now();
        let mut pending = Pending::new(policy(2));
        pending.keep(pagerduty("a"), 1, now);
        pending.keep(pagerduty("b"), 1, now);
        assert_eq!(pending.keep(pagerduty("c"), 1, now), Some(pagerduty("a")));
        assert_eq!(pending.len(), 2);
    }

    #[test]
    fn obsolete_deliveries_are_discarded() {
        let now = Instant::now();
        let mut pending = Pending::new(policy(10));
        pending.keep(pagerduty("a"), 1, now);
        pending.keep(pagerduty("b"), 1, now);
        let discarded = pending.discard(
            |delivery| matches!(delivery, Delivery::PagerDuty(notice) if notice.policy_id == "a"),
        );
        assert_eq!(discarded, 1);
        assert_eq!(
            pending.due(now + Duration::from_secs(60)),
            [(pagerduty("b"), 1)]
        );
    }

    #[test]
    fn invalid_settings_are_refused() {
        assert!(policy(0).validate().is_err());
        let inverted = RedeliveryPolicy {
            initial_delay_ms: 10_000,
            ..policy(1)
        };
        assert!(inverted.validate().is_err());
        assert!(RedeliveryPolicy::default().validate().is_ok());
    }
}
