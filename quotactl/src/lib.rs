//! `quotactl`: the operator CLI. Budget owners and on-call read where every scope stands against
//! its cap and what the alerter decided; they check policy edits and approve raises.
//!
//! - [`status`]: every scope of every windowed policy in its **current** window, by percent of its
//!   cap, with the burn rate over the window so far and the projected time the cap is reached
//!   (from ClickHouse `window_totals_current` and the policy files; exact decimals).
//! - [`decisions`]: the decisions in force (the newest per key is not `allow`), or the history.
//! - [`scopes::scopes`]: the remaining quota of the scopes a request names, with the decision
//!   and the approved raise in force: the decision sidecar's `GET /v1/scopes`, from ClickHouse.
//! - `policy check` and `approve` are the alerter's own ([`alerter::approve`]).
//!
//! Every command prints a table, or JSON with `--json`. Reads only: the approvals topic is the one
//! thing written (by `approve`).

pub mod replay;
pub mod scopes;

use chrono::{DateTime, TimeDelta, Utc};
use policy::PolicySet;
use quotaflow_totals::measures::Measures;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ClickHouse did not answer the query.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// A stored amount is outside `Decimal(38, 12)`.
    #[error("stored amount: {0}")]
    Amount(String),
    /// The replay cannot run (its policies, or a stored record it needs).
    #[error("replay: {0}")]
    Replay(String),
}

/// One scope of one policy in its current window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScopeStatus {
    /// The policy.
    pub policy_id: String,
    /// The rendered scope (`api_key_id=k1`).
    pub scope: String,
    /// The policy's unit.
    pub unit: String,
    /// Window kind and start.
    pub window: String,
    /// Window start.
    pub window_start: DateTime<Utc>,
    /// Window end (exclusive).
    pub window_end: DateTime<Utc>,
    /// The amount so far, exact.
    #[serde(with = "schemas::money::json")]
    pub amount: Decimal,
    /// The cap, exact.
    #[serde(with = "schemas::money::json")]
    pub cap: Decimal,
    /// amount / cap in percent, to one decimal.
    #[serde(with = "schemas::money::json")]
    pub percent_of_cap: Decimal,
    /// Amount per hour over the window so far.
    #[serde(with = "schemas::money::json")]
    pub burn_per_hour: Decimal,
    /// When the cap is reached at that rate, if inside the window (and not reached yet).
    pub projected_cap_at: Option<DateTime<Utc>>,
    /// What is left under the cap (0 once reached), exact.
    #[serde(with = "schemas::money::json")]
    pub remaining: Decimal,
    /// Whether the policy runs in shadow mode (a dry run: its blocks are `would_block`, never
    /// enforced).
    pub shadow: bool,
    /// The scope as the totals key it (`api_key_id=k1`, with absent dimensions).
    #[serde(skip)]
    pub scope_key: String,
}

/// A row of `window_totals_current` (the columns a policy unit can read).
#[derive(Debug, clickhouse::Row, Deserialize)]
struct TotalRow {
    scope_kind: String,
    scope_key: String,
    window_kind: String,
    window_start: u32,
    window_end: u32,
    requests: u64,
    billable_attempts: u64,
    input_tokens: u64,
    output_tokens: u64,
    cached_input_tokens: u64,
    cache_write_tokens: u64,
    images_draft: u64,
    images_preview: u64,
    images_edit: u64,
    images_final: u64,
    images_untiered: u64,
    video_jobs: u64,
    video_ms: u64,
    audio_ms: u64,
    embedding_tokens: u64,
    cost_usd: i128,
    unpriced_events: u64,
    retries: u64,
    fallback_attempts: u64,
    fallback_cost_usd: i128,
    accepted_outputs: u64,
    errors_4xx: u64,
    errors_5xx: u64,
    errors_other: u64,
    late_events: u64,
    jobs_in_flight: i64,
}

const TOTAL_COLUMNS: &str = "scope_kind, scope_key, window_kind, toUInt32(window_start) AS window_start, \
    toUInt32(window_end) AS window_end, requests, billable_attempts, input_tokens, output_tokens, \
    cached_input_tokens, cache_write_tokens, images_draft, images_preview, images_edit, images_final, \
    images_untiered, video_jobs, video_ms, audio_ms, embedding_tokens, cost_usd, unpriced_events, \
    retries, fallback_attempts, fallback_cost_usd, accepted_outputs, errors_4xx, errors_5xx, \
    errors_other, late_events, jobs_in_flight";

impl TotalRow {
    fn measures(&self) -> Result<Measures, Error> {
        let money = |unscaled: i128| {
            schemas::money::from_unscaled(unscaled)
                .map_err(|error| Error::Amount(error.to_string()))
        };
        Ok(Measures {
            requests: self.requests,
            billable_attempts: self.billable_attempts,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cached_input_tokens,
            cache_write_tokens: self.cache_write_tokens,
            images_draft: self.images_draft,
            images_preview: self.images_preview,
            images_edit: self.images_edit,
            images_final: self.images_final,
            images_untiered: self.images_untiered,
            video_jobs: self.video_jobs,
            video_ms: self.video_ms,
            audio_ms: self.audio_ms,
            embedding_tokens: self.embedding_tokens,
            cost_usd: money(self.cost_usd)?,
            unpriced_events: self.unpriced_events,
            retries: self.retries,
            fallback_attempts: self.fallback_attempts,
            fallback_cost_usd: money(self.fallback_cost_usd)?,
            accepted_outputs: self.accepted_outputs,
            errors_4xx: self.errors_4xx,
            errors_5xx: self.errors_5xx,
            errors_other: self.errors_other,
            late_events: self.late_events,
            jobs_in_flight: self.jobs_in_flight,
        })
    }
}

fn instant(seconds: u32) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(i64::from(seconds), 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Every scope of the windowed policies of `policies` in a window open at `now`, highest percent of
/// cap first (ties by policy and scope).
pub async fn status(
    client: &clickhouse::Client,
    policies: &PolicySet,
    policy_filter: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<ScopeStatus>, Error> {
    let rows: Vec<TotalRow> = client
        .query(&format!(
            "SELECT {TOTAL_COLUMNS} FROM window_totals_current \
             WHERE startsWith(scope_kind, 'policy:') AND window_end > toDateTime(?, 'UTC') \
             AND window_start <= toDateTime(?, 'UTC')"
        ))
        .bind(now.timestamp())
        .bind(now.timestamp())
        .fetch_all()
        .await?;
    let mut statuses = Vec::new();
    for row in rows {
        // Only totals of each policy's current definition (`policy:<id>@<definition>`).
        let Some(policy) = policies.by_totals_scope_kind(&row.scope_kind) else {
            continue;
        };
        if policy_filter.is_some_and(|wanted| wanted != policy.id()) {
            continue;
        }
        let amount = row.measures()?.unit_amount(policy.unit());
        let cap = policy.hard_cap();
        let (window_start, window_end) = (instant(row.window_start), instant(row.window_end));
        let elapsed = (now.min(window_end) - window_start).num_seconds().max(1);
        let burn_per_hour = (amount * Decimal::from(3600) / Decimal::from(elapsed))
            .round_dp(6)
            .normalize();
        let projected_cap_at = (amount < cap && !burn_per_hour.is_zero())
            .then(|| {
                let seconds = (cap - amount) * Decimal::from(3600) / burn_per_hour;
                i64::try_from(seconds.trunc().mantissa())
                    .ok()
                    .map(|seconds| now + TimeDelta::seconds(seconds))
            })
            .flatten()
            .filter(|at| *at < window_end);
        let percent_of_cap = if cap.is_zero() {
            Decimal::ZERO
        } else {
            (amount * Decimal::ONE_HUNDRED / cap)
                .round_dp(1)
                .normalize()
        };
        // The bucket of events lacking a dimension shows it (`no user_id`), apart from the others.
        let scope = alerter::engine::render_scope_absent(
            &policy::ScopeKey::present_of(&row.scope_key),
            &policy::ScopeKey::absent_of(&row.scope_key),
        );
        statuses.push(ScopeStatus {
            policy_id: policy.id().to_owned(),
            scope,
            unit: policy.unit().to_string(),
            window: row.window_kind.clone(),
            window_start,
            window_end,
            amount: amount.normalize(),
            cap: cap.normalize(),
            percent_of_cap,
            burn_per_hour,
            projected_cap_at,
            remaining: (cap - amount).max(Decimal::ZERO).normalize(),
            shadow: policy.is_shadow(),
            scope_key: row.scope_key.clone(),
        });
    }
    statuses.sort_by(|a, b| {
        b.percent_of_cap
            .cmp(&a.percent_of_cap)
            .then_with(|| a.policy_id.cmp(&b.policy_id))
            .then_with(|| a.scope.cmp(&b.scope))
    });
    Ok(statuses)
}

/// One decision as the audit table holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct DecisionRow {
    /// The decision's key (policy and scope).
    pub key: String,
    /// The policy.
    pub policy_id: String,
    /// `allow`, `block` or `degrade`.
    pub action: String,
    /// Why.
    pub reason: String,
    /// Version per key.
    pub version: u64,
    /// When it was issued (epoch µs).
    pub issued_at_us: u64,
}

/// The decisions in force (the newest per key, when it is not `allow`; a policy in shadow mode's
/// show as `would_block` / `would_degrade`, never enforced), or with `history` every decision,
/// newest first (at most `limit`).
pub async fn decisions(
    client: &clickhouse::Client,
    history: bool,
    limit: u64,
) -> Result<Vec<DecisionRow>, Error> {
    let sql = if history {
        "SELECT key, policy_id, action, reason, version, issued_at_us FROM decisions FINAL \
         ORDER BY issued_at_us DESC, key LIMIT ?"
    } else {
        "SELECT key, last_policy AS policy_id, last_action AS action, last_reason AS reason, \
         last_version AS version, last_issued AS issued_at_us FROM \
         (SELECT key, argMax(policy_id, version) AS last_policy, argMax(action, version) AS last_action, \
          argMax(reason, version) AS last_reason, max(version) AS last_version, \
          argMax(issued_at_us, version) AS last_issued FROM decisions FINAL GROUP BY key) \
         WHERE last_action != 'allow' ORDER BY issued_at_us DESC, key LIMIT ?"
    };
    Ok(client.query(sql).bind(limit).fetch_all().await?)
}

/// A plain-text table of `statuses`.
pub fn status_table(statuses: &[ScopeStatus]) -> String {
    let mut out = format!(
        "{:<32} {:<40} {:>8} {:>16} {:>16} {:>14}  {}\n",
        "policy", "scope", "% cap", "amount", "cap", "per hour", "cap reached at"
    );
    for status in statuses {
        let policy = if status.shadow {
            format!("{} (shadow)", status.policy_id)
        } else {
            status.policy_id.clone()
        };
        out.push_str(&format!(
            "{:<32} {:<40} {:>8} {:>16} {:>16} {:>14}  {}\n",
            policy,
            status.scope,
            status.percent_of_cap.to_string(),
            format!("{} {}", status.amount.round_dp(4).normalize(), status.unit),
            status.cap.to_string(),
            status.burn_per_hour.round_dp(4).normalize().to_string(),
            status.projected_cap_at.map_or_else(
                || "-".to_owned(),
                |at| at.format("%Y-%m-%d %H:%M UTC").to_string()
            )
        ));
    }
    out
}

/// A plain-text table of `decisions`.
pub fn decisions_table(decisions: &[DecisionRow]) -> String {
    let mut out = format!(
        "{:<20} {:<13} {:>4}  {:<60} {}\n",
        "issued", "action", "v", "key", "reason"
    );
    for decision in decisions {
        let issued = DateTime::<Utc>::from_timestamp_micros(decision.issued_at_us as i64)
            .map_or_else(String::new, |at| at.format("%Y-%m-%d %H:%M:%S").to_string());
        out.push_str(&format!(
            "{:<20} {:<13} {:>4}  {:<60} {}\n",
            issued, decision.action, decision.version, decision.key, decision.reason
        ));
    }
    out
}
