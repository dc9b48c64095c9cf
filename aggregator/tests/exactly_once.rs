//! Exactly-once on the real stack: totals in ClickHouse and on the totals topic equal an independent
//! recount of the input (sums and counts), with duplicates, bad records, `kill -9` at any moment,
//! rebalances between instances, and a ClickHouse outage.

mod support;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use infra::testkit;
use schemas::UsageEvent;
use support::*;

/// `count` workload events from 2026-10-31 23:00 UTC (so day and month boundaries fall inside),
/// 50 ms apart, with a copy of every 20th event re-sent 100 events (5 s) later.
fn events_with_duplicates(seed: u64, count: usize) -> Vec<UsageEvent> {
    let start = Utc.with_ymd_and_hms(2026, 10, 31, 23, 0, 0).unwrap();
    let originals = workload(seed, count, start, 50);
    let mut events = Vec::with_capacity(count + count / 20);
    for (index, event) in originals.iter().enumerate() {
        events.push(event.clone());
        if index >= 100 && index % 20 == 0 {
            events.push(originals[index - 100].clone());
        }
    }
    events
}

async fn check_exact(config: &aggregator::Config, events: &[UsageEvent]) {
    let want = recount(events);
    assert_totals_eq(
        "window_totals_current",
        &stored_totals(&config.clickhouse).await,
        &want,
    );
    assert_totals_eq("totals topic", &published_totals(&config.kafka), &want);
    let letters = dead_letter_kinds(&config.clickhouse).await;
    for kind in ["overflow", "late", "in_future"] {
        assert!(
            !letters.contains_key(kind),
            "unexpected dead letters: {letters:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn totals_equal_a_recount_of_100k_mixed_events_with_duplicates() {
    let config = isolated_config("agg_exact");
    let events = events_with_duplicates(1, 100_000);
    let duplicates = events.len() - 100_000;
    assert!(duplicates > 4_000);
    let running = start(&config).await;
    produce(&config.kafka, &events).await;
    // Records no event can be made of: dead-lettered with the reason, not counted.
    produce_raw(
        &config.kafka,
        &[("bad-1", b"not avro"), ("bad-2", &[0xC3, 0x01, 1, 2])],
    )
    .await;
    wait_caught_up(&config, Duration::from_secs(300)).await;

    check_exact(&config, &events).await;
    let letters = dead_letter_kinds(&config.clickhouse).await;
    assert_eq!(letters.values().sum::<u64>(), 2, "{letters:?}");
    assert_eq!(
        running
            .stats
            .counted
            .load(std::sync::atomic::Ordering::Relaxed),
        100_000
    );
    let metrics = metrics_text(&running).await;
    assert!(
        metrics.contains("quotaflow_aggregator_records_total{outcome=\"duplicate\"}"),
        "{metrics}"
    );
    running.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn kill_9_at_any_moment_repeatedly_loses_and_duplicates_nothing() {
    let mut config = isolated_config("agg_kill");
    // Flush constantly so that random kills land mid-flush as often as between flushes.
    config.aggregate.flush_interval_ms = 20;
    config.aggregate.flush_max_records = 3_000;
    let events = events_with_duplicates(2, 60_000);
    produce(&config.kafka, &events[..events.len() / 2]).await;
    // Bad records, so that flushes also write dead letters.
    produce_raw(&config.kafka, &[("bad-1", b"not avro"), ("bad-2", b"")]).await;

    crash_after_each_flush_write_then_kill_9(&config, &events[events.len() / 2..], 4).await;
    let last = spawn_process(&config);
    wait_caught_up(&config, Duration::from_secs(300)).await;
    check_exact(&config, &events).await;
    let letters = dead_letter_kinds(&config.clickhouse).await;
    assert_eq!(
        letters.values().sum::<u64>(),
        2,
        "each bad record once: {letters:?}"
    );
    drop(last);
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

/// One partition on a machine of several cores: the worker splits in two threads (the first
/// decodes and admits, the second counts; see `aggregator/src/workers.rs`). A kill at any moment
/// of that pipeline loses and duplicates nothing: a flush is answered only after every earlier
/// record passed both threads, and offsets are stored only after the flush is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn kill_9_with_one_partition_on_the_split_worker_loses_and_duplicates_nothing() {
    let mut config = isolated_config("agg_kill_split");
    config.kafka.topics.partitions = 1;
    config.aggregate.flush_interval_ms = 20;
    config.aggregate.flush_max_records = 3_000;
    let events = events_with_duplicates(5, 40_000);
    produce(&config.kafka, &events[..events.len() / 2]).await;
    crash_after_each_flush_write_then_kill_9(&config, &events[events.len() / 2..], 4).await;

    // The last run in this process, to read which thread admitted its records.
    let running = start(&config).await;
    wait_caught_up(&config, Duration::from_secs(300)).await;
    check_exact(&config, &events).await;
    let metrics = metrics_text(&running).await;
    if std::thread::available_parallelism().map_or(1, usize::from) > 1 {
        assert!(
            metrics
                .contains("quotaflow_aggregator_batches_total{admitted_on=\"admitting_thread\"}"),
            "one partition on several cores must run the split path: {metrics}"
        );
    }
    running.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn instances_joining_and_leaving_mid_stream_lose_and_duplicate_nothing() {
    let config = isolated_config("agg_rebalance");
    let events = events_with_duplicates(3, 60_000);
    let third = events.len() / 3;

    let first = start(&config).await;
    produce(&config.kafka, &events[..third]).await;
    testkit::eventually(
        Duration::from_secs(120),
        "the first instance counting",
        || async {
            (first
                .stats
                .counted
                .load(std::sync::atomic::Ordering::Relaxed)
                > 1_000)
                .then_some(())
        },
    )
    .await;
    // A second instance joins: partitions move to it mid-stream.
    let second = start(&config).await;
    testkit::eventually(
        Duration::from_secs(120),
        "partitions moving to the second",
        || async {
            (second
                .stats
                .partitions
                .load(std::sync::atomic::Ordering::Acquire)
                > 0)
            .then_some(())
        },
    )
    .await;
    produce(&config.kafka, &events[third..2 * third]).await;
    testkit::eventually(
        Duration::from_secs(120),
        "the second instance counting",
        || async {
            (second
                .stats
                .counted
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0)
            .then_some(())
        },
    )
    .await;
    // The first leaves: its partitions move to the second.
    first.stop().await.unwrap();
    produce(&config.kafka, &events[2 * third..]).await;
    wait_caught_up(&config, Duration::from_secs(300)).await;
    check_exact(&config, &events).await;
    second.stop().await.unwrap();
    testkit::drop_database(&config.clickhouse).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_clickhouse_outage_reads_ahead_then_pauses_and_it_catches_up_afterwards() {
    let mut config = isolated_config("agg_outage");
    // Reading goes on through an outage (enforcement does not wait for ClickHouse), up to this
    // many records; then it pauses.
    const READ_AHEAD: usize = 5_000;
    config.aggregate.read_ahead_while_failing = READ_AHEAD;
    // Migrate directly, then point the aggregator at ClickHouse through a proxy we can cut.
    let (proxy, direct) = clickhouse_behind_proxy(&mut config).await;

    let events = events_with_duplicates(4, 40_000);
    let running = start(&config).await;
    produce(&config.kafka, &events[..1_000]).await;
    wait_caught_up(&config, Duration::from_secs(120)).await;

    proxy.set_down(true);
    produce(&config.kafka, &events[1_000..]).await;
    // Flushes fail; reading goes on for the read-ahead, then pauses.
    testkit::eventually(Duration::from_secs(60), "reading paused", || async {
        let metrics = reqwest::get(&running.metrics_url)
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics
            .contains("quotaflow_aggregator_paused 1")
            .then_some(())
    })
    .await;
    let failures = running
        .stats
        .flush_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(failures >= 1, "paused without a failed flush");
    // Records read by the loop (the workers may still be counting what was read before the
    // pause).
    let counted_while_down = running
        .stats
        .records
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        counted_while_down as usize >= 1_000 + READ_AHEAD,
        "paused after {counted_while_down} records, before the read-ahead was spent"
    );
    testkit::eventually(Duration::from_secs(30), "more failed flushes", || async {
        (running
            .stats
            .flush_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= failures + 3)
            .then_some(())
    })
    .await;
    let counted_later = running
        .stats
        .records
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        counted_while_down, counted_later,
        "it kept reading after the read-ahead was spent"
    );
    assert!((counted_later as usize) < events.len() - 10_000);

    proxy.set_down(false);
    config.clickhouse = direct.clone();
    wait_caught_up(&config, Duration::from_secs(300)).await;
    check_exact(&config, &events).await;
    running.stop().await.unwrap();
    testkit::drop_database(&direct).await.unwrap();
}
