//! Exact parsing of JSON number text (`3e-06`, `1.25e-07`, `0.00000125`) into [`Decimal`].
//!
//! The catalog's numbers never pass through `f64`: with serde_json's `arbitrary_precision` a
//! [`serde_json::Number`] keeps the text it was read from, and this module turns that text into a
//! `Decimal` digit by digit. A text that a `Decimal` cannot hold exactly (more than 28 significant
//! digits, or a scale above 28, or a magnitude above 28 integer digits) is an error, never rounded.

use rust_decimal::Decimal;

/// Most significant digits (and most fractional digits) a [`Decimal`] holds exactly.
const MAX_DIGITS: usize = 28;

/// Why a number text is not an exact, non-negative [`Decimal`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecimalTextError {
    /// The text is not a JSON number (`NaN`, `inf`, `1.2.3`, an empty string, ...).
    #[error("not a decimal number")]
    Malformed,
    /// Prices and token limits are never negative.
    #[error("negative value")]
    Negative,
    /// More significant digits than a `Decimal` holds (28).
    #[error("{digits} significant digits; at most 28 are exact")]
    TooManySignificantDigits {
        /// How many significant digits the text has.
        digits: usize,
    },
    /// A value smaller than 1e-28 cannot be held without rounding.
    #[error("needs {scale} fractional digits; at most 28 are exact")]
    ScaleTooLarge {
        /// The number of fractional digits the value needs.
        scale: i64,
    },
    /// A value of 1e28 or more does not fit.
    #[error("value too large for an exact decimal")]
    TooLarge,
}

/// Parses the text of a JSON number exactly, rejecting negative values (a negative zero is zero).
pub fn parse_non_negative_decimal(text: &str) -> Result<Decimal, DecimalTextError> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa_text, exponent_text) = match unsigned.find(['e', 'E']) {
        Some(position) => (&unsigned[..position], Some(&unsigned[position + 1..])),
        None => (unsigned, None),
    };
    let (integer_digits, fraction_digits) = match mantissa_text.split_once('.') {
        Some((integer, fraction)) => (integer, fraction),
        None => (mantissa_text, ""),
    };
    let all_ascii_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if integer_digits.is_empty()
        || !all_ascii_digits(integer_digits)
        || !all_ascii_digits(fraction_digits)
        || (mantissa_text.contains('.') && fraction_digits.is_empty())
    {
        return Err(DecimalTextError::Malformed);
    }
    let exponent = match exponent_text {
        None => 0_i64,
        Some(exponent_text) => parse_exponent(exponent_text)?,
    };

    let digits: String = format!("{integer_digits}{fraction_digits}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(Decimal::ZERO);
    }
    if negative {
        return Err(DecimalTextError::Negative);
    }
    // value = digits × 10^(exponent − fraction length); trailing zeros only move the exponent.
    let trimmed = digits.trim_end_matches('0');
    let mut power_of_ten = exponent
        .saturating_sub(fraction_digits.len() as i64)
        .saturating_add((digits.len() - trimmed.len()) as i64);
    if trimmed.len() > MAX_DIGITS {
        return Err(DecimalTextError::TooManySignificantDigits {
            digits: trimmed.len(),
        });
    }
    let mut mantissa: i128 = trimmed.parse().map_err(|_| DecimalTextError::Malformed)?;
    if power_of_ten >= 0 {
        if trimmed.len() as i64 + power_of_ten > MAX_DIGITS as i64 {
            return Err(DecimalTextError::TooLarge);
        }
        while power_of_ten > 0 {
            mantissa *= 10;
            power_of_ten -= 1;
        }
        return Decimal::try_from_i128_with_scale(mantissa, 0)
            .map_err(|_| DecimalTextError::TooLarge);
    }
    let scale = -power_of_ten;
    if scale > MAX_DIGITS as i64 {
        return Err(DecimalTextError::ScaleTooLarge { scale });
    }
    Decimal::try_from_i128_with_scale(mantissa, scale as u32)
        .map_err(|_| DecimalTextError::TooLarge)
}

fn parse_exponent(text: &str) -> Result<i64, DecimalTextError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(DecimalTextError::Malformed);
    }
    // Exponents beyond ±10^9 are out of range anyway; saturate instead of overflowing.
    let magnitude = digits.trim_start_matches('0');
    let magnitude: i64 = if magnitude.len() > 9 {
        1_000_000_000
    } else if magnitude.is_empty() {
        0
    } else {
        magnitude.parse().map_err(|_| DecimalTextError::Malformed)?
    };
    Ok(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn exact(text: &str) -> Decimal {
        parse_non_negative_decimal(text).unwrap()
    }

    #[test]
    fn scientific_and_plain_texts_are_exact() {
        assert_eq!(exact("3e-06"), Decimal::from_str("0.000003").unwrap());
        assert_eq!(exact("1.25e-07"), Decimal::from_str("0.000000125").unwrap());
        assert_eq!(
            exact("0.00000125"),
            Decimal::from_str("0.00000125").unwrap()
        );
        assert_eq!(
            exact("1.59263611e-07"),
            Decimal::from_str("0.000000159263611").unwrap()
        );
        assert_eq!(exact("2.5E-6"), Decimal::from_str("0.0000025").unwrap());
        assert_eq!(exact("1000.0"), Decimal::from(1000));
        assert_eq!(exact("1e3"), Decimal::from(1000));
        assert_eq!(exact("128000"), Decimal::from(128000));
        assert_eq!(exact("0"), Decimal::ZERO);
        assert_eq!(exact("0.0"), Decimal::ZERO);
        assert_eq!(exact("-0.0"), Decimal::ZERO);
        assert_eq!(exact("0e-99999"), Decimal::ZERO);
        // 28 significant digits are still exact.
        assert_eq!(
            exact("0.1234567890123456789012345678"),
            Decimal::from_str("0.1234567890123456789012345678").unwrap()
        );
        // Scale of the result follows the text: 3e-06 has 6 fractional digits.
        assert_eq!(exact("3e-06").scale(), 6);
    }

    #[test]
    fn inexact_or_invalid_texts_are_errors() {
        assert_eq!(
            parse_non_negative_decimal("-3e-06"),
            Err(DecimalTextError::Negative)
        );
        assert_eq!(
            parse_non_negative_decimal("NaN"),
            Err(DecimalTextError::Malformed)
        );
        assert_eq!(
            parse_non_negative_decimal("inf"),
            Err(DecimalTextError::Malformed)
        );
        assert_eq!(
            parse_non_negative_decimal(""),
            Err(DecimalTextError::Malformed)
        );
        assert_eq!(
            parse_non_negative_decimal("1."),
            Err(DecimalTextError::Malformed)
        );
        assert_eq!(
            parse_non_negative_decimal(".5"),
            Err(DecimalTextError::Malformed)
        );
        assert_eq!(
            parse_non_negative_decimal("1e"),
            Err(DecimalTextError::Malformed)
        );
        assert_eq!(
            parse_non_negative_decimal("0.12345678901234567890123456789"),
            Err(DecimalTextError::TooManySignificantDigits { digits: 29 })
        );
        assert_eq!(
            parse_non_negative_decimal("1e-29"),
            Err(DecimalTextError::ScaleTooLarge { scale: 29 })
        );
        assert_eq!(
            parse_non_negative_decimal("1e28"),
            Err(DecimalTextError::TooLarge)
        );
        assert_eq!(
            parse_non_negative_decimal("1e99999999999999999999"),
            Err(DecimalTextError::TooLarge)
        );
    }

    #[test]
    fn serde_json_numbers_keep_their_text() {
        let value: serde_json::Value =
            serde_json::from_str(r#"{"a": 3e-06, "b": 1.25e-07, "c": 0.1}"#).unwrap();
        assert_eq!(value["a"].as_number().unwrap().to_string(), "3e-06");
        assert_eq!(value["b"].as_number().unwrap().to_string(), "1.25e-07");
        assert_eq!(
            exact(&value["c"].as_number().unwrap().to_string()),
            Decimal::new(1, 1)
        );
    }
}
