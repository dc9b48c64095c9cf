//! `quotactl review POLICY` (issue 17 point 6): what a budget owner looks at on the policy's
//! review cadence, from the audit tables and the totals: spend against cap per scope in the
//! current windows, alerts by kind, blocks, and each raise approved in the period with its
//! post-run review (who approved how much, for how long, and what the scope spent in the window
//! the raise was for).
//!
//! The period is the policy's `review.cadence` (weekly: 7 days, monthly: 30, quarterly: 91) back
//! from now, or `--days`. Read-only.

use chrono::{DateTime, TimeDelta, Utc};
use policy::{Policy, PolicySet, ReviewCadence};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{instant, status, Error, ScopeStatus, TotalRow, TOTAL_COLUMNS};

/// The review of one policy over a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Review {
    /// The policy.
    pub policy_id: String,
    /// Its owner team.
    pub owner: String,
    /// Its cap and unit.
    pub cap: Decimal,
    /// The policy's unit.
    pub unit: String,
    /// The period reviewed.
    pub from: DateTime<Utc>,
    /// Its end (now).
    pub to: DateTime<Utc>,
    /// Every scope in its current window, highest percent of cap first.
    pub spend: Vec<ScopeStatus>,
    /// Alerts raised in the period, by kind.
    pub alerts: Vec<KindCount>,
    /// Blocks and degrades issued in the period, by action, with the scopes they hit.
    pub blocks: Vec<BlockCount>,
    /// Raises decided in the period, with their post-run review.
    pub raises: Vec<Raise>,
}

/// A count per alert kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct KindCount {
    /// The alert kind.
    pub kind: String,
    /// How many.
    pub count: u64,
}

/// Blocks or degrades issued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct BlockCount {
    /// `block`, `degrade` (or `would_*` in shadow mode).
    pub action: String,
    /// Decisions issued.
    pub count: u64,
    /// Distinct control keys (scopes) they hit.
    pub scopes: u64,
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct ApprovalRow {
    approval_id: String,
    scope_keys: Vec<String>,
    scope_values: Vec<String>,
    new_limit: String,
    valid_until: u32,
    reason: String,
    approved_by: String,
    status: String,
    decided_at: u32,
}

/// One raise and its post-run review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Raise {
    /// The approval.
    pub approval_id: String,
    /// The scope it raised, rendered.
    pub scope: String,
    /// Who approved it.
    pub approved_by: String,
    /// Why.
    pub reason: String,
    /// `applied`, `rejected`, `expired` or `withdrawn`.
    pub status: String,
    /// The limit it set, and how much above the cap that is.
    pub new_limit: Decimal,
    /// `new_limit - cap`.
    pub raised_by: Decimal,
    /// When it was decided, and until when it held.
    pub decided_at: DateTime<Utc>,
    /// Until when it held.
    pub valid_until: DateTime<Utc>,
    /// How long it held, in hours.
    pub hours: Decimal,
    /// What the scope spent, in the unit, in the window the raise was decided in (`None`: no
    /// total of that window is held any more).
    pub spent_in_window: Option<Decimal>,
    /// Of that, how much above the cap: what the raise let through.
    pub spent_above_cap: Option<Decimal>,
}

/// The review period of `policy` ending at `now`: `days` back, or its cadence's.
pub fn period(policy: &Policy, days: Option<u32>, now: DateTime<Utc>) -> DateTime<Utc> {
    let days = days.unwrap_or_else(|| {
        match policy.record().review.as_ref().map(|review| review.cadence) {
            Some(ReviewCadence::Monthly) => 30,
            Some(ReviewCadence::Quarterly) => 91,
            Some(ReviewCadence::Weekly) | None => 7,
        }
    });
    now - TimeDelta::days(i64::from(days))
}

/// The review of `policy_id` over the `days` before `now` (see [`period`]).
pub async fn review(
    client: &clickhouse::Client,
    policies: &PolicySet,
    policy_id: &str,
    days: Option<u32>,
    now: DateTime<Utc>,
) -> Result<Review, Error> {
    let policy = policies
        .get(policy_id)
        .ok_or_else(|| Error::Amount(format!("no policy {policy_id} in the policy directory")))?;
    let from = period(policy, days, now);
    let since = from.timestamp();
    let spend = status(client, policies, Some(policy_id), now).await?;
    let alerts: Vec<KindCount> = client
        .query(
            "SELECT kind, count() AS count FROM alerts FINAL WHERE policy_id = ? \
             AND raised_at >= toDateTime(?, 'UTC') GROUP BY kind ORDER BY kind",
        )
        .bind(policy_id)
        .bind(since)
        .fetch_all()
        .await?;
    let blocks: Vec<BlockCount> = client
        .query(
            "SELECT action, count() AS count, uniqExact(key) AS scopes FROM decisions FINAL \
             WHERE policy_id = ? AND issued_at >= toDateTime(?, 'UTC') AND action != 'allow' \
             GROUP BY action ORDER BY action",
        )
        .bind(policy_id)
        .bind(since)
        .fetch_all()
        .await?;
    let approvals: Vec<ApprovalRow> = client
        .query(
            "SELECT approval_id, scope_keys, scope_values, toString(new_limit) AS new_limit, \
             toUInt32(valid_until) AS valid_until, reason, approved_by, status, \
             toUInt32(decided_at) AS decided_at FROM approvals FINAL \
             WHERE policy_id = ? AND decided_at >= toDateTime(?, 'UTC') ORDER BY decided_at, approval_id",
        )
        .bind(policy_id)
        .bind(since)
        .fetch_all()
        .await?;
    let totals: Vec<TotalRow> = if approvals.is_empty() {
        Vec::new()
    } else {
        client
            .query(&format!(
                "SELECT {TOTAL_COLUMNS} FROM window_totals_current \
                 WHERE startsWith(scope_kind, ?) AND window_end > toDateTime(?, 'UTC')"
            ))
            .bind(format!("policy:{policy_id}"))
            .bind(since)
            .fetch_all()
            .await?
    };
    let cap = policy.hard_cap();
    let mut raises = Vec::new();
    for approval in approvals {
        let scope: std::collections::BTreeMap<String, String> = approval
            .scope_keys
            .iter()
            .cloned()
            .zip(approval.scope_values.iter().cloned())
            .collect();
        let decided_at = instant(approval.decided_at);
        let valid_until = instant(approval.valid_until);
        let new_limit: Decimal = approval
            .new_limit
            .parse()
            .map_err(|error| Error::Amount(format!("new_limit: {error}")))?;
        let mut spent_in_window = None;
        for row in &totals {
            if policies
                .by_totals_scope_kind(&row.scope_kind)
                .map(Policy::id)
                != Some(policy_id)
                || instant(row.window_start) > decided_at
                || instant(row.window_end) <= decided_at
                || policy::ScopeKey::present_of(&row.scope_key) != scope
            {
                continue;
            }
            spent_in_window = Some(row.measures()?.unit_amount(policy.unit()).normalize());
        }
        let hours =
            Decimal::from((valid_until - decided_at).num_seconds().max(0)) / Decimal::from(3600);
        raises.push(Raise {
            approval_id: approval.approval_id,
            scope: alerter::engine::render_scope(&scope),
            approved_by: approval.approved_by,
            reason: approval.reason,
            status: approval.status,
            raised_by: (new_limit - cap).normalize(),
            new_limit: new_limit.normalize(),
            decided_at,
            valid_until,
            hours: hours.round_dp(2).normalize(),
            spent_above_cap: spent_in_window
                .map(|spent| (spent - cap).max(Decimal::ZERO).normalize()),
            spent_in_window,
        });
    }
    Ok(Review {
        policy_id: policy_id.to_owned(),
        owner: policy.record().owner.team.clone(),
        cap: cap.normalize(),
        unit: policy.unit().to_string(),
        from,
        to: now,
        spend,
        alerts,
        blocks,
        raises,
    })
}

/// The review as plain text.
pub fn text(review: &Review) -> String {
    let when = |at: DateTime<Utc>| at.format("%Y-%m-%d %H:%M UTC").to_string();
    let mut out = format!(
        "Review of policy {} (owner {}), cap {} {}, {} → {}\n\nSpend against cap (current windows)\n",
        review.policy_id,
        review.owner,
        review.cap,
        review.unit,
        when(review.from),
        when(review.to)
    );
    if review.spend.is_empty() {
        out.push_str("  no spend in the current windows\n");
    }
    for scope in &review.spend {
        out.push_str(&format!(
            "  {:<40} {} {} / {} ({}%), window {} from {}\n",
            scope.scope,
            scope.amount,
            scope.unit,
            scope.cap,
            scope.percent_of_cap,
            scope.window,
            when(scope.window_start)
        ));
    }
    out.push_str("\nAlerts\n");
    if review.alerts.is_empty() {
        out.push_str("  none\n");
    }
    for kind in &review.alerts {
        out.push_str(&format!("  {:<20} {}\n", kind.kind, kind.count));
    }
    out.push_str("\nBlocks\n");
    if review.blocks.is_empty() {
        out.push_str("  none\n");
    }
    for block in &review.blocks {
        out.push_str(&format!(
            "  {:<20} {} decisions on {} scopes\n",
            block.action, block.count, block.scopes
        ));
    }
    out.push_str("\nRaises (post-run review)\n");
    if review.raises.is_empty() {
        out.push_str("  none\n");
    }
    for raise in &review.raises {
        let spent = match (raise.spent_in_window, raise.spent_above_cap) {
            (Some(spent), Some(above)) => format!(
                "spent {spent} {} in that window, {above} above the cap",
                review.unit
            ),
            _ => "spend of that window no longer held".to_owned(),
        };
        out.push_str(&format!(
            "  {} {}: {} by {} to {} (+{}) for {} h until {} ({}): {spent}; reason: {}\n",
            raise.approval_id,
            raise.scope,
            raise.status,
            raise.approved_by,
            raise.new_limit,
            raise.raised_by,
            raise.hours,
            when(raise.valid_until),
            when(raise.decided_at),
            raise.reason
        ));
    }
    out
}
