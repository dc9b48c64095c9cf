//! What [`TotalsState`](super::TotalsState) hands out and takes back: the outcome of applying an
//! event, totals to write, closed windows, stored totals and pending jobs as a checkpoint holds
//! them.

use super::*;

/// What [`TotalsState::apply`] did with one event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// (scope, window) totals the event was added to.
    pub windows_counted: u32,
    /// (scope, window) pairs whose window had closed: the event is not in those totals (it is
    /// counted in `late_events`); the caller dead-letters the event for the record (it must not
    /// re-apply it: it is counted in the other windows).
    pub windows_late: u32,
    /// Scopes of the event counted under their kind's overflow bucket (its value was not
    /// admitted: the kind's cardinality limit was reached in the window).
    pub scopes_overflowed: u32,
}

/// One absolute total to write: a `window_totals` row, or a compacted-topic record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalUpdate {
    /// `scope_kind`: a dimension name or `policy:<id>@<definition>`.
    pub scope_kind: Arc<str>,
    /// `scope_key`: the dimension's value or the policy's rendered scope.
    pub scope_key: Arc<str>,
    /// The window (kind, time zone, start, end; [`Window::id`] is its stable key).
    pub window: Window,
    /// The totals.
    pub measures: Measures,
    /// Earliest submission before the window's end among the scope's pending jobs.
    pub oldest_pending_job_started_at: Option<DateTime<Utc>>,
    /// Job submissions of the scope not tracked (cap reached); 0 = the oldest start is exact.
    pub pending_jobs_untracked: u64,
    /// The highest version applied to this total: the `ReplacingMergeTree` version.
    pub version: u64,
}

impl TotalUpdate {
    /// `oldest_pending_job_started_at_us` as the column stores it: epoch microseconds, 0 for none
    /// (and for instants before 1970, which job submissions are not).
    pub fn oldest_pending_job_started_at_us(&self) -> u64 {
        self.oldest_pending_job_started_at
            .and_then(|at| u64::try_from(at.timestamp_micros()).ok())
            .unwrap_or(0)
    }
}

/// A (scope, window) dropped because it closed: its totals-topic key is tombstoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWindow {
    /// `scope_kind`: a dimension name or `policy:<id>`.
    pub scope_kind: Arc<str>,
    /// `scope_key`.
    pub scope_key: Arc<str>,
    /// The window.
    pub window: Window,
}

/// A stored total to put back into a state ([`TotalsState::restore_total`]): a row of
/// `window_partials` as the aggregator wrote it.
#[derive(Debug, Clone, Copy)]
pub struct StoredTotal<'a> {
    /// `scope_kind`.
    pub scope_kind: &'a str,
    /// `scope_key`.
    pub scope_key: &'a str,
    /// `window_kind` (`minute` … `month`, `campaign:<id>`).
    pub window_kind: &'a str,
    /// `window_tz`.
    pub window_tz: &'a str,
    /// `window_start`.
    pub window_start: DateTime<Utc>,
    /// The totals.
    pub measures: Measures,
    /// The version.
    pub version: u64,
}

/// What [`TotalsState::restore_total`] did with a stored total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Back in the state; later events add to it.
    Restored,
    /// The scope kind is not in this plan (a policy removed or renamed): left as stored.
    UnknownScope,
    /// The plan has no such window for the kind (its window changed): left as stored.
    UnknownWindow,
    /// The window is closed: it takes no more events and need not be held.
    Closed,
    /// The kind is held until its seed ([`TotalsState::hold`]): its rows are not this state's.
    Held,
}

/// A scope's pending jobs as a checkpoint stores them ([`TotalsState::pending_jobs_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingJobsSnapshot {
    /// `scope_kind`.
    pub scope_kind: String,
    /// `scope_key`.
    pub scope_key: String,
    /// `(submitted_at, job_id)` of each tracked pending job.
    pub jobs: Vec<(DateTime<Utc>, String)>,
    /// Submissions not tracked because the cap was reached.
    pub untracked: u64,
}
