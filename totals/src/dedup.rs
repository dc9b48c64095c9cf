//! [`Dedup`]: the duplicate filter of one input partition, by `event_id`, within a horizon.
//!
//! # What counts as a duplicate
//! A record whose `event_id` was already seen in the same partition and is still remembered. Ingest
//! keys records by `job_id` or else `event_id` (`schemas::partition_key`), so every copy of an event
//! lands in the partition of the first copy (while the partition count is unchanged). Ids are
//! remembered in arrival order and forgotten from the oldest once their event time is `horizon`
//! behind the partition's watermark, or earlier when more than `max_ids` are held.
//!
//! # A duplicate is never counted twice: the floor
//! A forgotten id's copy would look new, and a late event is still counted in its open windows
//! (its day, its month), so "late anyway" is not enough. The filter therefore keeps a **floor**
//! ([`Dedup::floor`]): every id it ever forgot had an event time at or before it. The floor is the
//! later of `watermark - horizon` and the latest event time among ids the `max_ids` cap forced out
//! early ([`Dedup::forgotten_through`]). An event at or before the floor that is not remembered
//! cannot be told from a copy of a forgotten one, so the caller refuses it (dead-lettered as too
//! late to deduplicate, counted only in `late_events`); an event after the floor is a duplicate
//! exactly when it is remembered. This rests on copies of an event carrying the same `occurred_at`
//! (they are the same event). The **effective horizon** is `watermark - floor`: `horizon` unless
//! the cap bit ([`Dedup::effective_horizon`]).
//!
//! # Rebuilding after a restart
//! Every decoded record is remembered, duplicates included (as one more copy of the id), and
//! forgetting is first-in first-out, so the filter always holds exactly the ids of the decoded
//! records of a contiguous run of offsets, from [`Dedup::replay_from`] to the last one inserted. A
//! restart re-reads that run and inserts it again (without counting anything): the filter is then
//! exactly what it was, including for a third copy of an id whose first copy was forgotten. That is
//! why the checkpoint stores `replay_from`.
//!
//! # Memory
//! 20 bytes per id in the map and 32 in the queue, plus hash-table slack: about 70 bytes per id.
//! Ids are kept as 128-bit keyed hashes (two foldhash `quality` hashers with seeds drawn per
//! process; a collision, which would count an event as a duplicate, has probability about
//! n²/2¹²⁹ for ids not crafted against the hash). The seeds are never stored: the filter is rebuilt from the input, not persisted.
//! foldhash instead of SipHash: 2 × 64 bits of a 30-byte id cost about a third as much
//! (`cargo bench -p quotaflow-totals --bench state -- dedup`, docs/benchmarks.md).

use foldhash::quality::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// A hasher for keys that are already uniformly random (the 128-bit id hashes): it uses them.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64 ^ (value >> 64) as u64;
    }
}

/// One remembered id.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u128,
    occurred_at: DateTime<Utc>,
    offset: i64,
}

/// The duplicate filter of one partition (see the module docs).
#[derive(Debug)]
pub struct Dedup {
    horizon: TimeDelta,
    max_ids: usize,
    keys: (RandomState, RandomState),
    /// Copies remembered per id.
    seen: HashMap<u128, u32, BuildHasherDefault<PassThrough>>,
    order: VecDeque<Entry>,
    /// The watermark of the last [`Dedup::expire`] (the partition's, after the last record).
    watermark: Option<DateTime<Utc>>,
    /// Latest event time among ids forgotten because `max_ids` was reached: part of the floor.
    /// Kept in the checkpoint, since a rebuild starts empty and cannot recompute it.
    forgotten_through: Option<DateTime<Utc>>,
    /// Ids forgotten because of `max_ids` before the horizon, not yet taken for the metric.
    evicted_early: u64,
}

impl Dedup {
    /// An empty filter remembering ids for `horizon` of event time, and at most `max_ids` of them.
    pub fn new(horizon: Duration, max_ids: usize) -> Self {
        Self {
            horizon: TimeDelta::from_std(horizon).unwrap_or(TimeDelta::MAX),
            max_ids: max_ids.max(1),
            keys: (RandomState::default(), RandomState::default()),
            seen: HashMap::default(),
            order: VecDeque::new(),
            watermark: None,
            forgotten_through: None,
            evicted_early: 0,
        }
    }

    /// Puts back what a checkpoint holds besides the ids: the watermark and the cap's part of the
    /// floor. The ids themselves are rebuilt by re-reading from [`Self::replay_from`].
    pub fn restore_floor(
        &mut self,
        watermark: Option<DateTime<Utc>>,
        forgotten_through: Option<DateTime<Utc>>,
    ) {
        self.watermark = self.watermark.max(watermark);
        self.forgotten_through = self.forgotten_through.max(forgotten_through);
    }

    /// Every id forgotten so far had an event time at or before this (see the module docs).
    pub fn floor(&self) -> Option<DateTime<Utc>> {
        let by_horizon = self
            .watermark
            .and_then(|watermark| watermark.checked_sub_signed(self.horizon));
        by_horizon.max(self.forgotten_through)
    }

    /// Whether a copy of an event at `occurred_at` would still be recognized: it is after the
    /// floor. An event at or before the floor must be refused unless [`Self::insert`] finds it.
    pub fn recognizes(&self, occurred_at: DateTime<Utc>) -> bool {
        self.floor().is_none_or(|floor| occurred_at > floor)
    }

    /// How far behind the watermark copies are recognized: `horizon`, or less once the cap forced
    /// ids out early. `None` before the first event.
    pub fn effective_horizon(&self) -> Option<TimeDelta> {
        let watermark = self.watermark?;
        Some(
            self.floor()
                .map_or(self.horizon, |floor| watermark.signed_duration_since(floor))
                .max(TimeDelta::zero()),
        )
    }

    /// The cap's part of the floor (stored in the checkpoint).
    pub fn forgotten_through(&self) -> Option<DateTime<Utc>> {
        self.forgotten_through
    }

    fn id_of(&self, event_id: &str) -> u128 {
        let high = self.keys.0.hash_one(event_id);
        let low = self.keys.1.hash_one(event_id);
        (u128::from(high) << 64) | u128::from(low)
    }

    /// Remembers `event_id` (read at `offset`); `false` when it was already remembered: a
    /// duplicate (remembered once more all the same, see the module docs).
    pub fn insert(&mut self, event_id: &str, occurred_at: DateTime<Utc>, offset: i64) -> bool {
        let id = self.id_of(event_id);
        let copies = self.seen.entry(id).or_insert(0);
        let first = *copies == 0;
        *copies += 1;
        self.order.push_back(Entry {
            id,
            occurred_at,
            offset,
        });
        while self.order.len() > self.max_ids {
            let Some(forgotten) = self.pop_front() else {
                break;
            };
            // Due anyway when already past the horizon (first in, first out had not reached it).
            if self.recognizes(forgotten.occurred_at) {
                self.evicted_early += 1;
            }
            self.forgotten_through = self.forgotten_through.max(Some(forgotten.occurred_at));
        }
        first
    }

    /// Forgets the oldest ids whose event time is `horizon` or more behind `watermark`, stopping
    /// at the first that is not (first in, first out; see the module docs).
    pub fn expire(&mut self, watermark: DateTime<Utc>) {
        self.watermark = self.watermark.max(Some(watermark));
        let Some(limit) = watermark.checked_sub_signed(self.horizon) else {
            return;
        };
        while self
            .order
            .front()
            .is_some_and(|entry| entry.occurred_at <= limit)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.order.pop_front()?;
        if let Some(copies) = self.seen.get_mut(&entry.id) {
            *copies -= 1;
            if *copies == 0 {
                self.seen.remove(&entry.id);
            }
        }
        Some(entry)
    }

    /// The offset of the oldest remembered id: where a restart re-reads from to rebuild the filter.
    pub fn replay_from(&self) -> Option<i64> {
        self.order.front().map(|entry| entry.offset)
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Ids forgotten because `max_ids` was reached before the horizon, since the last call (for
    /// the metric). Their copies are refused, not counted: they are at or before the floor.
    pub fn take_evicted_early(&mut self) -> u64 {
        std::mem::take(&mut self.evicted_early)
    }

    /// Approximate heap bytes.
    pub fn approximate_bytes(&self) -> usize {
        self.seen.capacity() * (size_of::<(u128, u32)>() + 1)
            + self.order.capacity() * size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_halves_of_an_id_come_from_different_seeds() {
        let dedup = Dedup::new(Duration::from_secs(60), 10);
        let (high, low) = (
            dedup.keys.0.hash_one("evt_1"),
            dedup.keys.1.hash_one("evt_1"),
        );
        assert_ne!(
            high, low,
            "both halves hashed alike: a 64-bit digest, not 128"
        );
        assert_ne!(dedup.id_of("evt_1"), dedup.id_of("evt_2"));
        assert_eq!(dedup.id_of("evt_1"), dedup.id_of("evt_1"));
    }
    use chrono::TimeZone;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 9, 12, minute, 0).unwrap()
    }

    #[test]
    fn a_second_copy_is_a_duplicate_until_it_is_forgotten() {
        let mut dedup = Dedup::new(Duration::from_secs(600), 1000);
        assert!(dedup.insert("e1", at(0), 10));
        assert!(!dedup.insert("e1", at(0), 11));
        assert!(dedup.insert("e2", at(5), 12));
        assert_eq!(dedup.replay_from(), Some(10));
        dedup.expire(at(9));
        assert_eq!(dedup.len(), 3, "e1 is 9 minutes behind: still remembered");
        dedup.expire(at(10));
        assert_eq!(dedup.replay_from(), Some(12));
        assert!(dedup.insert("e1", at(0), 13), "forgotten after the horizon");
    }

    #[test]
    fn forgetting_is_first_in_first_out_so_the_remembered_ids_are_a_contiguous_run() {
        let mut dedup = Dedup::new(Duration::from_secs(60), 1000);
        dedup.insert("late-front", at(30), 1);
        dedup.insert("old", at(0), 2);
        dedup.expire(at(20));
        // "old" is past the horizon but behind a newer front: kept, so a replay from offset 1
        // rebuilds exactly this set.
        assert_eq!((dedup.len(), dedup.replay_from()), (2, Some(1)));
        dedup.expire(at(31));
        assert_eq!(dedup.len(), 0);
    }

    #[test]
    fn the_cap_forgets_the_oldest_and_counts_them() {
        let mut dedup = Dedup::new(Duration::from_secs(3600), 2);
        for (offset, id) in ["a", "b", "c"].iter().enumerate() {
            dedup.insert(id, at(0), offset as i64);
        }
        assert_eq!(dedup.take_evicted_early(), 1);
        assert_eq!(dedup.take_evicted_early(), 0, "taken");
        assert_eq!(dedup.replay_from(), Some(1));
        assert!(
            !dedup.recognizes(at(0)),
            "a copy of the forgotten a would look new: it must be refused"
        );
        assert!(dedup.recognizes(at(1)));
        assert!(!dedup.insert("c", at(0), 4));
    }

    #[test]
    fn the_floor_follows_the_horizon_and_the_cap() {
        let mut dedup = Dedup::new(Duration::from_secs(600), 3);
        assert_eq!((dedup.floor(), dedup.effective_horizon()), (None, None));
        dedup.insert("a", at(0), 0);
        dedup.expire(at(0));
        assert!(
            dedup.recognizes(at(0))
                && !dedup.recognizes(Utc.with_ymd_and_hms(2026, 3, 9, 11, 50, 0).unwrap())
        );
        assert_eq!(dedup.effective_horizon(), Some(TimeDelta::minutes(10)));
        for (offset, minute) in [1, 2, 3].into_iter().enumerate() {
            dedup.insert(&format!("e{minute}"), at(minute), offset as i64 + 1);
            dedup.expire(at(minute));
        }
        // "a" (minute 0) was forced out within the horizon: the floor is minute 0.
        assert_eq!(dedup.forgotten_through(), Some(at(0)));
        assert_eq!(dedup.effective_horizon(), Some(TimeDelta::minutes(3)));
        assert!(!dedup.recognizes(at(0)) && dedup.recognizes(at(1)));
        assert_eq!(dedup.take_evicted_early(), 1);

        // A restored filter starts from the checkpoint's floor.
        let mut restored = Dedup::new(Duration::from_secs(600), 3);
        restored.restore_floor(Some(at(3)), dedup.forgotten_through());
        assert_eq!(restored.floor(), dedup.floor());
    }

    #[test]
    fn a_rebuilt_filter_equals_the_original() {
        let mut original = Dedup::new(Duration::from_secs(120), 50);
        let ids: Vec<(String, DateTime<Utc>)> = (0..200)
            .map(|i| (format!("e{}", (i * 7) % 70), at((i / 5) as u32 % 60)))
            .collect();
        for (offset, (id, when)) in ids.iter().enumerate() {
            original.insert(id, *when, offset as i64);
            original.expire(at((offset / 5) as u32 % 60));
        }
        let from = original.replay_from().unwrap();
        let mut rebuilt = Dedup::new(Duration::from_secs(120), 50);
        for (offset, (id, when)) in ids.iter().enumerate().skip(from as usize) {
            rebuilt.insert(id, *when, offset as i64);
        }
        rebuilt.expire(at((199 / 5) as u32 % 60));
        let probe: Vec<bool> = (0..70)
            .map(|i| original.insert(&format!("e{i}"), at(59), 1000))
            .collect();
        let probe_rebuilt: Vec<bool> = (0..70)
            .map(|i| rebuilt.insert(&format!("e{i}"), at(59), 1000))
            .collect();
        assert_eq!(probe, probe_rebuilt);
    }
}
