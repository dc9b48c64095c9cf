//! `quotactl scopes`: the remaining quota of the scopes a request names (`api_key_id=k1
//! team=search`), per windowed policy: spent in the current window, cap, the limit in force (an
//! approved raise), what remains, when it resets, the decision in force. The same answer as the
//! decision sidecar's `GET /v1/scopes`, from ClickHouse (`window_totals_current`, `decisions`,
//! `approvals`) instead of the topics: for budget owners and on-call without a sidecar at hand.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use policy::{PolicySet, ScopeKey};
use rust_decimal::Decimal;
use schemas::quota::{ApprovalInForce, DecisionInForce, ScopeQuota};
use serde::Deserialize;

use crate::Error;

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
                    degrade_to: None,
                    until: None,
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
    ScopeQuota::sort_tightest_first(&mut quotas);
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
