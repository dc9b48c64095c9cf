//! Bad records on the usage topic each become one dead letter (topic and table) with the right
//! kind and source coordinates, the archive keeps going, and every offset is accounted for.

mod archive_support;

use std::collections::BTreeMap;
use std::time::Duration;

use archive_support::{text_event, World};
use chrono::{SubsecRound, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use schemas::{ControlDecision, DeadLetter, DecisionAction};

/// A record value (`None`: no value at all), the dead-letter kind expected (`None`: valid) and
/// a fragment its message must contain.
type BadRecord = (Option<Vec<u8>>, Option<&'static str>, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn every_bad_record_is_dead_lettered_and_the_archive_keeps_going() {
    let world = World::new("archive_dead_letters").await;
    let topic = world.config.kafka.topics.usage.clone();
    let producer: FutureProducer = infra::kafka::producer_config(&world.config.kafka, "bad-bytes")
        .create()
        .expect("producer");
    let now = Utc::now().trunc_subsecs(6);
    let valid = |id: &str| schemas::encode(&text_event(id, now)).expect("encodes");

    let control = ControlDecision {
        decision_id: "d1".into(),
        key: "team=search".into(),
        policy_id: "p1".into(),
        scope: BTreeMap::from([("team".to_owned(), "search".to_owned())]),
        action: DecisionAction::Block,
        degrade_to: None,
        reason: "over budget".into(),
        unit: "usd".into(),
        observed: "12.5".parse().expect("decimal"),
        limit: "10".parse().expect("decimal"),
        window: "day".into(),
        window_start: now,
        window_end: now + chrono::Duration::days(1),
        issued_at: now,
        expires_at: None,
        version: 1,
        absent: Vec::new(),
        shadow: false,
    };
    let mut unknown_fingerprint = valid("unknown-fp");
    unknown_fingerprint[2..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut bad_magic = valid("bad-magic");
    bad_magic[1] = 0x02;
    let truncated = {
        let bytes = valid("truncated");
        bytes[..bytes.len() / 2].to_vec()
    };
    let mut trailing = valid("trailing");
    trailing.extend_from_slice(&[0xde, 0xad]);
    let invalid = |id: &str, change: &dyn Fn(&mut schemas::UsageEvent)| {
        let mut event = text_event(id, now);
        change(&mut event);
        schemas::encode(&event).expect("encodes: only validation rejects it")
    };

    // (value, expected error_kind, a fragment the message must contain); None = valid.
    let records: Vec<BadRecord> = vec![
        (Some(valid("good-1")), None, ""),
        (
            Some(br#"{"event_id":"json"}"#.to_vec()),
            Some("bad_magic"),
            "magic",
        ),
        (Some(bad_magic), Some("bad_magic"), "magic"),
        (
            Some(unknown_fingerprint),
            Some("unknown_fingerprint"),
            "0102030405060708",
        ),
        (Some(truncated), Some("truncated"), "truncated"),
        (
            Some(schemas::encode(&control).expect("encodes")),
            Some("wrong_record_type"),
            "ControlDecision",
        ),
        (Some(trailing), Some("invalid_value"), "trailing"),
        (Some(Vec::new()), Some("too_short"), "shorter"),
        (None, Some("too_short"), "shorter"),
        (
            Some(invalid("empty-team", &|event| event.team.clear())),
            Some("validation"),
            "team (missing)",
        ),
        (
            Some(invalid("too-many-tokens", &|event| {
                event.output_tokens = 1_000_000;
            })),
            Some("validation"),
            "output_tokens (above_model_limit)",
        ),
        (
            Some(invalid("future", &|event| {
                event.occurred_at = now + chrono::Duration::hours(2);
            })),
            // Its own kind (a producer clock problem), as the aggregator dead-letters it.
            Some("in_future"),
            "occurred_at (in_future)",
        ),
        // Written straight to Kafka, past the HTTP API: the same rule, as a dead letter.
        (
            Some(invalid("escape-in-team", &|event| {
                event.team = "a\u{1b}[31m".to_owned();
            })),
            Some("validation"),
            "team (control_character): team contains the control character U+001B at byte 1",
        ),
        (
            Some(invalid("nul-in-label", &|event| {
                event.labels.insert("feature".to_owned(), "x\0".to_owned());
            })),
            Some("validation"),
            "labels.feature (control_character)",
        ),
        (Some(valid("good-2")), None, ""),
    ];

    // All to partition 0, in order, so offsets are known.
    let mut offsets = Vec::new();
    for (index, (value, _, _)) in records.iter().enumerate() {
        let key = format!("k{index}");
        let mut record = FutureRecord::<str, [u8]>::to(&topic).partition(0).key(&key);
        if let Some(value) = value {
            record = record.payload(value.as_slice());
        }
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivered");
        offsets.push(delivery.offset);
    }

    let archive = world.start_archive();
    let produced = records.len() as u64;
    infra::testkit::eventually(Duration::from_secs(60), "every record processed", || {
        let stats = archive.stats.clone();
        async move { (stats.processed() == produced).then_some(()) }
    })
    .await;
    let expected_dead: Vec<_> = records
        .iter()
        .zip(&offsets)
        .filter_map(|((_, kind, fragment), offset)| kind.map(|kind| (*offset, kind, *fragment)))
        .collect();
    assert_eq!(
        archive
            .stats
            .archived
            .load(std::sync::atomic::Ordering::Acquire),
        2
    );
    assert_eq!(
        archive
            .stats
            .dead_lettered
            .load(std::sync::atomic::Ordering::Acquire),
        expected_dead.len() as u64
    );

    // The dead-letter topic: one letter per bad record, with its kind and coordinates.
    let consumer: StreamConsumer = infra::kafka::consumer_config(
        &world.config.kafka,
        "dead-letter-reader",
        &infra::testkit::unique_name("dlq"),
    )
    .create()
    .expect("consumer");
    consumer
        .subscribe(&[&world.config.kafka.topics.dead_letter])
        .expect("subscribe");
    let mut letters: BTreeMap<i64, DeadLetter> = BTreeMap::new();
    while letters.len() < expected_dead.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letter arrives")
            .expect("kafka");
        let letter: DeadLetter =
            schemas::decode(message.payload().expect("payload")).expect("a DeadLetter");
        letters.insert(letter.source_offset, letter);
    }
    for (offset, kind, fragment) in &expected_dead {
        let letter = &letters[offset];
        assert_eq!(letter.error_kind, *kind, "offset {offset}: {letter:?}");
        assert!(
            letter.error_message.contains(fragment),
            "offset {offset}: {:?} lacks {fragment:?}",
            letter.error_message
        );
        assert_eq!(letter.source_topic, topic);
        assert_eq!(letter.source_partition, 0);
        assert_eq!(letter.service, "ingest");
        let index = offsets.iter().position(|o| o == offset).expect("offset");
        assert_eq!(
            letter.payload,
            records[index].0.clone().unwrap_or_default(),
            "original bytes"
        );
        assert_eq!(letter.key.as_deref(), Some(format!("k{index}").as_bytes()));
    }

    // The table: the same letters, and every offset accounted for exactly once.
    assert_eq!(
        world.count("SELECT count() FROM dead_letters FINAL").await,
        expected_dead.len() as u64
    );
    for (offset, kind, _) in &expected_dead {
        let stored = world
            .text(&format!(
                "SELECT error_kind FROM dead_letters FINAL WHERE source_offset = {offset}"
            ))
            .await;
        assert_eq!(stored, *kind, "offset {offset}");
    }
    assert_eq!(world.count("SELECT count() FROM usage_events").await, 2);
    let accounted = archive_support::accounted_offsets(&world).await;
    assert_eq!(accounted.len(), 1);
    assert_eq!(accounted[0].distinct_offsets, produced);
    assert_eq!(accounted[0].max_offset + 1, produced as i64);

    // Resuming after a restart starts past the dead letters too: nothing is processed again.
    archive.stop().await;
    let again = world.start_archive();
    let mut late = text_event("good-3", now);
    late.team = "late".into();
    let recorder = world.recorder();
    recorder.record(late).await.expect("delivered");
    infra::testkit::eventually(Duration::from_secs(60), "the late event", || async {
        (world.count("SELECT count() FROM usage_events").await == 3).then_some(())
    })
    .await;
    assert_eq!(again.stats.processed(), 1, "nothing before it was re-read");
    again.stop().await;
    world.drop().await;
}
