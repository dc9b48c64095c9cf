//! Issue 13, point 11: decisions as fast under sparse traffic as under load.
//!
//! The first event after a quiet period used to wait 0.5–1.5 s in the aggregator before its total
//! was published: every 2 s the loop awaited an end-offset request per owned partition (for the lag
//! gauge), and on a quiet topic each of those queues behind the consumer's own long-poll fetch on
//! the same broker connection, for up to `fetch.wait.max.ms`. This test makes that wait long
//! (`fetch.wait.max.ms` = 3 s) so a loop that waits for the broker is caught by a wide margin, then
//! sends probes after gaps and follows each one's total on the totals topic.

mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use support::{isolated_config, produce, start, workload};

/// The enforcement path: policy totals are published every 20 ms, ahead of the flush.
const POLICY: &str = r#"
- id: probe-daily
  owner: {team: search, contact: s@example.com}
  description: cost per key per day
  unit: cost_usd
  group_by: [api_key_id]
  window: {kind: day}
  hard_cap: 1000
  action: {kind: alert_only}
"#;

/// Well under the 3 s a fetch may be held, far over what reading and publishing take (tens of ms).
const PROBE_DEADLINE: Duration = Duration::from_millis(1_000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn sparse_probes_are_published_without_waiting_for_a_long_poll() {
    let mut config = isolated_config("sparse");
    let totals_reader = follow_totals(&config.kafka);
    config
        .kafka
        .properties
        .insert("fetch.wait.max.ms".into(), "3000".into());
    config.aggregate.flush_interval_ms = 500;
    config.aggregate.policies_dir = Some(support::policies_dir(POLICY));
    config.aggregate.publish_scopes = aggregator::config::PublishScopes::Policies;
    // One event first, so every partition is assigned and the loop is idle when probes come.
    let warmup = workload(11, 1, Utc::now(), 0);
    produce(&config.kafka, &warmup).await;
    let running = start(&config).await;
    let producer: FutureProducer = infra::kafka::producer_config(&config.kafka, "sparse-test")
        .create()
        .unwrap();
    wait_for_key(
        &totals_reader,
        &warmup[0].api_key_id,
        Duration::from_secs(60),
    )
    .expect("the warm-up event's total was never published");

    let mut slow = Vec::new();
    for probe in 0..10u64 {
        // Gaps of 0.3–2.1 s: long enough for the loop to go quiet and the gauge tick (2 s) to come.
        tokio::time::sleep(Duration::from_millis(300 + probe * 200)).await;
        let mut event = workload(100 + probe, 1, Utc::now(), 0).remove(0);
        event.api_key_id = format!("probe-{probe}-{}", infra::testkit::unique_name("k"));
        let sent = Instant::now();
        send(&producer, &config.kafka.topics.usage, &event).await;
        let seen = wait_for_key(&totals_reader, &event.api_key_id, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("probe {probe}'s total was never published"));
        let took = seen - sent;
        eprintln!("probe {probe}: total published {took:?} after the send");
        if took > PROBE_DEADLINE {
            slow.push((probe, took));
        }
    }
    // The lag gauge still works, from librdkafka's statistics instead of broker requests.
    let metrics_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = reqwest::get(&running.metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lags: Vec<&str> = metrics
            .lines()
            .filter(|line| line.starts_with("quotaflow_aggregator_consumer_lag{"))
            .collect();
        if lags.len() == config.kafka.topics.partitions as usize
            && lags.iter().all(|line| line.ends_with(" 0"))
        {
            break;
        }
        assert!(
            Instant::now() < metrics_deadline,
            "no lag of 0 for every partition: {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await.unwrap();
    assert!(
        slow.is_empty(),
        "probes whose total took longer than {PROBE_DEADLINE:?} (the loop waited on the broker): {slow:?}"
    );
}

/// Produces one event as ingest does and waits for its acknowledgement.
async fn send(producer: &FutureProducer, topic: &str, event: &schemas::UsageEvent) {
    let payload = schemas::encode(event).unwrap();
    producer
        .send(
            FutureRecord::to(topic)
                .key(schemas::usage_event::partition_key(event))
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .unwrap();
}

/// A consumer of the whole totals topic from its current end.
fn follow_totals(kafka: &infra::config::KafkaConfig) -> BaseConsumer {
    let consumer: BaseConsumer =
        infra::kafka::consumer_config(kafka, "sparse-test", &infra::testkit::unique_name("totals"))
            .create()
            .unwrap();
    futures::executor::block_on(infra::kafka::ensure_topics(
        kafka,
        &infra::kafka::pipeline_topics(kafka),
    ))
    .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.topics.partitions {
        assignment
            .add_partition_offset(&kafka.topics.totals, partition, Offset::End)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

/// When the policy's total for `api_key_id` was read, or `None` after `deadline`.
fn wait_for_key(consumer: &BaseConsumer, api_key_id: &str, deadline: Duration) -> Option<Instant> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        let Some(message) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let message = message.unwrap();
        let Some(payload) = message.payload() else {
            continue;
        };
        let total: schemas::WindowTotal = schemas::decode(payload).unwrap();
        if total.scope_kind.starts_with("policy:probe-daily@")
            && total.scope_key.contains(api_key_id)
        {
            return Some(Instant::now());
        }
    }
    None
}
