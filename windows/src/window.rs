//! [`Window`]: one half-open interval `[start, end)` of UTC instants, with its stable id.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use crate::calendar::CalendarWindow;
use crate::kind::WindowKind;
use crate::spec;

/// One window: the UTC instants `start <= t < end`, computed in its kind's time zone.
///
/// Only [`crate::WindowSpec::window_of`] (and [`Window::next`]) make windows, so a window is
/// always one of its spec's windows and its id is stable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Window {
    /// Which windows this is one of.
    kind: WindowKind,
    /// The zone it was computed in.
    time_zone: Tz,
    /// The first instant in the window.
    start: DateTime<Utc>,
    /// The first instant after the window, when the quota resets.
    end: DateTime<Utc>,
    /// The local clock time the window is named after (calendar kinds; unused for campaigns).
    label: NaiveDateTime,
    /// The label's UTC offset in seconds, part of minute and hour ids (repeated fall-back hours).
    label_offset_seconds: i32,
}

impl Window {
    pub(crate) fn calendar(kind: WindowKind, time_zone: Tz, computed: CalendarWindow) -> Self {
        Self {
            kind,
            time_zone,
            start: computed.start,
            end: computed.end,
            label: computed.label,
            label_offset_seconds: computed.label_offset_seconds,
        }
    }

    pub(crate) fn campaign(
        kind: WindowKind,
        time_zone: Tz,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Self {
        Self {
            kind,
            time_zone,
            start,
            end,
            label: start.naive_utc(),
            label_offset_seconds: 0,
        }
    }

    /// The kind of window.
    pub fn kind(&self) -> &WindowKind {
        &self.kind
    }

    /// The time zone it was computed in.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// The first instant in the window (inclusive).
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    /// The first instant after the window (exclusive).
    pub fn end(&self) -> DateTime<Utc> {
        self.end
    }

    /// When a quota counted in this window resets: [`Window::end`].
    pub fn reset_at(&self) -> DateTime<Utc> {
        self.end
    }

    /// `end - start`: 23 or 25 hours for a DST day, never zero.
    pub fn duration(&self) -> TimeDelta {
        self.end - self.start
    }

    /// Whether `instant` is in the window: `start <= instant < end`.
    pub fn contains(&self, instant: DateTime<Utc>) -> bool {
        self.start <= instant && instant < self.end
    }

    /// The following window, which starts at this one's end. `None` for a campaign (it has a
    /// single window) and at the limits of `chrono`'s dates.
    pub fn next(&self) -> Option<Window> {
        if !self.kind.is_calendar() {
            return None;
        }
        let next = spec::window_of(&self.kind, self.time_zone, None, self.end);
        debug_assert!(next.as_ref().is_none_or(|next| next.start == self.end));
        next
    }

    /// A compact stable key naming the window, the local label of its first instant:
    ///
    /// | kind | id |
    /// |---|---|
    /// | minute | `minute:2026-03-08T01:59-05:00@America/New_York` |
    /// | hour | `hour:2026-11-01T01:00-04:00@America/New_York` (the offset tells the two 01:00 hours of a fall-back day apart) |
    /// | day | `day:2026-03-08@America/New_York` |
    /// | week | `week:2026-12-28@Europe/Berlin` (the Monday, as ClickHouse's `toMonday`) |
    /// | month | `month:2026-02@Asia/Kolkata` |
    /// | campaign | `campaign:launch` |
    ///
    /// Equal ids mean equal windows, for the same kind, zone and (campaign) bounds.
    pub fn id(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Window {
    /// Writes [`Window::id`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let zone = self.time_zone.name();
        let clock = || {
            // Offsets are within ±26 hours in tzdb; keep a readable id even if not.
            let offset = FixedOffset::east_opt(self.label_offset_seconds).map_or_else(
                || format!("{:+}s", self.label_offset_seconds),
                |o| o.to_string(),
            );
            format!("{}{offset}", self.label.format("%Y-%m-%dT%H:%M"))
        };
        match &self.kind {
            WindowKind::Minute => write!(f, "minute:{}@{zone}", clock()),
            WindowKind::Hour => write!(f, "hour:{}@{zone}", clock()),
            WindowKind::Day => write!(f, "day:{}@{zone}", self.label.format("%Y-%m-%d")),
            WindowKind::Week => write!(f, "week:{}@{zone}", self.label.format("%Y-%m-%d")),
            WindowKind::Month => write!(f, "month:{}@{zone}", self.label.format("%Y-%m")),
            WindowKind::Campaign(id) => write!(f, "campaign:{id}"),
        }
    }
}
