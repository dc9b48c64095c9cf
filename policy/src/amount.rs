//! Exact decimals from YAML: amounts (`hard_cap`, `max_fallback_cost_usd` …) never pass
//! through `f64`.
//!
//! A quoted amount (`hard_cap: "12.50"`) and an integer (`hard_cap: 12`) are exact as they come.
//! An unquoted decimal (`hard_cap: 12.50`) reaches serde as a float, already rounded, so the
//! deserializer reads the number's **source text** instead: the loader puts the file text and
//! the policy's line range in a thread-local (`with_source`) around each policy's
//! deserialization, and the field's deserializer finds `hard_cap:` there (see
//! [`crate::source_map`]) and parses the text after it. As a check that it read the right text,
//! that text must parse to the same float. If it cannot be found (anchors, aliases, multi-line
//! flow style, or a record deserialized outside the loader) the value is rejected with a request
//! to quote it: a float is never turned into an amount.
//!
//! Every amount here is non-negative with at most 12 fractional digits (the project's money
//! rule, [`schemas::money::parse_amount`]) and is kept normalized (`12.50` → `12.5`), so equal
//! amounts give equal fingerprints.

use crate::source_map::{Block, SourceMap};
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::{Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

/// The file text and policy lines the deserializing thread is working on.
struct SourceContext {
    /// The whole file.
    text: Arc<str>,
    /// The policy being deserialized.
    block: Block,
}

thread_local! {
    /// Set by [`with_source`] for the duration of one policy's deserialization.
    static SOURCE: RefCell<Option<SourceContext>> = const { RefCell::new(None) };
}

/// Runs `deserialize` with the source text of the policy at `block` available to amount fields.
pub(crate) fn with_source<R>(text: &Arc<str>, block: Block, deserialize: impl FnOnce() -> R) -> R {
    /// Restores the previous context even if `deserialize` panics.
    struct Restore(Option<SourceContext>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SOURCE.with(|source| *source.borrow_mut() = previous);
        }
    }
    let previous = SOURCE.with(|source| {
        source.borrow_mut().replace(SourceContext {
            text: Arc::clone(text),
            block,
        })
    });
    let _restore = Restore(previous);
    deserialize()
}

/// The source text of the scalar at `path` in the current policy, if it can be found.
fn source_text(path: &[&str]) -> Option<String> {
    SOURCE.with(|source| {
        let source = source.borrow();
        let context = source.as_ref()?;
        SourceMap::new(&context.text)
            .scalar_text(context.block, path)
            .map(str::to_owned)
    })
}

/// A decimal with an optional `%` suffix, as `approval.max_raise` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AmountOrPercent {
    /// An absolute amount in the policy's unit (`max_raise: 500`).
    Absolute(Decimal),
    /// A percentage of the hard cap (`max_raise: 50%`).
    Percent(Decimal),
}

impl AmountOrPercent {
    /// The absolute amount this allows on top of `hard_cap`.
    pub fn absolute_for(self, hard_cap: Decimal) -> Decimal {
        match self {
            AmountOrPercent::Absolute(amount) => amount,
            AmountOrPercent::Percent(percent) => hard_cap * percent / Decimal::ONE_HUNDRED,
        }
    }
}

impl fmt::Display for AmountOrPercent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountOrPercent::Absolute(amount) => write!(formatter, "{amount}"),
            AmountOrPercent::Percent(percent) => write!(formatter, "{percent}%"),
        }
    }
}

impl Serialize for AmountOrPercent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Reads one amount; `path` locates its source text when it arrives as a float.
struct AmountVisitor {
    /// Key path of the field in the policy, e.g. `["approval", "max_raise"]`.
    path: &'static [&'static str],
    /// Whether a `%` suffix is accepted.
    allow_percent: bool,
}

impl AmountVisitor {
    /// Parses amount text exactly; `N%` when percentages are allowed.
    fn parse<E: de::Error>(&self, text: &str) -> Result<AmountOrPercent, E> {
        let text = text.trim();
        if let Some(number) = text.strip_suffix('%') {
            if !self.allow_percent {
                return Err(E::custom(format!(
                    "{text:?}: a percentage is not allowed here, write an amount"
                )));
            }
            return parse_decimal(number.trim_end()).map(AmountOrPercent::Percent);
        }
        parse_decimal(text).map(AmountOrPercent::Absolute)
    }
}

/// Parses a non-negative decimal exactly, normalized.
fn parse_decimal<E: de::Error>(text: &str) -> Result<Decimal, E> {
    schemas::money::parse_amount(text)
        .map(|value| value.normalize())
        .map_err(|error| E::custom(format!("invalid amount: {error}")))
}

impl Visitor<'_> for AmountVisitor {
    type Value = AmountOrPercent;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.allow_percent {
            formatter.write_str("a decimal amount or a percentage like \"50%\"")
        } else {
            formatter.write_str("a decimal amount (quoted, or an unquoted number)")
        }
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        self.parse(text)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(AmountOrPercent::Absolute(Decimal::from(value)))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        self.parse(&value.to_string())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        let quote_it = || {
            E::custom(format!(
                "cannot read the exact text of the number {value}; write it as a quoted string \
                 (e.g. \"12.50\") so it is not rounded through a float"
            ))
        };
        let text = source_text(self.path).ok_or_else(quote_it)?;
        // The text must be the number the parser saw, or we found the wrong line.
        match text.parse::<f64>() {
            Ok(parsed) if parsed == value => self.parse(&text),
            _ => Err(quote_it()),
        }
    }
}

/// Deserializes the amount at `path` (see the module docs).
fn amount_at<'de, D: Deserializer<'de>>(
    deserializer: D,
    path: &'static [&'static str],
) -> Result<Decimal, D::Error> {
    match deserializer.deserialize_any(AmountVisitor {
        path,
        allow_percent: false,
    })? {
        AmountOrPercent::Absolute(amount) => Ok(amount),
        AmountOrPercent::Percent(_) => unreachable!("percentages are refused by the visitor"),
    }
}

/// `hard_cap`.
pub(crate) fn hard_cap<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    amount_at(deserializer, &["hard_cap"])
}

/// `approval.max_raise`: an amount or a percentage.
pub(crate) fn max_raise<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<AmountOrPercent, D::Error> {
    deserializer.deserialize_any(AmountVisitor {
        path: &["approval", "max_raise"],
        allow_percent: true,
    })
}

/// `retry_policy.max_fallback_cost_usd` (optional).
pub(crate) fn max_fallback_cost_usd<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Decimal>, D::Error> {
    amount_at(deserializer, &["retry_policy", "max_fallback_cost_usd"]).map(Some)
}

/// `anomaly.min_volume`.
pub(crate) fn min_volume<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    amount_at(deserializer, &["anomaly", "min_volume"])
}

/// `anomaly.z_threshold`.
pub(crate) fn z_threshold<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    amount_at(deserializer, &["anomaly", "z_threshold"])
}

/// Serializes an optional amount as its normalized string.
pub(crate) fn serialize_option<S: Serializer>(
    value: &Option<Decimal>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(amount) => schemas::money::json::serialize(amount, serializer),
        None => serializer.serialize_none(),
    }
}

/// Wrapper so tests can deserialize a bare amount.
#[cfg(test)]
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CapOnly {
    /// The amount under test.
    #[serde(deserialize_with = "hard_cap")]
    hard_cap: Decimal,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(text: &str) -> Result<Decimal, String> {
        let shared: Arc<str> = Arc::from(text);
        let block = SourceMap::new(text).whole();
        with_source(&shared, block, || {
            serde_yaml_ng::from_str::<CapOnly>(text)
                .map(|only| only.hard_cap)
                .map_err(|error| error.to_string())
        })
    }

    #[test]
    fn unquoted_decimals_keep_their_source_text() {
        assert_eq!(cap("hard_cap: 12.50\n").unwrap().to_string(), "12.5");
        assert_eq!(cap("hard_cap: \"0.1\"\n").unwrap().to_string(), "0.1");
        assert_eq!(cap("hard_cap: 7 # usd\n").unwrap().to_string(), "7");
        // 0.1 + 2^-60 is not a float; its text is still exact.
        let precise = cap("hard_cap: 0.100000000001\n").unwrap();
        assert_eq!(precise.to_string(), "0.100000000001");
        assert_eq!(cap("hard_cap: 1e3\n").unwrap().to_string(), "1000");
    }

    #[test]
    fn floats_without_text_and_bad_amounts_are_rejected() {
        // Outside the loader there is no source text: refuse the float.
        let error = serde_yaml_ng::from_str::<CapOnly>("hard_cap: 1.5\n").unwrap_err();
        assert!(error.to_string().contains("quoted string"), "{error}");
        let error = cap("hard_cap: -3\n").unwrap_err();
        assert!(error.contains("negative"), "{error}");
        let error = cap("hard_cap: 50%\n").unwrap_err();
        assert!(error.contains("percentage is not allowed"), "{error}");
        let error = cap("hard_cap: .inf\n").unwrap_err();
        assert!(error.contains("quoted string"), "{error}");
    }
}
