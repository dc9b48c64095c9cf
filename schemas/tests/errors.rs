//! Every error kind, from bytes no valid encoder would produce. Decoding never panics.

mod common;

use common::{encode_with_patched_field, optional_decimal_bytes, varint};
use proptest::prelude::*;
use schemas::codec::{self, AvroRecord, DecodeError, EncodeError};
use schemas::{Alert, UsageEvent, WindowTotal};

fn decode_error(bytes: &[u8]) -> DecodeError {
    codec::decode::<UsageEvent>(bytes).expect_err("invalid bytes")
}

fn sample_bytes() -> Vec<u8> {
    codec::encode(&common::sample_usage_event()).expect("valid")
}

#[test]
fn too_short() {
    assert_eq!(decode_error(&[]).kind(), "too_short");
    assert_eq!(decode_error(&[0xC3]).kind(), "too_short");
    let error = decode_error(&[0xC3, 0x01, 1, 2, 3]);
    assert_eq!(error, DecodeError::TooShort { len: 5 });
}

#[test]
fn bad_magic() {
    let error = decode_error(br#"{"event_id":"e1","attempt":1}"#);
    assert_eq!(
        error,
        DecodeError::BadMagic {
            found: [b'{', b'"']
        }
    );
    assert_eq!(error.kind(), "bad_magic");
    assert_eq!(
        error.to_string(),
        "bad magic 7b 22: not Avro single-object encoding (expected c3 01)"
    );
}

#[test]
fn unknown_fingerprint_names_it_in_hex() {
    let mut bytes = sample_bytes();
    bytes[2..10].copy_from_slice(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]);
    let error = decode_error(&bytes);
    assert_eq!(error.kind(), "unknown_fingerprint");
    assert!(error.to_string().contains("0123456789abcdef"), "{error}");
}

#[test]
fn wrong_record_type() {
    let alert = codec::encode(&common::sample_alert()).expect("valid");
    let error = decode_error(&alert);
    assert_eq!(
        error,
        DecodeError::WrongRecordType {
            expected: "dev.quotaflow.UsageEvent",
            found: "dev.quotaflow.Alert",
            fingerprint: codec::fingerprint_hex(&Alert::FINGERPRINT),
        }
    );
    assert_eq!(error.kind(), "wrong_record_type");
}

#[test]
fn truncated_at_every_position() {
    let bytes = sample_bytes();
    for cut in 10..bytes.len() {
        let error = decode_error(&bytes[..cut]);
        assert_eq!(error.kind(), "truncated", "cut at {cut}: {error}");
    }
}

#[test]
fn trailing_garbage() {
    let mut bytes = sample_bytes();
    bytes.extend_from_slice(b"\x00garbage");
    let error = decode_error(&bytes);
    assert_eq!(error.kind(), "invalid_value");
    assert!(error.to_string().contains("8 trailing bytes"), "{error}");
}

#[test]
fn malformed_datum() {
    let event = common::sample_usage_event();
    let mut invalid_utf8 = varint(2);
    invalid_utf8.extend_from_slice(&[0xC3, 0x28]);
    let error = decode_error(&encode_with_patched_field(
        &event,
        "producer",
        &invalid_utf8,
    ));
    assert_eq!(
        (error.kind(), error.to_string().contains("producer")),
        ("malformed", true),
        "{error}"
    );

    let negative_length = varint(-3);
    let error = decode_error(&encode_with_patched_field(&event, "team", &negative_length));
    assert_eq!(error.kind(), "malformed", "{error}");

    let int_overflow = varint(i64::from(i32::MAX) + 1);
    let error = decode_error(&encode_with_patched_field(&event, "attempt", &int_overflow));
    assert_eq!(error.kind(), "malformed", "{error}");

    let varint_overflow = [0xFF; 11];
    let error = decode_error(&encode_with_patched_field(
        &event,
        "input_tokens",
        &varint_overflow,
    ));
    assert_eq!(error.kind(), "malformed", "{error}");
}

#[test]
fn invalid_values_on_the_wire() {
    let event = common::sample_usage_event();
    let cases: Vec<(&'static str, Vec<u8>, &str)> = vec![
        (
            "modality",
            varint(6),
            "enum index 6 out of range for Modality",
        ),
        ("modality", varint(-1), "negative enum index"),
        (
            "job_state",
            [varint(1), varint(9)].concat(),
            "out of range for JobState",
        ),
        ("user_id", varint(2), "union branch 2"),
        ("input_tokens", varint(-1), "is negative"),
        ("attempt", varint(0), "attempt starts at 1"),
        (
            "cached_input_tokens",
            varint(20_000),
            "exceed 12850 input tokens",
        ),
        ("accepted", [varint(1), vec![2]].concat(), "neither 0 nor 1"),
        (
            "http_status",
            [varint(1), varint(70_000)].concat(),
            "not an HTTP status",
        ),
        (
            "occurred_at",
            varint(schemas::time::MAX_MICROS + 1),
            "outside 1900-01-01",
        ),
        (
            "reported_cost_usd",
            optional_decimal_bytes(&[0xFF]),
            "negative",
        ),
    ];
    for (field, raw, message) in cases {
        let error = decode_error(&encode_with_patched_field(&event, field, &raw));
        assert_eq!(error.kind(), "invalid_value", "{field}: {error}");
        assert!(error.to_string().contains(message), "{field}: {error}");
    }
}

#[test]
fn encode_errors_refuse_rather_than_alter() {
    let event = common::sample_usage_event();
    let cases: Vec<(UsageEvent, &str)> = vec![
        (
            UsageEvent {
                reported_cost_usd: Some(common::dec("0.0000000000001")),
                ..event.clone()
            },
            "too_many_fractional_digits",
        ),
        (
            UsageEvent {
                cost_usd: Some(common::dec("-0.01")),
                ..event.clone()
            },
            "negative_amount",
        ),
        (
            UsageEvent {
                estimated_cost_usd: Some(rust_decimal::Decimal::MAX),
                ..event.clone()
            },
            "decimal_out_of_range",
        ),
        (
            UsageEvent {
                occurred_at: common::at("2300-01-01T00:00:00Z"),
                ..event.clone()
            },
            "timestamp_out_of_range",
        ),
        (
            UsageEvent {
                occurred_at: common::at("1899-12-31T23:59:59Z"),
                ..event.clone()
            },
            "timestamp_out_of_range",
        ),
        (
            UsageEvent {
                attempt: 0,
                ..event.clone()
            },
            "invalid_value",
        ),
        (
            UsageEvent {
                input_tokens: u64::MAX,
                ..event.clone()
            },
            "invalid_value",
        ),
        (
            UsageEvent {
                images: u32::MAX,
                ..event.clone()
            },
            "invalid_value",
        ),
        (
            UsageEvent {
                cached_input_tokens: event.input_tokens + 1,
                ..event.clone()
            },
            "invalid_value",
        ),
    ];
    for (invalid, kind) in cases {
        let error = codec::encode(&invalid).expect_err(kind);
        assert_eq!(error.kind(), kind, "{error}");
    }
}

#[test]
fn record_invariants_are_checked_on_encode() {
    let mut decision = common::sample_control_decision();
    decision.degrade_to = None;
    let error = codec::encode(&decision).expect_err("degrade without target");
    assert!(
        matches!(
            error,
            EncodeError::InvalidValue {
                field: "degrade_to",
                ..
            }
        ),
        "{error}"
    );

    let mut alert = common::sample_alert();
    std::mem::swap(&mut alert.window_start, &mut alert.window_end);
    let error = codec::encode(&alert).expect_err("reversed window");
    assert!(
        matches!(
            error,
            EncodeError::InvalidValue {
                field: "window_end",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn window_total_encode_refuses_broken_totals() {
    let total = common::sample_window_total();
    let cases: Vec<(WindowTotal, &str, &str)> = vec![
        (
            WindowTotal {
                window_end: total.window_start,
                ..total.clone()
            },
            "invalid_value",
            "window_end",
        ),
        (
            WindowTotal {
                window_start: total.window_end,
                window_end: total.window_start,
                ..total.clone()
            },
            "invalid_value",
            "window_end",
        ),
        (
            WindowTotal {
                source_partition: -1,
                ..total.clone()
            },
            "invalid_value",
            "source_partition",
        ),
        (
            WindowTotal {
                requests: i64::MAX as u64 + 1,
                ..total.clone()
            },
            "invalid_value",
            "requests",
        ),
        (
            WindowTotal {
                version: u64::MAX,
                ..total.clone()
            },
            "invalid_value",
            "version",
        ),
        (
            WindowTotal {
                cost_usd: common::dec("0.0000000000001"),
                fallback_cost_usd: common::dec("0"),
                ..total.clone()
            },
            "too_many_fractional_digits",
            "cost_usd",
        ),
        (
            WindowTotal {
                oldest_pending_job_started_at: Some(common::at("2300-01-01T00:00:00Z")),
                ..total.clone()
            },
            "timestamp_out_of_range",
            "oldest_pending_job_started_at",
        ),
    ];
    for (invalid, kind, field) in cases {
        let error = codec::encode(&invalid).expect_err(field);
        assert_eq!(error.kind(), kind, "{field}: {error}");
        assert!(error.to_string().contains(field), "{field}: {error}");
    }
    // The edge values themselves are fine, and totals carry no rules across measures (what the
    // aggregator counted must always be publishable).
    let edge = WindowTotal {
        requests: i64::MAX as u64,
        jobs_in_flight: i64::MIN,
        source_partition: 0,
        cached_input_tokens: total.input_tokens + 1,
        fallback_cost_usd: total.cost_usd + common::dec("1"),
        ..total
    };
    assert_eq!(
        codec::decode::<WindowTotal>(&codec::encode(&edge).expect("valid")),
        Ok(edge)
    );
}

#[test]
fn window_total_decode_refuses_broken_totals_on_the_wire() {
    let total = common::sample_window_total();
    let start_micros = total.window_start.timestamp_micros();
    let cases: Vec<(&'static str, Vec<u8>, &str)> = vec![
        ("window_end", varint(start_micros), "is not after"),
        ("source_partition", varint(-1), "not a Kafka partition"),
        ("requests", varint(-1), "is negative"),
        ("version", varint(-1), "is negative"),
        ("pending_jobs_untracked", varint(-5), "is negative"),
        (
            "cost_usd",
            varint(1).into_iter().chain([0xFF]).collect(),
            "negative",
        ),
        ("oldest_pending_job_started_at", varint(2), "union branch 2"),
    ];
    for (field, raw, message) in cases {
        let error = codec::decode::<WindowTotal>(&encode_with_patched_field(&total, field, &raw))
            .expect_err(field);
        assert_eq!(error.kind(), "invalid_value", "{field}: {error}");
        assert!(error.to_string().contains(message), "{field}: {error}");
    }
    // A negative job gauge is a value, not an error.
    let bytes = encode_with_patched_field(&total, "jobs_in_flight", &varint(-42));
    let decoded = codec::decode::<WindowTotal>(&bytes).expect("valid");
    assert_eq!(decoded.jobs_in_flight, -42);
}

#[test]
fn unpatched_writer_reproduces_encode() {
    // The test helper itself: patching a field with its own bytes changes nothing.
    let event = common::sample_usage_event();
    let own = [varint(1), varint(9), b"user_1234".to_vec()].concat();
    assert_eq!(
        encode_with_patched_field(&event, "user_id", &own),
        sample_bytes()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_datums_never_panic(datum in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&UsageEvent::FINGERPRINT);
        bytes.extend_from_slice(&datum);
        let _ = codec::decode::<UsageEvent>(&bytes);
    }

    #[test]
    fn corrupted_events_never_panic(position in 0_usize..1_000, byte in any::<u8>()) {
        let mut bytes = sample_bytes();
        let position = position % bytes.len();
        bytes[position] = byte;
        if let Ok(event) = codec::decode::<UsageEvent>(&bytes) {
            // A corruption that still decodes is a valid event: it re-encodes and decodes back.
            let reencoded = codec::encode(&event).map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(codec::decode::<UsageEvent>(&reencoded), Ok(event));
        }
    }
}
