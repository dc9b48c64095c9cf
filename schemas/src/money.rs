//! Money: the one decimal type of the project, `decimal(38, 12)`.
//!
//! Every amount (costs, limits, observed usage) is a [`rust_decimal::Decimal`] on the Rust side
//! and Avro `bytes` with logical type `decimal`, precision 38, scale 12 on the wire (the same as
//! ClickHouse `Decimal(38, 12)`). Conversions are exact or fail: a value with more than
//! [`SCALE`] fractional digits is rejected, never rounded, and a wire value `rust_decimal` cannot
//! hold is an error, never a wrong number. All amounts in the current records are non-negative
//! ([`check_amount`]); a signed quantity would be a new field with its own rule.
//!
//! Range: the wire holds `|value| < 10^26`; `rust_decimal` holds 96-bit mantissas, so every
//! `Decimal` with at most 12 fractional digits and `|value| < 10^26` round trips, and a wire value
//! with a larger mantissa decodes only if its trailing zeros let it fit.
//!
//! JSON ([`json`]): accepted as a string (`"0.000000000001"`) or an exact JSON number (`1e-12`,
//! `0.1`; the workspace enables serde_json's `arbitrary_precision`, so numbers keep their text and
//! are parsed as decimals, never computed through `f64`); serialized as a string.

use rust_decimal::Decimal;

/// Fractional digits of every amount on the wire (fixed for the whole project).
pub const SCALE: u32 = 12;
/// Total digits of every amount on the wire.
pub const PRECISION: u32 = 38;

const TEN_POW_PRECISION: i128 = 10_i128.pow(PRECISION);

/// Why an amount cannot be represented or is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// More than 12 fractional digits; rounding would change a bill, so it is refused.
    #[error("{value} has more than {SCALE} fractional digits (money is never rounded)")]
    TooManyFractionalDigits {
        /// The rejected value.
        value: String,
    },
    /// A negative amount where only non-negative ones make sense (costs, limits, usage).
    #[error("{value} is negative; amounts must be >= 0")]
    Negative {
        /// The rejected value.
        value: String,
    },
    /// Outside `decimal(38, 12)` or outside what `rust_decimal` can hold.
    #[error("{value} is out of range for decimal({PRECISION}, {SCALE})")]
    OutOfRange {
        /// The rejected value (for wire values: the unscaled integer and the scale).
        value: String,
    },
    /// Text that is not a decimal number.
    #[error("{value:?} is not a decimal number")]
    NotANumber {
        /// The rejected text.
        value: String,
    },
}

impl MoneyError {
    /// Stable machine-readable kind, as APIs report it.
    pub fn kind(&self) -> &'static str {
        match self {
            MoneyError::TooManyFractionalDigits { .. } => "too_many_fractional_digits",
            MoneyError::Negative { .. } => "negative_amount",
            MoneyError::OutOfRange { .. } => "decimal_out_of_range",
            MoneyError::NotANumber { .. } => "not_a_decimal",
        }
    }

    /// The kind of a [`MoneyError`] whose message reached the caller only as text (serde turns
    /// custom errors into strings, e.g. inside a `serde_json` error). Kept next to the messages it
    /// recognises; a test checks every variant round-trips.
    pub fn kind_in_message(message: &str) -> Option<&'static str> {
        const FRAGMENTS: [(&str, &str); 4] = [
            ("is not a decimal number", "not_a_decimal"),
            (
                "fractional digits (money is never rounded)",
                "too_many_fractional_digits",
            ),
            ("is negative; amounts must be >= 0", "negative_amount"),
            ("is out of range for decimal(", "decimal_out_of_range"),
        ];
        FRAGMENTS
            .iter()
            .find(|(fragment, _)| message.contains(fragment))
            .map(|(_, kind)| *kind)
    }
}

/// Checks that `value` is a valid amount: non-negative and exactly representable at scale 12.
pub fn check_amount(value: &Decimal) -> Result<(), MoneyError> {
    if *value < Decimal::ZERO {
        return Err(MoneyError::Negative {
            value: value.to_string(),
        });
    }
    to_unscaled(value).map(|_| ())
}

/// The wire integer of `value` (value × 10^12), exactly; any sign.
pub fn to_unscaled(value: &Decimal) -> Result<i128, MoneyError> {
    let mut value = *value;
    if value.scale() > SCALE {
        value = value.normalize();
        if value.scale() > SCALE {
            return Err(MoneyError::TooManyFractionalDigits {
                value: value.to_string(),
            });
        }
    }
    let unscaled = 10_i128
        .checked_pow(SCALE - value.scale())
        .and_then(|factor| value.mantissa().checked_mul(factor))
        .filter(|unscaled| unscaled.unsigned_abs() < TEN_POW_PRECISION.unsigned_abs());
    unscaled.ok_or_else(|| MoneyError::OutOfRange {
        value: value.to_string(),
    })
}

/// The amount of a wire integer (unscaled × 10^-12), exactly; any sign.
///
/// The result has scale 12 when the mantissa fits `rust_decimal`, else trailing zeros are
/// dropped until it fits, else [`MoneyError::OutOfRange`].
pub fn from_unscaled(unscaled: i128) -> Result<Decimal, MoneyError> {
    let out_of_range = || MoneyError::OutOfRange {
        value: format!("{unscaled}e-{SCALE}"),
    };
    if unscaled.unsigned_abs() >= TEN_POW_PRECISION.unsigned_abs() {
        return Err(out_of_range());
    }
    if let Ok(value) = Decimal::try_from_i128_with_scale(unscaled, SCALE) {
        return Ok(value);
    }
    let (mut mantissa, mut scale) = (unscaled, SCALE);
    while scale > 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        scale -= 1;
        if let Ok(value) = Decimal::try_from_i128_with_scale(mantissa, scale) {
            return Ok(value);
        }
    }
    Err(out_of_range())
}

/// Parses an amount exactly from plain (`"12.5"`) or scientific (`"1e-12"`) notation and checks
/// it with [`check_amount`].
pub fn parse_amount(text: &str) -> Result<Decimal, MoneyError> {
    let value = parse_exact(text)?;
    check_amount(&value)?;
    Ok(value)
}

fn parse_exact(text: &str) -> Result<Decimal, MoneyError> {
    let not_a_number = || MoneyError::NotANumber {
        value: text.to_owned(),
    };
    // rust_decimal accepts `_` separators; JSON and humans writing amounts do not mean them.
    if text.is_empty() || text.contains('_') {
        return Err(not_a_number());
    }
    let (base, exponent) = match text.split_once(['e', 'E']) {
        Some((base, exponent)) => {
            let exponent: i32 = exponent.parse().map_err(|_| not_a_number())?;
            (base, exponent)
        }
        None => (text, 0),
    };
    let base = Decimal::from_str_exact(base).map_err(|error| match error {
        rust_decimal::Error::ExceedsMaximumPossibleValue
        | rust_decimal::Error::LessThanMinimumPossibleValue => MoneyError::OutOfRange {
            value: text.to_owned(),
        },
        rust_decimal::Error::Underflow | rust_decimal::Error::ScaleExceedsMaximumPrecision(_) => {
            MoneyError::TooManyFractionalDigits {
                value: text.to_owned(),
            }
        }
        // rust_decimal reports a plain number with too many digits for its 96-bit mantissa as a
        // generic parse error; the text is a number, so say which limit it breaks.
        _ if is_plain_decimal(base) => too_many_digits(text, base),
        _ => not_a_number(),
    })?;
    if exponent == 0 || base.is_zero() {
        return Ok(base);
    }
    let base = base.normalize();
    if exponent < 0 {
        let scale = base.scale().saturating_add(exponent.unsigned_abs());
        if scale > Decimal::MAX_SCALE {
            return Err(MoneyError::TooManyFractionalDigits {
                value: text.to_owned(),
            });
        }
        return Ok(Decimal::from_i128_with_scale(base.mantissa(), scale));
    }
    let out_of_range = || MoneyError::OutOfRange {
        value: text.to_owned(),
    };
    let mut value = base;
    for _ in 0..exponent {
        if value.scale() > 0 {
            value = Decimal::from_i128_with_scale(value.mantissa(), value.scale() - 1);
        } else {
            value = value.checked_mul(Decimal::TEN).ok_or_else(out_of_range)?;
        }
    }
    Ok(value)
}

/// `[+-]digits[.digits]` (or `.digits`): a decimal number as text, whatever its size.
fn is_plain_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    !(integer.is_empty() && fraction.is_empty()) && all_digits(integer) && all_digits(fraction)
}

/// Why a plain decimal too long for `rust_decimal` is refused: more than 12 fractional digits
/// (trailing zeros aside) if it has them, else a magnitude beyond what money can hold.
fn too_many_digits(text: &str, plain: &str) -> MoneyError {
    let fraction = plain.split_once('.').map_or("", |(_, fraction)| fraction);
    if fraction.trim_end_matches('0').len() > SCALE as usize {
        MoneyError::TooManyFractionalDigits {
            value: text.to_owned(),
        }
    } else {
        MoneyError::OutOfRange {
            value: text.to_owned(),
        }
    }
}

/// JSON (and any serde format) for amounts: a string or an exact number in, a string out.
///
/// Use with `#[serde(with = "schemas::money::json")]`, or [`json::option`] for `Option<Decimal>`.
/// Money never passes through `f64` arithmetic: JSON text is parsed as decimal text, and a float
/// handed over by a format (`serde_json::Value` does so when the float's shortest text equals the
/// original, YAML, TOML) is parsed from its shortest round-trip text. More than ~15 significant
/// digits in such a format were lost before this code runs: send those as strings.
pub mod json {
    use super::{check_amount, parse_amount};
    use rust_decimal::Decimal;
    use serde::de::{self, MapAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    // serde_json with `arbitrary_precision` hands numbers over as a one-entry map with this key.
    const SERDE_JSON_NUMBER_TOKEN: &str = "$serde_json::private::Number";

    /// Serializes an amount as its shortest exact decimal string.
    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&value.normalize())
    }

    /// Deserializes an amount from a string or an exact number; see the [module](self) docs.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        deserializer.deserialize_any(AmountVisitor)
    }

    struct AmountVisitor;

    impl<'de> Visitor<'de> for AmountVisitor {
        type Value = Decimal;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a non-negative decimal amount as a string or an exact number")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Decimal, E> {
            parse_amount(text).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(value))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Decimal, E> {
            let value = Decimal::from(value);
            check_amount(&value).map_err(E::custom)?;
            Ok(value)
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<Decimal, E> {
            // Read from the float's shortest round-trip text, never from its binary value: that
            // text is the one the sender wrote whenever it fit an f64 (serde_json only hands a
            // float over when it does; YAML and TOML lose nothing below 15 significant digits).
            parse_amount(&value.to_string()).map_err(E::custom)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Decimal, A::Error> {
            match map.next_key::<String>()? {
                Some(key) if key == SERDE_JSON_NUMBER_TOKEN => {
                    let text: String = map.next_value()?;
                    parse_amount(&text).map_err(de::Error::custom)
                }
                _ => Err(de::Error::invalid_type(de::Unexpected::Map, &self)),
            }
        }
    }

    /// The same rules for `Option<Decimal>`: `null` or missing (with `#[serde(default)]`) is `None`.
    pub mod option {
        use rust_decimal::Decimal;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Serializes `Some` as a string, `None` as null.
        pub fn serialize<S: Serializer>(
            value: &Option<Decimal>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => super::serialize(value, serializer),
                None => serializer.serialize_none(),
            }
        }

        /// Deserializes null as `None`, anything else as an amount.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Decimal>, D::Error> {
            #[derive(Deserialize)]
            struct Amount(#[serde(with = "super")] Decimal);
            Ok(Option::<Amount>::deserialize(deserializer)?.map(|Amount(value)| value))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_money_error_kind_is_recognised_in_its_message() {
        let value = || "1".to_owned();
        for error in [
            super::MoneyError::TooManyFractionalDigits { value: value() },
            super::MoneyError::Negative { value: value() },
            super::MoneyError::OutOfRange { value: value() },
            super::MoneyError::NotANumber { value: value() },
        ] {
            let message = format!("invalid value at line 1: {error}");
            assert_eq!(
                super::MoneyError::kind_in_message(&message),
                Some(error.kind()),
                "{message}"
            );
        }
        assert_eq!(
            super::MoneyError::kind_in_message("invalid type: string"),
            None
        );
    }

    use super::*;
    use std::str::FromStr;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).expect("test literal")
    }

    #[test]
    fn unscaled_round_trips_at_scale_12() {
        for text in [
            "0",
            "0.000000000001",
            "1",
            "12.5",
            "79228162514264337.593543950335",
        ] {
            let unscaled = to_unscaled(&dec(text)).expect("in range");
            assert_eq!(
                from_unscaled(unscaled).expect("in range"),
                dec(text),
                "{text}"
            );
        }
        assert_eq!(to_unscaled(&dec("0.000000000001")), Ok(1));
    }

    #[test]
    fn trailing_zeros_beyond_scale_are_not_digits() {
        assert_eq!(to_unscaled(&dec("0.10000000000000")), Ok(100_000_000_000));
        assert!(matches!(
            to_unscaled(&dec("0.0000000000001")),
            Err(MoneyError::TooManyFractionalDigits { .. })
        ));
    }

    #[test]
    fn large_integers_fit_by_dropping_trailing_zeros() {
        let ten_pow_26 = dec("100000000000000000000000000");
        let value = ten_pow_26 - Decimal::ONE;
        let unscaled = to_unscaled(&value).expect("fits decimal(38, 12)");
        assert_eq!(from_unscaled(unscaled), Ok(value));
        assert!(matches!(
            to_unscaled(&ten_pow_26),
            Err(MoneyError::OutOfRange { .. })
        ));
    }

    #[test]
    fn parses_scientific_notation_exactly() {
        assert_eq!(parse_amount("1e-12"), Ok(dec("0.000000000001")));
        assert_eq!(parse_amount("1.5E3"), Ok(dec("1500")));
        assert_eq!(parse_amount("25e-2"), Ok(dec("0.25")));
        assert!(parse_amount("1e-13").is_err());
        assert!(parse_amount("1e40").is_err());
        assert!(parse_amount("1_0").is_err());
        assert!(parse_amount("").is_err());
        assert!(parse_amount("-1").is_err());
    }

    #[test]
    fn numbers_too_long_for_a_decimal_say_which_limit_they_break() {
        let ten_pow_30 = format!("1{}", "0".repeat(30));
        assert_eq!(
            parse_amount(&ten_pow_30),
            Err(MoneyError::OutOfRange {
                value: ten_pow_30.clone()
            })
        );
        assert_eq!(
            parse_amount(&format!("{ten_pow_30}.5")).map_err(|error| error.kind()),
            Err("decimal_out_of_range")
        );
        let long_fraction = format!("0.{}1", "0".repeat(30));
        assert_eq!(
            parse_amount(&long_fraction).map_err(|error| error.kind()),
            Err("too_many_fractional_digits")
        );
        assert_eq!(
            parse_amount("1.2.3").map_err(|error| error.kind()),
            Err("not_a_decimal")
        );
        assert!(!is_plain_decimal("."));
        assert!(!is_plain_decimal("-"));
        assert!(is_plain_decimal("-.5"));
    }
}
