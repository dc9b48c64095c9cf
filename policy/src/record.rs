//! The policy record as written in YAML: one [`PolicyRecord`] per policy.
//!
//! Every struct rejects unknown fields, so a typo is an error, not a silently ignored setting.
//! Values that need no context are checked while deserializing (enums, time zones, durations,
//! amounts); checks that relate fields to each other run afterwards (`validate.rs`).
//! `docs/policies.md` is the reference for authors; keep the two in step.

use crate::amount::{self, AmountOrPercent};
use crate::approver::Approver;
use crate::threshold::Threshold;
use crate::unit::Unit;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeDelta};
use rust_decimal::Decimal;
use schemas::{Severity, Status};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One quota policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecord {
    /// Unique across the directory; letters, digits, `_`, `-`, `.`. Names the policy in scope
    /// keys, decisions, alerts and metrics, so renaming it resets its state.
    pub id: String,
    /// Who is accountable for the policy and gets paged.
    pub owner: Owner,
    /// What the policy protects and why, for the person paged at 3 a.m.
    pub description: String,
    /// Only events of this environment count (`prod`, `staging` …); absent = every environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// Which provider route the policy is about; absent = every route.
    #[serde(default)]
    pub route: Route,
    /// What is counted (`cost_usd`, `requests`, `total_tokens` …).
    pub unit: Unit,
    /// Which events count: dimension → value or list of values (all must match; a list matches
    /// any of its values). Keys: `api_key_id`, `team`, `user_id`, `customer_id`, `workflow`,
    /// `environment`, `provider`, `model` (globs allowed), `endpoint`, `modality`,
    /// `labels.<key>`. Empty = every event.
    #[serde(default)]
    pub selector: BTreeMap<String, Values>,
    /// One scope (one total, one cap) per distinct tuple of these dimensions' values; empty =
    /// one global scope.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// The window totals are kept over; required for counters, absent for the
    /// `concurrent_jobs` gauge.
    #[serde(default)]
    pub window: Option<WindowRecord>,
    /// The limit per scope and window, in the unit; exact decimal (quoted or not).
    #[serde(
        deserialize_with = "amount::hard_cap",
        serialize_with = "schemas::money::json::serialize"
    )]
    pub hard_cap: Decimal,
    /// Levels that raise a soft alert, strictly increasing by the level each fires at: whole
    /// percentages of the hard cap (`50`, `"90%"`, each 1..=100) and amounts in the policy's
    /// unit (`"$500"`, `"2000000 total_tokens"`, at most the hard cap); see [`Threshold`].
    #[serde(default = "default_soft_alerts")]
    pub soft_alerts: Vec<Threshold>,
    /// What happens when the hard cap is reached.
    pub action: Action,
    /// Who may raise the cap temporarily, and how far; absent = no raise possible.
    #[serde(default)]
    pub approval: Option<ApprovalRule>,
    /// Retry and fallback limits per user action; absent = not checked.
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// Deprecated/preview model handling and the model allow-list; absent = not checked.
    #[serde(default)]
    pub model_rules: Option<ModelRules>,
    /// Anomaly detection on the scope's totals; absent = off.
    #[serde(default)]
    pub anomaly: Option<Anomaly>,
    /// For `concurrent_jobs`: an async job still pending (submitted or running) after this long
    /// raises a stop-condition alert (`2h`, `30m`); absent = not checked.
    #[serde(default)]
    pub max_job_age: Option<Duration>,
    /// For `concurrent_jobs`: a page when many jobs wait at once, not only the oldest
    /// (`{min_jobs: 20, older_than: 10m}`); resolved when the backlog drains; absent = not
    /// checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_backlog: Option<PendingBacklog>,
    /// One key shared by many workflows or teams (issue 17): an alert when one `api_key_id` of
    /// the policy's traffic is used by more than `max_workflows` workflows or `max_teams` teams
    /// in a UTC day; absent = not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_key: Option<SharedKey>,
    /// Where alerts go; absent = the owner's channels.
    #[serde(default)]
    pub notify: Option<Notify>,
    /// When the policy is next reviewed by its owner; absent = no review scheduled.
    #[serde(default)]
    pub review: Option<Review>,
    /// Request-time admission rules, checked by gateways before a request is sent, from what
    /// the request declares ([`crate::admission`]); absent = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<crate::admission::AdmissionRules>,
    /// Shadow mode, a dry run of the policy (`false` by default): its decisions are published
    /// and audited as what they would do (`would_block`, `would_degrade`), counted, and never
    /// enforced by gateways; its alerts go to Slack, marked, and never page. Turning it off
    /// keeps the totals counted so far (it is not part of the definition) and enforces a
    /// would-be block from then on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// The default soft alert thresholds.
pub const DEFAULT_SOFT_ALERTS: [u8; 4] = [50, 75, 90, 100];

fn default_soft_alerts() -> Vec<Threshold> {
    DEFAULT_SOFT_ALERTS.map(Threshold::Percent).to_vec()
}

/// Deserializes a string through `FromStr`, inside the scalar's own deserialization so that the
/// parser reports the value's position (an error raised after `String::deserialize` returns
/// would be placed at the start of the enclosing mapping).
fn deserialize_parsed<'de, D, T>(deserializer: D, expected: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    /// Parses the string it is given.
    struct ParseVisitor<T> {
        /// What the value should be, for the type-mismatch message.
        expected: &'static str,
        /// The parsed type.
        parsed: std::marker::PhantomData<T>,
    }
    impl<T: FromStr<Err = String>> Visitor<'_> for ParseVisitor<T> {
        type Value = T;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str(self.expected)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            text.parse().map_err(E::custom)
        }
    }
    deserializer.deserialize_str(ParseVisitor {
        expected,
        parsed: std::marker::PhantomData,
    })
}

/// Who owns a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// Owning team (not necessarily the team whose traffic is capped).
    pub team: String,
    /// A person or alias to contact (email, handle).
    pub contact: String,
    /// The team's Slack channel; the default alert destination.
    #[serde(default)]
    pub slack_channel: Option<String>,
    /// The team's PagerDuty service; the default page destination.
    #[serde(default)]
    pub pagerduty_service: Option<String>,
}

/// The provider route a policy is about. Every given field must match the event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Provider (`openai`, `anthropic` …); absent = any.
    #[serde(default)]
    pub provider: Option<String>,
    /// Exact model name; absent = any. Exclusive with `model_pattern`.
    #[serde(default)]
    pub model: Option<String>,
    /// Model glob (`gpt-4o*`); absent = any. Exclusive with `model`.
    #[serde(default)]
    pub model_pattern: Option<String>,
    /// Endpoint family (`chat_completions`, `images` …); absent = any.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The route gateways should fall back to when this one is unavailable (informational for
    /// gateways; not used for matching).
    #[serde(default)]
    pub fallback_route: Option<String>,
}

/// A selector value: one string or a list of strings (YAML integers and booleans are taken as
/// their text; unquoted decimals must be quoted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Values(pub Vec<String>);

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// One value or a list.
        struct ValuesVisitor;
        impl<'de> Visitor<'de> for ValuesVisitor {
            type Value = Values;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Values, E> {
                Ok(Values(vec![text.to_owned()]))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Values, E> {
                Ok(Values(vec![value.to_string()]))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Values, E> {
                Ok(Values(vec![value.to_string()]))
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Values, E> {
                Ok(Values(vec![value.to_string()]))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Values, E> {
                Err(E::custom(format!(
                    "quote the value {value}: an unquoted decimal is read as a float and may not \
                     keep its text"
                )))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Values, A::Error> {
                let mut values = Vec::new();
                while let Some(Values(one)) = items.next_element::<Values>()? {
                    if one.len() != 1 {
                        return Err(de::Error::custom("nested lists are not allowed"));
                    }
                    values.extend(one);
                }
                Ok(Values(values))
            }
        }
        deserializer.deserialize_any(ValuesVisitor)
    }
}

/// The window totals are kept over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowRecord {
    /// Calendar window kind.
    pub kind: WindowKind,
    /// IANA time zone whose calendar defines day/week/month boundaries (`America/New_York`).
    #[serde(default)]
    pub time_zone: TimeZone,
    /// The campaign's bounds; required when `kind` is `campaign`, refused otherwise.
    #[serde(default)]
    pub campaign: Option<CampaignRecord>,
}

/// Calendar window kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Calendar minute.
    Minute,
    /// Calendar hour (in the time zone: matters for zones with sub-hour offsets).
    Hour,
    /// Calendar day in the time zone.
    Day,
    /// ISO week (Monday start) in the time zone.
    Week,
    /// Calendar month in the time zone.
    Month,
    /// One fixed period, `campaign.start` (inclusive) to `campaign.end` (exclusive).
    Campaign,
}

impl WindowKind {
    /// The name as written in policies.
    pub const fn as_str(self) -> &'static str {
        match self {
            WindowKind::Minute => "minute",
            WindowKind::Hour => "hour",
            WindowKind::Day => "day",
            WindowKind::Week => "week",
            WindowKind::Month => "month",
            WindowKind::Campaign => "campaign",
        }
    }
}

/// An IANA time zone, checked against the tz database when loaded. Default `UTC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeZone(pub chrono_tz::Tz);

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone(chrono_tz::UTC)
    }
}

impl Serialize for TimeZone {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.name())
    }
}

impl FromStr for TimeZone {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        chrono_tz::Tz::from_str(name).map(TimeZone).map_err(|_| {
            format!(
                "unknown time zone {name:?}; use an IANA name like \"America/New_York\" or \"UTC\""
            )
        })
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(deserializer, "an IANA time zone name")
    }
}

/// A campaign's name and bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRecord {
    /// Campaign name; windows are published as `campaign:<name>`.
    pub name: String,
    /// First instant of the campaign (inclusive).
    pub start: Instant,
    /// End of the campaign (exclusive); must be after `start`.
    pub end: Instant,
}

/// An instant as written: RFC 3339 with an offset, or a local date-time or date (midnight) in
/// the window's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Instant {
    /// `2025-11-28T00:00:00-05:00`, `2025-11-28T05:00:00Z`.
    WithOffset(DateTime<FixedOffset>),
    /// `2025-11-28T00:00:00` or `2025-11-28` (midnight), in the window's time zone.
    Local(NaiveDateTime),
}

impl fmt::Display for Instant {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instant::WithOffset(instant) => formatter.write_str(&instant.to_rfc3339()),
            Instant::Local(local) => write!(formatter, "{}", local.format("%Y-%m-%dT%H:%M:%S%.f")),
        }
    }
}

impl Serialize for Instant {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for Instant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
            return Ok(Instant::WithOffset(instant));
        }
        for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(local) = NaiveDateTime::parse_from_str(text, format) {
                return Ok(Instant::Local(local));
            }
        }
        if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(Instant::Local(date.and_time(chrono::NaiveTime::MIN)));
        }
        Err(format!(
            "{text:?} is not a date-time: write RFC 3339 (2025-11-28T00:00:00-05:00), a local \
             date-time (2025-11-28T00:00:00) or a date (2025-11-28)"
        ))
    }
}

impl<'de> Deserialize<'de> for Instant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(deserializer, "a date-time")
    }
}

/// What happens at the hard cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// `block`, `degrade` or `alert_only`.
    pub kind: ActionKind,
    /// The route/model gateways switch to; required for `degrade`, refused otherwise.
    #[serde(default)]
    pub degrade_to: Option<String>,
}

/// Action kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Publish a block decision for the scope.
    Block,
    /// Publish a degrade decision: traffic goes to `degrade_to`.
    Degrade,
    /// Only alert; traffic is never stopped.
    AlertOnly,
}

/// Who may raise a cap temporarily.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    /// People whose signed approval counts, each with the Ed25519 public key that verifies
    /// their signature; at least one, names unique.
    pub approvers: Vec<Approver>,
    /// Largest raise: an absolute amount in the unit (`500`) or a percentage of the cap
    /// (`"50%"`).
    #[serde(deserialize_with = "amount::max_raise")]
    pub max_raise: AmountOrPercent,
    /// Longest validity of one raise: `90m`, `24h`, `7d`, `1w`, `1d12h`.
    pub max_duration: Duration,
}

/// A positive duration written as a sum of `<integer><unit>` terms, units `s`, `m`, `h`, `d`,
/// `w`; serialized in seconds (`86400s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Duration(pub TimeDelta);

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!("{text:?} is not a duration; write e.g. \"90m\", \"24h\", \"7d\", \"1d12h\"")
        };
        let mut total_seconds: i64 = 0;
        let mut digits = String::new();
        for character in text.trim().chars() {
            if character.is_ascii_digit() {
                digits.push(character);
                continue;
            }
            let seconds_per_unit = match character {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(invalid()),
            };
            let count: i64 = digits.parse().map_err(|_| invalid())?;
            digits.clear();
            total_seconds = count
                .checked_mul(seconds_per_unit)
                .and_then(|seconds| total_seconds.checked_add(seconds))
                .ok_or_else(invalid)?;
        }
        if !digits.is_empty() || total_seconds <= 0 {
            return Err(invalid());
        }
        TimeDelta::try_seconds(total_seconds)
            .map(Duration)
            .ok_or_else(invalid)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}s", self.0.num_seconds()))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(deserializer, "a duration like \"24h\"")
    }
}

/// Retry and fallback limits per user action (`action_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Most attempts (primary + retries + fallbacks) one action may make; at least 1.
    pub max_attempts_per_action: u32,
    /// Most USD one action may spend on fallback attempts; absent = no limit.
    #[serde(
        default,
        deserialize_with = "amount::max_fallback_cost_usd",
        serialize_with = "amount::serialize_option"
    )]
    pub max_fallback_cost_usd: Option<Decimal>,
    /// Statuses that must not be retried; a retry after one raises an alert.
    #[serde(default = "default_non_retryable")]
    pub non_retryable: Vec<Status>,
    /// Whether an attempt made sooner than the `retry_after_ms` its failed predecessor carried
    /// (the provider's `Retry-After`, counted from the end of that attempt) raises an alert;
    /// default `true`.
    #[serde(default = "default_true")]
    pub respect_retry_after: bool,
}

/// The default non-retryable statuses.
pub const DEFAULT_NON_RETRYABLE: [Status; 3] = [
    Status::QuotaExceeded,
    Status::InvalidRequest,
    Status::PolicyBlocked,
];

fn default_non_retryable() -> Vec<Status> {
    DEFAULT_NON_RETRYABLE.to_vec()
}

/// Model lifecycle rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRules {
    /// Models past their catalog `deprecation_date`; default `alert`.
    #[serde(default = "default_deprecated")]
    pub deprecated: RuleAction,
    /// Preview/experimental models (catalog `is_preview`); default `allow`.
    #[serde(default = "default_preview")]
    pub preview: RuleAction,
    /// Models (names or globs) allowed at all; empty = every model. A listed model is still
    /// subject to `deprecated` and `preview`.
    #[serde(default)]
    pub allow_list: Vec<String>,
}

fn default_deprecated() -> RuleAction {
    RuleAction::Alert
}

fn default_preview() -> RuleAction {
    RuleAction::Allow
}

/// What a model rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Block traffic to the model.
    Block,
    /// Let it through, raise an alert.
    Alert,
    /// Let it through silently.
    Allow,
}

/// Anomaly detection on a scope's window totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anomaly {
    /// On/off switch; default `true` when the section is present.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Totals below this (in the unit) are never anomalous; default 0.
    #[serde(
        default,
        deserialize_with = "amount::min_volume",
        serialize_with = "schemas::money::json::serialize"
    )]
    pub min_volume: Decimal,
    /// Standard deviations from the scope's history that count as an anomaly; > 0, default 3.
    #[serde(
        default = "default_z_threshold",
        deserialize_with = "amount::z_threshold",
        serialize_with = "schemas::money::json::serialize"
    )]
    pub z_threshold: Decimal,
    /// Which ratios are watched ([`ANOMALY_METRICS`]); absent = all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<String>>,
}

/// The ratios anomaly detection can watch, each against the scope's own trailing baseline:
/// fallback attempts per request, billable attempts per accepted output, cached share of input
/// tokens, output per input token, input tokens per successful request (a prompt growing:
/// context stuffing, a loop appending history), final-tier images per accepted output (final
/// quality rendered before a person chose).
pub const ANOMALY_METRICS: [&str; 6] = [
    "fallback_share",
    "attempts_per_output",
    "cache_hit_rate",
    "output_input_ratio",
    "input_tokens_per_success",
    "final_images_per_output",
];

impl Anomaly {
    /// Whether `metric` is watched.
    pub fn watches(&self, metric: &str) -> bool {
        self.metrics
            .as_ref()
            .is_none_or(|metrics| metrics.iter().any(|watched| watched == metric))
    }
}

/// `shared_key`: how many workflows and teams one API key may serve in a UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedKey {
    /// Most distinct workflows per key and day; absent = not checked.
    #[serde(default)]
    pub max_workflows: Option<u32>,
    /// Most distinct teams per key and day; default 1 (a key belongs to one team).
    #[serde(default = "default_max_teams")]
    pub max_teams: Option<u32>,
}

fn default_max_teams() -> Option<u32> {
    Some(1)
}

/// `pending_backlog` of a `concurrent_jobs` policy: how many jobs may wait at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingBacklog {
    /// Fires when at least this many jobs of one scope have been pending (submitted or running,
    /// no terminal event) for longer than `older_than`; at least 1.
    pub min_jobs: u64,
    /// How long a job must have been pending to count; default `5m`.
    #[serde(default = "default_backlog_age")]
    pub older_than: Duration,
}

fn default_backlog_age() -> Duration {
    Duration(chrono::TimeDelta::minutes(5))
}

fn default_true() -> bool {
    true
}

fn default_z_threshold() -> Decimal {
    Decimal::from(3)
}

/// Where alerts go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// Slack channel; default the owner's.
    #[serde(default)]
    pub slack_channel: Option<String>,
    /// PagerDuty service; default the owner's.
    #[serde(default)]
    pub pagerduty_service: Option<String>,
    /// Severity per soft-alert percentage (`90: error`); each key must be one of the
    /// percentages of `soft_alerts`. Unlisted thresholds, and amounts, are `warning`; the hard
    /// cap is `critical`.
    #[serde(default)]
    pub severity_by_threshold: BTreeMap<u8, Severity>,
}

/// The owner's review schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// How often the owner reviews the policy.
    pub cadence: ReviewCadence,
    /// The next review date (`2025-12-01`).
    pub next_review: NaiveDate,
}

/// Review cadences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewCadence {
    /// Every week.
    Weekly,
    /// Every month.
    Monthly,
    /// Every quarter.
    Quarterly,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let hours = |text: &str| text.parse::<Duration>().map(|d| d.0.num_hours());
        assert_eq!(hours("24h"), Ok(24));
        assert_eq!(hours("1d12h"), Ok(36));
        assert_eq!(hours("1w"), Ok(168));
        for bad in ["", "12", "0h", "1y", "h", "-1h"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn instants_parse() {
        assert!(matches!(
            "2025-11-28T00:00:00-05:00".parse::<Instant>(),
            Ok(Instant::WithOffset(_))
        ));
        assert!(matches!(
            "2025-11-28".parse::<Instant>(),
            Ok(Instant::Local(_))
        ));
        assert!("28/11/2025".parse::<Instant>().is_err());
    }
}
