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

#[cfg(test)]
mod tests {
    use super::*;

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
