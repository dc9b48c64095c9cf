//! [`PartitionAggregator`]: everything the aggregator keeps for one input partition, and what it
//! does with one record. Pure: no IO; the pipeline reads records, writes flushes and checkpoints.
//!
//! # One record
//! In offset order, each record at or after `next_offset` is, exactly one of:
//! - **dead-lettered** (with the reason): no value, undecodable, refused by
//!   [`quotaflow_admission`] (the validation and pricing step the raw archive applies too, so both
//!   refuse the same records with the same kind: among them `occurred_at` further ahead of the
//!   record's Kafka timestamp than `validation.max_future_skew`, kind `in_future`, which would
//!   otherwise move the watermark and close every window), or a total would overflow;
//! - a **duplicate**: its `event_id` is in the [`Dedup`] filter; counted in a metric only (every copy
//!   is in `usage_events_raw`);
//! - **too late to deduplicate**: not remembered, and its `occurred_at` is at or before the
//!   filter's floor (older than the duplicate horizon, or than ids the `dedup_max_ids` cap forced
//!   out), or before `dedup_partitions_changed_at` while written after it: it may be a copy of an
//!   event the filter forgot (or that another partition saw), so it is not counted, only in
//!   `late_events` of the open windows, and dead-lettered with the reason. A duplicate is thus
//!   never counted twice;
//! - **counted** in every (scope, window) it belongs to; if some of its windows had closed it is
//!   also **late**: counted in `late_events` of the open window instead, and dead-lettered with the
//!   reason so it is not silently lost from those windows.
//!
//! Records before `next_offset` and from `replay_from` on are **remembered only** (their ids go
//! into the duplicate filter, nothing is counted): that is the restart's rebuilding of the filter.
//! Records before `replay_from` are stale deliveries and ignored.
//!
//! # Checkpoint
//! [`PartitionAggregator::take_flush`] drains the changed totals together with the
//! [`Checkpoint`] that describes the state right after them: `next_offset`, `replay_from`, the
//! watermark, the close horizon and the pending jobs. Everything in it is a function of the
//! partition's records before `next_offset` (see [`crate::state`] on determinism).
//!
//! It also lists the complete policy definitions (`policy_definitions`). A definition a reload
//! added ([`PartitionAggregator::reload`]) counts live from `next_offset` at the reload and is
//! held back until its seed ([`PartitionAggregator::apply_seed`], computed by
//! [`crate::backfill`] from the records before that offset) is added; only then is it written,
//! published and listed. On restore, a definition of the plan the checkpoint does not list starts
//! over (held) at the checkpoint's `next_offset`, its stored rows ignored.
//!
//! A total's version is one more than the offset of the last event counted in it, and a stored row
//! is the exact total of the partition's records up to that version. Rows can be *ahead* of the
//! newest checkpoint (the process died between writing them and the checkpoint), and a merge of
//! the `ReplacingMergeTree` may already have dropped the older rows. So
//! [`PartitionAggregator::restore`] takes the newest row of every total, whatever its version, and
//! the replay from the checkpoint skips, per total, the events that row already includes
//! (`version <= row version`). Every total thus continues exactly where its row left it. A row
//! ahead of the checkpoint may have missed the totals topic (the process died between the two
//! writes), so it is restored dirty: the next flush writes and publishes it again.
//!
//! # Tombstones (issue 13 point 6)
//! [`PartitionAggregator::take_flush`] also drops every window closed at the flush's close
//! horizon (`watermark - allowed_lateness`) and hands out its (scope, window) in
//! [`PartitionFlush::closed`]; the pipeline writes a tombstone (null value) for its totals-topic
//! key after the flush's totals are acknowledged and before the checkpoint, so compaction removes
//! the key and a reader's restore is bounded by the open windows, not by history. A closed window
//! takes no event again (events for it are late), so no later record of this partition's run
//! writes its key again: the tombstone is the key's last record. A replay from an older
//! checkpoint restores the window as open, may publish its total again, and tombstones it again
//! when its horizon passes (the same records close it). Only a zombie writer (docs/aggregator.md,
//! Known limits) can land a total after the tombstone; readers ignore totals of ended windows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use policy::PolicySet;
use quotaflow_admission::Admission;
use schemas::dead_letter::{self, SourceRecord};
use schemas::{DeadLetter, UsageEvent};
use serde::{Deserialize, Serialize};

use crate::dedup::Dedup;
use crate::state::{
    ClosedWindow, PendingJobsSnapshot, Restored, StateError, StoredTotal, TotalUpdate,
    TotalsConfig, TotalsState,
};

/// The `service` of the aggregator's dead letters.
pub const SERVICE: &str = "aggregator";

/// Dead-letter kinds the aggregator writes (besides the codec's own decode kinds).
pub mod kind {
    /// A record without a value.
    pub const EMPTY: &str = "empty";
    /// `occurred_at` too far ahead of the record's Kafka timestamp (from [`quotaflow_admission`]).
    pub const IN_FUTURE: &str = quotaflow_admission::dead_letter_kind::IN_FUTURE;
    /// Some of the event's windows had closed.
    pub const LATE: &str = "late";
    /// A total would overflow or lose precision.
    pub const OVERFLOW: &str = "overflow";
    /// Older than the duplicate filter remembers: not counted (only in `late_events`).
    pub const TOO_LATE_TO_DEDUPLICATE: &str = "too_late_to_deduplicate";
}

/// How a partition is aggregated.
#[derive(Debug, Clone)]
pub struct PartitionSettings {
    /// Lateness and state bounds.
    pub totals: TotalsConfig,
    /// How long (in event time behind the watermark) event ids are remembered.
    pub dedup_horizon: Duration,
    /// Most ids remembered per partition.
    pub dedup_max_ids: usize,
    /// Validation and pricing of every decoded record, shared with the raw archive (includes how
    /// far `occurred_at` may be ahead of the record's Kafka timestamp).
    pub admission: Admission,
    /// When the usage topic's partition count last changed (set by the operator, see
    /// `docs/aggregator.md`): a record written at or after it about an event before it, and not
    /// in the filter, is refused as too late to deduplicate (its first copy may be in another
    /// partition's filter).
    pub partitions_changed_at: Option<DateTime<Utc>>,
}

impl Default for PartitionSettings {
    fn default() -> Self {
        Self {
            totals: TotalsConfig::default(),
            dedup_horizon: Duration::from_secs(900),
            dedup_max_ids: 2_000_000,
            admission: Admission::embedded_defaults(),
            partitions_changed_at: None,
        }
    }
}

/// The non-total state of a partition at a checkpoint, stored as JSON in
/// `aggregator_checkpoints.state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Latest `occurred_at` applied.
    pub watermark: Option<DateTime<Utc>>,
    /// Windows ending at or before this had closed.
    pub closed_through: Option<DateTime<Utc>>,
    /// Pending asynchronous jobs per scope.
    #[serde(default)]
    pub pending_jobs: Vec<PendingJobsSnapshot>,
    /// The duplicate filter's floor from ids the `dedup_max_ids` cap forced out early
    /// ([`Dedup::forgotten_through`]); a rebuild from `replay_from` cannot recompute it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_forgotten_through: Option<DateTime<Utc>>,
    /// The policy definitions (`policy:<id>@<definition>`) whose totals are complete: seeded
    /// with the events before the offset they started counting live at (the value), then
    /// counted live. A definition of the plan missing here (new since, or the checkpoint is
    /// older than definitions) starts over at `next_offset` and is seeded again
    /// ([`PartitionAggregator::backfills`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policy_definitions: BTreeMap<String, i64>,
}

/// Where and how a partition resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The first offset not counted in the stored totals.
    pub next_offset: i64,
    /// Where to re-read from to rebuild the duplicate filter (`<= next_offset`).
    pub replay_from: i64,
    /// Watermark, close horizon, pending jobs.
    pub state: CheckpointState,
}

impl SeedPoint {
    /// Whether events were counted before it (else the seed is empty and not requested).
    pub fn needs_seed(&self) -> bool {
        self.live_from > 0 && self.watermark.is_some()
    }
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Counted in all its windows.
    Counted,
    /// Counted in its open windows and in `late_events` for the closed ones; dead-lettered.
    Late,
    /// A copy of an event already counted: not counted again.
    Duplicate,
    /// Older than the duplicate filter's floor and not remembered: counted only in
    /// `late_events`; dead-lettered.
    TooLate,
    /// Dead-lettered with this kind; not counted.
    DeadLettered(String),
    /// Rebuilding the duplicate filter after a restart: remembered, not counted.
    Remembered,
    /// Before `replay_from`: a stale delivery, ignored.
    Stale,
}

/// What a flush writes for one partition: the totals, the dead letters, then the checkpoint.
#[derive(Debug, Clone)]
pub struct PartitionFlush {
    /// The partition.
    pub partition: i32,
    /// Every total changed since the last flush, absolute, with its version.
    pub updates: Vec<TotalUpdate>,
    /// Windows closed at this flush's close horizon, dropped from the state: their keys on the
    /// totals topic are tombstoned after `updates` are published and before the checkpoint.
    pub closed: Vec<ClosedWindow>,
    /// Dead letters since the last flush.
    pub dead_letters: Vec<DeadLetter>,
    /// The checkpoint describing the state right after `updates`.
    pub checkpoint: Checkpoint,
}

/// Per-partition counts since the processor was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionCounts {
    /// Counted (including late).
    pub counted: u64,
    /// Of which late.
    pub late: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Refused as too late to deduplicate.
    pub too_late: u64,
    /// Dead-lettered (not counted at all; late events are in `late`).
    pub dead_lettered: u64,
    /// Remembered while rebuilding the filter.
    pub remembered: u64,
}

/// One input partition's aggregation state (see the module docs).
#[derive(Debug)]
pub struct PartitionAggregator {
    topic: Arc<str>,
    partition: i32,
    settings: PartitionSettings,
    state: TotalsState,
    dedup: Dedup,
    /// The first offset not counted yet.
    next_offset: i64,
    /// Records before this are stale.
    replay_from: i64,
    /// The next offset expected from Kafka: anything before it was handled (a redelivery).
    read_next: i64,
    /// Whether anything was read since the last flush (a checkpoint is due).
    progressed: bool,
    dead_letters: Vec<DeadLetter>,
    counts: PartitionCounts,
    /// Complete policy definitions and the offset each started counting live at (checkpointed).
    definitions: BTreeMap<String, i64>,
    /// Held policy definitions (counting live, not written) waiting for their seed: where they
    /// started counting live, and the watermark and close horizon there.
    seeding: BTreeMap<String, SeedPoint>,
    /// The last counted event, kept so the next record decodes into its string buffers.
    kept_event: Option<Box<UsageEvent>>,
    /// Decodes and admits records ([`Self::handle`]; the workers run a clone on another thread).
    admitter: Admitter,
}

/// Where a policy definition started counting live in a partition: its seed covers the
/// partition's events before `live_from`, in the windows still open there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedPoint {
    /// The first offset counted live.
    pub live_from: i64,
    /// The watermark there (`None`: no event counted before, nothing to seed).
    pub watermark: Option<DateTime<Utc>>,
    /// The close horizon there: windows ending at or before it are not seeded.
    pub closed_through: Option<DateTime<Utc>>,
}

/// A partition's request to seed held policy definitions that started counting live at the
/// same point ([`crate::backfill`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRequest {
    /// The partition.
    pub partition: i32,
    /// Where they started counting live, and the state there.
    pub point: SeedPoint,
    /// The definitions (`policy:<id>@<definition>`).
    pub kinds: Vec<String>,
}

/// Seed totals for a [`BackfillRequest`]: per definition, its totals over the partition's
/// events before `point.live_from` in windows still open there.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The partition.
    pub partition: i32,
    /// The request's `point.live_from`: a seed for another point is stale and ignored.
    pub live_from: i64,
    /// Per definition, its seed totals.
    pub totals: BTreeMap<String, Vec<TotalUpdate>>,
}

impl PartitionAggregator {
    /// A processor for `partition` of `topic`, resuming from `checkpoint` (`None`: from the start of
    /// the partition, with empty totals) with the newest stored row of every total of the
    /// partition, whatever its version (see the module docs). Returns it and how many stored
    /// totals were put back.
    pub fn restore<'a>(
        topic: &str,
        partition: i32,
        policies: &PolicySet,
        settings: PartitionSettings,
        checkpoint: Option<Checkpoint>,
        totals: impl IntoIterator<Item = StoredTotal<'a>>,
    ) -> Result<(PartitionAggregator, usize), StateError> {
        let topic: Arc<str> = Arc::from(topic);
        let mut state = TotalsState::new(policies, settings.totals.clone())?;
        let mut dedup = Dedup::new(settings.dedup_horizon, settings.dedup_max_ids);
        let (next_offset, replay_from) = match &checkpoint {
            Some(checkpoint) => {
                if let Some(closed_through) = checkpoint.state.closed_through {
                    state.restore_closed_through(closed_through);
                }
                if let Some(watermark) = checkpoint.state.watermark {
                    state.advance_watermark(watermark);
                }
                for pending in &checkpoint.state.pending_jobs {
                    state.restore_pending_jobs(pending);
                }
                dedup.restore_floor(
                    checkpoint.state.watermark,
                    checkpoint.state.dedup_forgotten_through,
                );
                (
                    checkpoint.next_offset,
                    checkpoint.replay_from.min(checkpoint.next_offset),
                )
            }
            None => (0, 0),
        };
        // Definitions the checkpoint does not list as complete start over here: held, and
        // seeded with the events before `next_offset` (their stored rows, if any, are ignored:
        // written after a seed whose checkpoint did not land, they are rebuilt identically).
        let complete: BTreeMap<String, i64> = checkpoint
            .as_ref()
            .map(|checkpoint| checkpoint.state.policy_definitions.clone())
            .unwrap_or_default();
        let mut definitions = BTreeMap::new();
        let mut seeding = BTreeMap::new();
        let kinds: Vec<String> = state.policy_kinds().map(|kind| kind.to_string()).collect();
        let point = SeedPoint {
            live_from: next_offset,
            watermark: state.watermark(),
            closed_through: state.closed_through(),
        };
        for kind in kinds {
            if let Some(&live_from) = complete.get(&kind) {
                definitions.insert(kind, live_from);
            } else if point.needs_seed() {
                state.hold(&kind);
                seeding.insert(kind, point);
            } else {
                definitions.insert(kind, next_offset);
            }
        }
        let mut restored = 0;
        let mut rewrite = false;
        for total in totals {
            // A row counting events at or after the checkpoint was written by a flush whose
            // checkpoint did not land, so it may never have been published: write it again.
            let ahead = total.version > u64::try_from(next_offset).unwrap_or(0);
            if state.restore_total(total, ahead) == Restored::Restored {
                restored += 1;
                rewrite |= ahead;
            }
        }
        Ok((
            PartitionAggregator {
                admitter: Admitter::new(Arc::clone(&topic), partition, settings.admission.clone()),
                topic,
                partition,
                settings,
                state,
                dedup,
                kept_event: None,
                next_offset,
                replay_from,
                read_next: replay_from,
                progressed: rewrite,
                dead_letters: Vec::new(),
                counts: PartitionCounts::default(),
                definitions,
                seeding,
            },
            restored,
        ))
    }

    /// Switches to `policies` (a reload) between two records: definitions in both keep their
    /// totals; removed ones are dropped (their unwritten changes go to the next flush); new
    /// ones (a new policy, or a changed selector, `group_by`, unit or window: a new
    /// `policy:<id>@<definition>`) count live from [`Self::next_offset`], held back until
    /// seeded with the events before it. Returns the seed to request, if any. On `Err` (a
    /// window the plan cannot represent) nothing changed.
    pub fn reload(&mut self, policies: &PolicySet) -> Result<Option<BackfillRequest>, StateError> {
        let added = self.state.replan(policies)?;
        let kinds: Vec<String> = self
            .state
            .policy_kinds()
            .map(|kind| kind.to_string())
            .collect();
        self.definitions.retain(|kind, _| kinds.contains(kind));
        self.seeding.retain(|kind, _| kinds.contains(kind));
        // The checkpoint must name the new set of complete definitions.
        self.progressed = true;
        let point = SeedPoint {
            live_from: self.next_offset,
            watermark: self.state.watermark(),
            closed_through: self.state.closed_through(),
        };
        let mut requested = Vec::new();
        for kind in added {
            if point.needs_seed() {
                self.seeding.insert(kind.to_string(), point);
                requested.push(kind.to_string());
            } else {
                self.state
                    .seed(&kind, &[])
                    .expect("an empty seed always fits");
                self.definitions.insert(kind.to_string(), point.live_from);
            }
        }
        Ok((!requested.is_empty()).then_some(BackfillRequest {
            partition: self.partition,
            point,
            kinds: requested,
        }))
    }

    /// The seeds this partition waits for (after a restore), one request per live start.
    pub fn backfills(&self) -> Vec<BackfillRequest> {
        let mut by_point: BTreeMap<i64, BackfillRequest> = BTreeMap::new();
        for (kind, point) in &self.seeding {
            by_point
                .entry(point.live_from)
                .or_insert_with(|| BackfillRequest {
                    partition: self.partition,
                    point: *point,
                    kinds: Vec::new(),
                })
                .kinds
                .push(kind.clone());
        }
        by_point.into_values().collect()
    }

    /// Adds a seed to the held definitions it is for and releases them (their totals are
    /// written and published from the next flush on). Definitions that are no longer held at
    /// that live start (removed, or started over after a restore) ignore it. Returns the
    /// definitions released.
    pub fn apply_seed(&mut self, seed: &Seed) -> Result<Vec<String>, StateError> {
        let mut released = Vec::new();
        for (kind, totals) in &seed.totals {
            let waiting = self
                .seeding
                .get(kind)
                .is_some_and(|point| point.live_from == seed.live_from);
            if !waiting {
                continue;
            }
            self.state.seed(kind, totals)?;
            self.seeding.remove(kind);
            self.definitions.insert(kind.clone(), seed.live_from);
            self.progressed = true;
            released.push(kind.clone());
        }
        Ok(released)
    }

    /// Held definitions waiting for a seed.
    pub fn seeding(&self) -> usize {
        self.seeding.len()
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The topic the partition is of.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Where reading must start: the duplicate filter's replay start.
    pub fn read_from(&self) -> i64 {
        self.replay_from
    }

    /// The first offset not counted yet.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Counts since creation.
    pub fn counts(&self) -> PartitionCounts {
        self.counts
    }

    /// The totals state (for metrics and benchmarks).
    pub fn state(&self) -> &TotalsState {
        &self.state
    }

    /// Ids in the duplicate filter.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// How far behind the watermark copies are still recognized (`None` before any event).
    pub fn dedup_effective_horizon(&self) -> Option<TimeDelta> {
        self.dedup.effective_horizon()
    }

    /// Scopes counted under an overflow bucket since the last call (issue 13 point 7).
    pub fn take_scopes_overflowed(&mut self) -> u64 {
        self.state.take_scopes_overflowed()
    }

    /// Ids the `dedup_max_ids` cap forced out before the horizon since the last call.
    pub fn take_dedup_evicted_early(&mut self) -> u64 {
        self.dedup.take_evicted_early()
    }

    /// Approximate heap bytes of the totals and the duplicate filter.
    pub fn approximate_bytes(&self) -> usize {
        self.state.approximate_bytes() + self.dedup.approximate_bytes()
    }

    /// Approximate heap bytes of the duplicate filter alone (it grows with the event rate times
    /// the horizon, not with the number of totals).
    pub fn dedup_bytes(&self) -> usize {
        self.dedup.approximate_bytes()
    }

    /// Dead letters waiting for the next flush.
    pub fn pending_dead_letters(&self) -> usize {
        self.dead_letters.len()
    }

    /// Handles the record at `offset` (see the module docs). `timestamp_ms` is its Kafka timestamp.
    ///
    /// Long by design: one record's whole path (decode, admission, duplicate filter, lateness,
    /// state, dead letter) in one place, so the exactly-once argument of the module docs can be
    /// checked against it top to bottom.
    pub fn handle(
        &mut self,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Outcome {
        if offset < self.read_next {
            return Outcome::Stale;
        }
        let kept = self.kept_event.take();
        let admitted = self
            .admitter
            .admit(offset, timestamp_ms, key, payload, kept);
        let (outcome, spent) = self.handle_admitted(offset, timestamp_ms, key, payload, admitted);
        self.kept_event = spent;
        outcome
    }

    /// What admits this partition's records: the pure first step of [`Self::handle`], which a
    /// worker runs on a thread of its own ahead of [`Self::handle_admitted`] ([`crate::workers`]).
    pub fn admitter(&self) -> Admitter {
        self.admitter.clone()
    }

    /// The rest of [`Self::handle`] for a record [`Admitter::admit`] already decoded and admitted
    /// (`admitted`, for this record, in offset order): the outcome, and the event back (when there
    /// was one) so that its buffers can take the next record's strings.
    pub fn handle_admitted(
        &mut self,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        admitted: Result<Box<UsageEvent>, Box<DeadLetter>>,
    ) -> (Outcome, Option<Box<UsageEvent>>) {
        if offset < self.read_next {
            return (Outcome::Stale, admitted.ok());
        }
        self.read_next = offset + 1;
        let remembering = offset < self.next_offset;
        let source = SourceRecord {
            topic: &self.topic,
            partition: self.partition,
            offset,
            payload: payload.unwrap_or_default(),
            key,
        };
        let event = match admitted {
            Ok(event) => event,
            Err(letter) => {
                if remembering {
                    return (Outcome::Remembered, None);
                }
                self.next_offset = offset + 1;
                self.progressed = true;
                let kind = letter.error_kind.clone();
                self.dead_letters.push(*letter);
                self.counts.dead_lettered += 1;
                return (Outcome::DeadLettered(kind), None);
            }
        };
        // Judged on the filter as it was before this record (see the dedup module docs).
        let refusal = if remembering {
            None
        } else {
            self.refusal(&event, timestamp_ms)
        };
        let first = self
            .dedup
            .insert(&event.event_id, event.occurred_at, offset);
        if remembering {
            self.counts.remembered += 1;
            return (Outcome::Remembered, Some(event));
        }
        self.next_offset = offset + 1;
        self.progressed = true;
        let outcome = if !first {
            self.counts.duplicates += 1;
            Outcome::Duplicate
        } else if let Some(reason) = refusal {
            // Only `late_events` of its scopes' open windows, and a dead letter with the reason.
            let (outcome, kind, message) = match self.state.apply_refused(&event, offset as u64 + 1)
            {
                Ok(_) => {
                    self.counts.too_late += 1;
                    (
                        Outcome::TooLate,
                        kind::TOO_LATE_TO_DEDUPLICATE,
                        format!("{reason}: not counted (only in late_events of the open windows)"),
                    )
                }
                Err(error) => {
                    self.counts.dead_lettered += 1;
                    (
                        Outcome::DeadLettered(kind::OVERFLOW.to_owned()),
                        kind::OVERFLOW,
                        format!("not counted: {error}"),
                    )
                }
            };
            self.dead_letters
                .push(dead_letter::dead_letter(source, SERVICE, kind, message));
            outcome
        } else {
            // Versions are offset + 1, so that 0 means "nothing counted".
            match self.state.apply(&event, offset as u64 + 1) {
                Ok(applied) if applied.windows_late > 0 => {
                    let message = format!(
                        "occurred_at {} is in {} window(s) that closed before the watermark {} \
                         (allowed lateness {} s): counted in late_events of the open windows \
                         instead, and in {} open window(s)",
                        event.occurred_at.to_rfc3339(),
                        applied.windows_late,
                        self.state
                            .watermark()
                            .map_or_else(|| "-".to_owned(), |at| at.to_rfc3339()),
                        self.settings.totals.lateness.allowed_lateness.as_secs(),
                        applied.windows_counted,
                    );
                    self.dead_letters.push(dead_letter::dead_letter(
                        source,
                        SERVICE,
                        kind::LATE,
                        message,
                    ));
                    self.counts.counted += 1;
                    self.counts.late += 1;
                    Outcome::Late
                }
                Ok(_) => {
                    self.counts.counted += 1;
                    Outcome::Counted
                }
                Err(error) => {
                    self.dead_letters.push(dead_letter::dead_letter(
                        source,
                        SERVICE,
                        kind::OVERFLOW,
                        format!("not counted: {error}"),
                    ));
                    self.counts.dead_lettered += 1;
                    Outcome::DeadLettered(kind::OVERFLOW.to_owned())
                }
            }
        };
        if let Some(watermark) = self.state.watermark() {
            self.dedup.expire(watermark);
        }
        (outcome, Some(event))
    }

    /// Why a record that is not in the filter could still be a copy of a counted event (so must
    /// not be counted), if it could.
    fn refusal(&self, event: &UsageEvent, timestamp_ms: Option<i64>) -> Option<String> {
        if !self.dedup.recognizes(event.occurred_at) {
            let floor = self
                .dedup
                .floor()
                .map_or_else(String::new, |at| at.to_rfc3339());
            let horizon = self
                .dedup
                .effective_horizon()
                .map_or(0, |horizon| horizon.num_seconds());
            return Some(format!(
                "occurred_at {} is at or before {floor}, the oldest event time the duplicate \
                 filter still recognizes copies from (effective horizon {horizon} s behind the \
                 watermark; dedup_horizon_secs {}, fewer if dedup_max_ids forced ids out)",
                event.occurred_at.to_rfc3339(),
                self.settings.dedup_horizon.as_secs(),
            ));
        }
        let changed_at = self.settings.partitions_changed_at?;
        let written_after_change = timestamp_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .is_some_and(|written| written >= changed_at);
        (written_after_change && event.occurred_at < changed_at).then(|| {
            format!(
                "occurred_at {} is before dedup_partitions_changed_at {} and the record was \
                 written after it: its first copy may be in another partition's filter",
                event.occurred_at.to_rfc3339(),
                changed_at.to_rfc3339(),
            )
        })
    }

    /// Whether a flush has anything to write for this partition.
    pub fn has_progress(&self) -> bool {
        self.progressed
    }

    /// Drains the changed totals, the dead letters and the checkpoint after them. The caller
    /// writes them (totals, tombstones, dead letters, then the checkpoint); if the write fails it
    /// retries the same flush.
    pub fn take_flush(&mut self) -> PartitionFlush {
        self.progressed = false;
        let updates = self.state.drain_dirty();
        // After the drain nothing is dirty, so every window closed at this checkpoint's close
        // horizon goes, and its key is tombstoned by this flush, before its checkpoint.
        let closed = self.state.take_closed();
        // While the records before `next_offset` are still being re-read, the filter is
        // incomplete and its front says nothing: the restored replay start still holds. (A flush
        // can come that early: rows restored ahead of the checkpoint are rewritten at once.)
        let rebuilding = self.read_next < self.next_offset;
        let replay_from = if rebuilding {
            self.replay_from
        } else {
            self.dedup.replay_from().unwrap_or(self.next_offset)
        };
        PartitionFlush {
            partition: self.partition,
            updates,
            closed,
            dead_letters: std::mem::take(&mut self.dead_letters),
            checkpoint: Checkpoint {
                next_offset: self.next_offset,
                replay_from,
                state: CheckpointState {
                    watermark: self.state.watermark(),
                    closed_through: self.state.closed_through(),
                    pending_jobs: self.state.pending_jobs_snapshot(),
                    dedup_forgotten_through: self.dedup.forgotten_through(),
                    policy_definitions: self.definitions.clone(),
                },
            },
        }
    }

    /// Policy totals changed since the last peek (see `TotalsState::peek_policy_updates`).
    pub fn peek_policy_updates(&mut self) -> Vec<crate::state::TotalUpdate> {
        self.state.peek_policy_updates()
    }
}

mod admitter;
pub use admitter::Admitter;

#[cfg(test)]
mod tests;
