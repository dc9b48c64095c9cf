//! [`TotalsView`]: a reader's view (the alerter's, the decision sidecar's) of the aggregator's window totals, built from the compacted
//! totals topic (`kafka.topics.totals`, Avro [`WindowTotal`] records).
//!
//! # The reading rule
//! The aggregator publishes **per-partition partials**: the exact total of one (scope, window)
//! over one input partition, with a `version` that grows with the input offsets it covers. So:
//! - per (scope, window, source partition) the view keeps the record with the **highest
//!   version**, not the last one to arrive (a replay or a process that just lost its partition may
//!   deliver an older one late; see `docs/aggregator.md`);
//! - the total of a (scope, window) is the **sum over source partitions** of those records.
//!
//! Re-reading the topic from the start (it is compacted: the newest record per key survives) and
//! applying every record in any order gives the same view. Pure: no IO.
//!
//! # Tombstones
//! The aggregator tombstones (null value) the key of every window closed at its close horizon
//! (issue 13 point 6), so compaction removes it: [`TotalsView::remove`] forgets that partial. A
//! closed window never changes again, so nothing is lost; a late record of a zombie writer may
//! bring the key back, for a window that has ended, which the view evicts like any other.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::WindowTotal;

/// A (scope, window): what a policy compares with its limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowKey {
    /// `team`, `api_key_id`, …, or `policy:<id>@<definition>` (see `PolicySet::by_totals_scope_kind`).
    pub scope_kind: String,
    /// The scope's value or rendered policy scope.
    pub scope_key: String,
    /// `minute` … `month`, `campaign:<name>`.
    pub window_kind: String,
    /// IANA time zone of the window.
    pub window_tz: String,
    /// Window start.
    pub window_start: DateTime<Utc>,
}

impl WindowKey {
    /// The (scope, window) of a totals-topic key (a tombstone's).
    pub fn of_key(key: &schemas::TotalsKey) -> WindowKey {
        WindowKey {
            scope_kind: key.scope_kind.clone(),
            scope_key: key.scope_key.clone(),
            window_kind: key.window_kind.clone(),
            window_tz: key.window_tz.clone(),
            window_start: key.window_start,
        }
    }

    /// The key of `total`.
    pub fn of(total: &WindowTotal) -> WindowKey {
        WindowKey {
            scope_kind: total.scope_kind.clone(),
            scope_key: total.scope_key.clone(),
            window_kind: total.window_kind.clone(),
            window_tz: total.window_tz.clone(),
            window_start: total.window_start,
        }
    }
}

/// The partials of one (scope, window), by source (topic, partition).
#[derive(Debug, Clone, Default)]
struct Partials {
    by_source: HashMap<(String, i32), WindowTotal>,
}

/// Every (scope, window) total seen on the totals topic (see the module docs).
#[derive(Debug, Default)]
pub struct TotalsView {
    windows: HashMap<WindowKey, Partials>,
}

/// What [`TotalsView::apply`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Newer than what the view had for its partition: the (scope, window) total changed.
    Changed,
    /// Not newer (a repeat or a late older record): ignored.
    Stale,
}

impl TotalsView {
    /// An empty view.
    pub fn new() -> TotalsView {
        TotalsView::default()
    }

    /// Applies one record of the totals topic.
    pub fn apply(&mut self, total: WindowTotal) -> Applied {
        let partials = self.windows.entry(WindowKey::of(&total)).or_default();
        let source = (total.source_topic.clone(), total.source_partition);
        match partials.by_source.get(&source) {
            Some(held) if held.version >= total.version => Applied::Stale,
            _ => {
                partials.by_source.insert(source, total);
                Applied::Changed
            }
        }
    }

    /// The current total of `key`: the sum of its partials; `None` if nothing was seen. Counters
    /// saturate and money is exact (a sum beyond `Decimal`'s range saturates too: no real total
    /// comes near it).
    pub fn total(&self, key: &WindowKey) -> Option<WindowTotal> {
        let partials = self.windows.get(key)?;
        let mut parts = partials.by_source.values();
        let mut sum = parts.next()?.clone();
        sum.source_topic = String::new();
        sum.source_partition = 0;
        for part in parts {
            add(&mut sum, part);
        }
        Some(sum)
    }

    /// Forgets the partial of `key` (a tombstone of the totals topic); the (scope, window) goes
    /// with its last partial. Whether something was held.
    pub fn remove(&mut self, key: &schemas::TotalsKey) -> bool {
        let window = WindowKey::of_key(key);
        let Some(partials) = self.windows.get_mut(&window) else {
            return false;
        };
        let removed = partials
            .by_source
            .remove(&(key.source_topic.clone(), key.source_partition))
            .is_some();
        if partials.by_source.is_empty() {
            self.windows.remove(&window);
        }
        removed
    }

    /// How many input partitions contributed to `key`.
    pub fn partials(&self, key: &WindowKey) -> usize {
        self.windows
            .get(key)
            .map_or(0, |partials| partials.by_source.len())
    }

    /// Every (scope, window) held.
    pub fn keys(&self) -> impl Iterator<Item = &WindowKey> {
        self.windows.keys()
    }

    /// (scope, window) totals held.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Drops every window that ended at or before `before` (they can no longer change a decision).
    pub fn evict_ended(&mut self, before: DateTime<Utc>) -> usize {
        let held = self.windows.len();
        self.windows.retain(|_, partials| {
            partials
                .by_source
                .values()
                .any(|total| total.window_end > before)
        });
        held - self.windows.len()
    }
}

/// `sum += part`, measure by measure.
fn add(sum: &mut WindowTotal, part: &WindowTotal) {
    let counters: [(&mut u64, u64); 24] = [
        (&mut sum.requests, part.requests),
        (&mut sum.billable_attempts, part.billable_attempts),
        (&mut sum.input_tokens, part.input_tokens),
        (&mut sum.output_tokens, part.output_tokens),
        (&mut sum.cached_input_tokens, part.cached_input_tokens),
        (&mut sum.cache_write_tokens, part.cache_write_tokens),
        (&mut sum.images_draft, part.images_draft),
        (&mut sum.images_preview, part.images_preview),
        (&mut sum.images_edit, part.images_edit),
        (&mut sum.images_final, part.images_final),
        (&mut sum.images_untiered, part.images_untiered),
        (&mut sum.video_jobs, part.video_jobs),
        (&mut sum.video_ms, part.video_ms),
        (&mut sum.audio_ms, part.audio_ms),
        (&mut sum.embedding_tokens, part.embedding_tokens),
        (&mut sum.unpriced_events, part.unpriced_events),
        (&mut sum.retries, part.retries),
        (&mut sum.fallback_attempts, part.fallback_attempts),
        (&mut sum.accepted_outputs, part.accepted_outputs),
        (&mut sum.errors_4xx, part.errors_4xx),
        (&mut sum.errors_5xx, part.errors_5xx),
        (&mut sum.errors_other, part.errors_other),
        (&mut sum.late_events, part.late_events),
        (&mut sum.pending_jobs_untracked, part.pending_jobs_untracked),
    ];
    for (total, value) in counters {
        *total = total.saturating_add(value);
    }
    sum.cost_usd = sum.cost_usd.saturating_add(part.cost_usd);
    sum.fallback_cost_usd = sum.fallback_cost_usd.saturating_add(part.fallback_cost_usd);
    sum.jobs_in_flight = sum.jobs_in_flight.saturating_add(part.jobs_in_flight);
    sum.oldest_pending_job_started_at = match (
        sum.oldest_pending_job_started_at,
        part.oldest_pending_job_started_at,
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    sum.version = sum.version.max(part.version);
    sum.written_at = sum.written_at.max(part.written_at);
    sum.window_end = sum.window_end.max(part.window_end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rust_decimal::Decimal;

    fn partial(partition: i32, version: u64, requests: u64, cost: &str) -> WindowTotal {
        let start = Utc.with_ymd_and_hms(2026, 3, 9, 0, 0, 0).unwrap();
        WindowTotal {
            source_partition: partition,
            requests,
            billable_attempts: requests,
            cost_usd: cost.parse().unwrap(),
            version,
            ..schemas::fixtures::empty_day_total("team", "search", start)
        }
    }

    #[test]
    fn the_highest_version_per_partition_wins_and_partitions_add_up() {
        let mut view = TotalsView::new();
        assert_eq!(view.apply(partial(0, 10, 5, "1.5")), Applied::Changed);
        assert_eq!(
            view.apply(partial(1, 3, 2, "0.000000000001")),
            Applied::Changed
        );
        assert_eq!(view.apply(partial(0, 12, 6, "1.75")), Applied::Changed);
        // A late, older record of partition 0 (a replay, a zombie) changes nothing.
        assert_eq!(view.apply(partial(0, 11, 1, "9")), Applied::Stale);
        assert_eq!(view.apply(partial(0, 12, 6, "1.75")), Applied::Stale);
        let key = WindowKey::of(&partial(0, 0, 0, "0"));
        let total = view.total(&key).unwrap();
        assert_eq!(total.requests, 8);
        assert_eq!(total.cost_usd, "1.750000000001".parse::<Decimal>().unwrap());
        assert_eq!(total.version, 12);
        assert_eq!(view.partials(&key), 2);
    }

    #[test]
    fn the_order_records_arrive_in_does_not_matter() {
        let records: Vec<WindowTotal> = (0..30u64)
            .map(|i| partial((i % 3) as i32, i, i * 2, &format!("{}.{}", i, i)))
            .collect();
        let key = WindowKey::of(&records[0]);
        let mut forward = TotalsView::new();
        records.iter().cloned().for_each(|r| {
            forward.apply(r);
        });
        let mut backward = TotalsView::new();
        records.iter().rev().cloned().for_each(|r| {
            backward.apply(r);
        });
        assert_eq!(forward.total(&key), backward.total(&key));
        // The newest of each partition: versions 27, 28, 29.
        assert_eq!(forward.total(&key).unwrap().requests, (27 + 28 + 29) * 2);
    }

    #[test]
    fn a_tombstone_removes_its_partial_only() {
        let mut view = TotalsView::new();
        view.apply(partial(0, 1, 1, "1"));
        view.apply(partial(1, 1, 2, "2"));
        let tombstone = |partition| {
            WindowTotal::parse_compaction_key(&partial(partition, 0, 0, "0").compaction_key())
                .unwrap()
        };
        assert!(view.remove(&tombstone(0)));
        let key = WindowKey::of(&partial(0, 0, 0, "0"));
        assert_eq!(view.total(&key).unwrap().requests, 2);
        assert!(!view.remove(&tombstone(0)));
        assert!(view.remove(&tombstone(1)));
        assert!(view.is_empty());
    }

    #[test]
    fn ended_windows_are_evicted() {
        let mut view = TotalsView::new();
        view.apply(partial(0, 1, 1, "1"));
        let end = Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0).unwrap();
        assert_eq!(view.evict_ended(end - chrono::TimeDelta::seconds(1)), 0);
        assert_eq!(view.evict_ended(end), 1);
        assert!(view.is_empty());
    }
}
