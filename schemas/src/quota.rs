//! [`ScopeQuota`]: one policy scope's remaining quota, the answer of the decision sidecar's
//! `GET /v1/scopes` (from the totals and control topics) and of `quotactl scopes` (from
//! ClickHouse): one JSON shape for both, documented in `docs/gateways.md`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

/// One policy scope's quota in its current window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopeQuota {
    /// The policy.
    pub policy_id: String,
    /// Whether the policy runs in shadow mode (its decisions are never enforced).
    pub shadow: bool,
    /// The scope (`api_key_id=k1`; `no user_id` for a dimension the requests lack; `(all)`).
    pub scope: String,
    /// What is counted (`cost_usd`, `requests` …).
    pub unit: String,
    /// The window kind (`day`, `campaign:<name>` …).
    pub window: String,
    /// Start of the current window.
    pub window_start: DateTime<Utc>,
    /// When the window ends and the quota resets.
    pub resets_at: DateTime<Utc>,
    /// Whole seconds until then (at least 1).
    pub reset_seconds: u64,
    /// Spent in the window, exact.
    #[serde(with = "crate::money::json")]
    pub spent: Decimal,
    /// The policy's cap.
    #[serde(with = "crate::money::json")]
    pub cap: Decimal,
    /// The limit in force: the cap, or a raised one under an approval.
    #[serde(with = "crate::money::json")]
    pub limit: Decimal,
    /// `limit - spent`, at least 0.
    #[serde(with = "crate::money::json")]
    pub remaining: Decimal,
    /// The block or degrade in force for the scope, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionInForce>,
    /// The approved raise in force (known to readers of the approvals audit, not to the
    /// sidecar, which shows a raise as the `limit` of the decision made under it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalInForce>,
}

impl ScopeQuota {
    /// The share of its limit left (0 for a zero limit): quotas are listed tightest first.
    pub fn share_left(&self) -> Decimal {
        if self.limit.is_zero() {
            Decimal::ZERO
        } else {
            self.remaining / self.limit
        }
    }

    /// Sorts `quotas` tightest first, then by policy and scope.
    pub fn sort_tightest_first(quotas: &mut [ScopeQuota]) {
        quotas.sort_by(|a, b| {
            a.share_left()
                .cmp(&b.share_left())
                .then_with(|| a.policy_id.cmp(&b.policy_id))
                .then_with(|| a.scope.cmp(&b.scope))
        });
    }
}

/// A decision in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionInForce {
    /// `block`, `degrade`, or for a policy in shadow mode `would_block`, `would_degrade`.
    pub action: String,
    /// Why.
    pub reason: String,
    /// The model to use instead (degrade).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degrade_to: Option<String>,
    /// When it ends unless lifted earlier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// An applied approval still valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalInForce {
    /// Its id.
    pub approval_id: String,
    /// The raised limit.
    #[serde(with = "crate::money::json")]
    pub new_limit: Decimal,
    /// Until when.
    pub valid_until: DateTime<Utc>,
    /// Who approved it.
    pub approved_by: String,
}
