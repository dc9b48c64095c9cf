//! A shutdown while a flush is being retried (ClickHouse down) abandons that flush, and nothing is
//! written after it, even when ClickHouse comes back within the final flush's budget: what the
//! abandoned flush had taken from the partitions is lost to this run, so a later flush in the
//! same run would checkpoint past partials it never wrote. The next run resumes from the last
//! durable checkpoint and the totals are exact (`infra::checkpointed`, `FlushEnd::Abandoned`).
//!
//! Its own test binary: it captures the process's logs to see the shutdown begin.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use infra::testkit;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_shutdown_during_a_failing_flush_then_clickhouse_back_loses_nothing() {
    let logs = testkit::capture_logs();
    let mut config = isolated_config("agg_abandon");
    let direct = config.clone();
    let (proxy, _) = clickhouse_behind_proxy(&mut config).await;

    let start_at: DateTime<Utc> = Utc::now() - chrono::TimeDelta::minutes(5);
    // Three parts in minutes of their own (and keys of their own), so the windows of the flush
    // that is abandoned are not all rewritten by a later one.
    let mut events = workload(33, 1_000, start_at, 10);
    events.extend(workload(
        34,
        1_500,
        start_at + chrono::TimeDelta::minutes(1),
        10,
    ));
    events.extend(workload(
        35,
        1_500,
        start_at + chrono::TimeDelta::minutes(3),
        10,
    ));
    let running = start(&config).await;
    produce(&config.kafka, &events[..1_000]).await;
    wait_caught_up(&config, Duration::from_secs(120)).await;
    // The checkpoint row is visible before its INSERT's answer reaches the aggregator: wait until
    // that flush has ended (its advisory commit follows), so the outage cannot cut it.
    let ends = end_offsets(&config.kafka);
    testkit::eventually(Duration::from_secs(30), "the advisory commit", || async {
        (committed_offsets(&config) == ends).then_some(())
    })
    .await;

    // ClickHouse goes down; a flush takes what was read and fails.
    proxy.set_down(true);
    produce(&config.kafka, &events[1_000..2_500]).await;
    testkit::eventually(Duration::from_secs(60), "a failed flush", || async {
        (running.stats.flush_failures.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    // More records are read (and counted) while that flush is retried.
    let read_before = running.stats.records.load(Ordering::Relaxed);
    produce(&config.kafka, &events[2_500..]).await;
    testkit::eventually(
        Duration::from_secs(60),
        "records read during the retries",
        || async { (running.stats.records.load(Ordering::Relaxed) > read_before).then_some(()) },
    )
    .await;

    // Shutdown while the flush is retried; once it took effect, ClickHouse comes back well within
    // the final flush's 30 s budget.
    running.shutdown.cancel();
    let topic = config.kafka.topics.usage.clone();
    testkit::eventually(Duration::from_secs(30), "the shutdown to begin", || async {
        logs.text()
            .lines()
            .any(|line| line.contains("consumer stopping") && line.contains(&topic))
            .then_some(())
    })
    .await;
    proxy.set_down(false);
    running.handle.await.unwrap().unwrap();
    let stopping = logs
        .text()
        .lines()
        .find(|line| line.contains("consumer stopping") && line.contains(&topic))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        stopping.contains("abandoned=true"),
        "the shutdown did not interrupt a retried flush, the test proves nothing: {stopping}"
    );

    // The next run resumes from the last durable checkpoint: exact.
    let running = start(&direct).await;
    wait_caught_up(&direct, Duration::from_secs(120)).await;
    assert_totals_eq(
        "ClickHouse after a shutdown during an outage",
        &stored_totals(&direct.clickhouse).await,
        &recount(&events),
    );
    running.stop().await.unwrap();
    testkit::drop_database(&direct.clickhouse).await.unwrap();
}

/// The group's committed (advisory) offsets of the usage topic.
fn committed_offsets(config: &aggregator::Config) -> std::collections::BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = infra::kafka::client_config(&config.kafka, "quotaflow-test")
        .set("group.id", &config.group_id)
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..config.kafka.topics.partitions {
        list.add_partition(&config.kafka.topics.usage, partition);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .map(|list| {
            list.elements()
                .iter()
                .filter_map(|element| match element.offset() {
                    rdkafka::Offset::Offset(offset) => Some((element.partition(), offset)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
