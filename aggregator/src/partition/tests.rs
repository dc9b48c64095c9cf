use super::*;
use crate::measures::Measures;
use chrono::TimeZone;
use schemas::fixtures::text_event;

fn policies() -> PolicySet {
    PolicySet::from_str("test.yaml", quotaflow_totals::fixtures::POLICIES).unwrap()
}

fn fresh() -> PartitionAggregator {
    PartitionAggregator::restore(
        "usage",
        0,
        &policies(),
        PartitionSettings::default(),
        None,
        [],
    )
    .unwrap()
    .0
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 9, 12, minute, 0).unwrap()
}

fn bytes(id: &str, when: DateTime<Utc>) -> Vec<u8> {
    schemas::encode(&text_event(id, when)).unwrap()
}

fn written(when: DateTime<Utc>) -> Option<i64> {
    Some(when.timestamp_millis())
}

#[test]
fn every_record_has_exactly_one_outcome() {
    let mut partition = fresh();
    let e1 = bytes("e1", at(0));
    assert_eq!(
        partition.handle(0, written(at(0)), None, Some(&e1)),
        Outcome::Counted
    );
    assert_eq!(
        partition.handle(1, written(at(0)), None, Some(&e1)),
        Outcome::Duplicate
    );
    assert_eq!(
        partition.handle(2, written(at(0)), None, Some(b"junk")),
        Outcome::DeadLettered("bad_magic".to_owned())
    );
    assert_eq!(
        partition.handle(3, written(at(0)), None, None),
        Outcome::DeadLettered(kind::EMPTY.to_owned())
    );
    let future = bytes("e2", at(30));
    assert_eq!(
        partition.handle(4, written(at(0)), None, Some(&future)),
        Outcome::DeadLettered(kind::IN_FUTURE.to_owned())
    );
    let e3 = bytes("e3", at(20));
    assert_eq!(
        partition.handle(5, written(at(20)), None, Some(&e3)),
        Outcome::Counted
    );
    // Its minute closed (lateness 10 min) but within the duplicate horizon (15 min).
    let late = bytes("e4", at(8));
    assert_eq!(
        partition.handle(6, written(at(20)), None, Some(&late)),
        Outcome::Late
    );
    // Older than the horizon: it could be a copy of a forgotten event.
    let too_late = bytes("e5", at(1));
    assert_eq!(
        partition.handle(7, written(at(20)), None, Some(&too_late)),
        Outcome::TooLate
    );
    let flush = partition.take_flush();
    assert_eq!(flush.checkpoint.next_offset, 8);
    // e1 (offsets 0 and 1) is 20 minutes behind the watermark: forgotten.
    assert_eq!(flush.checkpoint.replay_from, 5);
    let kinds: Vec<&str> = flush
        .dead_letters
        .iter()
        .map(|letter| letter.error_kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "bad_magic",
            "empty",
            "in_future",
            "late",
            "too_late_to_deduplicate"
        ]
    );
    assert!(flush.dead_letters[3].error_message.contains("late_events"));
    assert!(flush.dead_letters[4].error_message.contains("not counted"));
    let counts = partition.counts();
    assert_eq!(
        (
            counts.counted,
            counts.late,
            counts.duplicates,
            counts.dead_lettered,
            counts.too_late
        ),
        (3, 1, 1, 3, 1)
    );
}

fn team_day(updates: &[TotalUpdate]) -> &TotalUpdate {
    updates
        .iter()
        .find(|update| &*update.scope_kind == "team" && update.window.kind().to_string() == "day")
        .unwrap()
}

/// Issue 13, point 1: a copy re-sent after the duplicate horizon (its day still open) was
/// counted a second time in the day; it is now refused and only in `late_events`.
#[test]
fn a_copy_older_than_the_horizon_is_refused_not_counted_twice() {
    let mut partition = fresh();
    let original = bytes("e1", at(0));
    partition.handle(0, written(at(0)), None, Some(&original));
    partition.handle(1, written(at(20)), None, Some(&bytes("e2", at(20))));
    let before = team_day(&partition.take_flush().updates).measures;
    assert_eq!(before.requests, 2);
    assert_eq!(
        partition.handle(2, written(at(20)), None, Some(&original)),
        Outcome::TooLate
    );
    let after = team_day(&partition.take_flush().updates).measures;
    assert_eq!(after.requests, 2, "the copy is not counted in its open day");
    assert_eq!(after.cost_usd, before.cost_usd);
    assert_eq!(after.late_events, before.late_events + 1);
}

/// Issue 13, point 1: ids the `dedup_max_ids` cap forces out early raise the floor, which the
/// checkpoint keeps: a copy of a forgotten id is refused, before and after a restart.
#[test]
fn ids_forgotten_early_are_refused_across_a_restart() {
    let settings = PartitionSettings {
        dedup_max_ids: 3,
        ..PartitionSettings::default()
    };
    let mut first =
        PartitionAggregator::restore("usage", 0, &policies(), settings.clone(), None, [])
            .unwrap()
            .0;
    let ids = ["e0", "e1", "e2", "e3", "e4"];
    for (minute, id) in ids.iter().enumerate() {
        let when = at(minute as u32);
        first.handle(minute as i64, written(when), None, Some(&bytes(id, when)));
    }
    assert_eq!(first.take_dedup_evicted_early(), 2);
    assert_eq!(
        first.dedup_effective_horizon(),
        Some(TimeDelta::minutes(3)),
        "the cap shrank the horizon"
    );
    let checkpoint = first.take_flush().checkpoint;
    assert_eq!(checkpoint.state.dedup_forgotten_through, Some(at(1)));
    assert_eq!(
        first.handle(5, written(at(4)), None, Some(&bytes("e1", at(1)))),
        Outcome::TooLate
    );
    let (mut second, _) =
        PartitionAggregator::restore("usage", 0, &policies(), settings, Some(checkpoint), [])
            .unwrap();
    for offset in second.read_from()..5 {
        let when = at(offset as u32);
        assert_eq!(
            second.handle(
                offset,
                written(when),
                None,
                Some(&bytes(ids[offset as usize], when))
            ),
            Outcome::Remembered
        );
    }
    assert_eq!(
        second.handle(5, written(at(4)), None, Some(&bytes("e1", at(1)))),
        Outcome::TooLate
    );
    assert_eq!(
        second.handle(6, written(at(4)), None, Some(&bytes("e3", at(3)))),
        Outcome::Duplicate
    );
}

/// Issue 13, point 1: after the partition count changed, a record written after the change
/// about an event before it may be a copy whose first copy is in another partition.
#[test]
fn records_written_after_a_partition_change_about_older_events_are_refused() {
    let settings = PartitionSettings {
        partitions_changed_at: Some(at(10)),
        ..PartitionSettings::default()
    };
    let mut partition = PartitionAggregator::restore("usage", 0, &policies(), settings, None, [])
        .unwrap()
        .0;
    assert_eq!(
        partition.handle(0, written(at(9)), None, Some(&bytes("before", at(9)))),
        Outcome::Counted,
        "written before the change"
    );
    assert_eq!(
        partition.handle(1, written(at(11)), None, Some(&bytes("before", at(9)))),
        Outcome::Duplicate,
        "still recognized here"
    );
    assert_eq!(
        partition.handle(2, written(at(11)), None, Some(&bytes("moved", at(9)))),
        Outcome::TooLate
    );
    assert_eq!(
        partition.handle(3, written(at(11)), None, Some(&bytes("after", at(10)))),
        Outcome::Counted
    );
}

#[test]
fn control_characters_are_dead_lettered_as_the_archive_does() {
    let mut partition = fresh();
    let mut event = text_event("escape", at(0));
    event.team = "a\u{1b}[31m".to_owned();
    let record = schemas::encode(&event).unwrap();
    assert_eq!(
        partition.handle(0, written(at(0)), None, Some(&record)),
        Outcome::DeadLettered(dead_letter::kind::VALIDATION.to_owned())
    );
    let flush = partition.take_flush();
    assert_eq!(
        flush.dead_letters[0].error_message,
        "team (control_character): team contains the control character U+001B at byte 1; \
         control characters (C0 U+0000-U+001F including NUL, DEL U+007F, C1 U+0080-U+009F) \
         are not allowed"
    );
    assert_eq!(partition.counts().counted, 0);
}

/// Found by the crash test: rows restored ahead of the checkpoint make a flush due before any
/// record is re-read; its checkpoint must keep the restored replay start, or the next restart
/// would rebuild the duplicate filter from too late and count a copy again.
#[test]
fn a_flush_before_the_filter_is_rebuilt_keeps_the_replay_start() {
    let mut first = fresh();
    for (offset, id) in ["e1", "e2", "e3"].iter().enumerate() {
        first.handle(offset as i64, written(at(1)), None, Some(&bytes(id, at(1))));
    }
    let checkpoint = first.take_flush().checkpoint;
    assert_eq!((checkpoint.next_offset, checkpoint.replay_from), (3, 0));
    let ahead = StoredTotal {
        scope_kind: "team",
        scope_key: "search",
        window_kind: "day",
        window_tz: "UTC",
        window_start: Utc.with_ymd_and_hms(2026, 3, 9, 0, 0, 0).unwrap(),
        measures: crate::measures::Measures::ZERO,
        version: 5,
    };
    let (mut second, restored) = PartitionAggregator::restore(
        "usage",
        0,
        &policies(),
        PartitionSettings::default(),
        Some(checkpoint),
        [ahead],
    )
    .unwrap();
    assert_eq!(restored, 1);
    assert!(
        second.has_progress(),
        "the ahead row is due to be rewritten"
    );
    let early = second.take_flush().checkpoint;
    assert_eq!((early.next_offset, early.replay_from), (3, 0));
    // Once the filter is rebuilt, a copy of e1 is a duplicate.
    for (offset, id) in ["e1", "e2", "e3"].iter().enumerate() {
        assert_eq!(
            second.handle(offset as i64, written(at(1)), None, Some(&bytes(id, at(1)))),
            Outcome::Remembered
        );
    }
    assert_eq!(
        second.handle(3, written(at(1)), None, Some(&bytes("e1", at(1)))),
        Outcome::Duplicate
    );
}

fn policy_totals(updates: &[TotalUpdate]) -> Vec<(String, String, String, Measures, u64)> {
    let mut totals: Vec<_> = updates
        .iter()
        .filter(|update| update.scope_kind.starts_with("policy:"))
        .map(|update| {
            (
                update.scope_kind.to_string(),
                update.scope_key.to_string(),
                update.window.id(),
                update.measures,
                update.version,
            )
        })
        .collect();
    totals.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    totals
}

/// Issue 13 point 3: a definition a reload brings counts live from the reload's offset, is
/// neither flushed nor peeked until it is seeded with the partition's earlier records, and
/// then equals counting with it from the start; a checkpoint taken while it waits does not
/// list it, so a restore starts it over (held, seeded again) instead of trusting its rows.
#[test]
fn a_reloaded_definition_is_held_until_seeded_then_exact() {
    let records: Vec<Vec<u8>> = (0..20u32)
        .map(|i| bytes(&format!("e{}", i % 17), at(i)))
        .collect();
    let mut straight = fresh();
    for (offset, record) in records.iter().enumerate() {
        straight.handle(offset as i64, written(at(20)), None, Some(record));
    }
    let expected = policy_totals(&straight.take_flush().updates);
    assert!(!expected.is_empty());

    let mut live = PartitionAggregator::restore(
        "usage",
        0,
        &PolicySet::empty(),
        PartitionSettings::default(),
        None,
        [],
    )
    .unwrap()
    .0;
    for (offset, record) in records.iter().enumerate().take(12) {
        live.handle(offset as i64, written(at(20)), None, Some(record));
    }
    live.take_flush();
    let request = live.reload(&policies()).unwrap().expect("a seed is needed");
    assert_eq!(request.point.live_from, 12);
    assert_eq!(request.kinds.len(), 3, "the three windowed policies");
    for (offset, record) in records.iter().enumerate().skip(12) {
        live.handle(offset as i64, written(at(20)), None, Some(record));
    }
    assert!(live.peek_policy_updates().is_empty(), "held: not published");
    let waiting = live.take_flush();
    assert!(
        policy_totals(&waiting.updates).is_empty(),
        "held: not written"
    );
    assert!(waiting.checkpoint.state.policy_definitions.is_empty());

    // A restart from that checkpoint starts the definitions over at its next offset.
    let (restarted, _) = PartitionAggregator::restore(
        "usage",
        0,
        &policies(),
        PartitionSettings::default(),
        Some(waiting.checkpoint.clone()),
        [],
    )
    .unwrap();
    assert_eq!(restarted.backfills()[0].point.live_from, 20);

    let mut builder = crate::backfill::SeedBuilder::new(
        "usage",
        &policies(),
        PartitionSettings::default(),
        &request,
    )
    .unwrap();
    for (offset, record) in records.iter().enumerate().take(12) {
        builder.handle(offset as i64, written(at(20)), None, Some(record));
    }
    let released = live.apply_seed(&builder.finish()).unwrap();
    assert_eq!(released.len(), 3);
    let seeded = live.take_flush();
    assert_eq!(policy_totals(&seeded.updates), expected);
    assert_eq!(seeded.checkpoint.state.policy_definitions.len(), 3);
    assert!(seeded
        .checkpoint
        .state
        .policy_definitions
        .values()
        .all(|&live_from| live_from == 12));
}

/// The heart of exactly-once: stopping anywhere, restoring from the checkpoint plus the totals
/// written before it, and re-reading from `replay_from` gives the same totals as never stopping.
#[test]
fn restore_and_replay_continue_exactly() {
    let records: Vec<Vec<u8>> = (0..120u32)
        .map(|i| {
            // Duplicates spread out, and time moving on so windows close.
            let id = format!("e{}", (i * 7) % 90);
            bytes(&id, at(i / 3))
        })
        .collect();
    let run = |partition: &mut PartitionAggregator, from: usize, to: usize| {
        let mut flushed = Vec::new();
        for (offset, payload) in records.iter().enumerate().take(to).skip(from) {
            partition.handle(offset as i64, written(at(59)), None, Some(payload));
            if offset % 10 == 9 {
                flushed.push(partition.take_flush());
            }
        }
        flushed.push(partition.take_flush());
        flushed
    };
    // The latest write per key, as window_partials FINAL would keep it.
    fn latest(flushes: &[PartitionFlush], below: i64) -> Vec<TotalUpdate> {
        let mut by_key = std::collections::BTreeMap::new();
        for update in flushes.iter().flat_map(|flush| &flush.updates) {
            if update.version as i64 >= below {
                continue;
            }
            let key = (
                update.scope_kind.clone(),
                update.scope_key.clone(),
                update.window.id(),
            );
            let keep = by_key
                .get(&key)
                .is_none_or(|seen: &TotalUpdate| seen.version <= update.version);
            if keep {
                by_key.insert(key, update.clone());
            }
        }
        by_key.into_values().collect()
    }
    let mut straight = fresh();
    let expected = latest(&run(&mut straight, 0, records.len()), i64::MAX);

    // Stop after a complete flush, or crash after a flush's rows were written but before its
    // checkpoint: the rows are then ahead of the checkpoint the replay starts from.
    for (stop, crashed_before_checkpoint) in [1usize, 17, 40, 63, 99]
        .into_iter()
        .flat_map(|stop| [(stop, false), (stop, true)])
    {
        let mut first = fresh();
        let mut written = run(&mut first, 0, stop);
        let checkpoint = if crashed_before_checkpoint {
            written
                .len()
                .checked_sub(2)
                .map(|index| written[index].checkpoint.clone())
        } else {
            Some(written.last().unwrap().checkpoint.clone())
        };
        let stored = latest(&written, i64::MAX);
        let totals = stored.iter().map(|update| StoredTotal {
            scope_kind: &update.scope_kind,
            scope_key: &update.scope_key,
            window_kind: update.window.kind().to_string().leak(),
            window_tz: update.window.time_zone().name(),
            window_start: update.window.start(),
            measures: update.measures,
            version: update.version,
        });
        let (mut second, _) = PartitionAggregator::restore(
            "usage",
            0,
            &policies(),
            PartitionSettings::default(),
            checkpoint.clone(),
            totals,
        )
        .unwrap();
        let from = second.read_from() as usize;
        written.extend(run(&mut second, from, records.len()));
        let resumed = latest(&written, i64::MAX);
        assert_eq!(
            resumed.len(),
            expected.len(),
            "stop at {stop}, {crashed_before_checkpoint}"
        );
        for (got, want) in resumed.iter().zip(&expected) {
            assert_eq!(
                (got.window.id(), got.measures, got.version),
                (want.window.id(), want.measures, want.version),
                "stop at {stop} ({crashed_before_checkpoint}): {} {}",
                got.scope_kind,
                got.scope_key
            );
        }
    }
}
