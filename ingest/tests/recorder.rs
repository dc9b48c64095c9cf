//! The producer library (`ingest::recorder::Recorder`) against the real local Kafka
//! (`dev/stack up`): every test creates its own topics and reads back what it produced.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use infra::config::KafkaConfig;
use infra::kafka::{Retention, TopicSpec};
use infra::testkit;
use ingest::pricer::{Pricer, PricingApplied, UnpricedPolicy};
use ingest::recorder::{Delivery, RecordError, Recorder, RecorderConfig};
use ingest::validation::{kind, ValidationConfig};
use pricing::Catalog;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use rust_decimal::Decimal;
use schemas::{CostSource, UsageEvent};

const DEADLINE: Duration = Duration::from_secs(60);

/// gpt-4o in the embedded sample (`pricing/fixtures/catalog_sample.json`): input 2.5e-06,
/// cache read 1.25e-06, output 1e-05 per token. 1000 input of which 200 cached, 500 output:
/// 800 × 0.0000025 + 200 × 0.00000125 + 500 × 0.00001 = 0.002 + 0.00025 + 0.005.
const GPT_4O_COST_USD: &str = "0.00725";

fn usd(text: &str) -> Decimal {
    Decimal::from_str(text).expect("decimal literal")
}

/// A valid gpt-4o chat event happening now.
fn text_event(event_id: &str) -> UsageEvent {
    serde_json::from_value(serde_json::json!({
        "event_id": event_id,
        "occurred_at": Utc::now().to_rfc3339(),
        "producer": "gateway-1",
        "request_id": format!("req-{event_id}"),
        "action_id": format!("act-{event_id}"),
        "attempt": 1,
        "api_key_id": "key-1",
        "team": "search",
        "workflow": "summarize",
        "environment": "prod",
        "provider": "openai",
        "model": "gpt-4o",
        "endpoint": "chat_completions",
        "modality": "text",
        "input_tokens": 1000,
        "cached_input_tokens": 200,
        "output_tokens": 500,
        "status": "ok",
        "labels": {"feature": "digest"},
    }))
    .expect("the sample event is valid JSON for UsageEvent")
}

/// Fresh topic names for `test`, with the usage topic created (3 partitions).
async fn kafka_with_usage_topic(test: &str) -> KafkaConfig {
    let kafka = testkit::kafka_config(test);
    let usage = TopicSpec {
        name: kafka.topics.usage.clone(),
        partitions: kafka.topics.partitions,
        retention: Retention::Time(Duration::from_secs(3600)),
        replication: Default::default(),
        extra_config: Vec::new(),
    };
    infra::kafka::ensure_topics(&kafka, &[usage])
        .await
        .expect("usage topic created");
    kafka
}

fn recorder_with(
    kafka: &KafkaConfig,
    config: &RecorderConfig,
    unpriced: UnpricedPolicy,
) -> Recorder {
    let pricer = Pricer::new(Arc::new(Catalog::embedded_sample()), unpriced);
    Recorder::new(kafka, config, pricer, ValidationConfig::default()).expect("producer created")
}

fn recorder(kafka: &KafkaConfig) -> Recorder {
    recorder_with(kafka, &RecorderConfig::default(), UnpricedPolicy::FailOpen)
}

/// One record read back from the usage topic.
#[derive(Debug)]
struct Consumed {
    key: String,
    partition: i32,
    offset: i64,
    event: UsageEvent,
}

/// Reads exactly `count` records from the usage topic (from the beginning), failing after
/// [`DEADLINE`].
async fn consume(kafka: &KafkaConfig, count: usize) -> Vec<Consumed> {
    let group = testkit::unique_name("recorder-test");
    let consumer: StreamConsumer = infra::kafka::consumer_config(kafka, "recorder-test", &group)
        .create()
        .expect("consumer created");
    consumer
        .subscribe(&[&kafka.topics.usage])
        .expect("subscribed");
    let started = Instant::now();
    let mut consumed = Vec::with_capacity(count);
    while consumed.len() < count {
        let remaining = DEADLINE.saturating_sub(started.elapsed());
        let message = tokio::time::timeout(remaining, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out after {DEADLINE:?} with {} of {count} records",
                    consumed.len()
                )
            });
        // A topic created a moment ago may not be in the consumer's metadata yet.
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                eprintln!("consumer error, still waiting: {error}");
                continue;
            }
        };
        let key = String::from_utf8(message.key().expect("keyed").to_vec()).expect("utf-8 key");
        let event = schemas::decode::<UsageEvent>(message.payload().expect("payload"))
            .expect("the value decodes as a UsageEvent");
        consumed.push(Consumed {
            key,
            partition: message.partition(),
            offset: message.offset(),
            event,
        });
    }
    consumed
}

/// How many records the usage topic holds (high minus low watermark over its partitions).
async fn records_in_topic(kafka: &KafkaConfig) -> i64 {
    let consumer: StreamConsumer =
        infra::kafka::consumer_config(kafka, "recorder-test", &testkit::unique_name("watermarks"))
            .create()
            .expect("consumer created");
    let count = || {
        (0..kafka.topics.partitions)
            .map(|partition| {
                consumer
                    .fetch_watermarks(&kafka.topics.usage, partition, Duration::from_secs(5))
                    .map(|(low, high)| high - low)
            })
            .sum::<Result<i64, _>>()
    };
    // A topic created a moment ago may not be in the metadata yet (`UnknownPartition`).
    testkit::eventually(DEADLINE, "usage topic watermarks", || async {
        // Blocking for at most the metadata timeout; nothing else runs on this test's runtime.
        count().ok()
    })
    .await
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn records_priced_and_reported_events_and_reads_them_back() {
    let kafka = kafka_with_usage_topic("recorder_roundtrip").await;
    let recorder = recorder(&kafka);

    let priced = recorder
        .record(text_event("evt-priced"))
        .await
        .expect("priced event acknowledged");
    let mut reported_event = text_event("evt-reported");
    reported_event.reported_cost_usd = Some(usd("0.0123"));
    let prepared = recorder
        .prepare(reported_event, Utc::now())
        .expect("valid event");
    assert_eq!(
        prepared.pricing(),
        &PricingApplied::Reported {
            reported_cost_usd: usd("0.0123"),
            priced_cost_usd: Some(usd(GPT_4O_COST_USD)),
        }
    );
    let reported = recorder
        .send(prepared)
        .await
        .expect("reported event acknowledged");

    let mut consumed = consume(&kafka, 2).await;
    consumed.sort_by(|left, right| left.key.cmp(&right.key));
    let [priced_record, reported_record] = &consumed[..] else {
        panic!("expected two records, got {consumed:?}");
    };

    assert_eq!(priced_record.key, "evt-priced");
    assert_eq!(priced_record.event.event_id, "evt-priced");
    assert_eq!(priced_record.event.cost_usd, Some(usd(GPT_4O_COST_USD)));
    assert_eq!(priced_record.event.cost_source, Some(CostSource::Priced));
    assert_eq!(
        priced_record.event.catalog_version.as_deref(),
        Some(Catalog::embedded_sample().version())
    );
    assert_eq!(
        Delivery {
            partition: priced_record.partition,
            offset: priced_record.offset
        },
        priced
    );

    assert_eq!(reported_record.key, "evt-reported");
    assert_eq!(reported_record.event.cost_usd, Some(usd("0.0123")));
    assert_eq!(
        reported_record.event.cost_source,
        Some(CostSource::Reported)
    );
    assert_eq!(reported_record.event.catalog_version, None);
    assert_eq!(
        Delivery {
            partition: reported_record.partition,
            offset: reported_record.offset
        },
        reported
    );
    assert_eq!(recorder.in_flight_bytes(), 0);
    recorder
        .flush(Duration::from_secs(10))
        .await
        .expect("flushed");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn the_same_event_id_always_lands_in_the_same_partition() {
    let kafka = kafka_with_usage_topic("recorder_same_key").await;
    let recorder = recorder(&kafka);
    let mut partitions_by_event: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for copy in 0..3 {
        for event_id in ["evt-a", "evt-b", "evt-c", "evt-d"] {
            // A retry resends the same event, possibly observed a little later.
            let mut event = text_event(event_id);
            event.latency_ms = Some(copy);
            let delivery = recorder.record(event).await.expect("acknowledged");
            partitions_by_event
                .entry(event_id.to_owned())
                .or_default()
                .push(delivery.partition);
        }
    }
    for (event_id, partitions) in &partitions_by_event {
        assert!(
            partitions
                .iter()
                .all(|partition| *partition == partitions[0]),
            "{event_id} went to partitions {partitions:?}"
        );
    }
    for record in consume(&kafka, 12).await {
        assert_eq!(partitions_by_event[&record.key][0], record.partition);
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn every_event_of_a_job_is_keyed_by_its_job_id_and_lands_in_one_partition() {
    let kafka = kafka_with_usage_topic("recorder_job_key").await;
    let recorder = recorder(&kafka);
    let job_event = |event_id: &str, job_id: &str, job_state: &str| {
        let mut event = text_event(event_id);
        event.job_id = Some(job_id.to_owned());
        event.job_state = Some(job_state.parse().expect("a job state"));
        event
    };
    let mut partitions_by_job: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for job in 0..6 {
        let job_id = format!("job-{job}");
        // Distinct event ids: with event_id keys these would scatter over the partitions.
        for (step, state) in ["submitted", "running", "succeeded"].iter().enumerate() {
            let event = job_event(&format!("evt-{job}-{step}"), &job_id, state);
            let delivery = recorder.record(event).await.expect("acknowledged");
            partitions_by_job
                .entry(job_id.clone())
                .or_default()
                .push(delivery.partition);
        }
    }
    for (job_id, partitions) in &partitions_by_job {
        assert!(
            partitions
                .iter()
                .all(|partition| *partition == partitions[0]),
            "{job_id} went to partitions {partitions:?}"
        );
    }
    for record in consume(&kafka, 18).await {
        let job_id = record.event.job_id.as_deref().expect("a job event");
        assert_eq!(record.key, job_id, "keyed by job_id");
        assert_eq!(partitions_by_job[job_id][0], record.partition);
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn unknown_models_are_unpriced_when_failing_open_and_rejected_when_failing_closed() {
    let kafka = kafka_with_usage_topic("recorder_unpriced").await;
    let mut unknown = text_event("evt-unknown");
    unknown.model = "in-house-model".to_owned();

    let fail_open = recorder_with(&kafka, &RecorderConfig::default(), UnpricedPolicy::FailOpen);
    fail_open
        .record(unknown.clone())
        .await
        .expect("accepted as unpriced");
    let [record] = &consume(&kafka, 1).await[..] else {
        panic!("expected one record");
    };
    assert_eq!(record.event.cost_usd, None, "unpriced is null, never 0");
    assert_eq!(record.event.cost_source, Some(CostSource::Unpriced));
    assert_eq!(
        record.event.catalog_version.as_deref(),
        Some(Catalog::embedded_sample().version())
    );

    let fail_closed = recorder_with(
        &kafka,
        &RecorderConfig::default(),
        UnpricedPolicy::FailClosed,
    );
    let error = fail_closed
        .record(unknown.clone())
        .await
        .expect_err("rejected when failing closed");
    assert!(!error.is_retryable());
    let violations = error.violations().expect("an invalid-event error");
    assert_eq!(violations.len(), 1);
    assert_eq!(
        (violations[0].field.as_str(), violations[0].kind.as_str()),
        ("model", kind::UNPRICED)
    );
    let violations = fail_closed
        .prepare(unknown, Utc::now())
        .expect_err("prepare rejects too");
    assert_eq!(violations[0].field, "model");
    assert_eq!(
        records_in_topic(&kafka).await,
        1,
        "nothing produced when rejected"
    );
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn invalid_events_are_rejected_with_their_field_paths_and_never_produced() {
    let kafka = kafka_with_usage_topic("recorder_invalid").await;
    let recorder = recorder(&kafka);
    let mut event = text_event("evt-invalid");
    event.team.clear();
    event.attempt = 0;
    event.input_tokens = 200_000; // above gpt-4o's 128k context
    event.labels.insert("campaign".to_owned(), "x".repeat(300));

    let error = recorder.record(event.clone()).await.expect_err("invalid");
    assert!(!error.is_retryable());
    let RecordError::Invalid(violations) = &error else {
        panic!("expected Invalid, got {error:?}");
    };
    let paths: Vec<(&str, &str)> = violations
        .iter()
        .map(|violation| (violation.field.as_str(), violation.kind.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("team", kind::MISSING),
            ("attempt", kind::OUT_OF_RANGE),
            ("input_tokens", kind::ABOVE_MODEL_LIMIT),
            ("labels.campaign", kind::TOO_LONG),
        ]
    );
    assert_eq!(
        recorder.prepare(event, Utc::now()).expect_err("invalid"),
        *violations
    );
    assert_eq!(records_in_topic(&kafka).await, 0);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn an_unreachable_broker_is_a_retryable_error_within_the_delivery_timeout() {
    let mut kafka = testkit::kafka_config("recorder_broker_down");
    kafka.brokers = "127.0.0.1:1".to_owned();
    let config = RecorderConfig {
        delivery_timeout_ms: 2_000,
        ..RecorderConfig::default()
    };
    let recorder = recorder_with(&kafka, &config, UnpricedPolicy::FailOpen);
    let started = Instant::now();
    let error = recorder
        .record(text_event("evt-down"))
        .await
        .expect_err("nothing can acknowledge");
    let elapsed = started.elapsed();
    assert!(
        matches!(
            error,
            RecordError::Kafka {
                retryable: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert!(
        elapsed < Duration::from_secs(10),
        "answered after {elapsed:?}, the delivery timeout is 2s"
    );
    assert_eq!(
        recorder.in_flight_bytes(),
        0,
        "the failed record freed its bytes"
    );
    recorder
        .flush(Duration::from_secs(5))
        .await
        .expect("nothing left to flush");
}

/// Checks that each partition's offsets are exactly `0..n` (no gap, no duplicate) and that they
/// add up to `total`.
fn assert_contiguous(deliveries: &[Delivery], total: usize) {
    let mut offsets_by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for delivery in deliveries {
        offsets_by_partition
            .entry(delivery.partition)
            .or_default()
            .push(delivery.offset);
    }
    let mut seen = 0;
    for (partition, offsets) in &mut offsets_by_partition {
        offsets.sort_unstable();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(*offsets, expected, "partition {partition}");
        seen += offsets.len();
    }
    assert_eq!(seen, total);
}

fn batch(prefix: &str, count: usize) -> Vec<UsageEvent> {
    (0..count)
        .map(|index| text_event(&format!("{prefix}-{index:05}")))
        .collect()
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn send_all_pipelines_two_thousand_events_with_contiguous_offsets() {
    let kafka = kafka_with_usage_topic("recorder_send_all").await;
    let recorder = recorder(&kafka);
    let now = Utc::now();
    let prepared: Vec<_> = batch("evt", 2_000)
        .into_iter()
        .map(|event| recorder.prepare(event, now).expect("valid"))
        .collect();
    let started = Instant::now();
    let results = recorder.send_all(prepared).await;
    let elapsed = started.elapsed();
    let deliveries: Vec<Delivery> = results
        .into_iter()
        .map(|result| result.expect("acknowledged"))
        .collect();
    assert_contiguous(&deliveries, 2_000);
    // One round trip each would take far longer than a pipelined batch.
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    assert_eq!(recorder.in_flight_bytes(), 0);

    let consumed = consume(&kafka, 2_000).await;
    let keys: std::collections::BTreeSet<_> = consumed.iter().map(|record| &record.key).collect();
    assert_eq!(keys.len(), 2_000, "every event exactly once");
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_tiny_in_flight_bound_still_delivers_everything() {
    let kafka = kafka_with_usage_topic("recorder_tiny_bound").await;
    // Smaller than one record: every record takes the whole bound and goes alone.
    let config = RecorderConfig {
        max_in_flight_bytes: 64,
        ..RecorderConfig::default()
    };
    let recorder = recorder_with(&kafka, &config, UnpricedPolicy::FailOpen);
    let now = Utc::now();
    let prepared: Vec<_> = batch("tiny", 50)
        .into_iter()
        .map(|event| recorder.prepare(event, now).expect("valid"))
        .collect();
    assert!(prepared[0].size_bytes() > 64);

    // Two concurrent callers share the same bound; a third watches the in-flight bytes.
    let (first, second) = prepared.split_at(25);
    let sends = async {
        tokio::join!(
            recorder.send_all(first.to_vec()),
            recorder.send_all(second.to_vec())
        )
    };
    tokio::pin!(sends);
    let mut most_in_flight = 0;
    let (first, second) = loop {
        tokio::select! {
            results = &mut sends => break results,
            () = tokio::time::sleep(Duration::from_micros(200)) => {
                most_in_flight = most_in_flight.max(recorder.in_flight_bytes());
            }
        }
    };
    assert!(most_in_flight <= 64, "{most_in_flight} bytes in flight");
    let deliveries: Vec<Delivery> = first
        .into_iter()
        .chain(second)
        .map(|result| result.expect("acknowledged"))
        .collect();
    assert_contiguous(&deliveries, 50);
    assert_eq!(recorder.in_flight_bytes(), 0);
    assert_eq!(consume(&kafka, 50).await.len(), 50);
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn a_cancelled_send_keeps_its_bytes_counted_until_the_delivery_report() {
    let mut kafka = testkit::kafka_config("recorder_cancelled");
    kafka.brokers = "127.0.0.1:1".to_owned();
    let config = RecorderConfig {
        delivery_timeout_ms: 1_500,
        ..RecorderConfig::default()
    };
    let recorder = recorder_with(&kafka, &config, UnpricedPolicy::FailOpen);
    let now = Utc::now();
    let prepared: Vec<_> = batch("cancelled", 10)
        .into_iter()
        .map(|event| recorder.prepare(event, now).expect("valid"))
        .collect();
    let bytes: usize = prepared.iter().map(|event| event.size_bytes()).sum();

    // The caller gives up long before librdkafka does (an HTTP client hanging up).
    let gave_up =
        tokio::time::timeout(Duration::from_millis(200), recorder.send_all(prepared)).await;
    assert!(gave_up.is_err(), "an unreachable broker cannot acknowledge");
    // librdkafka still holds the records, so their bytes still count against the bound...
    assert_eq!(recorder.in_flight_bytes(), bytes as u64);
    // ...until their delivery reports (timeouts) arrive.
    testkit::eventually(
        Duration::from_secs(15),
        "in-flight bytes released",
        || async { (recorder.in_flight_bytes() == 0).then_some(()) },
    )
    .await;
}
