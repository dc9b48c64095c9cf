//! `quotactl scopes`: the remaining quota of the scopes a request names (`api_key_id=k1
//! team=search`), per windowed policy: spent in the current window, cap, the limit in force (an
//! approved raise), what remains, when it resets, the decision in force. The same answer as the
//! decision sidecar's `GET /v1/scopes`, from ClickHouse (`window_totals_current`, `decisions`,
//! `approvals`) instead of the topics: for budget owners and on-call without a sidecar at hand.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use policy::{PolicySet, ScopeKey};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::Error;

/// One policy scope's quota.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScopeQuota {
    /// The policy.
    pub policy_id: String,
    /// Whether the policy runs in shadow mode.
    pub shadow: bool,
    /// The scope (`api_key_id=k1`).
    pub scope: String,
    /// What is counted.
    pub unit: String,
    /// The window kind.
    pub window: String,
    /// Start of the current window.
    pub window_start: DateTime<Utc>,
    /// When it ends and the quota resets.
    pub resets_at: DateTime<Utc>,
    /// Whole seconds until then (at least 1).
    pub reset_seconds: u64,
    /// Spent in the window, exact.
    #[serde(with = "schemas::money::json")]
    pub spent: Decimal,
    /// The policy's cap.
    #[serde(with = "schemas::money::json")]
    pub cap: Decimal,
    /// The limit in force: the cap, or an approved raise in force.
    #[serde(with = "schemas::money::json")]
    pub limit: Decimal,
    /// `limit - spent`, at least 0.
    #[serde(with = "schemas::money::json")]
    pub remaining: Decimal,
    /// The decision in force for the scope (its newest, when not `allow`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionInForce>,
    /// The approved raise in force for the scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalInForce>,
}

/// A decision in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionInForce {
    /// `block`, `degrade`, `would_block`, `would_degrade`.
    pub action: String,
    /// Why.
    pub reason: String,
}

/// An applied approval still valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalInForce {
    /// Its id.
    pub approval_id: String,
    /// The raised limit.
    #[serde(with = "schemas::money::json")]
    pub new_limit: Decimal,
    /// Until when.
    pub valid_until: DateTime<Utc>,
    /// Who approved it.
    pub approved_by: String,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ApprovalRow {
    approval_id: String,
    policy_id: String,
    scope_keys: Vec<String>,
    scope_values: Vec<String>,
    new_limit: String,
    valid_until: u32,
    approved_by: String,
}

/// The quotas of every windowed policy scope in its current window whose scope has every
/// `dimension=value` of `filter`, tightest first (least share of its limit left).
pub async fn scopes(
    client: &clickhouse::Client,
    policies: &PolicySet,
    filter: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> Result<Vec<ScopeQuota>, Error> {
    let statuses: Vec<crate::ScopeStatus> = crate::status(client, policies, None, now)
        .await?
        .into_iter()
        .filter(|status| {
            let present = ScopeKey::present_of(&status.scope_key);
            filter
                .iter()
                .all(|(name, value)| present.get(name) == Some(value))
        })
        .collect();
    if statuses.is_empty() {
        return Ok(Vec::new());
    }
    let decisions: BTreeMap<String, crate::DecisionRow> = crate::decisions(client, false, 100_000)
        .await?
        .into_iter()
        .map(|decision| (decision.key.clone(), decision))
        .collect();
    let approvals: Vec<ApprovalRow> = client
        .query(
            "SELECT approval_id, policy_id, scope_keys, scope_values, toString(new_limit) AS new_limit, \
             toUInt32(valid_until) AS valid_until, approved_by FROM approvals FINAL \
             WHERE status = 'applied' AND valid_until > toDateTime(?, 'UTC')",
        )
        .bind(now.timestamp())
        .fetch_all()
        .await?;
    let mut quotas: Vec<ScopeQuota> = statuses
        .into_iter()
        .filter_map(|status| {
            let policy = policies.get(&status.policy_id)?;
            let present = ScopeKey::present_of(&status.scope_key);
            let approval = approvals
                .iter()
                .filter(|approval| {
                    approval.policy_id == status.policy_id
                        && approval
                            .scope_keys
                            .iter()
                            .cloned()
                            .zip(approval.scope_values.iter().cloned())
                            .collect::<BTreeMap<String, String>>()
                            == present
                })
                .filter_map(|approval| {
                    Some(ApprovalInForce {
                        approval_id: approval.approval_id.clone(),
                        new_limit: approval.new_limit.parse().ok()?,
                        valid_until: DateTime::<Utc>::from_timestamp(
                            i64::from(approval.valid_until),
                            0,
                        )?,
                        approved_by: approval.approved_by.clone(),
                    })
                })
                .max_by_key(|approval| approval.new_limit);
            let limit = approval
                .as_ref()
                .map_or(status.cap, |approval| approval.new_limit.max(status.cap));
            let decision = decisions
                .get(&policy.control_key(&status.scope_key))
                .map(|decision| DecisionInForce {
                    action: decision.action.clone(),
                    reason: decision.reason.clone(),
                });
            Some(ScopeQuota {
                policy_id: status.policy_id,
                shadow: status.shadow,
                scope: status.scope,
                unit: status.unit,
                window: status.window,
                window_start: status.window_start,
                resets_at: status.window_end,
                reset_seconds: u64::try_from((status.window_end - now).num_seconds())
                    .unwrap_or(0)
                    .max(1),
                spent: status.amount,
                cap: status.cap,
                limit: limit.normalize(),
                remaining: (limit - status.amount).max(Decimal::ZERO).normalize(),
                decision,
                approval,
            })
        })
        .collect();
    let share_left = |quota: &ScopeQuota| {
        if quota.limit.is_zero() {
            Decimal::ZERO
        } else {
            quota.remaining / quota.limit
        }
    };
    quotas.sort_by(|a, b| {
        share_left(a)
            .cmp(&share_left(b))
            .then_with(|| a.policy_id.cmp(&b.policy_id))
            .then_with(|| a.scope.cmp(&b.scope))
    });
    Ok(quotas)
}

/// A plain-text table of `quotas`.
pub fn table(quotas: &[ScopeQuota]) -> String {
    let mut out = format!(
        "{:<32} {:<36} {:>16} {:>12} {:>16}  {:<20} {}\n",
        "policy", "scope", "spent", "limit", "remaining", "resets", "in force"
    );
    for quota in quotas {
        let mut in_force = Vec::new();
        if let Some(decision) = &quota.decision {
            in_force.push(decision.action.clone());
        }
        if let Some(approval) = &quota.approval {
            in_force.push(format!(
                "raise to {} by {} until {}",
                approval.new_limit.normalize(),
                approval.approved_by,
                approval.valid_until.format("%Y-%m-%d %H:%M UTC")
            ));
        }
        out.push_str(&format!(
            "{:<32} {:<36} {:>16} {:>12} {:>16}  {:<20} {}\n",
            if quota.shadow {
                format!("{} (shadow)", quota.policy_id)
            } else {
                quota.policy_id.clone()
            },
            quota.scope,
            format!("{} {}", quota.spent.round_dp(4).normalize(), quota.unit),
            quota.limit.to_string(),
            quota.remaining.round_dp(4).normalize().to_string(),
            quota.resets_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            if in_force.is_empty() {
                "-".to_owned()
            } else {
                in_force.join("; ")
            }
        ));
    }
    out
}
