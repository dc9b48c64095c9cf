//! `ingest::validation::validate`: every violation kind with its field path. No IO.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ingest::validation::{kind, validate, validate_text, ValidationConfig, Violation};
use pricing::Catalog;
use rust_decimal::Decimal;
use schemas::{ImageTier, JobState, UsageEvent};

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// A valid gpt-4o chat event at `now`, with the optional fields left out.
fn text_event(now: DateTime<Utc>) -> UsageEvent {
    serde_json::from_value(serde_json::json!({
        "event_id": "evt-1",
        "occurred_at": now.to_rfc3339(),
        "producer": "gateway-1",
        "request_id": "req-1",
        "action_id": "act-1",
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

fn violations(event: &UsageEvent, now: DateTime<Utc>) -> Vec<Violation> {
    violations_with(event, &ValidationConfig::default(), now)
}

fn violations_with(
    event: &UsageEvent,
    config: &ValidationConfig,
    now: DateTime<Utc>,
) -> Vec<Violation> {
    match validate(event, &Catalog::embedded_sample(), config, now) {
        Ok(()) => Vec::new(),
        Err(violations) => {
            assert!(!violations.is_empty(), "Err must carry violations");
            violations
        }
    }
}

/// `(field, kind)` pairs, to compare without the human sentences.
fn paths(violations: &[Violation]) -> Vec<(&str, &str)> {
    violations
        .iter()
        .map(|violation| (violation.field.as_str(), violation.kind.as_str()))
        .collect()
}

#[test]
fn a_valid_event_passes() {
    let now = now();
    assert_eq!(violations(&text_event(now), now), vec![]);
}

#[test]
fn empty_or_blank_required_strings_are_missing() {
    let now = now();
    let mut event = text_event(now);
    for field in [
        &mut event.event_id,
        &mut event.producer,
        &mut event.request_id,
        &mut event.action_id,
        &mut event.api_key_id,
        &mut event.team,
        &mut event.workflow,
        &mut event.environment,
        &mut event.provider,
        &mut event.model,
        &mut event.endpoint,
    ] {
        field.clear();
    }
    event.team = "   ".to_owned();
    let found = violations(&event, now);
    assert_eq!(
        paths(&found),
        [
            "event_id",
            "producer",
            "request_id",
            "action_id",
            "api_key_id",
            "team",
            "workflow",
            "environment",
            "provider",
            "model",
            "endpoint",
        ]
        .map(|field| (field, kind::MISSING))
    );
}

#[test]
fn over_long_strings_are_too_long() {
    let now = now();
    let mut event = text_event(now);
    event.event_id = "e".repeat(257);
    event.user_id = Some("u".repeat(257));
    event.workflow = "w".repeat(256); // exactly the limit is fine
    let found = violations(&event, now);
    assert_eq!(
        paths(&found),
        [("event_id", kind::TOO_LONG), ("user_id", kind::TOO_LONG)]
    );
    assert!(found[0].reason.contains("257"), "{}", found[0].reason);
}

#[test]
fn attempt_must_be_between_one_and_the_maximum() {
    let now = now();
    for (attempt, valid) in [(0, false), (1, true), (100, true), (101, false)] {
        let mut event = text_event(now);
        event.attempt = attempt;
        let expected = if valid {
            vec![]
        } else {
            vec![("attempt", kind::OUT_OF_RANGE)]
        };
        assert_eq!(
            paths(&violations(&event, now)),
            expected,
            "attempt {attempt}"
        );
    }
}

#[test]
fn cached_above_input_is_inconsistent() {
    let now = now();
    let mut event = text_event(now);
    event.cached_input_tokens = 1001;
    assert_eq!(
        paths(&violations(&event, now)),
        [("cached_input_tokens", kind::INCONSISTENT)]
    );
}

#[test]
fn absurd_counts_are_out_of_range() {
    let now = now();
    let mut event = text_event(now);
    // A model outside the catalog, so that only the absurd-count limits apply.
    event.model = "in-house-model".to_owned();
    event.input_tokens = 10_000_001;
    event.output_tokens = u64::MAX;
    event.cache_write_tokens = 10_000_000; // the limit itself is fine
    event.images = 10_001;
    event.video_duration_ms = 6 * 3600 * 1000 + 1;
    event.audio_duration_ms = 6 * 3600 * 1000;
    event.http_status = Some(42);
    assert_eq!(
        paths(&violations(&event, now)),
        [
            ("input_tokens", kind::OUT_OF_RANGE),
            ("output_tokens", kind::OUT_OF_RANGE),
            ("images", kind::OUT_OF_RANGE),
            ("video_duration_ms", kind::OUT_OF_RANGE),
            ("http_status", kind::OUT_OF_RANGE),
        ]
    );
}

#[test]
fn usage_above_the_model_limits_from_the_catalog_is_rejected() {
    let now = now();
    // gpt-4o: max_input_tokens 128000, max_output_tokens 16384 in the embedded sample.
    let mut at_limit = text_event(now);
    at_limit.input_tokens = 127_000;
    at_limit.cache_write_tokens = 1_000;
    at_limit.output_tokens = 16_384;
    assert_eq!(violations(&at_limit, now), vec![]);

    let mut above = at_limit.clone();
    above.cache_write_tokens = 1_001; // cache writes count toward the prompt
    above.output_tokens = 16_385;
    let found = violations(&above, now);
    assert_eq!(
        paths(&found),
        [
            ("input_tokens", kind::ABOVE_MODEL_LIMIT),
            ("output_tokens", kind::ABOVE_MODEL_LIMIT),
        ]
    );
    assert!(found[0].reason.contains("128000"), "{}", found[0].reason);

    // The `{provider}/{model}` row is found too.
    let mut azure = above.clone();
    azure.provider = "azure".to_owned();
    azure.model = "azure/gpt-4o".to_owned();
    assert_eq!(paths(&violations(&azure, now)).len(), 2);

    // Unknown models have no known limit: pricing decides what to do with them.
    let mut unknown = above;
    unknown.model = "in-house-model".to_owned();
    assert_eq!(violations(&unknown, now), vec![]);
}

#[test]
fn occurred_at_outside_the_window_is_in_future_or_too_old() {
    let now = now();
    let config = ValidationConfig {
        max_future_skew: Duration::from_secs(60),
        max_past_age: Duration::from_secs(3600),
        ..ValidationConfig::default()
    };
    let at = |offset_seconds: i64| {
        let mut event = text_event(now);
        event.occurred_at = now + chrono::Duration::seconds(offset_seconds);
        paths(&violations_with(&event, &config, now))
            .into_iter()
            .map(|(field, kind)| (field.to_owned(), kind.to_owned()))
            .collect::<Vec<_>>()
    };
    assert_eq!(at(60), vec![]);
    assert_eq!(
        at(61),
        vec![("occurred_at".to_owned(), kind::IN_FUTURE.to_owned())]
    );
    assert_eq!(at(-3600), vec![]);
    assert_eq!(
        at(-3601),
        vec![("occurred_at".to_owned(), kind::TOO_OLD.to_owned())]
    );
}

#[test]
fn huge_time_windows_never_overflow() {
    let now = now();
    let config = ValidationConfig {
        max_future_skew: Duration::MAX,
        max_past_age: Duration::MAX,
        ..ValidationConfig::default()
    };
    let mut event = text_event(now);
    event.occurred_at = DateTime::<Utc>::MIN_UTC;
    assert_eq!(violations_with(&event, &config, now), vec![]);
}

#[test]
fn labels_too_many_or_too_long() {
    let now = now();
    let mut event = text_event(now);
    event.labels = (0..33)
        .map(|index| (format!("k{index:02}"), "v".to_owned()))
        .collect();
    assert_eq!(
        paths(&violations(&event, now)),
        [("labels", kind::TOO_MANY)]
    );

    let long_key = "k".repeat(65);
    let mut event = text_event(now);
    event.labels.insert(long_key, "v".to_owned());
    event.labels.insert("feature".to_owned(), "v".repeat(257));
    event.labels.insert(String::new(), "v".to_owned());
    let found = violations(&event, now);
    let truncated_path = format!("labels.{}…", "k".repeat(64));
    assert_eq!(
        paths(&found),
        [
            ("labels.", kind::MISSING),
            ("labels.feature", kind::TOO_LONG),
            (truncated_path.as_str(), kind::TOO_LONG),
        ]
    );
}

#[test]
fn image_tier_without_image_and_job_state_without_job_are_inconsistent() {
    let now = now();
    let mut event = text_event(now);
    event.image_tier = Some(ImageTier::Draft);
    event.job_state = Some(JobState::Running);
    assert_eq!(
        paths(&violations(&event, now)),
        [
            ("image_tier", kind::INCONSISTENT),
            ("job_state", kind::INCONSISTENT),
        ]
    );

    event.modality = schemas::Modality::Image;
    event.job_id = Some("job-1".to_owned());
    assert_eq!(violations(&event, now), vec![]);
}

#[test]
fn absurd_amounts_are_out_of_range() {
    let now = now();
    let mut event = text_event(now);
    event.reported_cost_usd = Some(Decimal::from(1_000_000));
    event.estimated_cost_usd = Some(Decimal::from(1_000_001));
    assert_eq!(
        paths(&violations(&event, now)),
        [("estimated_cost_usd", kind::OUT_OF_RANGE)]
    );
}

#[test]
fn every_violation_is_reported_at_once() {
    let now = now();
    let mut event = text_event(now);
    event.team.clear();
    event.attempt = 0;
    event.cached_input_tokens = 2000;
    event.occurred_at = now + chrono::Duration::hours(1);
    event.labels.insert("x".repeat(100), String::new());
    let found = violations(&event, now);
    let fields: Vec<&str> = found
        .iter()
        .map(|violation| violation.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "team",
            "attempt",
            "occurred_at",
            "cached_input_tokens",
            &format!("labels.{}…", "x".repeat(64)),
        ]
    );
}

#[test]
fn config_defaults_and_unknown_keys() {
    let config: ValidationConfig = serde_json::from_str("{}").expect("all fields default");
    assert_eq!(config, ValidationConfig::default());
    assert_eq!(config.max_string_len, 256);
    assert_eq!(config.max_labels, 32);
    assert_eq!(config.max_label_key_len, 64);
    assert_eq!(config.max_label_value_len, 256);
    assert_eq!(config.max_attempt, 100);
    assert_eq!(config.max_tokens_per_event, 10_000_000);
    assert_eq!(config.max_images, 10_000);
    assert_eq!(config.max_media_ms, 6 * 3600 * 1000);

    let config: ValidationConfig =
        serde_json::from_str(r#"{"max_future_skew": 10, "max_cost_usd": "50.5"}"#).expect("valid");
    assert_eq!(config.max_future_skew, Duration::from_secs(10));
    assert_eq!(config.max_cost_usd, Decimal::new(505, 1));

    let error =
        serde_json::from_str::<ValidationConfig>(r#"{"max_lables": 3}"#).expect_err("unknown key");
    assert!(error.to_string().contains("max_lables"), "{error}");
}

#[test]
fn control_characters_in_ids_scopes_and_labels_are_refused_naming_the_field() {
    let now = now();
    // C0 (NUL, ESC), DEL and C1 (U+0085, U+009B the 8-bit CSI); U+00A0 (no-break space) is not one.
    for control in ['\0', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}'] {
        let mut event = text_event(now);
        let value = format!("a{control}[31m");
        event.team = value.clone();
        event.event_id = value.clone();
        event.user_id = Some(value.clone());
        event.job_id = Some(value.clone());
        event.labels.insert("feature".to_owned(), value.clone());
        event.labels.insert(value.clone(), "x".to_owned());
        let found = violations(&event, now);
        let escaped = format!("labels.a{}[31m", control.escape_unicode());
        assert_eq!(
            paths(&found),
            [
                ("event_id", kind::CONTROL_CHARACTER),
                ("team", kind::CONTROL_CHARACTER),
                ("user_id", kind::CONTROL_CHARACTER),
                ("job_id", kind::CONTROL_CHARACTER),
                (escaped.as_str(), kind::CONTROL_CHARACTER),
                ("labels.feature", kind::CONTROL_CHARACTER),
            ],
            "{control:?}"
        );
        assert_eq!(
            found[1].reason,
            format!(
                "team contains the control character U+{:04X} at byte 1; control characters \
                 (C0 U+0000-U+001F including NUL, DEL U+007F, C1 U+0080-U+009F) are not allowed",
                u32::from(control)
            )
        );
        assert!(found[5]
            .reason
            .starts_with("label value of labels.feature contains"));
        // The readers of the usage topic that cannot run all of `validate` refuse the same.
        assert_eq!(validate_text(&event), Err(found.clone()));
        // The field path of a label key never carries the control character itself.
        assert!(!found
            .iter()
            .any(|violation| violation.field.contains(control)));
    }
    let mut event = text_event(now);
    event.team = "équipe\u{a0}données ✓".to_owned();
    event.labels.insert("tab".to_owned(), "ok".to_owned());
    assert_eq!(violations(&event, now), vec![]);
    assert_eq!(validate_text(&event), Ok(()));
}
