//! Notifications: what the alerter tells people when a quota policy fires, and how it gets there.
//!
//! - [`Notice`]: what to say (policy, owner, scope, window, spent / limit, burn rate, projected time
//!   to cap, the approval command, where to send it). It is built by policy evaluation and rendered
//!   by each notifier.
//! - [`slack::SlackNotifier`]: Slack incoming webhooks with Block Kit.
//! - [`pagerduty::PagerDutyNotifier`]: PagerDuty Events API v2, trigger and resolve, with a stable
//!   [`pagerduty::dedup_key`] per incident.
//! - [`retry::RetryPolicy`]: backoff shared by both; 429 `Retry-After` is honoured.
//! - [`pending::Pending`]: notifications whose attempts ran out on a failure that may pass later,
//!   kept (bounded, in memory) and sent again after a growing delay.
//! - [`client::http_client`]: the one HTTPS client every webhook is sent with.
//! - [`dispatch::Dispatcher`]: routes notices to their webhook or routing key, counts outcomes,
//!   and keeps failed deliveries in [`pending::Pending`].
//! - [`grouping::Grouper`]: storm grouping, pure and without IO: at most one notification per
//!   (policy, scope, window, kind) per interval, the rest folded into "and N more".
//! - [`config::NotifyConfig`]: webhooks and routing keys (as [`infra::secret::Secret`]s), retry and
//!   grouping settings.
//! - [`NotifyError`]: why a delivery failed, and whether trying again later can help.
//!
//! # Delivery guarantees
//! **At least once, with bounded retries.** A notification is retried on connection errors, TLS
//! handshake failures, timeouts,
//! HTTP 408, 429 and 5xx, with exponential backoff (200 ms doubling by default, 5 attempts), waiting at
//! least what a 429's `Retry-After` asks. Other 4xx are never retried: the payload, URL or key is wrong
//! and would be refused again. When the attempts run out the error is returned with
//! [`NotifyError::is_retryable`] set, and the service keeps the notice in [`pending::Pending`] to
//! send it again later (30 s, doubling up to 10 min by default) until it is delivered: a receiver
//! that is down or presents a certificate that does not verify delays notifications, it does not
//! lose them (within the queue's bound, and while the process runs; see [`pending`]).
//!
//! Retrying an *ambiguous* failure (a timeout or a reset after the receiver may already have accepted
//! the request) can deliver a notification twice:
//! - **PagerDuty** repeats are idempotent: every event of one incident carries the same `dedup_key`, so
//!   a repeated trigger is folded into the open incident and a repeated resolve is a no-op. The same
//!   serialized body is sent on every attempt.
//! - **Slack** incoming webhooks have no idempotency key, so a channel may show a repeat after such a
//!   retry. That is the price of not losing an alert; [`grouping::Grouper`] keeps it to one repeat per
//!   interval rather than one per event.
//!
//! Notifications are not ordered across notifiers, and a resolve may overtake a delayed trigger
//! retry; PagerDuty then re-opens the incident until the next resolve.
//!
//! # Secrets
//! Slack webhook URLs and PagerDuty routing keys are [`infra::secret::Secret`]s. They are exposed only
//! to build the request (the URL, or the `routing_key` field the Events API requires in the body),
//! never logged, and removed from every [`NotifyError`] (reqwest errors are stripped of their URL and
//! receiver response bodies are redacted).
//!
//! # Transport
//! Webhooks are sent with one `reqwest::Client` built at startup by [`client::http_client`]: HTTPS
//! with rustls, the built-in webpki roots plus the optional [`NotifyConfig::ca_file`]. A receiver
//! whose certificate does not verify fails with [`NotifyError::Tls`], which is retried like any
//! transport failure (a certificate being rotated may verify on the next attempt) and counted
//! per attempt in `quotaflow_alerter_notify_failures_total{service, reason="tls"}`.
//!
//! # Metrics
//! Every failed attempt increments `quotaflow_alerter_notify_failures_total` with `service` (`slack`,
//! `pagerduty`) and a bounded `reason` ([`NotifyError::reason`]), so a receiver that keeps failing
//! shows up before its attempts run out.

pub mod client;
pub mod config;
pub mod dispatch;
pub mod grouping;
pub mod pagerduty;
pub mod pending;
pub mod retry;
pub mod slack;
pub mod webhook;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

pub use config::NotifyConfig;
pub use dispatch::Dispatcher;
pub use grouping::{Grouped, Grouper};
pub use pagerduty::PagerDutyNotifier;
pub use pending::{Delivery, Pending, RedeliveryPolicy};
pub use retry::RetryPolicy;
pub use slack::SlackNotifier;

/// Everything a notification says about one policy firing (or clearing) for one scope and window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// The policy that fired; part of the grouping key and of the PagerDuty `dedup_key`.
    pub policy_id: String,
    /// Who the quota belongs to, so the reader knows whom to ask.
    pub owner: Owner,
    /// The rendered scope key, e.g. `team=search|model=gpt-4o`; identifies what is being limited.
    pub scope: String,
    /// The window the spend is counted in; its start separates one incident from the next.
    pub window: NoticeWindow,
    /// Unit of `spent` and `limit` (`USD`, `tokens`, ...), printed next to every amount.
    pub unit: String,
    /// Spent so far in the window, exact.
    pub spent: Decimal,
    /// The policy's limit for the window, exact.
    pub limit: Decimal,
    /// The threshold that was crossed, in percent of `limit` (80, 90, 100, ...); drives PagerDuty
    /// severity. For an amount threshold, the share of `limit` it is, rounded down.
    pub threshold_percent: u32,
    /// The threshold that was crossed when it is an amount in the unit (`soft_alerts: ["$500"]`).
    #[serde(default)]
    pub threshold_amount: Option<Decimal>,
    /// Why we are notifying.
    pub kind: NoticeKind,
    /// Recent spend per hour, when known; tells the reader how urgent it is.
    pub burn_rate_per_hour: Option<Decimal>,
    /// When the limit will be reached at the current burn rate, when known.
    pub projected_cap_at: Option<DateTime<Utc>>,
    /// The command that approves more budget (e.g. `quotaflow approve ...`), shown verbatim.
    pub approval_command: Option<String>,
    /// Slack channel whose webhook receives this notice (see [`config::SlackConfig`]); `None` means
    /// the default channel.
    pub slack_channel: Option<String>,
    /// PagerDuty service whose routing key receives this notice (see [`config::PagerDutyConfig`]);
    /// `None` means it does not page.
    pub pagerduty_service: Option<String>,
    /// Why, in a sentence, when the amounts do not say it all (a hard cap's decision reason:
    /// what is refused, until when, and why more jobs run than the cap allows).
    #[serde(default)]
    pub detail: Option<String>,
}

/// The team a quota belongs to and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Owning team, e.g. `search`.
    pub team: String,
    /// A person, alias or channel to contact, e.g. `@search-oncall`.
    pub contact: String,
}

/// The accounting window of a notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeWindow {
    /// Window kind as configured (`daily`, `monthly`, `rolling_24h`, ...).
    pub kind: String,
    /// IANA time zone the window boundaries are computed in (`UTC`, `Europe/Berlin`).
    pub tz: String,
    /// First instant of the window.
    pub start: DateTime<Utc>,
    /// First instant after the window.
    pub end: DateTime<Utc>,
}

/// Why a notice is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A soft threshold was crossed; traffic still flows.
    SoftAlert,
    /// The hard cap was reached; traffic is blocked or degraded until approved.
    HardCap,
    /// A condition that fired before is over (the window rolled, budget was approved); `of` says which
    /// incident it clears, so PagerDuty can resolve the right `dedup_key`.
    Resolved {
        /// The kind of incident that is over.
        of: IncidentKind,
    },
    /// Spend looks unusual (e.g. a burn rate far above the usual); `text` explains what was seen.
    Anomaly {
        /// Human readable description of the anomaly.
        text: String,
    },
    /// A policy rule fired that is not a quota level: a model blocked by its lifecycle or
    /// allow-list, a retry of a non-retryable error, too many attempts for one action, fallback
    /// spend of one action over its budget. `text` says which.
    Rule {
        /// Human readable description of the finding.
        text: String,
    },
}

/// The kinds of condition that open an incident; a [`NoticeKind::Resolved`] names one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// See [`NoticeKind::SoftAlert`].
    SoftAlert,
    /// See [`NoticeKind::HardCap`].
    HardCap,
    /// See [`NoticeKind::Anomaly`].
    Anomaly,
    /// See [`NoticeKind::Rule`].
    Rule,
}

impl IncidentKind {
    /// Stable lowercase name, used in payloads and in the PagerDuty `dedup_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::SoftAlert => "soft_alert",
            IncidentKind::HardCap => "hard_cap",
            IncidentKind::Anomaly => "anomaly",
            IncidentKind::Rule => "rule",
        }
    }
}

impl NoticeKind {
    /// Stable lowercase name (`soft_alert`, `hard_cap`, `resolved`, `anomaly`).
    pub fn as_str(&self) -> &'static str {
        match self {
            NoticeKind::SoftAlert => "soft_alert",
            NoticeKind::HardCap => "hard_cap",
            NoticeKind::Resolved { .. } => "resolved",
            NoticeKind::Anomaly { .. } => "anomaly",
            NoticeKind::Rule { .. } => "rule",
        }
    }

    /// The incident this notice opens or updates; `None` for [`NoticeKind::Resolved`].
    pub fn incident_kind(&self) -> Option<IncidentKind> {
        match self {
            NoticeKind::Resolved { .. } => None,
            _ => Some(self.incident()),
        }
    }

    /// The incident this notice is about: the one it opens or updates, or the one it resolves.
    pub fn incident(&self) -> IncidentKind {
        match self {
            NoticeKind::SoftAlert => IncidentKind::SoftAlert,
            NoticeKind::HardCap => IncidentKind::HardCap,
            NoticeKind::Anomaly { .. } => IncidentKind::Anomaly,
            NoticeKind::Rule { .. } => IncidentKind::Rule,
            NoticeKind::Resolved { of } => *of,
        }
    }
}

impl Notice {
    /// `spent` as a percentage of `limit`, rounded to one decimal; `None` when the limit is zero.
    pub fn percent_used(&self) -> Option<Decimal> {
        if self.limit.is_zero() {
            return None;
        }
        self.spent
            .checked_mul(Decimal::ONE_HUNDRED)
            .and_then(|scaled| scaled.checked_div(self.limit))
            .map(|percent| {
                percent
                    .round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero)
                    .normalize()
            })
    }

    /// `812.40 / 1000 USD (81.2%)`.
    pub fn spent_of_limit(&self) -> String {
        let percent = match self.percent_used() {
            Some(percent) => format!("{percent}%"),
            None => "n/a".to_string(),
        };
        format!(
            "{} / {} {} ({percent})",
            amount(self.spent),
            amount(self.limit),
            self.unit
        )
    }

    /// What the notice's amounts describe (see [`Measure`]).
    pub fn measure(&self) -> Measure {
        if self.window.kind == crate::engine::CONCURRENCY_WINDOW {
            Measure::Gauge
        } else if self.window.kind == RULE_WINDOW {
            // Rule notices of a gauge (concurrent jobs at a threshold) carry the level and cap.
            if self.limit.is_zero() {
                Measure::Finding
            } else {
                Measure::Gauge
            }
        } else {
            Measure::Window
        }
    }

    /// The scope as people read it: the rendered key, or a word for the policy's one scope.
    pub fn scope_label(&self) -> &str {
        if self.scope.is_empty() {
            "all traffic of the policy"
        } else {
            &self.scope
        }
    }

    /// The spend and limit in the unit, or what stands for them when the notice has none (a rule
    /// finding is not a level against a limit).
    pub fn amounts(&self) -> String {
        match self.measure() {
            Measure::Finding => "not a quota level: a rule finding".to_string(),
            _ => self.spent_of_limit(),
        }
    }

    /// The window as people read it: `day (UTC) 2026-12-05 00:00 UTC → 2026-12-06 00:00 UTC`;
    /// `now (jobs in flight; a gauge has no window)` for a gauge; the hour a rule finding is
    /// grouped in.
    pub fn window_label(&self) -> String {
        match self.measure() {
            Measure::Window => format!(
                "{} ({}) {} → {}",
                self.window.kind,
                self.window.tz,
                timestamp(self.window.start),
                timestamp(self.window.end)
            ),
            Measure::Gauge => "now (jobs in flight; a gauge has no window)".to_string(),
            Measure::Finding => format!(
                "none (a rule finding; repeats are grouped in the hour from {})",
                timestamp(self.window.start)
            ),
        }
    }

    /// What the reader should do now, in one sentence.
    pub fn next_action(&self) -> String {
        let raise = if self.approval_command.is_some() {
            ", or approve a raise with the command below"
        } else {
            ""
        };
        let until = match self.measure() {
            Measure::Gauge => format!(
                "until fewer than {} {} are in flight",
                amount(self.limit),
                self.unit
            ),
            _ => format!("until the window ends at {}", timestamp(self.window.end)),
        };
        match &self.kind {
            NoticeKind::SoftAlert => format!(
                "Nothing is blocked yet. Find who is spending (`quotactl top`), slow the \
                 workload down{raise} before the cap is reached."
            ),
            NoticeKind::HardCap => format!(
                "Gateways now apply the policy's cap action (block or degrade) to this scope \
                 {until}{raise}. Check the workload for a loop before raising anything."
            ),
            NoticeKind::Resolved { .. } => "Nothing to do: the condition is over.".to_string(),
            NoticeKind::Anomaly { .. } => "Look at the scope's recent traffic for a retry loop \
                 or a runaway job; this alert blocks nothing."
                .to_string(),
            NoticeKind::Rule { .. } if self.unit == PENDING_JOBS_UNIT => {
                "Nothing is blocked by this alert. Check the provider's status and its job queue, \
                 and cancel the jobs that will not finish; a follow-up says when the backlog \
                 drains."
                    .to_string()
            }
            NoticeKind::Rule { .. } => match self.measure() {
                Measure::Gauge => format!(
                    "Nothing is blocked yet; new jobs are refused once {} {} are in flight.",
                    amount(self.limit),
                    self.unit
                ),
                _ => "Fix the caller as the finding says; gateways enforce the rule where the \
                      policy blocks."
                    .to_string(),
            },
        }
    }

    /// What a soft alert reached: `80% of quota used`, or `500 USD reached (50% of quota)`.
    pub fn threshold_label(&self) -> String {
        match self.threshold_amount {
            Some(threshold) => format!(
                "{} {} reached ({}% of quota)",
                amount(threshold),
                self.unit,
                self.threshold_percent
            ),
            None => format!("{}% of quota used", self.threshold_percent),
        }
    }

    /// One line saying what happened, used as Slack's `text` fallback and PagerDuty's `summary`:
    /// what, scope, spent / limit in the unit, window, policy and owner.
    pub fn summary(&self) -> String {
        let what = match &self.kind {
            NoticeKind::SoftAlert => self.threshold_label(),
            NoticeKind::HardCap => "hard cap reached".to_string(),
            NoticeKind::Resolved { of } => format!("resolved ({})", of.as_str()),
            NoticeKind::Anomaly { text } => format!("anomaly: {text}"),
            NoticeKind::Rule { text } => format!("policy rule: {text}"),
        };
        let level = match self.measure() {
            Measure::Window => format!(
                "spent {} in the {} window starting {}",
                self.spent_of_limit(),
                self.window.kind,
                timestamp(self.window.start)
            ),
            Measure::Gauge => format!("at {} now", self.spent_of_limit()),
            Measure::Finding => "rule finding".to_string(),
        };
        format!(
            "[quotaflow] {what}: {} {level} (policy {}, owner {})",
            self.scope_label(),
            self.policy_id,
            self.owner.team,
        )
    }
}

/// The window kind of rule notices (model rules, retries, fallbacks, job thresholds): no
/// accounting window; repeats are grouped per hour.
pub const RULE_WINDOW: &str = "rule";

/// The unit of a pending-job backlog notice (jobs pending longer than the policy's
/// `pending_backlog.older_than`, against its `min_jobs`).
pub const PENDING_JOBS_UNIT: &str = "pending_jobs";

/// What a notice's amounts describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Spend against a limit in an accounting window.
    Window,
    /// A level now against a limit (concurrent jobs): no window.
    Gauge,
    /// A rule finding (a deprecated model, a retry loop): no level, no limit, no window.
    Finding,
}

/// Amounts as shown to people: at most two decimals, halves rounded away from zero (no floats).
pub(crate) fn amount(value: Decimal) -> String {
    value
        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
        .to_string()
}

/// Instants as shown to people: minute precision, always UTC and saying so.
pub(crate) fn timestamp(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `text` cut to at most `max_chars` characters (not bytes), ending in `…` when cut.
pub(crate) fn truncate_chars(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Which receiver an error is about; never carries its URL or key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// A Slack incoming webhook.
    Slack,
    /// The PagerDuty Events API v2.
    PagerDuty,
    /// The generic signed webhook ([`webhook`]).
    Webhook,
}

impl Service {
    /// Stable lowercase name, used in errors, logs and as the `service` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Slack => "slack",
            Service::PagerDuty => "pagerduty",
            Service::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a notification was not delivered. No variant ever contains a webhook URL or routing key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The receiver refused the request with a 4xx other than 408 and 429: the payload, URL or key is
    /// wrong, and sending it again would be refused the same way.
    #[error("{service} refused the notification with HTTP {status} (not retried): {detail}")]
    Rejected {
        service: Service,
        status: u16,
        /// The start of the response body, with secrets redacted.
        detail: String,
    },
    /// Still rate limited (HTTP 429) when the attempts ran out, or the receiver asked to wait longer
    /// than [`RetryPolicy::max_retry_after_secs`].
    #[error("{service} rate limited the notification (HTTP 429) after {attempts} attempt(s){}",
        retry_after_note(.retry_after))]
    RateLimited {
        service: Service,
        attempts: u32,
        /// What the last `Retry-After` asked for, if it was given in seconds.
        retry_after: Option<Duration>,
    },
    /// The receiver answered HTTP 408 or 5xx on the last attempt.
    #[error("{service} failed with HTTP {status} after {attempts} attempt(s)")]
    Unavailable {
        service: Service,
        status: u16,
        attempts: u32,
    },
    /// No response on the last attempt: connection refused or reset, or the attempt timed out.
    #[error("{service} unreachable after {attempts} attempt(s): {detail}")]
    Transport {
        service: Service,
        attempts: u32,
        /// The transport error chain, without the URL.
        detail: String,
    },
    /// The TLS handshake failed on the last attempt: the receiver's certificate does not chain to a
    /// trusted root (built-in webpki roots and `ca_file`), names another host, has expired, or the
    /// receiver does not speak TLS.
    #[error(
        "{service}: TLS handshake failed, the receiver's certificate was not accepted \
        (is it signed by a CA in the built-in roots or notify.ca_file?), \
        after {attempts} attempt(s): {detail}"
    )]
    Tls {
        service: Service,
        attempts: u32,
        /// The TLS error chain (e.g. `invalid peer certificate: UnknownIssuer`), without the URL.
        detail: String,
    },
    /// The request could not be built (e.g. the webhook URL does not parse): a configuration error.
    #[error("{service}: cannot build the request (not retried): {detail}")]
    InvalidRequest { service: Service, detail: String },
    /// The notice cannot be sent this way (e.g. a resolve passed to `trigger`).
    #[error("invalid notice: {0}")]
    InvalidNotice(String),
    /// The notification settings are invalid; fix them, do not retry.
    #[error("invalid notification configuration: {0}")]
    Config(String),
}

/// `; retry after N s` when the receiver said so.
fn retry_after_note(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|wait| format!("; retry after {} s", wait.as_secs()))
        .unwrap_or_default()
}

impl NotifyError {
    /// Whether the same notification may get through if sent again later: rate limits, server errors
    /// and transport failures may pass; a refused payload, a bad URL or bad config will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            NotifyError::RateLimited { .. }
            | NotifyError::Unavailable { .. }
            | NotifyError::Transport { .. }
            | NotifyError::Tls { .. } => true,
            NotifyError::Rejected { .. }
            | NotifyError::InvalidRequest { .. }
            | NotifyError::InvalidNotice(_)
            | NotifyError::Config(_) => false,
        }
    }

    /// The HTTP status the receiver answered, when it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            NotifyError::Rejected { status, .. } | NotifyError::Unavailable { status, .. } => {
                Some(*status)
            }
            NotifyError::RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// HTTP attempts made (1 when the error came before or without retries).
    pub fn attempts(&self) -> u32 {
        match self {
            NotifyError::RateLimited { attempts, .. }
            | NotifyError::Unavailable { attempts, .. }
            | NotifyError::Transport { attempts, .. }
            | NotifyError::Tls { attempts, .. } => *attempts,
            _ => 1,
        }
    }

    /// A bounded label for metrics: `rejected`, `rate_limited`, `unavailable`, `transport`, `tls`,
    /// `invalid_request`, `invalid_notice`, `config`.
    pub fn reason(&self) -> &'static str {
        match self {
            NotifyError::Rejected { .. } => "rejected",
            NotifyError::RateLimited { .. } => "rate_limited",
            NotifyError::Unavailable { .. } => "unavailable",
            NotifyError::Transport { .. } => "transport",
            NotifyError::Tls { .. } => "tls",
            NotifyError::InvalidRequest { .. } => "invalid_request",
            NotifyError::InvalidNotice(_) => "invalid_notice",
            NotifyError::Config(_) => "config",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::TimeZone;

    use super::*;

    /// A soft alert at 80% for tests across the notify modules.
    pub(crate) fn sample_notice() -> Notice {
        Notice {
            policy_id: "search-monthly".to_string(),
            owner: Owner {
                team: "search".to_string(),
                contact: "@search-oncall".to_string(),
            },
            scope: "team=search|model=gpt-4o".to_string(),
            window: NoticeWindow {
                kind: "monthly".to_string(),
                tz: "Europe/Berlin".to_string(),
                start: Utc.with_ymd_and_hms(2026, 10, 31, 23, 0, 0).unwrap(),
                end: Utc.with_ymd_and_hms(2026, 11, 30, 23, 0, 0).unwrap(),
            },
            unit: "USD".to_string(),
            spent: Decimal::new(81240, 2),
            limit: Decimal::new(1000, 0),
            threshold_percent: 80,
            kind: NoticeKind::SoftAlert,
            burn_rate_per_hour: Some(Decimal::new(125, 1)),
            projected_cap_at: Some(Utc.with_ymd_and_hms(2026, 11, 28, 14, 0, 0).unwrap()),
            approval_command: Some(
                "quotaflow approve --policy search-monthly --scope 'team=search|model=gpt-4o' --add 500"
                    .to_string(),
            ),
            slack_channel: Some("#search-alerts".to_string()),
            pagerduty_service: Some("search".to_string()),
            threshold_amount: None,
            detail: None,
        }
    }

    #[test]
    fn spent_of_limit_is_exact_with_percent() {
        let notice = sample_notice();
        assert_eq!(notice.spent_of_limit(), "812.40 / 1000 USD (81.2%)");
    }

    #[test]
    fn zero_limit_has_no_percent() {
        let mut notice = sample_notice();
        notice.limit = Decimal::ZERO;
        assert_eq!(notice.percent_used(), None);
        assert!(notice.spent_of_limit().ends_with("(n/a)"));
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncate_chars("héllo", 5), "héllo");
        assert_eq!(truncate_chars("héllo wörld", 5), "héll…");
        assert_eq!(truncate_chars("ééééé", 3).chars().count(), 3);
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        let transient = NotifyError::Unavailable {
            service: Service::Slack,
            status: 503,
            attempts: 5,
        };
        let permanent = NotifyError::Rejected {
            service: Service::PagerDuty,
            status: 400,
            detail: "invalid event".to_string(),
        };
        assert!(transient.is_retryable());
        assert!(!permanent.is_retryable());
    }
}
