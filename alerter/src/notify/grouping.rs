//! Storm grouping: at most one notification per (policy, scope, window, kind) per interval.
//!
//! # Rule
//! Notices are grouped by key: policy id, scope, window start, kind, threshold and unit (a
//! resolve's key includes the kind of incident it resolves; an anomaly's or rule's text is not part
//! of the key, so a storm of per-action findings of one rule is one message per interval).
//! - The first notice of a quiet key is emitted at once and opens an interval.
//! - Further notices of that key within the interval are not emitted; the group counts them and keeps
//!   the latest, which carries the freshest figures.
//! - When the interval ends ([`Grouper::due`]), a group that folded notices emits its latest notice
//!   with [`Grouped::folded`] = how many others it stands for ("and N more"), and opens a new interval,
//!   so a steady storm yields one notification per interval. A group that folded nothing is forgotten.
//! - A notice arriving after its interval ended but before `due` ran is emitted at once, carrying the
//!   count folded so far.
//!
//! So every notice is either emitted or counted in the next emission of its group, no later than one
//! interval after it arrived (provided `due` is called by [`Grouper::next_deadline`]).
//!
//! The grouper is pure: time is passed in, nothing is sent. Memory is one entry per key seen in the
//! current interval.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{IncidentKind, Notice, NoticeKind};

/// A notice to send, standing for `folded` more of the same key that were not sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouped {
    /// The notice to render (the latest of its group).
    pub notice: Notice,
    /// How many other notices of the same key this one replaces since the group's last emission.
    pub folded: u64,
}

/// What notices are grouped by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    policy_id: String,
    scope: String,
    window_start: DateTime<Utc>,
    kind: KeyKind,
    /// Each step of a soft-alert ladder (50, 75, 90, 100 %) is news of its own.
    threshold_percent: u32,
    /// The unit; rule notices carry the rule's kind there (`retry_budget`, …).
    unit: String,
}

/// The kind part of a key: alerts of one incident kind, or resolves of one incident kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyKind {
    Raise(IncidentKind),
    Resolve(IncidentKind),
}

impl GroupKey {
    fn of(notice: &Notice) -> Self {
        let kind = match &notice.kind {
            NoticeKind::Resolved { of } => KeyKind::Resolve(*of),
            NoticeKind::SoftAlert => KeyKind::Raise(IncidentKind::SoftAlert),
            NoticeKind::HardCap => KeyKind::Raise(IncidentKind::HardCap),
            NoticeKind::Anomaly { .. } => KeyKind::Raise(IncidentKind::Anomaly),
            NoticeKind::Rule { .. } => KeyKind::Raise(IncidentKind::Rule),
        };
        Self {
            policy_id: notice.policy_id.clone(),
            scope: notice.scope.clone(),
            window_start: notice.window.start,
            kind,
            threshold_percent: notice.threshold_percent,
            unit: notice.unit.clone(),
        }
    }
}

/// One key's interval.
#[derive(Debug)]
struct Group {
    /// When the current interval ends.
    interval_ends_at: Instant,
    /// Notices not emitted since the last emission.
    folded: u64,
    /// The latest of them, emitted when the interval ends.
    latest: Option<Notice>,
}

/// Groups notices as described in the module docs.
#[derive(Debug)]
pub struct Grouper {
    /// Length of one interval: at most one emission per key in it.
    interval: Duration,
    /// Keys with an open interval.
    groups: HashMap<GroupKey, Group>,
}

impl Grouper {
    /// A grouper emitting at most once per key per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            groups: HashMap::new(),
        }
    }

    /// Takes a notice arriving at `now`; returns it if it is to be sent now, `None` if it was folded.
    pub fn offer(&mut self, notice: Notice, now: Instant) -> Option<Grouped> {
        let interval_ends_at = now + self.interval;
        let key = GroupKey::of(&notice);
        match self.groups.get_mut(&key) {
            Some(group) if now < group.interval_ends_at => {
                group.folded += 1;
                group.latest = Some(notice);
                None
            }
            Some(group) => {
                let folded = group.folded;
                *group = Group {
                    interval_ends_at,
                    folded: 0,
                    latest: None,
                };
                Some(Grouped { notice, folded })
            }
            None => {
                self.groups.insert(
                    key,
                    Group {
                        interval_ends_at,
                        folded: 0,
                        latest: None,
                    },
                );
                Some(Grouped { notice, folded: 0 })
            }
        }
    }

    /// The notices whose interval ended by `now`, one per group that folded any; forgets quiet groups.
    pub fn due(&mut self, now: Instant) -> Vec<Grouped> {
        let interval = self.interval;
        let mut emitted = Vec::new();
        self.groups.retain(|_, group| {
            if now < group.interval_ends_at {
                return true;
            }
            let Some(latest) = group.latest.take() else {
                return false;
            };
            debug_assert!(group.folded >= 1, "a kept notice was counted");
            emitted.push(Grouped {
                notice: latest,
                folded: group.folded - 1,
            });
            group.folded = 0;
            group.interval_ends_at = now + interval;
            true
        });
        emitted
    }

    /// When [`Grouper::due`] should next be called; `None` when no interval is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups
            .values()
            .map(|group| group.interval_ends_at)
            .min()
    }

    /// Keys with an open interval.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no interval is open.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;
    use crate::notify::tests::sample_notice;

    const INTERVAL: Duration = Duration::from_secs(300);

    fn spent(spent: i64) -> Notice {
        let mut notice = sample_notice();
        notice.spent = Decimal::new(spent, 0);
        notice
    }

    #[test]
    fn first_notice_is_sent_at_once_and_repeats_are_folded() {
        let start = Instant::now();
        let mut grouper = Grouper::new(INTERVAL);
        let first = grouper.offer(spent(800), start).expect("first is sent");
        assert_eq!(first.folded, 0);
        for (offset, amount) in [(1, 810), (2, 820), (3, 830)] {
            assert!(grouper
                .offer(spent(amount), start + Duration::from_secs(offset))
                .is_none());
        }
        assert!(grouper.due(start + Duration::from_secs(299)).is_empty());
        assert_eq!(grouper.next_deadline(), Some(start + INTERVAL));
        let due = grouper.due(start + INTERVAL);
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].notice.spent,
            Decimal::new(830, 0),
            "the latest is sent"
        );
        assert_eq!(due[0].folded, 2, "and 2 more");
    }

    #[test]
    fn a_steady_storm_yields_one_notification_per_interval() {
        let start = Instant::now();
        let mut grouper = Grouper::new(INTERVAL);
        let mut sent = 0;
        let mut accounted = 0;
        // One notice per second for an hour, `due` polled every second.
        for second in 0..3600 {
            let now = start + Duration::from_secs(second);
            for grouped in grouper
                .offer(spent(second as i64), now)
                .into_iter()
                .chain(grouper.due(now))
            {
                sent += 1;
                accounted += 1 + grouped.folded;
            }
        }
        let end = start + Duration::from_secs(3600 + 300);
        for grouped in grouper.due(end) {
            sent += 1;
            accounted += 1 + grouped.folded;
        }
        assert_eq!(sent, 13, "one per 5-minute interval, plus the final flush");
        assert_eq!(accounted, 3600, "every notice is sent or counted");
        assert!(grouper.due(end + INTERVAL).is_empty());
        assert!(grouper.is_empty(), "quiet groups are forgotten");
    }

    #[test]
    fn keys_are_independent() {
        let now = Instant::now();
        let mut grouper = Grouper::new(INTERVAL);
        let base = sample_notice();
        let mut other_scope = base.clone();
        other_scope.scope = "team=ads".to_string();
        let mut other_window = base.clone();
        other_window.window.start += chrono::Duration::days(30);
        let mut hard_cap = base.clone();
        hard_cap.kind = NoticeKind::HardCap;
        let mut resolve_soft = base.clone();
        resolve_soft.kind = NoticeKind::Resolved {
            of: IncidentKind::SoftAlert,
        };
        let mut resolve_hard = base.clone();
        resolve_hard.kind = NoticeKind::Resolved {
            of: IncidentKind::HardCap,
        };
        for notice in [
            base.clone(),
            other_scope,
            other_window,
            hard_cap,
            resolve_soft,
            resolve_hard,
        ] {
            assert!(grouper.offer(notice, now).is_some());
        }
        assert_eq!(grouper.len(), 6);
        let mut anomaly_a = base.clone();
        anomaly_a.kind = NoticeKind::Anomaly {
            text: "a".to_string(),
        };
        let mut anomaly_b = base;
        anomaly_b.kind = NoticeKind::Anomaly {
            text: "b".to_string(),
        };
        assert!(grouper.offer(anomaly_a, now).is_some());
        assert!(
            grouper.offer(anomaly_b, now).is_none(),
            "anomaly text is not part of the key"
        );
    }

    #[test]
    fn a_late_notice_is_sent_at_once_with_the_count() {
        let start = Instant::now();
        let mut grouper = Grouper::new(INTERVAL);
        assert!(grouper.offer(spent(1), start).is_some());
        assert!(grouper
            .offer(spent(2), start + Duration::from_secs(10))
            .is_none());
        let late = grouper
            .offer(spent(3), start + Duration::from_secs(400))
            .expect("interval over, sent at once");
        assert_eq!(late.notice.spent, Decimal::new(3, 0));
        assert_eq!(late.folded, 1, "stands for the folded one too");
        assert!(grouper.due(start + Duration::from_secs(400)).is_empty());
    }

    #[test]
    fn quiet_key_starts_afresh() {
        let start = Instant::now();
        let mut grouper = Grouper::new(INTERVAL);
        assert!(grouper.offer(spent(1), start).is_some());
        assert!(grouper.due(start + INTERVAL).is_empty());
        assert!(grouper.is_empty());
        assert_eq!(grouper.next_deadline(), None);
        let again = grouper.offer(spent(2), start + INTERVAL * 2).unwrap();
        assert_eq!(again.folded, 0);
    }
}
