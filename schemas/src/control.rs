//! [`ControlDecision`]: what gateways must do for a scope.
//!
//! Published on a compacted control topic keyed by [`ControlDecision::key`]; compaction keeps the
//! latest decision per key, and gateways apply a decision only if its `version` is higher than
//! the one they hold, so redelivery and reordering are harmless.

use crate::avro_enum;
use crate::codec::datum::{DatumReader, DatumWriter};
use crate::codec::{AvroRecord, DecodeError, EncodeError, InvariantViolation};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

avro_enum! {
    /// What gateways must do for traffic in scope.
    pub enum DecisionAction {
        /// Let traffic through (also lifts an earlier block or degrade).
        Allow = "allow",
        /// Refuse traffic.
        Block = "block",
        /// Route traffic to [`ControlDecision::degrade_to`] instead.
        Degrade = "degrade",
    }
}

/// A quota decision for one policy and scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlDecision {
    /// Unique id of this decision.
    pub decision_id: String,
    /// The compaction key (see [`ControlDecision::compaction_key`]); latest version per key wins.
    pub key: String,
    /// Policy that produced the decision.
    pub policy_id: String,
    /// Scope the decision applies to: dimension → value (e.g. `team` → `search`).
    pub scope: BTreeMap<String, String>,
    /// What gateways must do.
    pub action: DecisionAction,
    /// Route/model to use instead; required when `action` is `degrade`.
    #[serde(default)]
    pub degrade_to: Option<String>,
    /// Human-readable reason.
    pub reason: String,
    /// Unit of `observed` and `limit` (usd, tokens, requests …).
    pub unit: String,
    /// Usage observed in the window (`decimal(38, 12)`, >= 0).
    #[serde(with = "crate::money::json")]
    pub observed: Decimal,
    /// The limit that applies (`decimal(38, 12)`, >= 0).
    #[serde(with = "crate::money::json")]
    pub limit: Decimal,
    /// Window kind: `day`, `minute`, `campaign:<name>` …
    pub window: String,
    /// Start of the window (inclusive).
    pub window_start: DateTime<Utc>,
    /// End of the window (exclusive), `>= window_start`.
    pub window_end: DateTime<Utc>,
    /// When the decision was issued.
    pub issued_at: DateTime<Utc>,
    /// When gateways must stop applying it; `None` = until superseded.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Monotonic per key; gateways ignore a version lower than the one they hold.
    pub version: u64,
    /// Dimensions the scope's requests **lack** (sorted, none of them in `scope`): the decision
    /// applies only to requests without them. A policy grouping by `user_id` counts requests
    /// without a `user_id` in their own bucket; its decision carries `absent: ["user_id"]` so it
    /// stops those requests only, never the ones with a `user_id`. Empty for most decisions
    /// (and for every v1 record). Added in schema v2.
    #[serde(default)]
    pub absent: Vec<String>,
    /// A decision of a policy in shadow mode (`shadow: true`, a dry run): published and audited
    /// as what it would do (`action`), never enforced. On the wire (schema v3) its `action` is
    /// `allow` and `shadow_action` carries the real one, so that a gateway reading an older
    /// schema does not enforce it either. Added in schema v3.
    #[serde(default)]
    pub shadow: bool,
}

impl ControlDecision {
    /// The action as audited and shown to people: `allow`, `block`, `degrade`, or for a shadow
    /// decision `would_block`, `would_degrade`.
    pub fn audit_action(&self) -> &'static str {
        match (self.shadow, self.action) {
            (true, DecisionAction::Block) => "would_block",
            (true, DecisionAction::Degrade) => "would_degrade",
            (_, action) => action.as_str(),
        }
    }

    /// The compaction key for a policy and scope: `policy_id` then `dimension=value` pairs in
    /// dimension order, `/`-separated, with `%`, `/` and `=` percent-escaped so distinct scopes
    /// never collide. For a scope with absent dimensions, see
    /// [`ControlDecision::compaction_key_with_absent`].
    pub fn compaction_key(policy_id: &str, scope: &BTreeMap<String, String>) -> String {
        Self::compaction_key_with_absent(policy_id, scope, &[])
    }

    /// The compaction key for a policy, scope and absent dimensions: like
    /// [`ControlDecision::compaction_key`], with each absent dimension rendered as its bare
    /// (escaped) name, without `=`, in dimension order among the present ones:
    /// `p/team=search/user_id`. An absent dimension never renders like a present one (even with
    /// an empty value, `user_id=`), so the bucket of requests without `user_id` never shares a
    /// key with another scope.
    pub fn compaction_key_with_absent(
        policy_id: &str,
        scope: &BTreeMap<String, String>,
        absent: &[String],
    ) -> String {
        fn escape(text: &str, out: &mut String) {
            for character in text.chars() {
                match character {
                    '%' => out.push_str("%25"),
                    '/' => out.push_str("%2F"),
                    '=' => out.push_str("%3D"),
                    other => out.push(other),
                }
            }
        }
        let mut dimensions: BTreeMap<&str, Option<&str>> = scope
            .iter()
            .map(|(dimension, value)| (dimension.as_str(), Some(value.as_str())))
            .collect();
        for dimension in absent {
            dimensions.entry(dimension.as_str()).or_insert(None);
        }
        let mut key = String::new();
        escape(policy_id, &mut key);
        for (dimension, value) in dimensions {
            key.push('/');
            escape(dimension, &mut key);
            if let Some(value) = value {
                key.push('=');
                escape(value, &mut key);
            }
        }
        key
    }
}

impl AvroRecord for ControlDecision {
    const RECORD_NAME: &'static str = "dev.quotaflow.ControlDecision";
    const FINGERPRINT: [u8; 8] = [0x6A, 0x25, 0x2D, 0x01, 0xB3, 0xB0, 0xDE, 0xD1];

    fn write_datum<W: DatumWriter>(&self, writer: &mut W) -> Result<(), EncodeError> {
        writer.write_string("decision_id", &self.decision_id);
        writer.write_string("key", &self.key);
        writer.write_string("policy_id", &self.policy_id);
        writer.write_string_map("scope", &self.scope);
        // A shadow decision is an allow to every reader; `shadow_action` says what it would do.
        writer.write_enum(
            "action",
            if self.shadow {
                DecisionAction::Allow
            } else {
                self.action
            },
        );
        writer.write_optional_string("degrade_to", self.degrade_to.as_deref());
        writer.write_string("reason", &self.reason);
        writer.write_string("unit", &self.unit);
        writer.write_amount("observed", &self.observed)?;
        writer.write_amount("limit", &self.limit)?;
        writer.write_string("window", &self.window);
        writer.write_timestamp("window_start", &self.window_start)?;
        writer.write_timestamp("window_end", &self.window_end)?;
        writer.write_timestamp("issued_at", &self.issued_at)?;
        writer.write_optional_timestamp("expires_at", self.expires_at.as_ref())?;
        writer.write_count_long("version", self.version)?;
        writer.write_string_array("absent", &self.absent);
        writer.write_optional_string("shadow_action", self.shadow.then(|| self.action.as_str()));
        Ok(())
    }

    fn read_datum<R: DatumReader>(reader: &mut R) -> Result<Self, DecodeError> {
        let mut decision = ControlDecision {
            decision_id: reader.read_string("decision_id")?,
            key: reader.read_string("key")?,
            policy_id: reader.read_string("policy_id")?,
            scope: reader.read_string_map("scope")?,
            action: reader.read_enum("action")?,
            degrade_to: reader.read_optional_string("degrade_to")?,
            reason: reader.read_string("reason")?,
            unit: reader.read_string("unit")?,
            observed: reader.read_amount("observed")?,
            limit: reader.read_amount("limit")?,
            window: reader.read_string("window")?,
            window_start: reader.read_timestamp("window_start")?,
            window_end: reader.read_timestamp("window_end")?,
            issued_at: reader.read_timestamp("issued_at")?,
            expires_at: reader.read_optional_timestamp("expires_at")?,
            version: reader.read_count_long("version")?,
            absent: reader.read_string_array("absent")?,
            shadow: false,
        };
        if let Some(would) = reader.read_optional_string("shadow_action")? {
            decision.action = match would.as_str() {
                "block" => DecisionAction::Block,
                "degrade" => DecisionAction::Degrade,
                _ => {
                    return Err(DecodeError::invalid(
                        "shadow_action",
                        format!("{would:?} is not block or degrade"),
                    ))
                }
            };
            decision.shadow = true;
        }
        Ok(decision)
    }

    fn check_invariants(&self) -> Result<(), InvariantViolation> {
        if self.shadow && self.action == DecisionAction::Allow {
            return Err(InvariantViolation {
                field: "shadow_action",
                reason: "a shadow decision says what it would block or degrade; an allow is never shadow"
                    .to_owned(),
            });
        }
        if self.action == DecisionAction::Degrade && self.degrade_to.is_none() {
            return Err(InvariantViolation {
                field: "degrade_to",
                reason: "a degrade decision must say what to degrade to".to_owned(),
            });
        }
        if !self.absent.windows(2).all(|pair| pair[0] < pair[1]) {
            return Err(InvariantViolation {
                field: "absent",
                reason: format!("{:?} is not sorted without repeats", self.absent),
            });
        }
        if let Some(both) = self
            .absent
            .iter()
            .find(|dimension| self.scope.contains_key(*dimension))
        {
            return Err(InvariantViolation {
                field: "absent",
                reason: format!("{both} is both in scope and absent"),
            });
        }
        window_is_ordered(&self.window_start, &self.window_end)
    }
}

/// `window_start <= window_end` (shared by the records that carry a window).
pub(crate) fn window_is_ordered(
    window_start: &DateTime<Utc>,
    window_end: &DateTime<Utc>,
) -> Result<(), InvariantViolation> {
    if window_start > window_end {
        return Err(InvariantViolation {
            field: "window_end",
            reason: format!("window_end {window_end} is before window_start {window_start}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_keys_do_not_collide_on_separators() {
        let scope = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(dimension, value)| (dimension.to_string(), value.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let plain = ControlDecision::compaction_key("daily", &scope(&[("team", "a/b=c")]));
        let split = ControlDecision::compaction_key("daily", &scope(&[("team", "a"), ("b", "c")]));
        assert_ne!(plain, split);
        assert_eq!(plain, "daily/team=a%2Fb%3Dc");
        assert_eq!(
            ControlDecision::compaction_key("p", &scope(&[("z", "1"), ("a", "2")])),
            "p/a=2/z=1"
        );
    }

    /// Issue 13, point 2: `absent` is sorted, without repeats, and disjoint from the scope.
    #[test]
    fn absent_must_be_sorted_unique_and_apart_from_the_scope() {
        let decision = |scope: &[&str], absent: &[&str]| ControlDecision {
            decision_id: "d".to_owned(),
            key: "k".to_owned(),
            policy_id: "p".to_owned(),
            scope: scope
                .iter()
                .map(|name| (name.to_string(), "v".to_owned()))
                .collect(),
            action: DecisionAction::Block,
            degrade_to: None,
            reason: String::new(),
            unit: "usd".to_owned(),
            observed: Decimal::ONE,
            limit: Decimal::ONE,
            window: "day".to_owned(),
            window_start: DateTime::<Utc>::UNIX_EPOCH,
            window_end: DateTime::<Utc>::UNIX_EPOCH,
            issued_at: DateTime::<Utc>::UNIX_EPOCH,
            expires_at: None,
            version: 1,
            absent: absent.iter().map(|name| name.to_string()).collect(),
            shadow: false,
        };
        assert!(decision(&["team"], &["customer_id", "user_id"])
            .check_invariants()
            .is_ok());
        for (scope, absent) in [
            (&["team"][..], &["user_id", "customer_id"][..]),
            (&["team"][..], &["user_id", "user_id"][..]),
            (&["user_id"][..], &["user_id"][..]),
        ] {
            let error = decision(scope, absent)
                .check_invariants()
                .expect_err("invalid absent");
            assert_eq!(error.field, "absent", "{scope:?} {absent:?}");
        }
    }

    /// Issue 13, point 2: the bucket of requests without a dimension has its own key, distinct
    /// from every present value (the empty one included) and from the scope without the
    /// dimension.
    #[test]
    fn absent_dimensions_have_their_own_keys() {
        let team = BTreeMap::from([("team".to_owned(), "search".to_owned())]);
        let absent = ["user_id".to_owned()];
        let key = ControlDecision::compaction_key_with_absent("p", &team, &absent);
        assert_eq!(key, "p/team=search/user_id");
        assert_ne!(key, ControlDecision::compaction_key("p", &team));
        let mut empty_user = team.clone();
        empty_user.insert("user_id".to_owned(), String::new());
        assert_ne!(key, ControlDecision::compaction_key("p", &empty_user));
        assert_eq!(
            ControlDecision::compaction_key_with_absent("p", &BTreeMap::new(), &["a=b".to_owned()]),
            "p/a%3Db"
        );
        assert_eq!(
            ControlDecision::compaction_key_with_absent(
                "p",
                &BTreeMap::from([("z".to_owned(), "1".to_owned())]),
                &["a".to_owned(), "m".to_owned()]
            ),
            "p/a/m/z=1"
        );
    }
}
