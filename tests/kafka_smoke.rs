//! Kafka smoke test on the real local broker: a UsageEvent produced through rdkafka (idempotent
//! producer, acks=all) on a fresh topic is consumed back and decodes equal, byte for byte.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rust_decimal::Decimal;
use schemas::{CostSource, UsageEvent};

fn sample_event() -> UsageEvent {
    let money = |text: &str| text.parse::<Decimal>().expect("decimal literal");
    UsageEvent {
        producer: "gateway-smoke".to_owned(),
        request_id: "req_smoke".to_owned(),
        action_id: "act_smoke".to_owned(),
        api_key_id: "key_smoke".to_owned(),
        team: "platform".to_owned(),
        workflow: "smoke".to_owned(),
        environment: "dev".to_owned(),
        user_id: Some("user_1".to_owned()),
        input_tokens: 1_200,
        output_tokens: 300,
        cached_input_tokens: 1_024,
        accepted: Some(true),
        estimated_cost_usd: Some(money("0.004")),
        latency_ms: Some(840),
        labels: BTreeMap::from([("feature".to_owned(), "smoke".to_owned())]),
        cost_usd: Some(money("0.000000000001")),
        cost_source: Some(CostSource::Priced),
        catalog_version: Some("fixture".to_owned()),
        ..schemas::fixtures::text_event(
            "evt_smoke_0001",
            Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
                + chrono::Duration::microseconds(123_456),
        )
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn usage_event_round_trips_through_the_real_broker() {
    let kafka = infra::testkit::kafka_config("smoke");
    let topic = kafka.topics.usage.clone();
    infra::kafka::ensure_topics(
        &kafka,
        &[infra::kafka::TopicSpec {
            name: topic.clone(),
            partitions: 1,
            retention: infra::kafka::Retention::Time(Duration::from_secs(3600)),
            replication: Default::default(),
            extra_config: Vec::new(),
        }],
    )
    .await
    .expect("create topic");

    let event = sample_event();
    let payload = schemas::encode(&event).expect("encode");
    let producer: FutureProducer = infra::kafka::producer_config(&kafka, "smoke-producer")
        .create()
        .expect("producer");
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key(&event.event_id)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("broker acknowledged the record");
    assert_eq!(delivery.partition, 0);

    let consumer: StreamConsumer = infra::kafka::consumer_config(
        &kafka,
        "smoke-consumer",
        &infra::testkit::unique_name("smoke"),
    )
    .create()
    .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30s")
        .expect("consume");

    assert_eq!(message.offset(), delivery.offset);
    assert_eq!(message.key(), Some(event.event_id.as_bytes()));
    let bytes = message.payload().expect("payload");
    assert_eq!(
        bytes,
        payload.as_slice(),
        "bytes on the wire are what we produced"
    );
    assert_eq!(&bytes[..2], &[0xC3, 0x01], "Avro single-object header");
    let decoded: UsageEvent = schemas::decode(bytes).expect("decode");
    assert_eq!(decoded, event);
    assert_eq!(
        decoded.cost_usd.map(|cost| cost.to_string()),
        Some("0.000000000001".to_owned())
    );
}
