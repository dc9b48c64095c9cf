//! The independent recount: the totals both contenders must reach, computed straight from the
//! generated events with rules written here (not the aggregator's `Measures` nor the SQL view).
//!
//! # The common set both contenders compute
//! - **Scopes:** the ten single dimensions (`api_key_id`, `team`, `user_id`, `customer_id`,
//!   `workflow`, `environment`, `provider`, `model`, `endpoint`, `modality`; `user_id` and
//!   `customer_id` only when the event has them).
//! - **Windows:** UTC minute, hour, day, ISO week (Monday) and month.
//! - **Measures ([`MEASURES`]):** `requests` (attempts without a job state, and job
//!   submissions), `billable_attempts` (everything but `submitted` and `running` job states),
//!   the four token sums, `video_ms`, `audio_ms`, `retries` (`attempt > 1`), `unpriced_events`
//!   (null cost), and `cost_usd` (exact decimal sum, null as 0).
//!
//! The aggregator also computes policy scopes and more measures; ClickHouse's materialized view
//! computes exactly this set.
//!
//! Two recounts are kept: over distinct events (duplicate records skipped: what an exactly-once
//! consumer must produce) and over every record (what an at-least-once consumer produces).
//!
//! # How
//! Events are first summed per (dimension values, minute): the demo fleet repeats the same
//! combinations, so this is one hash lookup per event; the (scope, window) totals are expanded
//! from those at the end.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::Decimal;
use schemas::{JobState, UsageEvent};

/// The compared measures, in [`Sums`] order (the last one is `cost_usd`).
pub const MEASURES: [&str; 11] = [
    "requests",
    "billable_attempts",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "video_ms",
    "audio_ms",
    "retries",
    "unpriced_events",
    "cost_usd",
];

/// The ten single dimensions, in the order [`Recount`] keys hold them.
pub const DIMENSIONS: [&str; 10] = [
    "api_key_id",
    "team",
    "user_id",
    "customer_id",
    "workflow",
    "environment",
    "provider",
    "model",
    "endpoint",
    "modality",
];

/// The window kinds, as both contenders name them.
pub const WINDOW_KINDS: [&str; 5] = ["minute", "hour", "day", "week", "month"];

/// Separates dimension values in a profile key (never in an id); a missing value is `ABSENT`.
const SEPARATOR: char = '\u{1f}';
const ABSENT: &str = "\u{0}";

/// The measures of one total: counters, then the exact cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    /// [`MEASURES`] but the last, in order.
    pub counts: [u64; 10],
    /// Sum of `cost_usd`.
    pub cost_usd: Decimal,
}

impl Sums {
    /// One event's contribution.
    pub fn of_event(event: &UsageEvent) -> Sums {
        let requests = matches!(event.job_state, None | Some(JobState::Submitted));
        let billable = !matches!(
            event.job_state,
            Some(JobState::Submitted | JobState::Running)
        );
        Sums {
            counts: [
                u64::from(requests),
                u64::from(billable),
                event.input_tokens,
                event.output_tokens,
                event.cached_input_tokens,
                event.cache_write_tokens,
                event.video_duration_ms,
                event.audio_duration_ms,
                u64::from(event.attempt > 1),
                u64::from(event.cost_usd.is_none()),
            ],
            cost_usd: event.cost_usd.unwrap_or_default(),
        }
    }

    /// Adds `other` (counters cannot overflow at benchmark sizes; checked in debug builds).
    pub fn add(&mut self, other: &Sums) {
        for (count, more) in self.counts.iter_mut().zip(other.counts) {
            *count += more;
        }
        self.cost_usd += other.cost_usd;
    }

    /// Measure `index` of [`MEASURES`] as a decimal.
    pub fn get(&self, index: usize) -> Decimal {
        match self.counts.get(index) {
            Some(count) => Decimal::from(*count),
            None => self.cost_usd,
        }
    }
}

/// A (scope, window) total's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TotalKey {
    /// One of [`DIMENSIONS`].
    pub scope_kind: String,
    /// The dimension's value.
    pub scope_key: String,
    /// One of [`WINDOW_KINDS`].
    pub window_kind: String,
    /// Window start, Unix seconds.
    pub window_start: i64,
}

/// Recounts of the mix: distinct events and every record.
#[derive(Debug, Default)]
pub struct Recount {
    /// Per profile key and minute start: distinct events.
    distinct: ByProfile,
    /// Per profile key and minute start: every record.
    all_records: ByProfile,
    /// Reused key buffer.
    key: String,
    /// Records seen.
    pub records: u64,
    /// Duplicate records seen.
    pub duplicates: u64,
}

impl Recount {
    /// Counts one record; `duplicate` records count only in the all-records recount.
    pub fn add(&mut self, event: &UsageEvent, duplicate: bool) {
        self.key.clear();
        let dims: [Option<&str>; 10] = [
            Some(&event.api_key_id),
            Some(&event.team),
            event.user_id.as_deref(),
            event.customer_id.as_deref(),
            Some(&event.workflow),
            Some(&event.environment),
            Some(&event.provider),
            Some(&event.model),
            Some(&event.endpoint),
            Some(event.modality.as_str()),
        ];
        for value in dims {
            let _ = write!(self.key, "{}{SEPARATOR}", value.unwrap_or(ABSENT));
        }
        let minute = event.occurred_at.timestamp().div_euclid(60) * 60;
        let sums = Sums::of_event(event);
        self.records += 1;
        if duplicate {
            self.duplicates += 1;
        } else {
            add_to(&mut self.distinct, &self.key, minute, &sums);
        }
        add_to(&mut self.all_records, &self.key, minute, &sums);
    }

    /// The (scope, window) totals of distinct events.
    pub fn distinct_totals(&self) -> HashMap<TotalKey, Sums> {
        expand(&self.distinct)
    }

    /// The (scope, window) totals of every record, duplicates included.
    pub fn all_record_totals(&self) -> HashMap<TotalKey, Sums> {
        expand(&self.all_records)
    }
}

/// Sums per profile key (the ten dimension values) and minute start.
type ByProfile = HashMap<String, HashMap<i64, Sums>>;

fn add_to(map: &mut ByProfile, key: &str, minute: i64, sums: &Sums) {
    // Looked up by `&str`: the key is allocated only for a new profile.
    let minutes = match map.get_mut(key) {
        Some(minutes) => minutes,
        None => map.entry(key.to_owned()).or_default(),
    };
    minutes.entry(minute).or_default().add(sums);
}

fn expand(by_profile: &ByProfile) -> HashMap<TotalKey, Sums> {
    let mut totals: HashMap<TotalKey, Sums> = HashMap::new();
    let minutes = by_profile.iter().flat_map(|(profile, minutes)| {
        minutes
            .iter()
            .map(move |(minute, sums)| (profile, minute, sums))
    });
    for (profile, minute, sums) in minutes {
        let starts = window_starts(*minute);
        for (dimension, value) in DIMENSIONS.iter().zip(profile.split(SEPARATOR)) {
            if value == ABSENT {
                continue;
            }
            for (window_kind, window_start) in WINDOW_KINDS.iter().zip(starts) {
                totals
                    .entry(TotalKey {
                        scope_kind: (*dimension).to_owned(),
                        scope_key: value.to_owned(),
                        window_kind: (*window_kind).to_owned(),
                        window_start,
                    })
                    .or_default()
                    .add(sums);
            }
        }
    }
    totals
}

/// Starts (Unix seconds) of the UTC minute, hour, day, ISO week and month holding `minute`.
pub fn window_starts(minute: i64) -> [i64; 5] {
    let at: DateTime<Utc> = Utc.timestamp_opt(minute, 0).unwrap();
    let day = minute.div_euclid(86_400) * 86_400;
    let days_since_monday = i64::from(at.weekday().num_days_from_monday());
    let month = Utc
        .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .unwrap()
        .timestamp();
    [
        minute,
        minute.div_euclid(3_600) * 3_600,
        day,
        day - days_since_monday * 86_400,
        month,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts_are_utc_calendar_boundaries() {
        // Wednesday 2026-03-11 13:47 UTC.
        let minute = Utc
            .with_ymd_and_hms(2026, 3, 11, 13, 47, 0)
            .unwrap()
            .timestamp();
        let expected = [
            (2026, 3, 11, 13, 47),
            (2026, 3, 11, 13, 0),
            (2026, 3, 11, 0, 0),
            (2026, 3, 9, 0, 0),
            (2026, 3, 1, 0, 0),
        ]
        .map(|(y, mo, d, h, mi)| {
            Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
                .unwrap()
                .timestamp()
        });
        assert_eq!(window_starts(minute), expected);
    }
}
