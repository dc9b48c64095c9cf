//! UsageEvent decode and encode: apache-avro's generic `Value` path against the fast path.
//!
//! Run: `cargo bench -p schemas --bench decode` (about 30 s). Figures go to `docs/benchmarks.md`.

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rust_decimal::Decimal;
use schemas::codec::{self, registry, AvroRecord};
use schemas::{CostSource, UsageEvent};
use std::hint::black_box;
use std::time::Duration;

/// A realistic chat completion event: 4 labels, reported and estimated cost, priced.
fn event() -> UsageEvent {
    UsageEvent {
        producer: "gateway-eu-west-1-7f9c".to_owned(),
        request_id: "req_8a7b6c5d4e3f2a1b".to_owned(),
        action_id: "act_5f4e3d2c1b0a".to_owned(),
        api_key_id: "key_live_4242".to_owned(),
        workflow: "answer-synthesis".to_owned(),
        user_id: Some("user_1234".to_owned()),
        customer_id: Some("cust_981".to_owned()),
        model: "gpt-4.1".to_owned(),
        endpoint: "responses".to_owned(),
        input_tokens: 12_850,
        output_tokens: 734,
        cached_input_tokens: 8_192,
        accepted: Some(true),
        reported_cost_usd: Some(Decimal::new(214_746, 7)),
        estimated_cost_usd: Some(Decimal::new(235, 4)),
        latency_ms: Some(2_314),
        labels: [
            ("campaign", "spring-launch"),
            ("customer_tier", "enterprise"),
            ("feature", "answer"),
            ("region", "eu"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect(),
        cost_usd: Some(Decimal::new(214_746, 7)),
        cost_source: Some(CostSource::Reported),
        catalog_version: Some("2025-03-01".to_owned()),
        ..schemas::fixtures::text_event(
            "evt_01J9Z6X4W8K2M5N7P3Q1R0S9T8",
            Utc.with_ymd_and_hms(2025, 3, 14, 9, 26, 53).unwrap(),
        )
    }
}

fn benches(criterion: &mut Criterion) {
    let event = event();
    let bytes = codec::encode(&event).expect("valid event");
    eprintln!("usage_event: {} bytes on the wire", bytes.len());
    let schema = UsageEvent::current_schema();
    let mut group = criterion.benchmark_group("usage_event");
    group.throughput(Throughput::Elements(1));

    group.bench_function("decode/apache_avro_generic", |bencher| {
        bencher.iter(|| {
            let value =
                apache_avro::from_avro_datum(schema, &mut &black_box(&bytes)[10..], None).unwrap();
            codec::from_avro_value::<UsageEvent>(value).unwrap()
        })
    });
    group.bench_function("decode/fast", |bencher| {
        bencher.iter(|| codec::decode::<UsageEvent>(black_box(&bytes)).unwrap())
    });
    group.bench_function("decode/borrowed", |bencher| {
        bencher.iter(|| {
            schemas::UsageEventRef::decode_current(black_box(&bytes))
                .unwrap()
                .unwrap()
        })
    });

    let v1 = registry::versions(UsageEvent::RECORD_NAME)
        .find(|schema| schema.file.version == 1)
        .expect("v1 registered");
    let apache_avro::types::Value::Record(fields) = codec::to_avro_value(&event).unwrap() else {
        unreachable!("records encode to Value::Record")
    };
    let v1_fields = fields.into_iter().take(36).collect();
    let mut v1_bytes = vec![0xC3, 0x01];
    v1_bytes.extend_from_slice(&v1.fingerprint);
    v1_bytes.extend(
        apache_avro::to_avro_datum(&v1.schema, apache_avro::types::Value::Record(v1_fields))
            .unwrap(),
    );
    group.bench_function("decode/v1_resolved", |bencher| {
        bencher.iter(|| codec::decode::<UsageEvent>(black_box(&v1_bytes)).unwrap())
    });

    group.bench_function("encode/apache_avro_generic", |bencher| {
        bencher.iter(|| {
            let value = codec::to_avro_value(black_box(&event)).unwrap();
            apache_avro::to_avro_datum(schema, value).unwrap()
        })
    });
    group.bench_function("encode/fast", |bencher| {
        bencher.iter(|| codec::encode(black_box(&event)).unwrap())
    });
    group.bench_function("encode/fast_reused_buffer", |bencher| {
        bencher.iter_batched_ref(
            || Vec::with_capacity(512),
            |buffer| codec::encode_into(black_box(&event), buffer).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = decode;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(decode);
