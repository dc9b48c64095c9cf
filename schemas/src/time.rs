//! Timestamps: `chrono::DateTime<Utc>` in Rust, Avro `timestamp-micros` on the wire.
//!
//! The valid range is that of ClickHouse `DateTime64(6)`, where every timestamp ends up:
//! 1900-01-01T00:00:00Z to 2299-12-31T23:59:59.999999Z. Outside it, encoding and decoding fail
//! instead of letting the database clamp the value. Sub-microsecond precision is truncated toward
//! the earlier microsecond on encode (the wire type has microseconds).

use chrono::{DateTime, Utc};

/// 1900-01-01T00:00:00Z in microseconds since the epoch.
pub const MIN_MICROS: i64 = -2_208_988_800_000_000;
/// 2299-12-31T23:59:59.999999Z in microseconds since the epoch.
pub const MAX_MICROS: i64 = 10_413_791_999_999_999;

/// A timestamp outside the valid range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {value} is outside 1900-01-01T00:00:00Z..=2299-12-31T23:59:59.999999Z")]
pub struct TimestampOutOfRange {
    /// The rejected value (RFC 3339, or microseconds when not representable).
    pub value: String,
}

/// Microseconds since the epoch, truncated toward the earlier microsecond.
pub fn to_micros(timestamp: &DateTime<Utc>) -> Result<i64, TimestampOutOfRange> {
    let micros = timestamp.timestamp_micros();
    if (MIN_MICROS..=MAX_MICROS).contains(&micros) {
        Ok(micros)
    } else {
        Err(TimestampOutOfRange {
            value: timestamp.to_rfc3339(),
        })
    }
}

/// The timestamp of a wire value.
pub fn from_micros(micros: i64) -> Result<DateTime<Utc>, TimestampOutOfRange> {
    if (MIN_MICROS..=MAX_MICROS).contains(&micros) {
        if let Some(timestamp) = DateTime::from_timestamp_micros(micros) {
            return Ok(timestamp);
        }
    }
    Err(TimestampOutOfRange {
        value: format!("{micros} µs since the epoch"),
    })
}

/// JSON (and any serde format) for timestamps: RFC 3339 text, read exactly as chrono reads it, with
/// an error that says what is missing when it is not (chrono only says "premature end of input").
///
/// Use with `#[serde(deserialize_with = "schemas::time::json::deserialize")]`; serialization stays
/// chrono's.
pub mod json {
    use std::fmt;

    use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Utc};
    use serde::de::{self, Visitor};
    use serde::Deserializer;

    /// Deserializes an RFC 3339 timestamp with its UTC offset (`Z`, `+02:00`).
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        deserializer.deserialize_str(TimestampVisitor)
    }

    /// What is wrong with `text`, which chrono did not read as an RFC 3339 timestamp.
    pub fn explain(text: &str, chrono_error: &chrono::ParseError) -> String {
        const FORMATS: [&str; 4] = [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M",
        ];
        let trimmed = text.trim();
        let without_offset = FORMATS
            .iter()
            .any(|format| NaiveDateTime::parse_from_str(trimmed, format).is_ok());
        if without_offset {
            return format!(
                "timestamp {text:?} has no UTC offset; an offset is required \
                 (RFC 3339, e.g. \"{trimmed}Z\" for UTC or \"{trimmed}+02:00\")"
            );
        }
        if NaiveDate::parse_from_str(trimmed, "%Y-%m-%d").is_ok() {
            return format!(
                "timestamp {text:?} is a date without a time and a UTC offset; both are required \
                 (RFC 3339, e.g. \"{trimmed}T00:00:00Z\")"
            );
        }
        format!(
            "{text:?} is not an RFC 3339 timestamp with a UTC offset \
             (e.g. \"2026-01-31T12:00:00Z\"): {chrono_error}"
        )
    }

    struct TimestampVisitor;

    impl Visitor<'_> for TimestampVisitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("an RFC 3339 timestamp with a UTC offset")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
            // chrono's own serde reads `DateTime<FixedOffset>` with `FromStr`: the same here.
            text.parse::<DateTime<FixedOffset>>()
                .map(|timestamp| timestamp.with_timezone(&Utc))
                .map_err(|error| E::custom(explain(text, &error)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json(text: &str) -> Result<DateTime<Utc>, String> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        json::deserialize(&mut deserializer).map_err(|error| error.to_string())
    }

    #[test]
    fn json_timestamps_read_as_chrono_reads_them_and_say_what_is_missing() {
        for text in [
            "\"2026-01-31T12:00:00Z\"",
            "\"2026-01-31T14:00:00.5+02:00\"",
            "\"2026-01-31 12:00:00z\"",
        ] {
            let chrono: DateTime<Utc> = serde_json::from_str(text).expect(text);
            assert_eq!(from_json(text), Ok(chrono));
        }
        assert_eq!(
            from_json("\"2026-01-31T12:00:00\""),
            Err("timestamp \"2026-01-31T12:00:00\" has no UTC offset; an offset is required \
                 (RFC 3339, e.g. \"2026-01-31T12:00:00Z\" for UTC or \"2026-01-31T12:00:00+02:00\") \
                 at line 1 column 21"
                .to_owned())
        );
        assert!(from_json("\"2026-01-31\"")
            .unwrap_err()
            .contains("a date without a time and a UTC offset"));
        assert!(from_json("\"yesterday\"")
            .unwrap_err()
            .starts_with("\"yesterday\" is not an RFC 3339 timestamp with a UTC offset"));
    }

    #[test]
    fn bounds_are_the_documented_instants() {
        let min = from_micros(MIN_MICROS).expect("in range");
        let max = from_micros(MAX_MICROS).expect("in range");
        assert_eq!(min.to_rfc3339(), "1900-01-01T00:00:00+00:00");
        assert_eq!(max.to_rfc3339(), "2299-12-31T23:59:59.999999+00:00");
        assert!(from_micros(MIN_MICROS - 1).is_err());
        assert!(from_micros(MAX_MICROS + 1).is_err());
        assert!(from_micros(i64::MIN).is_err());
    }

    #[test]
    fn sub_microseconds_truncate_toward_the_past() {
        let before_epoch = DateTime::from_timestamp(-1, 999_999_999).expect("valid");
        assert_eq!(to_micros(&before_epoch), Ok(-1));
        let after_epoch = DateTime::from_timestamp(0, 1_999).expect("valid");
        assert_eq!(to_micros(&after_epoch), Ok(1));
    }
}
