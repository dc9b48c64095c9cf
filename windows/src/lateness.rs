//! [`LatenessPolicy`]: whether an event still counts in its window.
//!
//! Windows are event-time windows: an event counts in the window of its `occurred_at`, whenever it
//! arrives. The aggregator's watermark says how far event time has progressed. A window accepts
//! events until `end + allowed_lateness`; from the moment the watermark reaches that instant the
//! window is closed and its events are [`Lateness::Late`]: the aggregator counts them as late
//! and sends them to the dead-letter topic instead of changing a closed window's total.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::window::Window;

/// How long after its end a window still accepts events, measured on the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LatenessPolicy {
    /// Accept events into a window while `watermark < window.end + allowed_lateness`.
    pub allowed_lateness: Duration,
}

/// Whether an event still counts in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lateness {
    /// The window is open: count the event in it.
    OnTime,
    /// The window closed (`window.end + allowed_lateness <= watermark`): count the event as late
    /// and dead-letter it.
    Late,
}

impl LatenessPolicy {
    /// A policy accepting events up to `allowed_lateness` after their window's end.
    pub fn new(allowed_lateness: Duration) -> Self {
        Self { allowed_lateness }
    }

    /// When `window` closes: `end + allowed_lateness`; `None` if that is beyond `chrono`'s dates
    /// (the window never closes).
    pub fn closes_at(&self, window: &Window) -> Option<DateTime<Utc>> {
        let lateness = TimeDelta::from_std(self.allowed_lateness).ok()?;
        window.end().checked_add_signed(lateness)
    }

    /// [`Lateness::Late`] when `window.end + allowed_lateness <= watermark`, else
    /// [`Lateness::OnTime`].
    pub fn classify(&self, window: &Window, watermark: DateTime<Utc>) -> Lateness {
        match self.closes_at(window) {
            Some(closes_at) if closes_at <= watermark => Lateness::Late,
            _ => Lateness::OnTime,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{WindowKind, WindowSpec};

    #[test]
    fn late_from_end_plus_allowed_lateness() {
        let day = WindowSpec::calendar(WindowKind::Day, chrono_tz::UTC)
            .unwrap()
            .window_of("2026-03-08T12:00:00Z".parse().unwrap())
            .unwrap();
        let policy = LatenessPolicy::new(Duration::from_secs(600));
        let closes_at: DateTime<Utc> = "2026-03-09T00:10:00Z".parse().unwrap();
        assert_eq!(policy.closes_at(&day), Some(closes_at));
        let just_before = closes_at - TimeDelta::nanoseconds(1);
        assert_eq!(policy.classify(&day, just_before), Lateness::OnTime);
        assert_eq!(policy.classify(&day, closes_at), Lateness::Late);
        let no_slack = LatenessPolicy::new(Duration::ZERO);
        assert_eq!(no_slack.classify(&day, day.end()), Lateness::Late);
        let forever = LatenessPolicy::new(Duration::MAX);
        assert_eq!(
            forever.classify(&day, DateTime::<Utc>::MAX_UTC),
            Lateness::OnTime
        );
    }
}
