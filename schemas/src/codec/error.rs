//! Typed codec errors. Every variant has a stable machine-readable [`DecodeError::kind`] /
//! [`EncodeError::kind`] (used e.g. as `DeadLetter::error_kind` and as a metric label).
//!
//! All of them are data errors: retrying the same bytes or the same value gives the same error,
//! so a consumer dead-letters the record and moves on, and a producer fixes its input.

use crate::money::MoneyError;
use crate::time::TimestampOutOfRange;

/// Why bytes could not be decoded into a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the 10-byte single-object header.
    #[error("record is {len} bytes, shorter than the 10-byte single-object header")]
    TooShort {
        /// Length of the input.
        len: usize,
    },
    /// The first two bytes are not `C3 01`: not Avro single-object encoding.
    #[error("bad magic {:02x} {:02x}: not Avro single-object encoding (expected c3 01)", found[0], found[1])]
    BadMagic {
        /// The two bytes found.
        found: [u8; 2],
    },
    /// No known schema of any record has this fingerprint (a newer writer, or garbage).
    #[error("unknown writer schema fingerprint {fingerprint} while decoding {expected}")]
    UnknownFingerprint {
        /// The record type that was asked for.
        expected: &'static str,
        /// The fingerprint found, as 16 lowercase hex digits in wire order.
        fingerprint: String,
    },
    /// The fingerprint is a known schema of another record type.
    #[error("expected a {expected} record, found a {found} (fingerprint {fingerprint})")]
    WrongRecordType {
        /// The record type that was asked for.
        expected: &'static str,
        /// The record type whose schema has this fingerprint.
        found: &'static str,
        /// The fingerprint found, as 16 lowercase hex digits in wire order.
        fingerprint: String,
    },
    /// The datum ended in the middle of a field.
    #[error("datum truncated in field {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes that are not valid Avro for the schema (bad varint, bad UTF-8, negative length …).
    #[error("malformed datum in field {field}: {reason}")]
    Malformed {
        /// The field being read.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A decimal that `rust_decimal` cannot hold exactly, or beyond `decimal(38, 12)`.
    #[error("decimal in field {field} is out of range: {reason}")]
    DecimalOutOfRange {
        /// The field being read.
        field: &'static str,
        /// The value and why it does not fit.
        reason: String,
    },
    /// Well-formed Avro whose value breaks the contract (negative amount, enum or union index out
    /// of range, timestamp out of range, trailing bytes, a violated invariant …).
    #[error("invalid value in field {field}: {reason}")]
    InvalidValue {
        /// The field being read (or `(end of datum)` for trailing bytes).
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl DecodeError {
    /// Stable machine-readable kind: `too_short`, `bad_magic`, `unknown_fingerprint`,
    /// `wrong_record_type`, `truncated`, `malformed`, `decimal_out_of_range`, `invalid_value`.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooShort { .. } => "too_short",
            DecodeError::BadMagic { .. } => "bad_magic",
            DecodeError::UnknownFingerprint { .. } => "unknown_fingerprint",
            DecodeError::WrongRecordType { .. } => "wrong_record_type",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::DecimalOutOfRange { .. } => "decimal_out_of_range",
            DecodeError::InvalidValue { .. } => "invalid_value",
        }
    }

    pub(crate) fn malformed(field: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::Malformed {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::InvalidValue {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn from_money(field: &'static str, error: MoneyError) -> Self {
        match error {
            MoneyError::OutOfRange { .. } => DecodeError::DecimalOutOfRange {
                field,
                reason: error.to_string(),
            },
            _ => DecodeError::invalid(field, error.to_string()),
        }
    }

    pub(crate) fn from_timestamp(field: &'static str, error: TimestampOutOfRange) -> Self {
        DecodeError::invalid(field, error.to_string())
    }
}

/// Why a record could not be encoded. The value is refused rather than altered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// An amount with more than 12 fractional digits (money is never rounded).
    #[error("field {field}: {value} has more than 12 fractional digits (money is never rounded)")]
    TooManyFractionalDigits {
        /// The field being written.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A negative amount (costs, limits and usage are >= 0).
    #[error("field {field}: {value} is negative; amounts must be >= 0")]
    NegativeAmount {
        /// The field being written.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// An amount outside `decimal(38, 12)` (|value| >= 10^26).
    #[error("field {field}: {value} is out of range for decimal(38, 12)")]
    DecimalOutOfRange {
        /// The field being written.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A timestamp outside 1900-01-01..2300-01-01 (see [`crate::time`]).
    #[error("field {field}: {source}")]
    TimestampOutOfRange {
        /// The field being written.
        field: &'static str,
        /// The rejected value.
        source: TimestampOutOfRange,
    },
    /// A value that breaks the contract (a count above `i64::MAX`, attempt 0, an invariant …).
    #[error("field {field}: {reason}")]
    InvalidValue {
        /// The field being written.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl EncodeError {
    /// Stable machine-readable kind: `too_many_fractional_digits`, `negative_amount`,
    /// `decimal_out_of_range`, `timestamp_out_of_range`, `invalid_value`.
    pub fn kind(&self) -> &'static str {
        match self {
            EncodeError::TooManyFractionalDigits { .. } => "too_many_fractional_digits",
            EncodeError::NegativeAmount { .. } => "negative_amount",
            EncodeError::DecimalOutOfRange { .. } => "decimal_out_of_range",
            EncodeError::TimestampOutOfRange { .. } => "timestamp_out_of_range",
            EncodeError::InvalidValue { .. } => "invalid_value",
        }
    }

    pub(crate) fn from_money(field: &'static str, error: MoneyError) -> Self {
        match error {
            MoneyError::TooManyFractionalDigits { value } => {
                EncodeError::TooManyFractionalDigits { field, value }
            }
            MoneyError::Negative { value } => EncodeError::NegativeAmount { field, value },
            MoneyError::OutOfRange { value } | MoneyError::NotANumber { value } => {
                EncodeError::DecimalOutOfRange { field, value }
            }
        }
    }
}

/// A record-level rule broken by a value (checked on encode and on decode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantViolation {
    /// The field that breaks the rule.
    pub field: &'static str,
    /// The rule, in words.
    pub reason: String,
}

impl From<InvariantViolation> for EncodeError {
    fn from(violation: InvariantViolation) -> Self {
        EncodeError::InvalidValue {
            field: violation.field,
            reason: violation.reason,
        }
    }
}

impl From<InvariantViolation> for DecodeError {
    fn from(violation: InvariantViolation) -> Self {
        DecodeError::InvalidValue {
            field: violation.field,
            reason: violation.reason,
        }
    }
}
