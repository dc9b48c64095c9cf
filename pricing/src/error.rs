//! Typed errors of the pricing crate.
//!
//! [`CatalogError`] is the only hard failure (the catalog file cannot be read or is not a JSON
//! object). Problems inside rows never fail a load: they are collected in the
//! [`LoadReport`](crate::LoadReport) as [`FieldError`](crate::FieldError)s with a
//! [`FieldErrorKind`]. Usage problems are [`UsageLimitError`]s.

use std::path::PathBuf;

use crate::decimal_text::DecimalTextError;

/// Why a catalog could not be loaded at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The catalog file could not be read.
    #[error("reading price catalog {path}: {source}")]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid JSON.
    #[error("price catalog is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON document is not an object keyed by model name.
    #[error("price catalog must be a JSON object keyed by model name")]
    NotAnObject,
}

impl CatalogError {
    /// Whether trying again may help: only IO errors can be transient; a malformed catalog stays
    /// malformed until someone fixes the file.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CatalogError::Io { .. })
    }
}

/// Why one field of one catalog row was rejected (the rest of the row still loads, and pricing
/// refuses to use the rejected field instead of treating it as missing or zero).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldErrorKind {
    /// A price or token limit whose text is not an exact, non-negative decimal.
    #[error("invalid decimal: {0}")]
    InvalidDecimal(#[from] DecimalTextError),
    /// A price or token limit given as a string, boolean or other non-number.
    #[error("expected a JSON number")]
    NotANumber,
    /// `mode`, `litellm_provider`, `alias_of` or `deprecation_date` that is not a string.
    #[error("expected a JSON string")]
    NotAString,
    /// A `deprecation_date` that is not `YYYY-MM-DD`.
    #[error("expected a date as YYYY-MM-DD")]
    InvalidDate,
    /// A token limit that is not a whole number fitting in an i64.
    #[error("expected a whole number of tokens")]
    InvalidTokenCount,
    /// An `alias_of` naming a row that is not in the catalog.
    #[error("alias target is not in the catalog")]
    AliasTargetMissing,
}

/// Why a usage record is impossible or exceeds the model's limits
/// ([`Catalog::validate_usage`](crate::Catalog::validate_usage)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageLimitError {
    /// A count that must be non-negative is negative.
    #[error("{field} is negative ({value})")]
    NegativeCount {
        /// Name of the [`PricingInput`](crate::PricingInput) field.
        field: &'static str,
        /// The value given.
        value: i64,
    },
    /// `cached_input_tokens` is a part of `input_tokens`, so it cannot be larger.
    #[error("cached_input_tokens ({cached_input_tokens}) exceeds input_tokens ({input_tokens})")]
    CachedAboveInput {
        /// The cached part given.
        cached_input_tokens: i64,
        /// The total input given.
        input_tokens: i64,
    },
    /// The prompt (`input_tokens + cache_write_tokens`) is larger than the model's context.
    #[error(
        "{model}: prompt of {prompt_tokens} tokens exceeds max_input_tokens {max_input_tokens}"
    )]
    InputAboveMax {
        /// The catalog row checked.
        model: String,
        /// `input_tokens + cache_write_tokens`.
        prompt_tokens: i64,
        /// The row's `max_input_tokens`.
        max_input_tokens: i64,
    },
    /// More output tokens than the model can produce.
    #[error("{model}: {output_tokens} output tokens exceed max_output_tokens {max_output_tokens}")]
    OutputAboveMax {
        /// The catalog row checked.
        model: String,
        /// The output tokens given.
        output_tokens: i64,
        /// The row's `max_output_tokens`.
        max_output_tokens: i64,
    },
}
