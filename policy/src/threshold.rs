//! Soft alert thresholds (`soft_alerts`): percentages of the hard cap next to absolute amounts
//! in the policy's unit (issue 17, point 3).
//!
//! ```yaml
//! soft_alerts: [50, "90%", "$500"]          # cost_usd: 50 % and 90 % of the cap, and 500 USD
//! soft_alerts: [75, "2000000 total_tokens"] # any unit: the amount, then the unit's name
//! ```
//!
//! An integer or `"N%"` is a whole percentage of the hard cap (1..=100). `"$N"` and `"N USD"` are
//! amounts of a `cost_usd` policy; `"N <unit>"` is an amount of a policy in that unit. Amounts are
//! exact decimals (never through `f64`), above zero and at most the hard cap. The policy checks
//! (`validate.rs`) relate them to the unit and the cap and keep the list strictly increasing by
//! the level at which each fires.

use std::fmt;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::{Serialize, Serializer};

/// One soft alert threshold (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Threshold {
    /// A whole percentage of the hard cap (`50`, `"50%"`).
    Percent(u8),
    /// An absolute amount in the policy's unit (`"$500"`, `"2000000 total_tokens"`).
    Amount {
        /// The amount, exact and normalized.
        amount: Decimal,
        /// The unit as written: `USD` for `$N` and `N USD`, else the unit's name.
        unit: String,
    },
}

impl Threshold {
    /// The level in the policy's unit at which it fires, for a hard cap of `cap`.
    pub fn level(&self, cap: Decimal) -> Decimal {
        match self {
            Threshold::Percent(percent) => cap * Decimal::from(*percent) / Decimal::ONE_HUNDRED,
            Threshold::Amount { amount, .. } => *amount,
        }
    }

    /// The percentage of `cap` it fires at, rounded down (an amount's share of the cap; 0 for a
    /// zero cap): what alerts and PagerDuty severities are keyed on.
    pub fn percent_of(&self, cap: Decimal) -> u32 {
        match self {
            Threshold::Percent(percent) => u32::from(*percent),
            Threshold::Amount { amount, .. } => {
                if cap.is_zero() {
                    return 0;
                }
                (*amount * Decimal::ONE_HUNDRED / cap)
                    .trunc()
                    .to_u32()
                    .unwrap_or(0)
            }
        }
    }

    /// The percentage, for a percentage threshold.
    pub fn percent(&self) -> Option<u8> {
        match self {
            Threshold::Percent(percent) => Some(*percent),
            Threshold::Amount { .. } => None,
        }
    }

    /// What tells it apart in alert dedup keys: `50` for a percentage (as before amounts
    /// existed, so fired alerts stay fired across the upgrade), `amount:500` for an amount.
    pub fn key(&self) -> String {
        match self {
            Threshold::Percent(percent) => percent.to_string(),
            Threshold::Amount { amount, .. } => format!("amount:{}", amount.normalize()),
        }
    }
}

impl fmt::Display for Threshold {
    /// `50%`, `500 USD`, `2000000 total_tokens`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Percent(percent) => write!(f, "{percent}%"),
            Threshold::Amount { amount, unit } => write!(f, "{} {unit}", amount.normalize()),
        }
    }
}

impl From<u8> for Threshold {
    fn from(percent: u8) -> Self {
        Threshold::Percent(percent)
    }
}

impl std::str::FromStr for Threshold {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            return percent
                .trim()
                .parse::<u8>()
                .map(Threshold::Percent)
                .map_err(|_| {
                    format!(
                        "soft alert threshold {text:?}: a percentage is a whole number, 1..=100"
                    )
                });
        }
        let (number, unit) = if let Some(amount) = text.strip_prefix('$') {
            (amount.trim(), "USD")
        } else {
            match text.split_once(char::is_whitespace) {
                Some((number, unit)) => (number, unit.trim()),
                None => {
                    return Err(format!(
                        "soft alert threshold {text:?}: write a percentage (`50` or `\"50%\"`) or \
                         an amount with its unit (`\"$500\"`, `\"500 USD\"`, `\"2000000 \
                         total_tokens\"`)"
                    ))
                }
            }
        };
        let unit = if unit.eq_ignore_ascii_case("usd") {
            "USD"
        } else {
            unit
        };
        let amount = schemas::money::parse_amount(number)
            .map_err(|error| format!("soft alert threshold {text:?}: {error}"))?;
        Ok(Threshold::Amount {
            amount: amount.normalize(),
            unit: unit.to_owned(),
        })
    }
}

impl Serialize for Threshold {
    /// A percentage as its integer (the form written before amounts existed), an amount as
    /// `"500 USD"`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Threshold::Percent(percent) => serializer.serialize_u8(*percent),
            Threshold::Amount { .. } => serializer.collect_str(self),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ThresholdVisitor;

        impl Visitor<'_> for ThresholdVisitor {
            type Value = Threshold;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a whole percentage of the hard cap (50 or \"50%\") or an amount with its \
                     unit (\"$500\", \"2000000 total_tokens\")",
                )
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Threshold, E> {
                u8::try_from(value).map(Threshold::Percent).map_err(|_| {
                    E::custom(format!(
                        "soft alert threshold {value} is outside 1..=100 (percent of the hard cap)"
                    ))
                })
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Threshold, E> {
                u64::try_from(value)
                    .map_err(|_| {
                        E::custom(format!(
                            "soft alert threshold {value} is outside 1..=100 (percent of the \
                             hard cap)"
                        ))
                    })
                    .and_then(|value| self.visit_u64(value))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Threshold, E> {
                Err(E::custom(format!(
                    "soft alert threshold {value}: a percentage is a whole number (quote an \
                     amount with its unit: \"$12.50\")"
                )))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Threshold, E> {
                text.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(ThresholdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(text: &str, unit: &str) -> Threshold {
        Threshold::Amount {
            amount: text.parse().unwrap(),
            unit: unit.to_owned(),
        }
    }

    #[test]
    fn percentages_and_amounts_parse_exactly() {
        let parsed: Vec<Threshold> = serde_yaml_ng::from_str(
            "[50, \"90%\", \"$500\", \"12.50 usd\", \"2000000 total_tokens\", \"$0.000000000001\"]",
        )
        .unwrap();
        assert_eq!(
            parsed,
            vec![
                Threshold::Percent(50),
                Threshold::Percent(90),
                amount("500", "USD"),
                amount("12.5", "USD"),
                amount("2000000", "total_tokens"),
                amount("0.000000000001", "USD"),
            ]
        );
        let back = serde_json::to_string(&parsed).unwrap();
        assert_eq!(
            back,
            "[50,90,\"500 USD\",\"12.5 USD\",\"2000000 total_tokens\",\"0.000000000001 USD\"]"
        );
        let again: Vec<Threshold> = serde_json::from_str(&back).unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn bad_thresholds_say_what_to_write() {
        for (text, expected) in [
            ("[12.5]", "a percentage is a whole number"),
            ("[\"12.5%\"]", "a percentage is a whole number"),
            ("[\"500\"]", "write a percentage"),
            ("[\"$abc\"]", "soft alert threshold \"$abc\""),
            ("[300]", "outside 1..=100"),
            ("[-5]", "outside 1..=100"),
        ] {
            let error = serde_yaml_ng::from_str::<Vec<Threshold>>(text)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn levels_percents_and_keys() {
        let cap = Decimal::from(1000);
        assert_eq!(Threshold::Percent(50).level(cap), Decimal::from(500));
        assert_eq!(amount("250", "USD").level(cap), Decimal::from(250));
        assert_eq!(amount("255", "USD").percent_of(cap), 25);
        assert_eq!(Threshold::Percent(90).percent_of(cap), 90);
        assert_eq!(amount("1", "USD").percent_of(Decimal::ZERO), 0);
        assert_eq!(Threshold::Percent(50).key(), "50");
        assert_eq!(amount("500", "USD").key(), "amount:500");
        assert_eq!(amount("500", "USD").to_string(), "500 USD");
    }
}
