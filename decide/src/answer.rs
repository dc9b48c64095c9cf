//! [`Answer`]: one verdict as every surface shows it: the JSON body of `POST /v1/check` and of a
//! refusal, and the headers of forward-auth and ext_authz answers.
//!
//! | header | when | value |
//! |---|---|---|
//! | `x-quotaflow-decision` | always | `allow`, `block` or `degrade` |
//! | `x-quotaflow-policy` | block, degrade | the policy id (`gateway.fail_closed` when failing closed) |
//! | `x-quotaflow-reason` | block, degrade | the reason, printable ASCII (other characters as `?`) |
//! | `x-quotaflow-degrade-to` | degrade | the model or route to use instead |
//! | `retry-after` | block, when known | whole seconds until the block's `expires_at` or window end, at least 1 |
//! | `x-quotaflow-rule` | refused by an admission rule | the rule (`max_input_tokens` …); retrying the same request will not help |
//! | `x-quotaflow-shadow-decision` | a policy in shadow mode would refuse or degrade the request | `would_block` or `would_degrade` (not enforced) |
//! | `x-quotaflow-shadow-policy` | with it | that policy's id |
//! | `ratelimit-limit` | the sidecar follows the totals and a windowed policy counts the request | the tightest quota's limit, an exact decimal in its unit |
//! | `ratelimit-remaining` | with it | what is left of it (0 once reached) |
//! | `ratelimit-reset` | with it | whole seconds until its window ends |
//! | `x-quotaflow-quota-policy`, `x-quotaflow-quota-unit` | with it | which policy, in which unit (`cost_usd` …) |

use chrono::{DateTime, Utc};
use gateway::Verdict;
use serde::Serialize;

/// Header: the decision.
pub const DECISION: &str = "x-quotaflow-decision";
/// Header: the policy that decided.
pub const POLICY: &str = "x-quotaflow-policy";
/// Header: the reason to show.
pub const REASON: &str = "x-quotaflow-reason";
/// Header: where a degraded request goes instead.
pub const DEGRADE_TO: &str = "x-quotaflow-degrade-to";
/// Header: seconds until a block ends.
pub const RETRY_AFTER: &str = "retry-after";
/// Header: the admission rule that refused the request.
pub const RULE: &str = "x-quotaflow-rule";
/// Header: what a policy in shadow mode would do with the request (never enforced).
pub const SHADOW_DECISION: &str = "x-quotaflow-shadow-decision";
/// Header: the policy in shadow mode.
pub const SHADOW_POLICY: &str = "x-quotaflow-shadow-policy";

/// What the sidecar answers for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// `allow`, `block` or `degrade`.
    pub decision: &'static str,
    /// Whether the request may go (allowed or degraded).
    pub allowed: bool,
    /// The policy that decided (block, degrade).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// The reason to show the user (block, degrade).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The model or route to use instead (degrade).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degrade_to: Option<String>,
    /// When the decision ends unless lifted earlier (block, degrade; when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Whole seconds until then, at least 1 (block; when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// The admission rule that refused the request (`max_input_tokens` …): retrying the same
    /// request will not help.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// What a policy in shadow mode would do (`would_block`, `would_degrade`): a dry run, not
    /// enforced. Set on allowed and degraded answers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_decision: Option<&'static str>,
    /// The policy in shadow mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_policy_id: Option<String>,
    /// The request's tightest quota (least share of its limit left), when the sidecar follows
    /// the totals (`RateLimit-*` headers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<schemas::quota::ScopeQuota>,
}

impl Answer {
    /// A refusal by the sidecar itself (a missing key, an admission rule): no `Retry-After`, as
    /// the same request would be refused again.
    pub fn refused(policy_id: &str, rule: Option<&str>, reason: String) -> Answer {
        Answer {
            decision: "block",
            allowed: false,
            policy_id: Some(policy_id.to_owned()),
            reason: Some(reason),
            degrade_to: None,
            until: None,
            retry_after_seconds: None,
            rule: rule.map(str::to_owned),
            shadow_decision: None,
            shadow_policy_id: None,
            quota: None,
        }
    }

    /// The answer for `verdict` at `now`.
    pub fn of(verdict: &Verdict, now: DateTime<Utc>) -> Answer {
        match verdict {
            Verdict::Allow => Answer {
                decision: "allow",
                allowed: true,
                policy_id: None,
                reason: None,
                degrade_to: None,
                until: None,
                retry_after_seconds: None,
                rule: None,
                shadow_decision: None,
                shadow_policy_id: None,
                quota: None,
            },
            Verdict::Block {
                reason,
                policy_id,
                until,
                ..
            } => Answer {
                decision: "block",
                allowed: false,
                policy_id: Some(policy_id.to_string()),
                reason: Some(reason.to_string()),
                degrade_to: None,
                until: *until,
                retry_after_seconds: until.map(|until| seconds_until(until, now)),
                rule: None,
                shadow_decision: None,
                shadow_policy_id: None,
                quota: None,
            },
            Verdict::Degrade {
                to,
                reason,
                policy_id,
                until,
                ..
            } => Answer {
                decision: "degrade",
                allowed: true,
                policy_id: Some(policy_id.to_string()),
                reason: Some(reason.to_string()),
                degrade_to: Some(to.to_string()),
                until: *until,
                retry_after_seconds: None,
                rule: None,
                shadow_decision: None,
                shadow_policy_id: None,
                quota: None,
            },
        }
    }

    /// Adds what a policy in shadow mode would do (`shadow`, from
    /// [`crate::Checker::check_shadow`]) to an answer that lets the request go.
    pub fn with_shadow(mut self, shadow: &Verdict) -> Answer {
        let (would, policy_id) = match shadow {
            Verdict::Allow => return self,
            Verdict::Block { policy_id, .. } => ("would_block", policy_id),
            Verdict::Degrade { policy_id, .. } => ("would_degrade", policy_id),
        };
        if self.allowed {
            self.shadow_decision = Some(would);
            self.shadow_policy_id = Some(policy_id.to_string());
        }
        self
    }

    /// Adds the request's tightest quota (its `RateLimit-*` headers).
    pub fn with_quota(mut self, quota: Option<schemas::quota::ScopeQuota>) -> Answer {
        self.quota = quota;
        self
    }

    /// The answer's headers (see the module docs), names in lower case.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![(DECISION, self.decision.to_owned())];
        if let Some(policy_id) = &self.policy_id {
            headers.push((POLICY, header_safe(policy_id)));
        }
        if let Some(reason) = &self.reason {
            headers.push((REASON, header_safe(reason)));
        }
        if let Some(to) = &self.degrade_to {
            headers.push((DEGRADE_TO, header_safe(to)));
        }
        if let Some(seconds) = self.retry_after_seconds {
            headers.push((RETRY_AFTER, seconds.to_string()));
        }
        if let Some(rule) = &self.rule {
            headers.push((RULE, rule.clone()));
        }
        if let (Some(would), Some(policy_id)) = (self.shadow_decision, &self.shadow_policy_id) {
            headers.push((SHADOW_DECISION, would.to_owned()));
            headers.push((SHADOW_POLICY, header_safe(policy_id)));
        }
        if let Some(quota) = &self.quota {
            headers.extend(ratelimit_headers(quota));
        }
        headers
    }

    /// The JSON body of a refusal, in the shape of an OpenAI-style error so clients built for
    /// providers show it.
    pub fn error_body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "type": if self.rule.is_some() { "request_not_admitted" } else { "quota_exceeded" },
                "code": self.policy_id,
                "message": self.reason,
                "retry_after_seconds": self.retry_after_seconds,
            }
        })
    }
}

/// The `RateLimit-*` headers of the tightest quota (see `docs/gateways.md`): `ratelimit-limit`,
/// `ratelimit-remaining` (exact decimals in the policy's unit), `ratelimit-reset` (seconds), and
/// `x-quotaflow-quota-policy` / `x-quotaflow-quota-unit` naming them.
pub fn ratelimit_headers(quota: &schemas::quota::ScopeQuota) -> [(&'static str, String); 5] {
    [
        ("ratelimit-limit", quota.limit.to_string()),
        ("ratelimit-remaining", quota.remaining.to_string()),
        ("ratelimit-reset", quota.reset_seconds.to_string()),
        ("x-quotaflow-quota-policy", header_safe(&quota.policy_id)),
        ("x-quotaflow-quota-unit", quota.unit.clone()),
    ]
}

/// Whole seconds from `now` until `until`, rounded up, at least 1 (a client must wait).
fn seconds_until(until: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let millis = (until - now).num_milliseconds().max(0) as u64;
    millis.div_ceil(1000).max(1)
}

/// `text` as a header value: printable ASCII kept, anything else (accents, control characters,
/// line breaks) replaced by `?`, so no reason can break or inject a header.
pub fn header_safe(text: &str) -> String {
    text.chars()
        .map(|character| {
            if character == ' ' || character.is_ascii_graphic() {
                character
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
    }

    #[test]
    fn a_block_says_when_to_retry_rounded_up() {
        let verdict = Verdict::Block {
            reason: Arc::from("team search spent 100 of 100 USD today\r\nX-Evil: 1 é"),
            policy_id: Arc::from("team-daily"),
            key: Arc::from("team-daily/team=search"),
            until: Some(now() + chrono::TimeDelta::milliseconds(90_001)),
        };
        let answer = Answer::of(&verdict, now());
        assert!(!answer.allowed);
        assert_eq!(answer.retry_after_seconds, Some(91));
        let headers = answer.headers();
        assert!(headers.contains(&(RETRY_AFTER, "91".to_owned())));
        assert!(headers.contains(&(POLICY, "team-daily".to_owned())));
        assert!(headers.contains(&(
            REASON,
            "team search spent 100 of 100 USD today??X-Evil: 1 ?".to_owned()
        )));
    }

    #[test]
    fn a_block_whose_end_has_passed_still_asks_for_a_second_and_an_unknown_end_for_none() {
        let ended = Verdict::Block {
            reason: Arc::from("r"),
            policy_id: Arc::from("p"),
            key: Arc::from("k"),
            until: Some(now() - chrono::TimeDelta::seconds(5)),
        };
        assert_eq!(Answer::of(&ended, now()).retry_after_seconds, Some(1));
        let unknown = Verdict::Block {
            reason: Arc::from("r"),
            policy_id: Arc::from("p"),
            key: Arc::from("k"),
            until: None,
        };
        let answer = Answer::of(&unknown, now());
        assert_eq!(answer.retry_after_seconds, None);
        assert!(answer
            .headers()
            .iter()
            .all(|(name, _)| *name != RETRY_AFTER));
    }

    #[test]
    fn a_degrade_may_go_and_names_the_cheaper_route() {
        let verdict = Verdict::Degrade {
            to: Arc::from("gpt-4o-mini"),
            reason: Arc::from("premium budget spent"),
            policy_id: Arc::from("premium"),
            key: Arc::from("premium/team=search"),
            until: None,
        };
        let answer = Answer::of(&verdict, now());
        assert!(answer.allowed);
        assert_eq!(answer.decision, "degrade");
        assert!(answer
            .headers()
            .contains(&(DEGRADE_TO, "gpt-4o-mini".to_owned())));
    }
}
