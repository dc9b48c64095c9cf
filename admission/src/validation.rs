//! Validation shared by the HTTP API, the producer library (`quotaflow_recorder`) and the Kafka
//! readers (through [`crate::Admission`], at the record's Kafka timestamp): [`validate`] checks one [`UsageEvent`] against a [`ValidationConfig`] and the price
//! catalog's model limits, and returns **every** [`Violation`] at once, so a producer can fix
//! everything in one round trip.
//!
//! What is checked here is what serde cannot check: empty or over-long strings, counts outside
//! sane bounds, fields that contradict each other, event times outside the accepted window and
//! usage above the model's context window. Unknown enum symbols, wrong JSON types and negative
//! amounts are rejected earlier, when the JSON is decoded (`schemas`), and reported by the HTTP
//! layer.
//!
//! Every violation names the JSON path of the field (`input_tokens`, `labels.<key>`) and one of
//! the stable kinds in [`kind`]. Validation does no IO and never panics.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::{Modality, UsageEvent};
use serde::{Deserialize, Serialize};

/// The stable, machine-readable [`Violation::kind`] values (also the `kind` label of the
/// `quotaflow_ingest_events_rejected_total` metric, so the set is small and fixed).
///
/// An event that passes validation but cannot be encoded (e.g. an amount with more than 12
/// fractional digits) is reported by `quotaflow_recorder::Recorder::prepare` with the kind of its
/// `schemas::EncodeError` (`too_many_fractional_digits`, …).
pub mod kind {
    /// A required string is empty.
    pub const MISSING: &str = "missing";
    /// A string (id, name, label key or value) is longer than allowed.
    pub const TOO_LONG: &str = "too_long";
    /// More labels than allowed.
    pub const TOO_MANY: &str = "too_many";
    /// A number outside its sane range (attempt 0, absurd token counts, absurd amounts).
    pub const OUT_OF_RANGE: &str = "out_of_range";
    /// Fields that contradict each other (cached above input, an image tier on a text event).
    pub const INCONSISTENT: &str = "inconsistent";
    /// Usage the model cannot have produced: above its context window or output limit.
    pub const ABOVE_MODEL_LIMIT: &str = "above_model_limit";
    /// `occurred_at` is further in the future than the allowed clock skew.
    pub const IN_FUTURE: &str = "in_future";
    /// `occurred_at` is older than the accepted age.
    pub const TOO_OLD: &str = "too_old";
    /// The model is not priced and the pricing policy is `fail_closed` (see [`crate::pricer`]).
    pub const UNPRICED: &str = "unpriced";
    /// An id, scope value or label holds a control character (C0 including NUL, DEL, C1): such
    /// values become scope keys that reach Slack messages, terminals and logs.
    pub const CONTROL_CHARACTER: &str = "control_character";
}

/// Limits every usage event must respect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// How far into the future `occurred_at` may be (clock skew between gateways and us).
    #[serde(with = "humantime_secs")]
    pub max_future_skew: Duration,
    /// How far into the past `occurred_at` may be: older events would land in windows that are
    /// already closed and archived.
    #[serde(with = "humantime_secs")]
    pub max_past_age: Duration,
    /// Longest id or name (event_id, team, model, …), in bytes: ids are keys in Kafka and
    /// ClickHouse and must stay small.
    pub max_string_len: usize,
    /// Most labels per event: labels are stored per event, so their number bounds row size.
    pub max_labels: usize,
    /// Longest label key, in bytes.
    pub max_label_key_len: usize,
    /// Longest label value, in bytes.
    pub max_label_value_len: usize,
    /// Highest `attempt`: a retry loop beyond this is a producer bug, not traffic.
    pub max_attempt: u32,
    /// Most tokens of any one kind in one event; above this a count is a bug (an overflow, a sum
    /// of many calls), not usage.
    pub max_tokens_per_event: u64,
    /// Most images in one event.
    pub max_images: u32,
    /// Longest video or audio duration in one event, in milliseconds.
    pub max_media_ms: u64,
    /// Highest `reported_cost_usd` / `estimated_cost_usd` for one event; above this it is a unit
    /// error (cents, micro-dollars) rather than a real cost.
    #[serde(with = "rust_decimal::serde::str")]
    pub max_cost_usd: Decimal,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::from_secs(300),
            max_past_age: Duration::from_secs(7 * 24 * 3600),
            max_string_len: 256,
            max_labels: 32,
            max_label_key_len: 64,
            max_label_value_len: 256,
            max_attempt: 100,
            max_tokens_per_event: 10_000_000,
            max_images: 10_000,
            max_media_ms: 6 * 3600 * 1000,
            max_cost_usd: Decimal::from(1_000_000),
        }
    }
}

/// One reason an event is invalid: the JSON path of the field and a sentence for a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON path of the offending field, e.g. `labels.feature` or `input_tokens`.
    pub field: String,
    /// Stable machine-readable kind, e.g. `out_of_range`, `missing`, `too_long` (see [`kind`]).
    pub kind: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl Violation {
    /// A violation of `field` of kind `kind` (one of [`kind`]).
    pub fn new(field: impl Into<String>, kind: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: kind.to_owned(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} ({}): {}", self.field, self.kind, self.reason)
    }
}

/// Checks `event` against `config` and the model limits of `catalog`, at time `now`.
///
/// Returns all violations, in field order, or `Ok(())`. A model missing from the catalog is not
/// a violation here (pricing decides what to do with it, see [`crate::pricer::UnpricedPolicy`]).
pub fn validate(
    event: &UsageEvent,
    catalog: &pricing::Catalog,
    config: &ValidationConfig,
    now: DateTime<Utc>,
) -> Result<(), Vec<Violation>> {
    let usage = crate::pricer::pricing_input(event);
    validate_with_usage(event, &usage, catalog, config, now)
}

/// [`validate`] with the event's [`pricing::PricingInput`] already built, for callers that also
/// price the event (the recorder builds it once per event for both).
pub fn validate_with_usage(
    event: &UsageEvent,
    usage: &pricing::PricingInput,
    catalog: &pricing::Catalog,
    config: &ValidationConfig,
    now: DateTime<Utc>,
) -> Result<(), Vec<Violation>> {
    validate_at(event, usage, catalog, config, Some(now))
}

/// [`validate_with_usage`] judged at `reference` instead of the clock: the Kafka readers pass the
/// record's Kafka timestamp (see [`crate::Admission`]), so a replay judges every record as the
/// first pass did. `None` (a record without a timestamp) skips the `in_future` / `too_old` rules.
pub fn validate_at(
    event: &UsageEvent,
    usage: &pricing::PricingInput,
    catalog: &pricing::Catalog,
    config: &ValidationConfig,
    reference: Option<DateTime<Utc>>,
) -> Result<(), Vec<Violation>> {
    let mut violations = Vec::new();
    check_strings(event, config, &mut violations);
    check_attempt(event, config, &mut violations);
    check_counts(event, config, &mut violations);
    check_model_limits(usage, catalog, &mut violations);
    if let Some(now) = reference {
        check_occurred_at(event, config, now, &mut violations);
    }
    check_consistency(event, &mut violations);
    check_amounts(event, config, &mut violations);
    check_labels(event, config, &mut violations);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

/// The text rule alone: no control character in any id, scope value, label key or label value.
/// [`validate`] checks it too; the Kafka readers apply the whole of [`validate_at`] through
/// [`crate::Admission`].
pub fn validate_text(event: &UsageEvent) -> Result<(), Vec<Violation>> {
    let mut violations = Vec::new();
    for (field, value) in required_strings(event) {
        check_control_characters(field, "", value, &mut violations);
    }
    for (field, value) in optional_strings(event) {
        if let Some(value) = value {
            check_control_characters(field, "", value, &mut violations);
        }
    }
    let max_label_key_len = ValidationConfig::default().max_label_key_len;
    for (key, value) in &event.labels {
        check_label_control_characters(key, value, max_label_key_len, &mut violations);
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

fn required_strings(event: &UsageEvent) -> [(&'static str, &String); 11] {
    [
        ("event_id", &event.event_id),
        ("producer", &event.producer),
        ("request_id", &event.request_id),
        ("action_id", &event.action_id),
        ("api_key_id", &event.api_key_id),
        ("team", &event.team),
        ("workflow", &event.workflow),
        ("environment", &event.environment),
        ("provider", &event.provider),
        ("model", &event.model),
        ("endpoint", &event.endpoint),
    ]
}

fn optional_strings(event: &UsageEvent) -> [(&'static str, &Option<String>); 5] {
    [
        ("fallback_from_model", &event.fallback_from_model),
        ("user_id", &event.user_id),
        ("customer_id", &event.customer_id),
        ("video_resolution", &event.video_resolution),
        ("job_id", &event.job_id),
    ]
}

fn check_strings(event: &UsageEvent, config: &ValidationConfig, violations: &mut Vec<Violation>) {
    for (field, value) in required_strings(event) {
        if value.trim().is_empty() {
            violations.push(Violation::new(
                field,
                kind::MISSING,
                format!("{field} is required and must not be empty or blank"),
            ));
        } else {
            check_text(field, value, config.max_string_len, violations);
        }
    }
    for (field, value) in optional_strings(event) {
        if let Some(value) = value {
            check_text(field, value, config.max_string_len, violations);
        }
    }
}

fn check_text(field: &str, value: &str, max_len: usize, violations: &mut Vec<Violation>) {
    if value.len() > max_len {
        violations.push(Violation::new(
            field,
            kind::TOO_LONG,
            format!("{} bytes, at most {max_len} allowed", value.len()),
        ));
    }
    check_control_characters(field, "", value, violations);
}

/// One violation for the first control character of `value`, if any. `what` says which part of
/// the field it is in (`"label key "`, `"label value "`, or `""` for the field itself).
fn check_control_characters(field: &str, what: &str, value: &str, violations: &mut Vec<Violation>) {
    if !has_control_character(value) {
        return; // every field of every event: the byte scan below is the whole cost
    }
    if let Some((at, character)) = value.char_indices().find(|(_, c)| c.is_control()) {
        violations.push(Violation::new(
            field,
            kind::CONTROL_CHARACTER,
            format!(
                "{what}{field} contains the control character U+{:04X} at byte {at}; control \
                 characters (C0 U+0000-U+001F including NUL, DEL U+007F, C1 U+0080-U+009F) are not \
                 allowed",
                u32::from(character)
            ),
        ));
    }
}

fn check_attempt(event: &UsageEvent, config: &ValidationConfig, violations: &mut Vec<Violation>) {
    if event.attempt == 0 || event.attempt > config.max_attempt {
        violations.push(Violation::new(
            "attempt",
            kind::OUT_OF_RANGE,
            format!(
                "attempt {} is not in 1..={} (1 is the primary attempt)",
                event.attempt, config.max_attempt
            ),
        ));
    }
}

fn check_counts(event: &UsageEvent, config: &ValidationConfig, violations: &mut Vec<Violation>) {
    let limited = [
        (
            "input_tokens",
            event.input_tokens,
            config.max_tokens_per_event,
        ),
        (
            "output_tokens",
            event.output_tokens,
            config.max_tokens_per_event,
        ),
        (
            "cached_input_tokens",
            event.cached_input_tokens,
            config.max_tokens_per_event,
        ),
        (
            "cache_write_tokens",
            event.cache_write_tokens,
            config.max_tokens_per_event,
        ),
        (
            "images",
            u64::from(event.images),
            u64::from(config.max_images),
        ),
        (
            "video_duration_ms",
            event.video_duration_ms,
            config.max_media_ms,
        ),
        (
            "audio_duration_ms",
            event.audio_duration_ms,
            config.max_media_ms,
        ),
    ];
    for (field, value, max) in limited {
        if value > max {
            violations.push(Violation::new(
                field,
                kind::OUT_OF_RANGE,
                format!("{value} is above the limit of {max} for one event"),
            ));
        }
    }
    if let Some(http_status) = event.http_status {
        if !(100..=599).contains(&http_status) {
            violations.push(Violation::new(
                "http_status",
                kind::OUT_OF_RANGE,
                format!("{http_status} is not an HTTP status (100..=599)"),
            ));
        }
    }
    // The wire format stores these as Avro longs.
    let wire_longs = [
        ("retry_after_ms", event.retry_after_ms),
        ("latency_ms", event.latency_ms),
    ];
    for (field, value) in wire_longs {
        if let Some(value) = value.filter(|value| i64::try_from(*value).is_err()) {
            violations.push(Violation::new(
                field,
                kind::OUT_OF_RANGE,
                format!("{value} is above {}", i64::MAX),
            ));
        }
    }
}

/// Usage the catalog proves impossible for the model (`pricing::Catalog::model_limit_errors`): a
/// prompt above its context window or more output than it can produce, each reported.
fn check_model_limits(
    usage: &pricing::PricingInput,
    catalog: &pricing::Catalog,
    violations: &mut Vec<Violation>,
) {
    for error in catalog.model_limit_errors(usage) {
        let field = match error {
            pricing::UsageLimitError::OutputAboveMax { .. } => "output_tokens",
            _ => "input_tokens",
        };
        violations.push(Violation::new(
            field,
            kind::ABOVE_MODEL_LIMIT,
            error.to_string(),
        ));
    }
}

fn check_occurred_at(
    event: &UsageEvent,
    config: &ValidationConfig,
    now: DateTime<Utc>,
    violations: &mut Vec<Violation>,
) {
    let skew = chrono::Duration::from_std(config.max_future_skew).unwrap_or(chrono::Duration::MAX);
    let age = chrono::Duration::from_std(config.max_past_age).unwrap_or(chrono::Duration::MAX);
    // Saturating: a huge configured window means "no limit", never an overflow panic.
    let latest = now
        .checked_add_signed(skew)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let earliest = now
        .checked_sub_signed(age)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if event.occurred_at > latest {
        violations.push(Violation::new(
            "occurred_at",
            kind::IN_FUTURE,
            format!(
                "{} is more than {}s ahead of the server clock ({now})",
                event.occurred_at.to_rfc3339(),
                config.max_future_skew.as_secs()
            ),
        ));
    } else if event.occurred_at < earliest {
        violations.push(Violation::new(
            "occurred_at",
            kind::TOO_OLD,
            format!(
                "{} is more than {}s in the past (server clock {now})",
                event.occurred_at.to_rfc3339(),
                config.max_past_age.as_secs()
            ),
        ));
    }
}

fn check_consistency(event: &UsageEvent, violations: &mut Vec<Violation>) {
    if event.cached_input_tokens > event.input_tokens {
        violations.push(Violation::new(
            "cached_input_tokens",
            kind::INCONSISTENT,
            format!(
                "{} cached input tokens exceed {} input tokens (input_tokens includes the cached part)",
                event.cached_input_tokens, event.input_tokens
            ),
        ));
    }
    if event.image_tier.is_some() && event.modality != Modality::Image {
        violations.push(Violation::new(
            "image_tier",
            kind::INCONSISTENT,
            format!(
                "image_tier is only allowed with modality image, not {}",
                event.modality.as_str()
            ),
        ));
    }
    if event.job_state.is_some() && event.job_id.is_none() {
        violations.push(Violation::new(
            "job_state",
            kind::INCONSISTENT,
            "job_state needs the job_id of the job it reports",
        ));
    }
}

fn check_amounts(event: &UsageEvent, config: &ValidationConfig, violations: &mut Vec<Violation>) {
    let amounts = [
        ("reported_cost_usd", event.reported_cost_usd),
        ("estimated_cost_usd", event.estimated_cost_usd),
    ];
    for (field, amount) in amounts {
        if let Some(amount) = amount.filter(|amount| *amount > config.max_cost_usd) {
            violations.push(Violation::new(
                field,
                kind::OUT_OF_RANGE,
                format!(
                    "{amount} USD is above the limit of {} USD for one event (is the unit right?)",
                    config.max_cost_usd
                ),
            ));
        }
    }
}

fn check_labels(event: &UsageEvent, config: &ValidationConfig, violations: &mut Vec<Violation>) {
    if event.labels.len() > config.max_labels {
        violations.push(Violation::new(
            "labels",
            kind::TOO_MANY,
            format!(
                "{} labels, at most {} allowed",
                event.labels.len(),
                config.max_labels
            ),
        ));
    }
    // The field path is built only for a label that has a problem: this runs for every label of
    // every event.
    let field = |key: &str| format!("labels.{}", printable_key(key, config.max_label_key_len));
    for (key, value) in &event.labels {
        if key.is_empty() {
            violations.push(Violation::new(
                field(key),
                kind::MISSING,
                "label keys must not be empty",
            ));
            continue;
        }
        if key.len() > config.max_label_key_len {
            violations.push(Violation::new(
                field(key),
                kind::TOO_LONG,
                format!(
                    "label key of {} bytes, at most {} allowed",
                    key.len(),
                    config.max_label_key_len
                ),
            ));
        }
        check_label_control_characters(key, value, config.max_label_key_len, violations);
        if value.len() > config.max_label_value_len {
            violations.push(Violation::new(
                field(key),
                kind::TOO_LONG,
                format!(
                    "label value of {} bytes, at most {} allowed",
                    value.len(),
                    config.max_label_value_len
                ),
            ));
        }
    }
}

/// Whether `value` holds a control character (`char::is_control`: general category Cc, that is
/// U+0000–U+001F and U+007F–U+009F), by bytes: C0 and DEL are single bytes below 0x20 or 0x7F,
/// and C1 is 0xC2 followed by 0x80–0x9F in UTF-8 (no other sequence starts with 0xC2 0x80–0x9F).
///
/// Every field of every event goes through here, so the common answer (none) comes from a pass
/// without early exit that the compiler vectorizes; only a string with a suspect byte (< 0x20,
/// 0x7F or 0xC2) takes the exact scan.
fn has_control_character(value: &str) -> bool {
    let bytes = value.as_bytes();
    let suspect = bytes.iter().fold(0u8, |found, &byte| {
        found | u8::from(byte < 0x20) | u8::from(byte == 0x7F) | u8::from(byte == 0xC2)
    });
    if suspect == 0 {
        return false;
    }
    bytes.iter().enumerate().any(|(index, byte)| {
        *byte < 0x20
            || *byte == 0x7F
            || (*byte == 0xC2 && matches!(bytes.get(index + 1), Some(0x80..=0x9F)))
    })
}

fn check_label_control_characters(
    key: &str,
    value: &str,
    max_label_key_len: usize,
    violations: &mut Vec<Violation>,
) {
    if !has_control_character(key) && !has_control_character(value) {
        return;
    }
    let field = format!("labels.{}", printable_key(key, max_label_key_len));
    check_control_characters(&field, "label key of ", key, violations);
    check_control_characters(&field, "label value of ", value, violations);
}

/// The key as it appears in a field path, cut to `max_len` bytes (on a char boundary, with `…`)
/// so that an absurd key does not make the error response absurd too, and its control characters
/// escaped (`\u{1b}`) so that the path itself is safe to show.
fn printable_key(key: &str, max_len: usize) -> std::borrow::Cow<'_, str> {
    let has_control = key.chars().any(char::is_control);
    if key.len() <= max_len && !has_control {
        return key.into();
    }
    let mut end = max_len.min(key.len());
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    let cut = if end < key.len() { "…" } else { "" };
    let escaped: String = key[..end]
        .chars()
        .map(|character| {
            if character.is_control() {
                character.escape_unicode().to_string()
            } else {
                character.to_string()
            }
        })
        .collect();
    format!("{escaped}{cut}").into()
}

/// Durations in config files as whole seconds.
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod control_character_tests {
    use super::has_control_character;

    /// The byte scan agrees with `char::is_control` on every character (all of Unicode's scalar
    /// values, alone and between others), so the fast check misses nothing and flags nothing
    /// more.
    #[test]
    fn the_byte_scan_agrees_with_char_is_control() {
        for code in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let alone = code.to_string();
            assert_eq!(
                has_control_character(&alone),
                code.is_control(),
                "U+{:04X}",
                u32::from(code)
            );
            let between = format!("aé{code}Ω");
            assert_eq!(has_control_character(&between), code.is_control());
        }
    }
}
