//! Issue 13 point 6: the totals topic carries a tombstone for the key of every closed window, so
//! compaction keeps only the open windows' keys and a reader's restore is bounded by live state,
//! not by history. On the real stack: the aggregator counts a few hours of events, then the
//! totals topic is read from the start and each key's last record is checked against the close
//! horizon of the partition's checkpoint.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use schemas::WindowTotal;
use support::*;

const POLICIES: &str = r#"
- id: hourly-team
  owner: {team: search, contact: s@example.com}
  description: cost per team per hour
  unit: cost_usd
  group_by: [team]
  window: {kind: hour}
  hard_cap: 1000000
  action: {kind: alert_only}
"#;

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct CheckpointState {
    partition: i32,
    state: String,
}

/// The close horizon of each partition's newest checkpoint.
async fn closed_through(config: &aggregator::Config) -> BTreeMap<i32, DateTime<Utc>> {
    infra::clickhouse::client(&config.clickhouse)
        .query(
            "SELECT partition, state FROM aggregator_checkpoints FINAL \
             WHERE consumer_group = ? AND topic = ?",
        )
        .bind(&config.group_id)
        .bind(&config.kafka.topics.usage)
        .fetch_all::<CheckpointState>()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|row| {
            let state: serde_json::Value = serde_json::from_str(&row.state).unwrap();
            let at = state.get("closed_through")?.as_str()?;
            Some((
                row.partition,
                DateTime::parse_from_rfc3339(at)
                    .unwrap()
                    .with_timezone(&Utc),
            ))
        })
        .collect()
}

/// The last record of every key of the totals topic (read from the start, uncompacted):
/// `None` for a tombstone.
fn last_records(kafka: &infra::config::KafkaConfig) -> BTreeMap<String, Option<WindowTotal>> {
    let consumer: BaseConsumer = infra::kafka::client_config(kafka, "quotaflow-test")
        .set("group.id", infra::testkit::unique_name("tombstone-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in 0..kafka.topics.partitions {
        let (_, high) = consumer
            .fetch_watermarks(&kafka.topics.totals, partition, Duration::from_secs(10))
            .unwrap();
        if high > 0 {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(&kafka.topics.totals, partition, rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    let mut last = BTreeMap::new();
    if ends.is_empty() {
        return last;
    }
    consumer.assign(&assignment).unwrap();
    let started = std::time::Instant::now();
    while !ends.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "reading the totals topic"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let total = message
            .payload()
            .map(|payload| schemas::decode::<WindowTotal>(payload).unwrap());
        last.insert(key, total);
        if ends.get(&message.partition()) == Some(&(message.offset() + 1)) {
            ends.remove(&message.partition());
        }
    }
    last
}

/// Issue 13 point 6: after windows close, the totals topic's last record for every (scope,
/// window, partition) key of a closed window is a tombstone (null value), and every open
/// window's key still holds its total, also after a crash between a flush's tombstones and its
/// checkpoint (the replay re-publishes totals, then tombstones them again). Fails on a build
/// that never tombstones.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn closed_windows_keys_are_tombstoned_on_the_totals_topic() {
    let mut config = isolated_config("agg_tombstones");
    config.kafka.topics.partitions = 2;
    config.aggregate.policies_dir = Some(policies_dir(POLICIES));
    // Three and a half hours of event time, 4 s apart: minutes and hours close, the day stays
    // open.
    let first = Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).unwrap();
    let events = workload(613, 3150, first, 4000);
    // The first half is counted by a process that crashes right after the tombstones of its
    // first flush, before the checkpoint: the restart replays from the start, publishes those
    // totals again after their tombstones, and must tombstone them again.
    let (first_half, second_half) = events.split_at(events.len() / 2);
    produce(&config.kafka, first_half).await;
    let crashing = spawn_process_with_failpoint(&config, Some("tombstoned:1"));
    assert!(
        crashing.wait_aborted(Duration::from_secs(120)).await,
        "it exited without crashing after its tombstones"
    );
    let running = start(&config).await;
    produce(&config.kafka, second_half).await;
    wait_caught_up(&config, Duration::from_secs(180)).await;
    running.stop().await.unwrap();

    let horizons = closed_through(&config).await;
    assert_eq!(
        horizons.len(),
        2,
        "both partitions checkpointed a close horizon"
    );
    // Every key's last record, with the window it names.
    let last = last_records(&config.kafka);
    let (mut tombstoned, mut open, mut policy_tombstones) = (0, 0, 0);
    for (key, record) in &last {
        let parts = WindowTotal::parse_compaction_key(key).expect("a totals key");
        let horizon = horizons[&parts.source_partition];
        match record {
            None => {
                tombstoned += 1;
                policy_tombstones += usize::from(parts.scope_kind.starts_with("policy:"));
                // Only closed windows are tombstoned: the window's start is before the
                // horizon (its end, not in the key, is at or before it: checked below for
                // the windows that still have a total).
                assert!(parts.window_start < horizon, "{key} tombstoned while open");
            }
            Some(total) => {
                assert!(
                    total.window_end > horizon,
                    "{key}: window ended {} at or before the close horizon {horizon}, \
                     but its last record is a total, not a tombstone",
                    total.window_end
                );
                open += 1;
            }
        }
    }
    // Minutes and hours of three and a half hours closed; policy scopes too.
    assert!(tombstoned > 1000, "{tombstoned} keys tombstoned");
    assert!(policy_tombstones > 0, "no policy key tombstoned");
    assert!(open > 0, "no open window left");
}
