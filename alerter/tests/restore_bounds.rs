//! Issue 13 point 6: the alerter's restore is bounded by live state, not by history. On the real
//! stack: a month of closed day windows on the totals topic (part of it already tombstoned, the
//! rest as a topic written before tombstones existed), today's open windows, and tombstones;
//! the alerter restores, and what it holds is counted through its `/metrics`.

mod support;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use infra::config::KafkaConfig;
use infra::testkit;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::WindowTotal;
use support::*;

const KEYS: usize = 20;
const HISTORY_DAYS: i64 = 30;
const PARTITIONS: i32 = 2;

/// A `t-cap` partial of `api_key_id=key` for the UTC day starting at `day`, from `partition`.
fn day_total(key: usize, day: DateTime<Utc>, partition: i32, cost: &str) -> WindowTotal {
    WindowTotal {
        source_partition: partition,
        ..policy_total(
            "t-cap",
            &format!("api_key_id=k{key:02}"),
            day,
            day + TimeDelta::days(1),
            cost,
            1,
        )
    }
}

/// Writes a tombstone (no value) for the key of each of `totals`, as the aggregator does when
/// their windows close.
async fn produce_tombstones(kafka: &KafkaConfig, totals: &[WindowTotal]) {
    let producer: FutureProducer = infra::kafka::producer_config(kafka, "alerter-test")
        .create()
        .unwrap();
    for total in totals {
        let key = total.compaction_key();
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&kafka.topics.totals).key(&key),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }
}

/// The value of the metric line starting with `name` (with its labels) on `/metrics`.
async fn metric(base_url: &str, name: &str) -> Option<u64> {
    let body = reqwest::get(format!("{base_url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

/// Issue 13 point 6: the restore folds the totals topic as it reads it and holds only the open
/// windows: of a month of history (1,200 closed partials, a third of them tombstoned) and
/// today's 40 partials of 20 keys, it holds the 20 open (scope, window) totals, every record
/// counted as read; a tombstone read at restore or while following removes its partial; and
/// the open totals decide (the key over its cap is blocked). Fails on a build that buffers every
/// record and loads ended windows (it holds the month) or ignores tombstones.
#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn restore_holds_the_open_windows_not_the_history() {
    let receivers = Receivers::start().await;
    let mut config = config("alerter_restore_bounds", CAP_PER_KEY, &receivers);
    config.kafka.topics.partitions = PARTITIONS;
    let today = now_s().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();

    // A month of closed days, ended at least a day ago. The oldest ten days were tombstoned
    // (aggregator with tombstones, topic not compacted yet); the others come from a topic written
    // before tombstones existed.
    let mut history = Vec::new();
    for days_ago in 2..2 + HISTORY_DAYS {
        for key in 0..KEYS {
            for partition in 0..PARTITIONS {
                history.push(day_total(
                    key,
                    today - TimeDelta::days(days_ago),
                    partition,
                    "50",
                ));
            }
        }
    }
    produce_totals(&config.kafka, &history).await;
    let tombstoned: Vec<WindowTotal> = history
        .iter()
        .filter(|total| total.window_start <= today - TimeDelta::days(HISTORY_DAYS - 8))
        .cloned()
        .collect();
    assert_eq!(tombstoned.len(), 10 * KEYS * PARTITIONS as usize);
    produce_tombstones(&config.kafka, &tombstoned).await;
    // Today: every key from both partitions; k00 over its 10 USD cap.
    let mut open = Vec::new();
    for key in 0..KEYS {
        for partition in 0..PARTITIONS {
            let cost = if key == 0 { "6" } else { "1" };
            open.push(day_total(key, today, partition, cost));
        }
    }
    produce_totals(&config.kafka, &open).await;
    // A key whose only partial was tombstoned (a window the aggregator closed): not held.
    let gone = day_total(99, today, 0, "1");
    produce_totals(&config.kafka, std::slice::from_ref(&gone)).await;
    produce_tombstones(&config.kafka, std::slice::from_ref(&gone)).await;

    let alerter = start(&config).await;
    let read = history.len() + open.len() + 1;
    assert_eq!(
        metric(
            &alerter.base_url,
            "quotaflow_alerter_restore_records{topic=\"totals\"}"
        )
        .await,
        Some(read as u64),
        "every totals record was read and folded"
    );
    assert_eq!(
        metric(
            &alerter.base_url,
            "quotaflow_alerter_restore_records{topic=\"totals_tombstones\"}"
        )
        .await,
        Some(tombstoned.len() as u64 + 1)
    );
    // Only today's windows are held: not the month, and not the tombstoned key.
    assert_eq!(
        metric(&alerter.base_url, "quotaflow_alerter_totals_held").await,
        Some(KEYS as u64),
        "the restored state holds the open windows only"
    );
    // The open totals decide: k00's two partials add up to 12 USD over its 10 USD cap.
    let log = wait_control(&config.kafka, "k00 blocked", |log| {
        log.iter()
            .any(|decision| decision.scope.get("api_key_id").map(String::as_str) == Some("k00"))
    })
    .await;
    assert!(
        log.iter()
            .all(|decision| decision.scope.get("api_key_id").map(String::as_str) == Some("k00")),
        "only k00 is over its cap: {log:?}"
    );

    // Followed tombstones remove their partials too: both partials of five keys go.
    let closing: Vec<WindowTotal> = open
        .iter()
        .filter(|total| total.scope_key.as_str() > "api_key_id=k14")
        .cloned()
        .collect();
    assert_eq!(closing.len(), 5 * PARTITIONS as usize);
    produce_tombstones(&config.kafka, &closing).await;
    let base_url = alerter.base_url.clone();
    testkit::eventually(
        Duration::from_secs(30),
        "the followed tombstones applied",
        || {
            let base_url = base_url.clone();
            async move {
                (metric(&base_url, "quotaflow_alerter_totals_held").await == Some(KEYS as u64 - 5))
                    .then_some(())
            }
        },
    )
    .await;
    alerter.stop().await.unwrap();
    receivers.stop().await;
}
