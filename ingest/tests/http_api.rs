//! The HTTP event API on the real local stack (`dev/stack up`): each test starts the service with its
//! own topics and database, sends requests, and reads what reached Kafka back from the usage topic.

mod http_support;

use std::time::Duration;

use chrono::Utc;
use http_support::*;
use infra::shutdown::Shutdown;
use infra::testkit;
use ingest::api::{self, ApiConfig, ApiState};
use ingest::pricer::{Pricer, PricingConfig};
use ingest::recorder::{Recorder, RecorderConfig};
use reqwest::StatusCode;
use schemas::{CostSource, UsageEvent};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The pricing envelope of a consumed event, and the event without it (as it was sent).
fn split_envelope(mut event: UsageEvent) -> (UsageEvent, Option<CostSource>, bool, bool) {
    let envelope = (
        event.cost_source,
        event.cost_usd.is_some(),
        event.catalog_version.is_some(),
    );
    event.cost_source = None;
    event.cost_usd = None;
    event.catalog_version = None;
    (event, envelope.0, envelope.1, envelope.2)
}

/// Every sent event was consumed back exactly as sent, priced from the catalog.
fn assert_consumed_priced(sent: &[UsageEvent], consumed: Vec<UsageEvent>) {
    assert_eq!(consumed.len(), sent.len());
    for consumed in consumed {
        let (bare, source, has_cost, has_version) = split_envelope(consumed);
        let original = sent
            .iter()
            .find(|event| event.event_id == bare.event_id)
            .unwrap_or_else(|| panic!("{} was not sent", bare.event_id));
        assert_eq!(&bare, original);
        assert_eq!(
            (source, has_cost, has_version),
            (Some(CostSource::Priced), true, true)
        );
    }
}

fn assert_all_accepted(answer: &Answer, count: usize) {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["accepted"], count);
    assert_eq!(answer.body["rejected"], 0);
    for (index, result) in answer.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(result["status"], "accepted");
        assert_eq!(result["index"], index);
        assert!(result["partition"].as_i64().unwrap() >= 0);
        assert!(result["offset"].as_i64().unwrap() >= 0);
    }
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn json_batch_and_single_object_are_acknowledged_and_consumed_back_priced() {
    let service = Service::start("http_json", |_| {}).await;
    let sent: Vec<UsageEvent> = (0..5)
        .map(|n| event(PRODUCER_EU, &unique_id(&format!("json-{n}"))))
        .collect();
    let batch: Vec<Value> = sent[..4].iter().map(event_json).collect();
    let answer = service.post_json(&json!(batch)).await;
    assert_all_accepted(&answer, 4);
    assert_eq!(
        answer.body["results"][2]["event_id"],
        sent[2].event_id.as_str()
    );

    // One object, not an array; money as a JSON number is read from its text.
    let mut single = event_json(&sent[4]);
    single["estimated_cost_usd"] = serde_json::from_str("0.0065").unwrap();
    let answer = service.post_json(&single).await;
    assert_all_accepted(&answer, 1);

    assert_consumed_priced(&sent, consume_usage(&service.config.kafka, 5).await);
    let metrics = service.get("/metrics").await;
    let metrics = metrics.body.as_str().unwrap();
    assert!(
        metrics.contains("quotaflow_ingest_http_requests_total{status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("quotaflow_ingest_http_events_total{outcome=\"accepted\"}"));
    assert!(metrics.contains("quotaflow_ingest_http_request_duration_seconds"));
    service.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn ndjson_lines_are_events_and_blank_lines_are_skipped() {
    let service = Service::start("http_ndjson", |_| {}).await;
    let sent: Vec<UsageEvent> = (0..3)
        .map(|n| event(PRODUCER_EU, &unique_id(&format!("ndjson-{n}"))))
        .collect();
    let mut body = String::new();
    for event in &sent {
        body.push_str(&serde_json::to_string(event).unwrap());
        body.push_str("\r\n\n");
    }
    let answer = service
        .post(NDJSON, Some(TOKEN_EU), body.into_bytes())
        .await;
    assert_all_accepted(&answer, 3);
    assert_consumed_priced(&sent, consume_usage(&service.config.kafka, 3).await);
    service.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn avro_single_record_and_length_prefixed_batch_are_acknowledged() {
    let service = Service::start("http_avro", |_| {}).await;
    let sent: Vec<UsageEvent> = (0..4)
        .map(|n| event(PRODUCER_EU, &unique_id(&format!("avro-{n}"))))
        .collect();
    let records: Vec<Vec<u8>> = sent
        .iter()
        .map(|event| schemas::encode(event).unwrap())
        .collect();

    let answer = service.post(AVRO, Some(TOKEN_EU), records[0].clone()).await;
    assert_all_accepted(&answer, 1);
    let answer = service
        .post("avro/binary", Some(TOKEN_EU), avro_batch(&records[1..]))
        .await;
    assert_all_accepted(&answer, 3);

    assert_consumed_priced(&sent, consume_usage(&service.config.kafka, 4).await);
    service.stop().await;
}

/// The results of a response without what differs between two sends of equivalent batches.
fn outcome_shape(answer: &Answer) -> Value {
    let mut body = answer.body.clone();
    for result in body["results"].as_array_mut().unwrap() {
        let result = result.as_object_mut().unwrap();
        for varying in ["event_id", "partition", "offset"] {
            result.remove(varying);
        }
        // Reasons quote the event's time and the server clock; field and kind are the contract.
        for error in result
            .get_mut("errors")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            error.as_object_mut().unwrap().remove("reason");
        }
    }
    json!({"status": answer.status.as_u16(), "body": body})
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn partial_acceptance_is_identical_for_json_and_avro() {
    let service = Service::start("http_partial", |_| {}).await;
    let batch = |format: &str| {
        let valid = event(PRODUCER_EU, &unique_id(&format!("{format}-valid")));
        let future = event_at(
            PRODUCER_EU,
            &unique_id(&format!("{format}-future")),
            Utc::now() + chrono::Duration::hours(2),
        );
        let mut blank_team = event(PRODUCER_EU, &unique_id(&format!("{format}-blank")));
        blank_team.team = "  ".to_owned();
        let also_valid = event(PRODUCER_EU, &unique_id(&format!("{format}-valid2")));
        vec![valid, future, blank_team, also_valid]
    };

    let json_batch = batch("json");
    let json_body: Vec<Value> = json_batch.iter().map(event_json).collect();
    let json_answer = service.post_json(&json!(json_body)).await;
    let avro_batch_events = batch("avro");
    let records: Vec<Vec<u8>> = avro_batch_events
        .iter()
        .map(|event| schemas::encode(event).unwrap())
        .collect();
    let avro_answer = service
        .post(AVRO, Some(TOKEN_EU), avro_batch(&records))
        .await;

    assert_eq!(json_answer.status, StatusCode::OK, "{}", json_answer.body);
    assert_eq!(json_answer.body["accepted"], 2);
    assert_eq!(json_answer.body["rejected"], 2);
    assert_eq!(
        json_answer.errors_of(1),
        [("occurred_at".to_owned(), "in_future".to_owned())]
    );
    assert_eq!(
        json_answer.errors_of(2),
        [("team".to_owned(), "missing".to_owned())]
    );
    assert_eq!(
        json_answer.body["results"][1]["event_id"],
        json_batch[1].event_id.as_str()
    );
    assert_eq!(outcome_shape(&json_answer), outcome_shape(&avro_answer));

    // Only the valid events reached Kafka.
    let consumed = consume_usage(&service.config.kafka, 4).await;
    let mut consumed_ids: Vec<String> = consumed.into_iter().map(|event| event.event_id).collect();
    consumed_ids.sort();
    let mut expected: Vec<String> = [&json_batch, &avro_batch_events]
        .iter()
        .flat_map(|batch| [batch[0].event_id.clone(), batch[3].event_id.clone()])
        .collect();
    expected.sort();
    assert_eq!(consumed_ids, expected);

    // Every event rejected: 422 with the same body shape.
    let json_body: Vec<Value> = json_batch[1..3].iter().map(event_json).collect();
    let json_answer = service.post_json(&json!(json_body)).await;
    let avro_answer = service
        .post(AVRO, Some(TOKEN_EU), avro_batch(&records[1..3]))
        .await;
    assert_eq!(json_answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json_answer.body["accepted"], 0);
    assert_eq!(json_answer.body["rejected"], 2);
    assert_eq!(outcome_shape(&json_answer), outcome_shape(&avro_answer));
    service.still_accepts_a_good_event().await;
    service.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn unauthenticated_requests_get_401_and_writing_as_another_producer_403() {
    // One partition: records are totally ordered, so "nothing before the good event" is checkable.
    let service = Service::start("http_auth", |config| config.kafka.topics.partitions = 1).await;
    let good = event(PRODUCER_EU, &unique_id("auth"));
    let body = serde_json::to_vec(&json!([event_json(&good)])).unwrap();
    let url = format!("{}/v1/events", service.base_url);

    let cases = [
        (None, "missing_token"),
        (
            Some("Basic Z2F0ZXdheTpzZWNyZXQ="),
            "malformed_authorization",
        ),
        (Some("Bearer"), "malformed_authorization"),
        (Some("Bearer not-a-known-token"), "unknown_token"),
    ];
    for (authorization, kind) in cases {
        let mut request = service
            .client
            .post(&url)
            .header("content-type", JSON)
            .body(body.clone());
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let answer = answer(request.send().await.unwrap()).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(answer.body["error"], kind);
        assert_eq!(answer.headers["www-authenticate"], "Bearer");
        assert!(!answer.body.to_string().contains("not-a-known-token"));
    }

    // A valid token of gateway-eu carrying an event of gateway-us: the whole request is refused.
    let mine = event(PRODUCER_EU, &unique_id("mine"));
    let theirs = event(PRODUCER_US, &unique_id("theirs"));
    let forbidden = json!([event_json(&mine), event_json(&theirs)]);
    let answer = service.post_json(&forbidden).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert_eq!(answer.body["error"], "producer_mismatch");
    assert_eq!(answer.body["indexes"], json!([1]));
    // The same events with the right tokens, one producer each, are fine.
    let answer = service
        .post(
            JSON,
            Some(TOKEN_US),
            serde_json::to_vec(&event_json(&theirs)).unwrap(),
        )
        .await;
    assert_all_accepted(&answer, 1);

    let answer = service
        .post(
            JSON,
            Some(TOKEN_EU),
            serde_json::to_vec(&event_json(&good)).unwrap(),
        )
        .await;
    assert_all_accepted(&answer, 1);
    let consumed = consume_usage(&service.config.kafka, 2).await;
    let ids: Vec<&str> = consumed
        .iter()
        .map(|event| event.event_id.as_str())
        .collect();
    assert_eq!(ids, [theirs.event_id.as_str(), good.event_id.as_str()]);
    service.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn oversized_bodies_and_batches_get_413_and_unknown_media_types_415() {
    let service = Service::start("http_limits", |config| {
        config.api.max_body_bytes = 16 * 1024;
        config.api.max_batch_events = 5;
    })
    .await;
    let events: Vec<Value> = (0..6)
        .map(|n| event_json(&event(PRODUCER_EU, &unique_id(&format!("limit-{n}")))))
        .collect();

    let answer = service.post_json(&json!(events)).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["error"], "too_many_events");

    let mut huge = events[0].clone();
    huge["labels"]["notes"] = json!("x".repeat(20 * 1024));
    let answer = service.post_json(&huge).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["error"], "body_too_large");

    for content_type in ["text/csv", "application/xml", "application/jsonx"] {
        let answer = service
            .post(content_type, Some(TOKEN_EU), b"{}".to_vec())
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}"
        );
        assert_eq!(answer.body["error"], "unsupported_media_type");
    }
    let answer = http_support::answer(
        service
            .client
            .post(format!("{}/v1/events", service.base_url))
            .header("authorization", format!("Bearer {TOKEN_EU}"))
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    service.still_accepts_a_good_event().await;
    service.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn malformed_json_events_get_422_with_the_field_and_kind_of_each_error() {
    let service = Service::start("http_json_errors", |_| {}).await;
    let base = event_json(&event(PRODUCER_EU, &unique_id("bad")));
    let with = |field: &str, value: Value| with_field(&base, field, value);
    let number = |text: &str| -> Value { serde_json::from_str(text).unwrap() };
    let mut missing_team = base.clone();
    missing_team.as_object_mut().unwrap().remove("team");
    let in_an_hour = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let cases = [
        (
            with("input_tokens", json!("1200")),
            "input_tokens",
            "invalid_type",
        ),
        (
            with("modality", json!("hologram")),
            "modality",
            "unknown_enum_value",
        ),
        (
            with("estimated_cost_usd", json!("1.2.3")),
            "estimated_cost_usd",
            "not_a_decimal",
        ),
        (
            with("estimated_cost_usd", json!("abc")),
            "estimated_cost_usd",
            "not_a_decimal",
        ),
        (
            with("estimated_cost_usd", json!("0.0000000000001")),
            "estimated_cost_usd",
            "too_many_fractional_digits",
        ),
        (
            with("reported_cost_usd", number("0.1234567890123")),
            "reported_cost_usd",
            "too_many_fractional_digits",
        ),
        (
            with("output_tokens", json!(-5)),
            "output_tokens",
            "invalid_value",
        ),
        (missing_team, "team", "missing"),
        (with("colour", json!("red")), "colour", "unknown_field"),
        (
            with("labels", json!({"feature": 7})),
            "labels.feature",
            "invalid_type",
        ),
        (
            with("occurred_at", json!(in_an_hour)),
            "occurred_at",
            "in_future",
        ),
        (json!([1, 2]), "(event)", "invalid_type"),
    ];
    let body: Vec<Value> = cases.iter().map(|(event, _, _)| event.clone()).collect();
    let answer = service.post_json(&json!(body)).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["accepted"], 0);
    assert_eq!(answer.body["rejected"], cases.len());
    for (index, (_, field, kind)) in cases.iter().enumerate() {
        assert_eq!(
            answer.errors_of(index),
            [(field.to_string(), kind.to_string())],
            "case {index}: {}",
            answer.body["results"][index]
        );
        assert!(answer.body["results"][index]["errors"][0]["reason"]
            .as_str()
            .is_some_and(|reason| !reason.is_empty()));
    }
    // A rejected event keeps its event_id when it can be read, so the caller can match it.
    assert_eq!(answer.body["results"][0]["event_id"], base["event_id"]);

    // A body that is not JSON at all cannot be split into events: a request-level 422.
    let answer = service
        .post(JSON, Some(TOKEN_EU), br#"[{"event_id": "#.to_vec())
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.body["error"], "malformed_body");
    let answer = service.post(JSON, Some(TOKEN_EU), b"[]".to_vec()).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.body["error"], "empty_batch");

    // NDJSON: a broken line is one rejected event, the others are accepted.
    let good = serde_json::to_string(&event_json(&event(PRODUCER_EU, &unique_id("nd")))).unwrap();
    let body = format!("{good}\n{{\"event_id\": \"x\",\n");
    let answer = service
        .post(NDJSON, Some(TOKEN_EU), body.into_bytes())
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.errors_of(1),
        [("(event)".to_owned(), "malformed_json".to_owned())]
    );
    service.still_accepts_a_good_event().await;
    service.stop().await;
}

/// `event` with `field` set to `value`.
fn with_field(event: &Value, field: &str, value: Value) -> Value {
    let mut event = event.clone();
    event[field] = value;
    event
}

/// `(field, kind, reason)` of the single error of result `index`.
fn single_error(answer: &Answer, index: usize) -> (String, String, String) {
    let errors = &answer.body["results"][index]["errors"];
    assert_eq!(errors.as_array().map(Vec::len), Some(1), "{errors}");
    let text = |name: &str| errors[0][name].as_str().unwrap().to_owned();
    (text("field"), text("kind"), text("reason"))
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn inputs_that_got_misleading_messages_get_ones_that_say_what_is_wrong() {
    let service = Service::start("http_clear_messages", |_| {}).await;
    let base = event_json(&event(PRODUCER_EU, &unique_id("clear")));
    let with = |field: &str, value: Value| with_field(&base, field, value);
    let ten_pow_30 = format!("1{}", "0".repeat(30));
    let naive = Utc::now()
        .naive_utc()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let events = [
        with(
            "reported_cost_usd",
            serde_json::from_str(&ten_pow_30).unwrap(),
        ),
        with("estimated_cost_usd", json!(ten_pow_30)),
        with(
            "input_tokens",
            serde_json::from_str("12345678901234567890123").unwrap(),
        ),
        with("occurred_at", json!(naive)),
        with("team", json!("LONE_SURROGATE")),
    ];
    // serde_json cannot hold a lone surrogate in a string: write its escape into the text.
    let body = serde_json::to_string(&events)
        .unwrap()
        .replace("LONE_SURROGATE", "\\ud800");
    let answer = service.post(JSON, Some(TOKEN_EU), body.into_bytes()).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    let expected = [
        (
            "reported_cost_usd",
            "decimal_out_of_range",
            format!("{ten_pow_30} is out of range for decimal(38, 12)"),
        ),
        (
            "estimated_cost_usd",
            "decimal_out_of_range",
            format!("{ten_pow_30} is out of range for decimal(38, 12)"),
        ),
        (
            "input_tokens",
            "out_of_range",
            "12345678901234567890123 is too large: an integer of 23 digits, a u64 field holds \
             0..=18446744073709551615"
                .to_owned(),
        ),
        (
            "occurred_at",
            "invalid_value",
            format!(
                "timestamp \"{naive}\" has no UTC offset; an offset is required (RFC 3339, e.g. \
                 \"{naive}Z\" for UTC or \"{naive}+02:00\")"
            ),
        ),
        (
            "team",
            "malformed_json",
            "a string holds the lone UTF-16 high surrogate escape \\ud800, which is not a \
             character: strings must be valid Unicode (a \\uD800-\\uDBFF escape must be followed \
             by a \\uDC00-\\uDFFF one, together one character)"
                .to_owned(),
        ),
    ];
    for (index, (field, kind, reason)) in expected.into_iter().enumerate() {
        assert_eq!(
            single_error(&answer, index),
            (field.to_owned(), kind.to_owned(), reason),
            "case {index}"
        );
    }

    // A byte order mark before the JSON: the body is refused as a whole, saying why.
    let bom_message = "the body starts with a UTF-8 byte order mark (EF BB BF), which is not \
                       allowed: send the JSON without a BOM (RFC 8259 section 8.1)";
    for content_type in [JSON, NDJSON] {
        let mut body = b"\xEF\xBB\xBF".to_vec();
        body.extend(serde_json::to_vec(&base).unwrap());
        let answer = service.post(content_type, Some(TOKEN_EU), body).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(answer.body["error"], "malformed_body", "{content_type}");
        assert_eq!(answer.body["message"], bom_message, "{content_type}");
    }
    service.still_accepts_a_good_event().await;
    service.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn control_characters_in_ids_scopes_and_labels_get_422_naming_the_field() {
    let service = Service::start("http_control_characters", |_| {}).await;
    let base = event_json(&event(PRODUCER_EU, &unique_id("control")));
    let with = |field: &str, value: Value| with_field(&base, field, value);
    let events = [
        with("team", json!("a\u{1b}[31m")),
        with("api_key_id", json!("key\u{85}")),
        with("labels", json!({"feature": "x\u{0}"})),
        with("event_id", json!(format!("{}\u{7f}", unique_id("del")))),
    ];
    let answer = service.post_json(&json!(events)).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    let rule = "control characters (C0 U+0000-U+001F including NUL, DEL U+007F, C1 \
                U+0080-U+009F) are not allowed";
    let expected = [
        (
            "team",
            format!("team contains the control character U+001B at byte 1; {rule}"),
        ),
        (
            "api_key_id",
            format!("api_key_id contains the control character U+0085 at byte 3; {rule}"),
        ),
        (
            "labels.feature",
            format!(
                "label value of labels.feature contains the control character U+0000 at byte 1; \
                 {rule}"
            ),
        ),
    ];
    for (index, (field, reason)) in expected.into_iter().enumerate() {
        assert_eq!(
            single_error(&answer, index),
            (field.to_owned(), "control_character".to_owned(), reason),
            "case {index}"
        );
    }
    assert_eq!(
        answer.errors_of(3),
        [("event_id".to_owned(), "control_character".to_owned())]
    );
    service.still_accepts_a_good_event().await;
    service.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn bad_avro_records_get_per_event_errors_and_broken_framing_422() {
    let service = Service::start("http_avro_errors", |_| {}).await;
    let good = schemas::encode(&event(PRODUCER_EU, &unique_id("avro-good"))).unwrap();
    let truncated = good[..12].to_vec();
    let mut unknown_fingerprint = good.clone();
    unknown_fingerprint[2..10].copy_from_slice(&[0xAB; 8]);
    let mut bad_magic = good.clone();
    bad_magic[1] = 0x02;

    let body = avro_batch(&[good, truncated, unknown_fingerprint, bad_magic.clone()]);
    let answer = service.post(AVRO, Some(TOKEN_EU), body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["accepted"], 1);
    assert_eq!(
        answer.errors_of(1),
        [("event_id".to_owned(), "truncated".to_owned())]
    );
    assert_eq!(
        answer.errors_of(2),
        [("(header)".to_owned(), "unknown_fingerprint".to_owned())]
    );
    assert_eq!(
        answer.errors_of(3),
        [("(header)".to_owned(), "bad_magic".to_owned())]
    );

    // A single record (the body starts with c3) with bad magic: one rejected event, 422.
    let answer = service.post(AVRO, Some(TOKEN_EU), bad_magic).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(
        answer.errors_of(0),
        [("(header)".to_owned(), "bad_magic".to_owned())]
    );

    // A frame announcing more bytes than the body has: the events cannot be found.
    let answer = service
        .post(AVRO, Some(TOKEN_EU), vec![0, 0, 1, 0, 0xC3, 0x01])
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.body["error"], "malformed_body");
    service.still_accepts_a_good_event().await;
    service.stop().await;
}

/// The API alone, with a recorder whose broker does not exist and a short delivery timeout.
async fn serve_with_dead_broker(test: &str) -> (String, Shutdown) {
    let mut kafka = testkit::kafka_config(test);
    kafka.brokers = "127.0.0.1:1".to_owned();
    let recorder_config = RecorderConfig {
        delivery_timeout_ms: 1_500,
        ..RecorderConfig::default()
    };
    let pricer = Pricer::from_config(&PricingConfig::default()).unwrap();
    let recorder = Recorder::new(&kafka, &recorder_config, pricer, Default::default()).unwrap();
    let config = ApiConfig {
        tokens: tokens(),
        retry_after_seconds: 7,
        ..ApiConfig::default()
    };
    let router = api::router(ApiState::new(&config, recorder));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    tokio::spawn(infra::telemetry::serve(listener, router, shutdown.clone()));
    (base_url, shutdown)
}

#[tokio::test]
#[cfg_attr(
    not(feature = "live"),
    ignore = "needs the local stack (dev/stack up); run with --features live"
)]
async fn unreachable_kafka_gives_503_with_retry_after_and_the_unknown_events() {
    let (base_url, shutdown) = serve_with_dead_broker("http_dead_broker").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let first = event(PRODUCER_EU, &unique_id("dead-1"));
    let mut invalid = event(PRODUCER_EU, &unique_id("dead-invalid"));
    invalid.attempt = 0;
    let second = event(PRODUCER_EU, &unique_id("dead-2"));
    let body = json!([
        event_json(&first),
        event_json(&invalid),
        event_json(&second)
    ]);
    let answer = post(
        &client,
        &base_url,
        JSON,
        Some(TOKEN_EU),
        serde_json::to_vec(&body).unwrap(),
    )
    .await;

    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert_eq!(answer.headers["retry-after"], "7");
    assert_eq!(answer.body["error"], "kafka_unavailable");
    assert!(answer.body["message"]
        .as_str()
        .unwrap()
        .contains("same event_ids"));
    assert_eq!(
        (
            &answer.body["accepted"],
            &answer.body["rejected"],
            &answer.body["unknown"]
        ),
        (&json!(0), &json!(1), &json!(2))
    );
    let results = &answer.body["results"];
    assert_eq!(results[0]["status"], "unknown");
    assert_eq!(results[0]["event_id"], first.event_id.as_str());
    assert_eq!(results[1]["status"], "rejected");
    assert_eq!(results[2]["status"], "unknown");
    shutdown.cancel();
}
