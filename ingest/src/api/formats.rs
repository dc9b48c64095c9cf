//! Request bodies → events, each parsed on its own so one bad event is one per-event error.
//!
//! | `Content-Type` | body |
//! |---|---|
//! | `application/json` | one event object, or an array of event objects |
//! | `application/x-ndjson` | one event object per line; blank lines are skipped |
//! | `application/vnd.apache.avro`, `avro/binary` | one Avro single-object record (starts `c3 01`), or records each preceded by its length as a 4-byte big-endian integer |
//!
//! The two Avro forms cannot be confused: a length prefix starting with `c3` would announce more than
//! 3 GiB. An event's index is its position in the array, among the non-blank lines, or among the
//! frames. A body that cannot be split into events at all (not JSON, a frame longer than the body)
//! is a request-level error; everything past that is per event.

use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use schemas::{DecodeError, UsageEvent};
use serde_json::value::RawValue;

use super::json_diagnosis;
use crate::validation::Violation;

/// A request body format, from the `Content-Type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    NdJson,
    Avro,
}

impl Format {
    /// The format named by `Content-Type` (parameters such as `charset=utf-8` are ignored);
    /// `Err` holds what was found, for the 415 message.
    pub fn from_headers(headers: &HeaderMap) -> Result<Format, String> {
        let Some(value) = headers.get(CONTENT_TYPE) else {
            return Err("no Content-Type".to_owned());
        };
        let text = value
            .to_str()
            .map_err(|_| "a non-ASCII Content-Type".to_owned())?;
        let essence = text.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/json" => Ok(Format::Json),
            "application/x-ndjson" => Ok(Format::NdJson),
            "application/vnd.apache.avro" | "avro/binary" => Ok(Format::Avro),
            _ => Err(format!("Content-Type {text:?}")),
        }
    }

    /// Stable label (metrics, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::NdJson => "ndjson",
            Format::Avro => "avro",
        }
    }
}

/// Why a body could not be split into events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// Not a JSON object or array, or an Avro frame that runs past the end of the body.
    Malformed(String),
    /// No event at all.
    Empty,
    /// More events than allowed; counted before any of them is parsed.
    TooManyEvents { count: usize },
}

/// One event of a request, parsed or not.
#[derive(Debug)]
pub struct ParsedEvent {
    /// The `event_id`, when it could be read (also from an event that is otherwise invalid), so the
    /// caller can match a rejection to its event.
    pub event_id: Option<String>,
    /// The event, or why it is not one.
    pub event: Result<UsageEvent, Vec<Violation>>,
}

/// Splits `body` into events and parses each; `max_events` is checked before parsing any.
pub fn parse_body(
    format: Format,
    body: &[u8],
    max_events: usize,
) -> Result<Vec<ParsedEvent>, SplitError> {
    let events = match format {
        Format::Json => parse_json(body, max_events)?,
        Format::NdJson => parse_ndjson(body, max_events)?,
        Format::Avro => parse_avro(body, max_events)?,
    };
    if events.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(events)
}

fn check_count(count: usize, max_events: usize) -> Result<(), SplitError> {
    if count > max_events {
        return Err(SplitError::TooManyEvents { count });
    }
    Ok(())
}

/// The UTF-8 byte order mark. RFC 8259 §8.1: JSON text must not start with one; serde_json would
/// call it "expected value", and a NDJSON line starting with it "an event must be a JSON object".
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn refuse_byte_order_mark(body: &[u8]) -> Result<(), SplitError> {
    if body.starts_with(UTF8_BOM) {
        return Err(SplitError::Malformed(
            "the body starts with a UTF-8 byte order mark (EF BB BF), which is not allowed: \
             send the JSON without a BOM (RFC 8259 section 8.1)"
                .to_owned(),
        ));
    }
    Ok(())
}

fn parse_json(body: &[u8], max_events: usize) -> Result<Vec<ParsedEvent>, SplitError> {
    refuse_byte_order_mark(body)?;
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    let elements: Vec<&RawValue> = match first {
        Some(b'[') => serde_json::from_slice(body),
        Some(b'{') => serde_json::from_slice(body).map(|element| vec![element]),
        None => return Err(SplitError::Empty),
        Some(_) => {
            return Err(SplitError::Malformed(
                "the body must be an event object or an array of event objects".to_owned(),
            ))
        }
    }
    .map_err(|error| SplitError::Malformed(format!("the body is not valid JSON: {error}")))?;
    check_count(elements.len(), max_events)?;
    Ok(elements
        .into_iter()
        .map(|element| parse_json_event(element.get()))
        .collect())
}

fn parse_ndjson(body: &[u8], max_events: usize) -> Result<Vec<ParsedEvent>, SplitError> {
    refuse_byte_order_mark(body)?;
    let lines: Vec<&[u8]> = body
        .split(|byte| *byte == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|line| !line.is_empty())
        .collect();
    check_count(lines.len(), max_events)?;
    Ok(lines
        .into_iter()
        .map(|line| match std::str::from_utf8(line) {
            Ok(text) => parse_json_event(text),
            Err(error) => ParsedEvent {
                event_id: None,
                event: Err(vec![Violation::new(
                    "(event)",
                    kind::MALFORMED_JSON,
                    format!("the line is not UTF-8: {error}"),
                )]),
            },
        })
        .collect())
}

/// Stable kinds of per-event errors found while parsing (validation adds its own, see
/// [`crate::validation`]); also listed in `ingest/openapi.yaml`.
pub mod kind {
    /// Not JSON, or not a JSON object.
    pub const MALFORMED_JSON: &str = "malformed_json";
    /// A required field is absent.
    pub const MISSING: &str = "missing";
    /// A field the contract does not have.
    pub const UNKNOWN_FIELD: &str = "unknown_field";
    /// A value of the wrong JSON type (a string for a count, an object for a string …).
    pub const INVALID_TYPE: &str = "invalid_type";
    /// A value outside an enum's symbols.
    pub const UNKNOWN_ENUM_VALUE: &str = "unknown_enum_value";
    /// A value of the right type that the contract does not allow (a negative count, a bad
    /// timestamp …).
    pub const INVALID_VALUE: &str = "invalid_value";
    /// Money that is not a decimal number (`"1.2.3"`, `"abc"`).
    pub const NOT_A_DECIMAL: &str = "not_a_decimal";
    /// Money with more than 12 fractional digits: it is never rounded.
    pub const TOO_MANY_FRACTIONAL_DIGITS: &str = "too_many_fractional_digits";
    /// Negative money.
    pub const NEGATIVE_AMOUNT: &str = "negative_amount";
    /// Money outside `decimal(38, 12)`.
    pub const DECIMAL_OUT_OF_RANGE: &str = "decimal_out_of_range";
    /// An integer too large (or negative) for its field's type, e.g. 23 digits for a token count.
    pub const OUT_OF_RANGE: &str = "out_of_range";
}

/// Parses one event; on failure, a violation with the JSON path of the offending field.
fn parse_json_event(text: &str) -> ParsedEvent {
    // serde would also read a struct from an array, by position: an event is an object, by name.
    if !text.trim_start().starts_with('{') {
        let kind = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            kind::INVALID_TYPE
        } else {
            kind::MALFORMED_JSON
        };
        return ParsedEvent {
            event_id: None,
            event: Err(vec![Violation::new(
                "(event)",
                kind,
                "an event must be a JSON object",
            )]),
        };
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = serde_path_to_error::deserialize::<_, UsageEvent>(&mut deserializer);
    let violation = match parsed {
        Ok(event) => match deserializer.end() {
            Ok(()) => {
                return ParsedEvent {
                    event_id: Some(event.event_id.clone()),
                    event: Ok(event),
                }
            }
            Err(error) => Violation::new("(event)", kind::MALFORMED_JSON, error.to_string()),
        },
        Err(error) => json_violation(&error, text),
    };
    ParsedEvent {
        event_id: event_id_of(text),
        event: Err(vec![violation]),
    }
}

/// The `event_id` of an event that failed to parse, if it has a string one.
fn event_id_of(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct EventId {
        event_id: Option<String>,
    }
    serde_json::from_str::<EventId>(text).ok()?.event_id
}

fn json_violation(error: &serde_path_to_error::Error<serde_json::Error>, text: &str) -> Violation {
    let inner = error.inner();
    let full = inner.to_string();
    if inner.is_syntax() || inner.is_eof() {
        if let Some(message) = json_diagnosis::lone_surrogate(text) {
            let path = path_text(error.path());
            let field = if path.is_empty() { "(event)" } else { &path };
            return Violation::new(field, kind::MALFORMED_JSON, message);
        }
        return Violation::new("(event)", kind::MALFORMED_JSON, full);
    }
    // The path locates the error; serde_json's line and column (inside one event) add nothing.
    let suffix = format!(" at line {} column {}", inner.line(), inner.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    let path = path_text(error.path());
    // serde reports a missing field at its parent and an unknown one at the key; name the field.
    if let Some(field) = between(&message, "missing field `", "`") {
        return Violation::new(join(&path, field), kind::MISSING, message.clone());
    }
    if let Some(field) = between(&message, "unknown field `", "`") {
        let path = if path.ends_with(field) {
            path.clone()
        } else {
            join(&path, field)
        };
        return Violation::new(path, kind::UNKNOWN_FIELD, message.clone());
    }
    if let Some(message) = json_diagnosis::integer_out_of_range(text, error.path(), &message) {
        return Violation::new(path, kind::OUT_OF_RANGE, message);
    }
    let kind = if message.starts_with("invalid type") {
        kind::INVALID_TYPE
    } else if message.starts_with("unknown variant") || message.contains("; allowed values: ") {
        kind::UNKNOWN_ENUM_VALUE
    } else if let Some(kind) = schemas::money::MoneyError::kind_in_message(&message) {
        kind
    } else {
        kind::INVALID_VALUE
    };
    let field = if path.is_empty() {
        "(event)".to_owned()
    } else {
        path
    };
    Violation::new(field, kind, message)
}

/// `labels.feature`, `input_tokens`; empty for the event itself (reported as `(event)`).
fn path_text(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." {
        String::new()
    } else {
        text
    }
}

fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(start)?;
    rest.split_once(end).map(|(inside, _)| inside)
}

fn parse_avro(body: &[u8], max_events: usize) -> Result<Vec<ParsedEvent>, SplitError> {
    let records = split_avro(body)?;
    check_count(records.len(), max_events)?;
    Ok(records
        .into_iter()
        .map(|record| match schemas::decode::<UsageEvent>(record) {
            Ok(event) => ParsedEvent {
                event_id: Some(event.event_id.clone()),
                event: Ok(event),
            },
            Err(error) => ParsedEvent {
                event_id: None,
                event: Err(vec![avro_violation(&error)]),
            },
        })
        .collect())
}

/// The records of an Avro body: the body itself if it starts like a single-object record, else its
/// length-prefixed frames.
fn split_avro(body: &[u8]) -> Result<Vec<&[u8]>, SplitError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if body[0] == schemas::codec::MAGIC[0] {
        return Ok(vec![body]);
    }
    let mut records = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some((prefix, after)) = rest.split_first_chunk::<4>() else {
            return Err(SplitError::Malformed(format!(
                "frame {} at byte {}: {} bytes left, a length prefix is 4",
                records.len(),
                body.len() - rest.len(),
                rest.len()
            )));
        };
        let length = u32::from_be_bytes(*prefix) as usize;
        if length > after.len() {
            return Err(SplitError::Malformed(format!(
                "frame {} at byte {} declares {length} bytes but {} remain (a batch is records each \
                 preceded by a 4-byte big-endian length; a single record starts with c3 01)",
                records.len(),
                body.len() - rest.len(),
                after.len()
            )));
        }
        let (record, after_record) = after.split_at(length);
        records.push(record);
        rest = after_record;
    }
    Ok(records)
}

fn avro_violation(error: &DecodeError) -> Violation {
    let field = match error {
        DecodeError::Truncated { field }
        | DecodeError::Malformed { field, .. }
        | DecodeError::DecimalOutOfRange { field, .. }
        | DecodeError::InvalidValue { field, .. } => *field,
        _ => "(header)",
    };
    Violation::new(field, error.kind(), error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"event_id":"e-1","occurred_at":"2026-01-01T00:00:00Z","producer":"gw",
        "request_id":"r","action_id":"a","attempt":1,"api_key_id":"k","team":"t","workflow":"w",
        "environment":"prod","provider":"openai","model":"gpt-4o","endpoint":"chat_completions",
        "modality":"text","input_tokens":10,"status":"ok","reported_cost_usd":0.5,
        "labels":{"feature":"search"}}"#;

    fn with(field: &str, value: &str) -> String {
        let mut event: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(EVENT).unwrap();
        event.insert(field.to_owned(), serde_json::from_str(value).unwrap());
        serde_json::to_string(&event).unwrap()
    }

    fn without(field: &str) -> String {
        let mut event: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(EVENT).unwrap();
        event.remove(field);
        serde_json::to_string(&event).unwrap()
    }

    fn single_error(text: &str) -> Violation {
        let parsed = parse_json_event(text);
        let mut errors = parsed.event.expect_err(text);
        assert_eq!(errors.len(), 1);
        errors.remove(0)
    }

    #[test]
    fn parses_money_exactly_from_numbers_and_strings() {
        let event = parse_json_event(EVENT).event.unwrap();
        assert_eq!(event.reported_cost_usd.unwrap().to_string(), "0.5");
        let text = with("estimated_cost_usd", r#""0.000000000001""#);
        let event = parse_json_event(&text).event.unwrap();
        assert_eq!(
            event.estimated_cost_usd.unwrap().to_string(),
            "0.000000000001"
        );
    }

    #[test]
    fn names_the_field_and_kind_of_each_error() {
        let cases = [
            (
                with("input_tokens", r#""ten""#),
                "input_tokens",
                kind::INVALID_TYPE,
            ),
            (
                with("input_tokens", "-5"),
                "input_tokens",
                kind::INVALID_VALUE,
            ),
            (
                with("modality", r#""hologram""#),
                "modality",
                kind::UNKNOWN_ENUM_VALUE,
            ),
            (
                with("reported_cost_usd", r#""1.2.3""#),
                "reported_cost_usd",
                kind::NOT_A_DECIMAL,
            ),
            (
                with("reported_cost_usd", r#""abc""#),
                "reported_cost_usd",
                kind::NOT_A_DECIMAL,
            ),
            (
                with("reported_cost_usd", "0.0000000000001"),
                "reported_cost_usd",
                kind::TOO_MANY_FRACTIONAL_DIGITS,
            ),
            (
                with("reported_cost_usd", r#""-1""#),
                "reported_cost_usd",
                kind::NEGATIVE_AMOUNT,
            ),
            (
                with("labels", r#"{"feature": 3}"#),
                "labels.feature",
                kind::INVALID_TYPE,
            ),
            (with("colour", r#""red""#), "colour", kind::UNKNOWN_FIELD),
            (without("team"), "team", kind::MISSING),
            (
                with("occurred_at", r#""yesterday""#),
                "occurred_at",
                kind::INVALID_VALUE,
            ),
            ("[1, 2]".to_owned(), "(event)", kind::INVALID_TYPE),
            ("42".to_owned(), "(event)", kind::INVALID_TYPE),
            ("{oops".to_owned(), "(event)", kind::MALFORMED_JSON),
            (
                r#"{"event_id": "#.to_owned(),
                "(event)",
                kind::MALFORMED_JSON,
            ),
        ];
        for (text, field, kind) in cases {
            let error = single_error(&text);
            assert_eq!(
                (error.field.as_str(), error.kind.as_str()),
                (field, kind),
                "{error:?}"
            );
        }
    }

    #[test]
    fn keeps_the_event_id_of_a_rejected_event() {
        let parsed = parse_json_event(&with("input_tokens", r#""ten""#));
        assert_eq!(parsed.event_id.as_deref(), Some("e-1"));
    }

    #[test]
    fn splits_json_ndjson_and_avro_bodies() {
        let array = format!("[{EVENT}, {{\"event_id\": 7}}]");
        let events = parse_body(Format::Json, array.as_bytes(), 10).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events[0].event.is_ok() && events[1].event.is_err());

        let ndjson = format!("{}\n\n{}\r\n", with("attempt", "1"), "{oops");
        let events = parse_body(Format::NdJson, ndjson.as_bytes(), 10).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].event.as_ref().unwrap_err()[0].kind,
            kind::MALFORMED_JSON
        );

        let event = parse_json_event(EVENT).event.unwrap();
        let record = schemas::encode(&event).unwrap();
        let single = parse_body(Format::Avro, &record, 10).unwrap();
        assert_eq!(single[0].event.as_ref().unwrap(), &event);
        let mut framed = Vec::new();
        for record in [&record[..], &record[..5]] {
            framed.extend_from_slice(&(record.len() as u32).to_be_bytes());
            framed.extend_from_slice(record);
        }
        let batch = parse_body(Format::Avro, &framed, 10).unwrap();
        assert_eq!(batch[0].event.as_ref().unwrap(), &event);
        assert_eq!(batch[1].event.as_ref().unwrap_err()[0].kind, "too_short");
    }

    #[test]
    fn refuses_bodies_that_cannot_be_split() {
        assert_eq!(
            parse_body(Format::Json, b"  ", 10).unwrap_err(),
            SplitError::Empty
        );
        assert_eq!(
            parse_body(Format::Json, b"[]", 10).unwrap_err(),
            SplitError::Empty
        );
        assert!(matches!(
            parse_body(Format::Json, b"\"x\"", 10),
            Err(SplitError::Malformed(_))
        ));
        assert!(matches!(
            parse_body(Format::Avro, &[0, 0, 1, 0, 1], 10),
            Err(SplitError::Malformed(_))
        ));
        let array = format!("[{EVENT},{EVENT},{EVENT}]");
        assert_eq!(
            parse_body(Format::Json, array.as_bytes(), 2).unwrap_err(),
            SplitError::TooManyEvents { count: 3 }
        );
    }

    #[test]
    fn reads_the_format_from_the_content_type() {
        let mut headers = HeaderMap::new();
        assert!(Format::from_headers(&headers).is_err());
        for (value, format) in [
            ("application/json; charset=utf-8", Format::Json),
            ("Application/X-NDJSON", Format::NdJson),
            ("avro/binary", Format::Avro),
            ("application/vnd.apache.avro", Format::Avro),
        ] {
            headers.insert(CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(Format::from_headers(&headers), Ok(format), "{value}");
        }
        headers.insert(CONTENT_TYPE, "text/csv".parse().unwrap());
        assert!(Format::from_headers(&headers).is_err());
    }
}
