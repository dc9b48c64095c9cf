//! JSON for the HTTP API: the same types, money exact (string or exact number in, string out).

mod common;

use common::dec;
use schemas::{Approval, Modality, UsageEvent};
use serde_json::json;

fn approval_json(new_limit: &str) -> String {
    format!(
        r#"{{"approval_id":"a","policy_id":"p","scope":{{"team":"search"}},"new_limit":{new_limit},
            "valid_until":"2025-03-15T00:00:00Z","reason":"r","approved_by":"b",
            "requested_at":"2025-03-14T12:00:00Z"}}"#
    )
}

fn parse_limit(new_limit: &str) -> Result<rust_decimal::Decimal, String> {
    serde_json::from_str::<Approval>(&approval_json(new_limit))
        .map(|approval| approval.new_limit)
        .map_err(|error| error.to_string())
}

#[test]
fn money_is_accepted_as_a_string_or_an_exact_number() {
    assert_eq!(
        parse_limit(r#""0.000000000001""#),
        Ok(dec("0.000000000001"))
    );
    assert_eq!(parse_limit("1e-12"), Ok(dec("0.000000000001")));
    assert_eq!(parse_limit("1E-12"), Ok(dec("0.000000000001")));
    assert_eq!(parse_limit("0.1"), Ok(dec("0.1")));
    assert_eq!(parse_limit("1500"), Ok(dec("1500")));
    assert_eq!(parse_limit("2.5e3"), Ok(dec("2500")));
    // Through f64, 0.1 + 0.2 would not be 0.3; here it is.
    assert_eq!(
        parse_limit("0.1").unwrap() + parse_limit("0.2").unwrap(),
        dec("0.3")
    );
    // More digits than an f64 holds survive.
    assert_eq!(
        parse_limit("12345678901234.123456789012"),
        Ok(dec("12345678901234.123456789012"))
    );
}

#[test]
fn money_is_rejected_when_not_exact_or_negative() {
    for (input, reason) in [
        (r#""abc""#, "not a decimal number"),
        (r#""-1""#, "negative"),
        ("-0.5", "negative"),
        (r#""0.0000000000001""#, "more than 12 fractional digits"),
        ("1e-13", "more than 12 fractional digits"),
        (r#""""#, "not a decimal number"),
        ("true", "invalid type"),
    ] {
        let error = parse_limit(input).expect_err(input);
        assert!(error.contains(reason), "{input}: {error}");
    }
}

#[test]
fn money_from_a_float_is_read_from_its_shortest_text() {
    // serde_json::Value (and YAML, TOML) hand floats over; their shortest round-trip text is
    // what was written, so 0.1 is 0.1, not 0.1000000000000000055511151231257827.
    use serde::de::IntoDeserializer;
    let parse = |value: f64| {
        let float: serde::de::value::F64Deserializer<serde::de::value::Error> =
            value.into_deserializer();
        schemas::money::json::deserialize(float).map_err(|error| error.to_string())
    };
    assert_eq!(parse(0.1), Ok(dec("0.1")));
    assert_eq!(parse(1e-12), Ok(dec("0.000000000001")));
    assert_eq!(parse(1234.5678), Ok(dec("1234.5678")));
    assert!(parse(1e-13)
        .expect_err("13 digits")
        .contains("more than 12 fractional digits"));
    assert!(parse(f64::NAN).is_err());
    assert!(parse(-1.0).is_err());
}

#[test]
fn money_is_serialized_as_a_string() {
    let mut event = common::sample_usage_event();
    event.reported_cost_usd = Some(dec("0.021474600000"));
    let value = serde_json::to_value(&event).expect("serializable");
    assert_eq!(value["reported_cost_usd"], json!("0.0214746"));
    assert_eq!(value["cost_usd"], json!("0.0214746"));
    assert_eq!(value["modality"], json!("text"));
    assert_eq!(value["occurred_at"], json!("2025-03-14T09:26:53.589793Z"));
    assert_eq!(value["customer_id"], json!(null));
}

#[test]
fn usage_event_json_with_defaults_and_strictness() {
    let minimal = json!({
        "event_id": "e1", "occurred_at": "2025-03-14T09:26:53Z", "producer": "gw",
        "request_id": "r1", "action_id": "a1", "attempt": 1, "api_key_id": "k", "team": "t",
        "workflow": "w", "environment": "prod", "provider": "openai", "model": "gpt-image-1",
        "endpoint": "images", "modality": "image", "images": 2, "image_tier": "final",
        "status": "ok", "reported_cost_usd": 0.08
    });
    let event: UsageEvent = serde_json::from_value(minimal.clone()).expect("minimal event");
    assert_eq!(event.modality, Modality::Image);
    assert_eq!(event.input_tokens, 0);
    assert_eq!(event.reported_cost_usd, Some(dec("0.08")));
    assert!(event.labels.is_empty());

    let mut typo = minimal.clone();
    typo["input_token"] = json!(5);
    let error = serde_json::from_value::<UsageEvent>(typo).expect_err("unknown field");
    assert!(
        error.to_string().contains("unknown field `input_token`"),
        "{error}"
    );

    let mut bad_enum = minimal;
    bad_enum["status"] = json!("throttled");
    let error = serde_json::from_value::<UsageEvent>(bad_enum).expect_err("unknown status");
    assert!(
        error
            .to_string()
            .contains("allowed values: ok, rate_limited"),
        "{error}"
    );
}
