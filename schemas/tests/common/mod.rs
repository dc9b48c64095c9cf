//! Fixtures and proptest strategies shared by the integration tests.
#![allow(dead_code)]

use chrono::{DateTime, TimeZone, Utc};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use rust_decimal::Decimal;
use schemas::alert::{Alert, AlertKind, Severity};
use schemas::approval::Approval;
use schemas::control::{ControlDecision, DecisionAction};
use schemas::dead_letter::DeadLetter;
use schemas::usage_event::{CostSource, ImageTier, JobState, Modality, Status, UsageEvent};
use schemas::window_total::WindowTotal;
use std::collections::BTreeMap;
use std::str::FromStr;

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).expect("test literal")
}

pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("test literal")
        .with_timezone(&Utc)
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// A realistic chat completion event: 4 labels, reported and estimated cost, priced (v2).
pub fn sample_usage_event() -> UsageEvent {
    UsageEvent {
        producer: "gateway-eu-west-1-7f9c".to_owned(),
        request_id: "req_8a7b6c5d4e3f2a1b".to_owned(),
        action_id: "act_5f4e3d2c1b0a".to_owned(),
        attempt: 2,
        fallback_from_model: Some("gpt-4.1".to_owned()),
        api_key_id: "key_live_4242".to_owned(),
        workflow: "answer-synthesis".to_owned(),
        user_id: Some("user_1234".to_owned()),
        provider: "anthropic".to_owned(),
        model: "claude-sonnet-4".to_owned(),
        endpoint: "messages".to_owned(),
        input_tokens: 12_850,
        output_tokens: 734,
        cached_input_tokens: 8_192,
        accepted: Some(true),
        reported_cost_usd: Some(dec("0.021474600000")),
        estimated_cost_usd: Some(dec("0.0235")),
        latency_ms: Some(2_314),
        labels: labels(&[
            ("campaign", "spring-launch"),
            ("customer_tier", "enterprise"),
            ("feature", "answer"),
            ("region", "eu"),
        ]),
        cost_usd: Some(dec("0.0214746")),
        cost_source: Some(CostSource::Reported),
        ..schemas::fixtures::text_event(
            "evt_01J9Z6X4W8K2M5N7P3Q1R0S9T8",
            Utc.with_ymd_and_hms(2025, 3, 14, 9, 26, 53).unwrap()
                + chrono::Duration::microseconds(589_793),
        )
    }
}

pub fn sample_control_decision() -> ControlDecision {
    let scope = labels(&[("team", "search"), ("environment", "prod")]);
    let absent = vec!["user_id".to_owned()];
    ControlDecision {
        decision_id: "dec_1".to_owned(),
        key: ControlDecision::compaction_key_with_absent("daily-spend", &scope, &absent),
        policy_id: "daily-spend".to_owned(),
        scope,
        action: DecisionAction::Degrade,
        degrade_to: Some("claude-haiku-4".to_owned()),
        reason: "daily spend above 100%".to_owned(),
        unit: "usd".to_owned(),
        observed: dec("1012.5"),
        limit: dec("1000"),
        window: "day".to_owned(),
        window_start: at("2025-03-14T00:00:00Z"),
        window_end: at("2025-03-15T00:00:00Z"),
        issued_at: at("2025-03-14T17:02:11.000123Z"),
        expires_at: Some(at("2025-03-15T00:00:00Z")),
        version: 7,
        absent,
        shadow: false,
    }
}

pub fn sample_alert() -> Alert {
    Alert {
        alert_id: "alr_1".to_owned(),
        dedup_key: "daily-spend/team=search/80".to_owned(),
        policy_id: "daily-spend".to_owned(),
        scope: labels(&[("team", "search")]),
        kind: AlertKind::SoftThreshold,
        severity: Severity::Warning,
        threshold_percent: Some(80),
        unit: "usd".to_owned(),
        observed: dec("812.000000000001"),
        limit: Some(dec("1000")),
        window: "day".to_owned(),
        window_start: at("2025-03-14T00:00:00Z"),
        window_end: at("2025-03-15T00:00:00Z"),
        owner: "team-search".to_owned(),
        message: "search reached 80% of its daily budget".to_owned(),
        raised_at: at("2025-03-14T15:00:00Z"),
    }
}

pub fn sample_approval() -> Approval {
    Approval {
        approval_id: "apr_1".to_owned(),
        policy_id: "daily-spend".to_owned(),
        scope: labels(&[("team", "search")]),
        new_limit: dec("1500"),
        valid_until: at("2025-03-15T00:00:00Z"),
        reason: "launch day".to_owned(),
        approved_by: "cfo@example.com".to_owned(),
        requested_at: at("2025-03-14T12:00:00Z"),
        signature: vec![7; 64],
    }
}

pub fn sample_dead_letter() -> DeadLetter {
    DeadLetter {
        source_topic: "usage-events".to_owned(),
        source_partition: 3,
        source_offset: 1_234_567,
        error_kind: "bad_magic".to_owned(),
        error_message: "bad magic 7b 22".to_owned(),
        payload: br#"{"event_id":"x"}"#.to_vec(),
        key: Some(b"act_1".to_vec()),
        failed_at: at("2025-03-14T12:00:00.5Z"),
        service: "ingest".to_owned(),
    }
}

/// A day total of a policy scope in a non-UTC zone, with pending jobs.
pub fn sample_window_total() -> WindowTotal {
    WindowTotal {
        scope_kind: "policy:daily-spend".to_owned(),
        scope_key: "team=search/environment=prod".to_owned(),
        window_kind: "day".to_owned(),
        window_tz: "Europe/Paris".to_owned(),
        window_start: at("2025-03-13T23:00:00Z"),
        window_end: at("2025-03-14T23:00:00Z"),
        source_topic: "usage-events".to_owned(),
        source_partition: 5,
        requests: 1_204,
        billable_attempts: 1_198,
        input_tokens: 9_876_543,
        output_tokens: 456_789,
        cached_input_tokens: 4_000_000,
        cache_write_tokens: 120_000,
        images_draft: 12,
        images_preview: 4,
        images_edit: 2,
        images_final: 1,
        images_untiered: 3,
        video_jobs: 2,
        video_ms: 16_000,
        audio_ms: 93_500,
        embedding_tokens: 250_000,
        unpriced_events: 1,
        retries: 31,
        fallback_attempts: 7,
        accepted_outputs: 800,
        errors_4xx: 9,
        errors_5xx: 14,
        errors_other: 2,
        late_events: 3,
        cost_usd: dec("812.000000000001"),
        fallback_cost_usd: dec("0.4213"),
        jobs_in_flight: -1,
        oldest_pending_job_started_at: Some(at("2025-03-14T08:15:00.250001Z")),
        pending_jobs_untracked: 0,
        version: 1_234_567,
        written_at: at("2025-03-14T09:00:00.000123Z"),
    }
}

// ---- strategies ----

/// Any amount the wire can carry and rust_decimal can hold: >= 0, scale 0..=12, < 10^26.
pub fn amount() -> impl Strategy<Value = Decimal> {
    (0_u32..=12).prop_flat_map(|scale| {
        let wire_limit = 10_i128.pow(26 + scale);
        let mantissa_limit = (1_i128 << 96).min(wire_limit);
        prop_oneof![0_i128..1_000_000, 0_i128..mantissa_limit,]
            .prop_map(move |mantissa| Decimal::from_i128_with_scale(mantissa, scale))
    })
}

pub fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    (schemas::time::MIN_MICROS..=schemas::time::MAX_MICROS)
        .prop_map(|micros| DateTime::from_timestamp_micros(micros).expect("in range"))
}

pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z0-9_-]{0,24}", "\\PC{0,12}"]
}

pub fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(text(), text(), 0..6)
}

fn one_of<E: Copy + std::fmt::Debug + 'static>(all: &'static [E]) -> impl Strategy<Value = E> {
    (0..all.len()).prop_map(move |index| all[index])
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![0_u64..100_000, 0_u64..=i64::MAX as u64]
}

prop_compose! {
    fn identity()(
        event_id in text(), occurred_at in timestamp(), producer in text(), request_id in text(),
        action_id in text(), attempt in 1_u32..=i32::MAX as u32,
        fallback_from_model in proptest::option::of(text()),
    ) -> (String, DateTime<Utc>, String, String, String, u32, Option<String>) {
        (event_id, occurred_at, producer, request_id, action_id, attempt, fallback_from_model)
    }
}

prop_compose! {
    fn ownership_and_route()(
        api_key_id in text(), team in text(), workflow in text(), environment in text(),
        user_id in proptest::option::of(text()), customer_id in proptest::option::of(text()),
        provider in text(), model in text(), endpoint in text(), modality in one_of(Modality::ALL),
    ) -> (String, String, String, String, Option<String>, Option<String>, String, String, String, Modality) {
        (api_key_id, team, workflow, environment, user_id, customer_id, provider, model, endpoint, modality)
    }
}

prop_compose! {
    fn usage()(
        (input_tokens, cached_input_tokens) in count().prop_flat_map(|input| (Just(input), 0..=input)),
        output_tokens in count(), cache_write_tokens in count(), images in 0_u32..=i32::MAX as u32,
        image_tier in proptest::option::of(one_of(ImageTier::ALL)),
        video_duration_ms in count(), audio_duration_ms in count(),
        video_resolution in proptest::option::of(text()),
        job_id in proptest::option::of(text()),
        job_state in proptest::option::of(one_of(JobState::ALL)),
    ) -> (u64, u64, u64, u64, u32, Option<ImageTier>, u64, u64, Option<String>, Option<String>, Option<JobState>) {
        (input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, images, image_tier,
         video_duration_ms, audio_duration_ms, video_resolution, job_id, job_state)
    }
}

prop_compose! {
    fn outcome()(
        status in one_of(Status::ALL), http_status in proptest::option::of(any::<u16>()),
        retry_after_ms in proptest::option::of(count()), accepted in proptest::option::of(any::<bool>()),
        reported_cost_usd in proptest::option::of(amount()),
        estimated_cost_usd in proptest::option::of(amount()),
        latency_ms in proptest::option::of(count()), labels in string_map(),
        cost_usd in proptest::option::of(amount()),
        cost_source in proptest::option::of(one_of(CostSource::ALL)),
        catalog_version in proptest::option::of(text()),
    ) -> (Status, Option<u16>, Option<u64>, Option<bool>, Option<Decimal>, Option<Decimal>, Option<u64>,
          BTreeMap<String, String>, Option<Decimal>, Option<CostSource>, Option<String>) {
        (status, http_status, retry_after_ms, accepted, reported_cost_usd, estimated_cost_usd,
         latency_ms, labels, cost_usd, cost_source, catalog_version)
    }
}

prop_compose! {
    pub fn usage_event()(
        identity in identity(), route in ownership_and_route(), usage in usage(), outcome in outcome(),
    ) -> UsageEvent {
        let (event_id, occurred_at, producer, request_id, action_id, attempt, fallback_from_model) = identity;
        let (api_key_id, team, workflow, environment, user_id, customer_id, provider, model, endpoint, modality) = route;
        let (input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, images, image_tier,
             video_duration_ms, audio_duration_ms, video_resolution, job_id, job_state) = usage;
        let (status, http_status, retry_after_ms, accepted, reported_cost_usd, estimated_cost_usd,
             latency_ms, labels, cost_usd, cost_source, catalog_version) = outcome;
        UsageEvent {
            event_id, occurred_at, producer, request_id, action_id, attempt, fallback_from_model,
            api_key_id, team, workflow, environment, user_id, customer_id, provider, model, endpoint, modality,
            input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, images, image_tier,
            video_duration_ms, audio_duration_ms, video_resolution, job_id, job_state,
            status, http_status, retry_after_ms, accepted, reported_cost_usd, estimated_cost_usd,
            latency_ms, labels, cost_usd, cost_source, catalog_version,
        }
    }
}

fn window() -> impl Strategy<Value = (DateTime<Utc>, DateTime<Utc>)> {
    (timestamp(), timestamp()).prop_map(|(a, b)| if a <= b { (a, b) } else { (b, a) })
}

prop_compose! {
    pub fn control_decision()(
        (decision_id, key, policy_id, scope) in (text(), text(), text(), string_map()),
        (action, degrade_to) in (one_of(DecisionAction::ALL), proptest::option::of(text()))
            .prop_map(|(action, target)| match (action, target) {
                (DecisionAction::Degrade, None) => (action, Some("fallback".to_owned())),
                other => other,
            }),
        (reason, unit, observed, limit, window_kind) in (text(), text(), amount(), amount(), text()),
        (window_start, window_end) in window(),
        (issued_at, expires_at, version) in (timestamp(), proptest::option::of(timestamp()), 0_u64..=i64::MAX as u64),
        absent in proptest::collection::btree_set(text(), 0..3),
        shadow in any::<bool>(),
    ) -> ControlDecision {
        // Sorted, unique and disjoint from the scope, as the invariant requires.
        let absent = absent.into_iter().filter(|name| !scope.contains_key(name)).collect();
        ControlDecision {
            decision_id, key, policy_id, scope, action, degrade_to, reason, unit, observed, limit,
            window: window_kind, window_start, window_end, issued_at, expires_at, version, absent,
            // An allow is never shadow (the invariant).
            shadow: shadow && action != DecisionAction::Allow,
        }
    }
}

prop_compose! {
    pub fn window_total()(
        (scope_kind, scope_key, window_kind, window_tz, source_topic) in (text(), text(), text(), text(), text()),
        (window_start, window_end) in window().prop_filter("a window is not empty", |(start, end)| start < end),
        source_partition in 0..=i32::MAX,
        (input_tokens, cached_input_tokens) in count().prop_flat_map(|input| (Just(input), 0..=input)),
        counters in proptest::array::uniform21(count()),
        (cost_usd, fallback_cost_usd) in (amount(), amount())
            .prop_map(|(a, b)| if b <= a { (a, b) } else { (b, a) }),
        (jobs_in_flight, oldest_pending_job_started_at, pending_jobs_untracked) in
            (any::<i64>(), proptest::option::of(timestamp()), count()),
        (version, written_at) in (count(), timestamp()),
    ) -> WindowTotal {
        let [requests, billable_attempts, output_tokens, cache_write_tokens, images_draft,
             images_preview, images_edit, images_final, images_untiered, video_jobs, video_ms,
             audio_ms, embedding_tokens, unpriced_events, retries, fallback_attempts,
             accepted_outputs, errors_4xx, errors_5xx, errors_other, late_events] = counters;
        WindowTotal {
            scope_kind, scope_key, window_kind, window_tz, window_start, window_end, source_topic,
            source_partition, requests, billable_attempts, input_tokens, output_tokens,
            cached_input_tokens, cache_write_tokens, images_draft, images_preview, images_edit,
            images_final, images_untiered, video_jobs, video_ms, audio_ms, embedding_tokens,
            unpriced_events, retries, fallback_attempts, accepted_outputs, errors_4xx, errors_5xx,
            errors_other, late_events, cost_usd, fallback_cost_usd, jobs_in_flight,
            oldest_pending_job_started_at, pending_jobs_untracked, version, written_at,
        }
    }
}

prop_compose! {
    pub fn alert()(
        (alert_id, dedup_key, policy_id, scope) in (text(), text(), text(), string_map()),
        (kind, severity, threshold_percent) in (one_of(AlertKind::ALL), one_of(Severity::ALL),
            proptest::option::of(0_u32..=i32::MAX as u32)),
        (unit, observed, limit, window_kind) in (text(), amount(), proptest::option::of(amount()), text()),
        (window_start, window_end) in window(),
        (owner, message, raised_at) in (text(), text(), timestamp()),
    ) -> Alert {
        Alert {
            alert_id, dedup_key, policy_id, scope, kind, severity, threshold_percent, unit,
            observed, limit, window: window_kind, window_start, window_end, owner, message, raised_at,
        }
    }
}

prop_compose! {
    pub fn approval()(
        (approval_id, policy_id, scope, new_limit) in (text(), text(), string_map(), amount()),
        (valid_until, reason, approved_by, requested_at) in (timestamp(), text(), text(), timestamp()),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
    ) -> Approval {
        Approval { approval_id, policy_id, scope, new_limit, valid_until, reason, approved_by, requested_at, signature }
    }
}

prop_compose! {
    pub fn dead_letter()(
        (source_topic, source_partition, source_offset) in (text(), any::<i32>(), any::<i64>()),
        (error_kind, error_message) in (text(), text()),
        (payload, key) in (vec(any::<u8>(), 0..64), proptest::option::of(vec(any::<u8>(), 0..16))),
        (failed_at, service) in (timestamp(), text()),
    ) -> DeadLetter {
        DeadLetter {
            source_topic, source_partition, source_offset, error_kind, error_message, payload, key,
            failed_at, service,
        }
    }
}

// ---- hand-made wire bytes ----

use schemas::codec::binary::BinaryWriter;
use schemas::codec::datum::DatumWriter;
use schemas::codec::AvroRecord;

/// Avro zig-zag varint of `value` (an int, long, length, union or enum index on the wire).
pub fn varint(value: i64) -> Vec<u8> {
    let mut encoded = ((value << 1) ^ (value >> 63)) as u64;
    let mut bytes = Vec::new();
    while encoded >= 0x80 {
        bytes.push((encoded as u8) | 0x80);
        encoded >>= 7;
    }
    bytes.push(encoded as u8);
    bytes
}

/// Writes a record through the fast path, except that field `target` is replaced by `raw` bytes
/// (the whole field, union branch included): wire bytes no valid value could produce.
struct PatchingWriter {
    buffer: Vec<u8>,
    target: &'static str,
    raw: Vec<u8>,
    patched: bool,
}

impl PatchingWriter {
    /// True when `field` is the target: its bytes are replaced (once) and the write skipped.
    fn intercept(&mut self, field: &'static str) -> bool {
        if field != self.target {
            return false;
        }
        if !self.patched {
            self.patched = true;
            self.buffer.extend_from_slice(&self.raw);
        }
        true
    }
}

macro_rules! delegate {
    ($($method:ident($($arg:ident: $type:ty),*);)*) => {
        $(fn $method(&mut self, field: &'static str, $($arg: $type),*) {
            if !self.intercept(field) {
                BinaryWriter::new(&mut self.buffer).$method(field, $($arg),*);
            }
        })*
    };
}

impl DatumWriter for PatchingWriter {
    delegate! {
        write_union_branch(is_some: bool);
        write_string(value: &str);
        write_bytes(value: &[u8]);
        write_int(value: i32);
        write_long(value: i64);
        write_boolean(value: bool);
        write_timestamp_micros(micros: i64);
        write_decimal_unscaled(unscaled: i128);
        write_enum_symbol(index: u32, symbol: &'static str);
        write_string_map(map: &BTreeMap<String, String>);
        write_string_array(items: &[String]);
    }
}

/// Single-object bytes of `record` with field `target` replaced by `raw`.
pub fn encode_with_patched_field<T: AvroRecord>(
    record: &T,
    target: &'static str,
    raw: &[u8],
) -> Vec<u8> {
    let mut buffer = vec![0xC3, 0x01];
    buffer.extend_from_slice(&T::FINGERPRINT);
    let mut writer = PatchingWriter {
        buffer,
        target,
        raw: raw.to_vec(),
        patched: false,
    };
    record.write_datum(&mut writer).expect("valid record");
    assert!(writer.patched, "no field {target}");
    writer.buffer
}

/// Wire bytes of a present `["null", decimal]` with this unscaled big-endian value.
pub fn optional_decimal_bytes(twos_complement: &[u8]) -> Vec<u8> {
    let mut raw = varint(1);
    raw.extend(varint(twos_complement.len() as i64));
    raw.extend_from_slice(twos_complement);
    raw
}
