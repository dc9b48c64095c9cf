//! PagerDuty Events API v2: trigger and resolve alerts, one incident per policy, scope, window and kind.
//!
//! # Incidents and `dedup_key`
//! [`dedup_key`] is a pure function of (policy id, scope, window start, incident kind), so every
//! event about one incident, from any replica, on any retry, after any restart, carries the same key:
//! PagerDuty folds repeated triggers into the open alert and treats a repeated resolve as a no-op.
//! A higher threshold crossed in the same window (80% then 90%) therefore updates the open alert rather
//! than paging again; the next window is a new incident.
//!
//! # Severity
//! | notice                                   | severity   |
//! |------------------------------------------|------------|
//! | [`NoticeKind::HardCap`]                  | `critical` |
//! | soft alert, threshold ≥ 100%             | `error`    |
//! | soft alert, threshold 90–99%             | `warning`  |
//! | soft alert, threshold < 90%              | `info`     |
//! | [`NoticeKind::Anomaly`]                  | `warning`  |
//!
//! Whether `info` and `warning` page someone is the PagerDuty service's urgency rules' decision.
//!
//! # Payload fields
//! `summary` is [`Notice::summary`] (at most 1024 characters, PagerDuty's limit); `source` is the scope
//! (what is affected); `component` the policy id; `group` the owning team; `class` the notice kind;
//! `custom_details` carries every figure of the notice, decimals as exact strings.
//!
//! Success is HTTP 202 (any 2xx is accepted); 400 means an invalid event and is not retried; 429 and
//! 5xx are retried (see [`crate::notify::retry`]). The routing key is the credential: it is in the
//! body because the API requires it there, and never in a log line or error.

use chrono::{DateTime, SecondsFormat, Utc};
use infra::secret::Secret;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::retry::{self, Redactor, RetryPolicy};
use super::{truncate_chars, IncidentKind, Notice, NoticeKind, NotifyError, Service};

/// The public Events API v2 endpoint.
pub const DEFAULT_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// PagerDuty's limit on `payload.summary`.
pub const MAX_SUMMARY_CHARS: usize = 1024;
/// What `source` says when a notice has no scope.
const UNSCOPED_SOURCE: &str = "quotaflow";

/// Sends events to the PagerDuty Events API v2; the routing key (one per PagerDuty service) is given
/// per call.
#[derive(Debug, Clone)]
pub struct PagerDutyNotifier {
    /// Events API endpoint: [`DEFAULT_EVENTS_URL`] in production, a local receiver in tests.
    events_url: String,
    /// Shared HTTP client (connection pool); timeouts are set per attempt from `retry`.
    http: reqwest::Client,
    /// How failed events are retried.
    retry: RetryPolicy,
}

/// PagerDuty severities, from most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Critical,
    Error,
    Warning,
    Info,
}

impl Severity {
    /// The Events API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    /// The mapping documented in the module docs; `None` for a resolve, which has no severity.
    pub fn of(notice: &Notice) -> Option<Severity> {
        match &notice.kind {
            NoticeKind::HardCap => Some(Severity::Critical),
            NoticeKind::SoftAlert if notice.threshold_percent >= 100 => Some(Severity::Error),
            NoticeKind::SoftAlert if notice.threshold_percent >= 90 => Some(Severity::Warning),
            NoticeKind::SoftAlert => Some(Severity::Info),
            NoticeKind::Anomaly { .. } | NoticeKind::Rule { .. } => Some(Severity::Warning),
            NoticeKind::Resolved { .. } => None,
        }
    }
}

impl PagerDutyNotifier {
    /// A notifier posting to `events_url` (usually [`DEFAULT_EVENTS_URL`]) with the default
    /// [`RetryPolicy`].
    pub fn new(events_url: String, http: reqwest::Client) -> Self {
        Self {
            events_url,
            http,
            retry: RetryPolicy::default(),
        }
    }

    /// The same notifier with another retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Triggers (or updates) the incident of `notice` and returns its `dedup_key`, which
    /// [`PagerDutyNotifier::resolve`] takes. A [`NoticeKind::Resolved`] notice is refused: use
    /// [`PagerDutyNotifier::send`] or `resolve`.
    pub async fn trigger(
        &self,
        routing_key: &Secret,
        notice: &Notice,
    ) -> Result<String, NotifyError> {
        if notice.kind.incident_kind().is_none() {
            return Err(NotifyError::InvalidNotice(
                "a resolved notice is sent with resolve, not trigger".to_string(),
            ));
        }
        let key = incident_key(notice);
        self.post(routing_key, &trigger_payload(routing_key, notice, &key))
            .await?;
        Ok(key)
    }

    /// Resolves the incident with `dedup_key`; resolving an incident that is not open is a no-op at
    /// PagerDuty.
    pub async fn resolve(&self, routing_key: &Secret, dedup_key: &str) -> Result<(), NotifyError> {
        self.post(routing_key, &resolve_payload(routing_key, dedup_key))
            .await
    }

    /// Triggers for an alert or anomaly, resolves the matching incident for a
    /// [`NoticeKind::Resolved`]; returns the `dedup_key` used.
    pub async fn send(&self, routing_key: &Secret, notice: &Notice) -> Result<String, NotifyError> {
        match &notice.kind {
            NoticeKind::Resolved { .. } => {
                let key = incident_key(notice);
                self.resolve(routing_key, &key).await?;
                Ok(key)
            }
            _ => self.trigger(routing_key, notice).await,
        }
    }

    async fn post(&self, routing_key: &Secret, body: &Value) -> Result<(), NotifyError> {
        retry::post_json(
            &self.http,
            Service::PagerDuty,
            &self.events_url,
            body,
            &self.retry,
            &Redactor::new(routing_key.expose()),
        )
        .await
        .map(|_attempts| ())
    }
}

/// The incident key: `quotaflow-<incident kind>-<32 hex>`, where the hex is the start of the SHA-256
/// of `policy_id`, `scope`, the window start (RFC 3339, UTC, seconds) and the kind, separated by
/// `\x1f` (a byte neither ids nor scopes contain) so that no two different tuples collide by
/// concatenation. Deterministic across processes and versions; at most 64 characters, well under
/// PagerDuty's 255. Never change this format: open incidents could then no longer be resolved.
pub fn dedup_key(
    policy_id: &str,
    scope: &str,
    window_start: DateTime<Utc>,
    kind: IncidentKind,
) -> String {
    let window_start = window_start.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut hasher = Sha256::new();
    for part in [policy_id, scope, window_start.as_str(), kind.as_str()] {
        hasher.update(part.as_bytes());
        hasher.update([0x1f]);
    }
    let digest = hasher.finalize();
    format!("quotaflow-{}-{}", kind.as_str(), hex::encode(&digest[..16]))
}

/// The `dedup_key` of the incident `notice` opens, updates or (for a [`NoticeKind::Resolved`])
/// resolves.
pub fn incident_key(notice: &Notice) -> String {
    dedup_key(
        &notice.policy_id,
        &notice.scope,
        notice.window.start,
        notice.kind.incident(),
    )
}

/// The trigger event for `notice` with `dedup_key`.
pub fn trigger_payload(routing_key: &Secret, notice: &Notice, dedup_key: &str) -> Value {
    let severity = Severity::of(notice).unwrap_or(Severity::Info);
    let source = if notice.scope.is_empty() {
        UNSCOPED_SOURCE
    } else {
        notice.scope.as_str()
    };
    let mut details = json!({
        "policy_id": notice.policy_id,
        "owner_team": notice.owner.team,
        "owner_contact": notice.owner.contact,
        "scope": notice.scope,
        "window_kind": notice.window.kind,
        "window_tz": notice.window.tz,
        "window_start": notice.window.start.to_rfc3339_opts(SecondsFormat::Secs, true),
        "window_end": notice.window.end.to_rfc3339_opts(SecondsFormat::Secs, true),
        "unit": notice.unit,
        "spent": notice.spent.to_string(),
        "limit": notice.limit.to_string(),
        "percent_used": notice.percent_used().map(|percent| percent.to_string()),
        "threshold_percent": notice.threshold_percent,
        "threshold_amount": notice.threshold_amount.map(|threshold| threshold.to_string()),
        "burn_rate_per_hour": notice.burn_rate_per_hour.map(|rate| rate.to_string()),
        "projected_cap_at": notice
            .projected_cap_at
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true)),
        "approval_command": notice.approval_command,
        "window": notice.window_label(),
        "spent_of_limit": notice.amounts(),
        "next_action": notice.next_action(),
        "detail": notice.detail,
    });
    if let NoticeKind::Anomaly { text } = &notice.kind {
        details["anomaly"] = json!(text);
    }
    if let NoticeKind::Rule { text } = &notice.kind {
        details["rule"] = json!(text);
    }
    json!({
        "routing_key": routing_key.expose(),
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": truncate_chars(&notice.summary(), MAX_SUMMARY_CHARS),
            "source": source,
            "severity": severity.as_str(),
            "component": notice.policy_id,
            "group": notice.owner.team,
            "class": notice.kind.as_str(),
            "custom_details": details,
        },
    })
}

/// The resolve event for `dedup_key`.
pub fn resolve_payload(routing_key: &Secret, dedup_key: &str) -> Value {
    json!({
        "routing_key": routing_key.expose(),
        "event_action": "resolve",
        "dedup_key": dedup_key,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::notify::tests::sample_notice;

    #[test]
    fn dedup_key_is_stable_and_separates_incidents() {
        let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        let key = dedup_key("p1", "team=search", start, IncidentKind::HardCap);
        // Pinned: a change would orphan every open incident.
        assert_eq!(key, "quotaflow-hard_cap-ca29da6dcfedcb5a21388294e7fb9fc7");
        assert_eq!(
            key,
            dedup_key("p1", "team=search", start, IncidentKind::HardCap)
        );
        assert!(key.starts_with("quotaflow-hard_cap-"));
        assert_eq!(key.len(), "quotaflow-hard_cap-".len() + 32);
        let others = [
            dedup_key("p2", "team=search", start, IncidentKind::HardCap),
            dedup_key("p1", "team=ads", start, IncidentKind::HardCap),
            dedup_key(
                "p1",
                "team=search",
                start + chrono::Duration::days(1),
                IncidentKind::HardCap,
            ),
            dedup_key("p1", "team=search", start, IncidentKind::SoftAlert),
            // Concatenation must not collide.
            dedup_key("p1t", "eam=search", start, IncidentKind::HardCap),
        ];
        for other in others {
            assert_ne!(key, other);
        }
    }

    #[test]
    fn severity_follows_the_documented_mapping() {
        let mut notice = sample_notice();
        let mut severity_at = |kind: NoticeKind, threshold: u32| {
            notice.kind = kind;
            notice.threshold_percent = threshold;
            Severity::of(&notice)
        };
        assert_eq!(
            severity_at(NoticeKind::HardCap, 100),
            Some(Severity::Critical)
        );
        assert_eq!(
            severity_at(NoticeKind::SoftAlert, 120),
            Some(Severity::Error)
        );
        assert_eq!(
            severity_at(NoticeKind::SoftAlert, 100),
            Some(Severity::Error)
        );
        assert_eq!(
            severity_at(NoticeKind::SoftAlert, 90),
            Some(Severity::Warning)
        );
        assert_eq!(severity_at(NoticeKind::SoftAlert, 80), Some(Severity::Info));
        let anomaly = NoticeKind::Anomaly {
            text: "x".to_string(),
        };
        assert_eq!(severity_at(anomaly, 0), Some(Severity::Warning));
        let resolved = NoticeKind::Resolved {
            of: IncidentKind::HardCap,
        };
        assert_eq!(severity_at(resolved, 100), None);
    }

    #[test]
    fn trigger_payload_has_the_required_fields() {
        let notice = sample_notice();
        let key = Secret::new("R0UTING");
        let payload = trigger_payload(&key, &notice, "k");
        assert_eq!(payload["routing_key"], "R0UTING");
        assert_eq!(payload["event_action"], "trigger");
        assert_eq!(payload["dedup_key"], "k");
        assert_eq!(payload["payload"]["severity"], "info");
        assert_eq!(payload["payload"]["source"], "team=search|model=gpt-4o");
        assert_eq!(payload["payload"]["custom_details"]["spent"], "812.40");
        let mut long = notice;
        long.scope = "x".repeat(3000);
        let payload = trigger_payload(&key, &long, "k");
        let summary = payload["payload"]["summary"].as_str().unwrap();
        assert_eq!(summary.chars().count(), MAX_SUMMARY_CHARS);
    }
}
