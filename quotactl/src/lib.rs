//! `quotactl`: the operator CLI. Budget owners and on-call read where every scope stands against
//! its cap and what the alerter decided; they check policy edits and approve raises.
//!
//! - [`status`]: every scope of every windowed policy in its **current** window, by percent of its
//!   cap, with the burn rate over the window so far and the projected time the cap is reached
//!   (from ClickHouse `window_totals_current` and the policy files; exact decimals).
//! - [`decisions`]: the decisions in force (the newest per key is not `allow`), or the history.
//! - [`alerts`]: the alerts raised, newest first, each with its state ([`AlertState`]): open,
//!   resolved (a hard cap lifted by its reset), ended (its window ended) or a one-off finding.
//! - [`scopes::scopes`]: the remaining quota of the scopes a request names, with the decision
//!   and the approved raise in force: the decision sidecar's `GET /v1/scopes`, from ClickHouse.
//! - `policy check` and `approve` are the alerter's own ([`alerter::approve`]).
//!
//! Every command prints a table, or JSON with `--json`. Reads only: the approvals topic is the one
//! thing written (by `approve`).

pub mod replay;
pub mod review;
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

/// One alert as the audit table holds it (`alerts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct AlertRow {
    /// Unique id (from the dedup key).
    pub alert_id: String,
    /// The condition's key.
    pub dedup_key: String,
    /// The policy.
    pub policy_id: String,
    /// Scope dimension names.
    pub scope_keys: Vec<String>,
    /// Scope dimension values.
    pub scope_values: Vec<String>,
    /// `soft_threshold`, `hard_cap`, `cap_reset`, `concurrency`, …
    pub kind: String,
    /// `info`, `warning`, `error`, `critical`.
    pub severity: String,
    /// Threshold in percent of the limit; -1 when the alert has none.
    pub threshold: i32,
    /// Unit of `observed` and `limit_value`.
    pub unit: String,
    /// The measured value, exact, as text.
    pub observed: String,
    /// The limit, exact, as text; empty when the alert has none.
    pub limit_value: String,
    /// Window kind.
    pub window_kind: String,
    /// Window end, epoch seconds.
    pub window_end: u32,
    /// The message as sent.
    pub message: String,
    /// When it was raised, epoch µs.
    pub raised_at_us: u64,
}

impl AlertRow {
    /// `api_key_id=k1|team=search`.
    pub fn scope(&self) -> String {
        self.scope_keys
            .iter()
            .zip(&self.scope_values)
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join("|")
    }
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Still true: its window runs and nothing lifted it.
    Open,
    /// A hard cap whose block was lifted (a later `cap_reset` of the same policy and scope).
    Resolved,
    /// Its window ended: the condition is over with the window.
    Ended,
    /// A one-off finding (a rule, a stale job) or a resolve itself: nothing stays open.
    Notice,
}

/// An alert and its state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertStatus {
    /// The alert.
    #[serde(flatten)]
    pub alert: AlertRow,
    /// Its state at the time asked.
    pub state: AlertState,
}

/// Kinds whose condition lasts as long as their window (a concurrent-jobs alert fired at a
/// level of a gauge; its block and lift are decisions, `quotactl decisions`).
const WINDOWED_KINDS: [&str; 4] = ["soft_threshold", "hard_cap", "throughput", "anomaly"];

/// The state of each of `rows` (newest first) at `now` (see [`AlertState`]).
pub fn alert_states(rows: Vec<AlertRow>, now: DateTime<Utc>) -> Vec<AlertStatus> {
    let lifted = |alert: &AlertRow| {
        rows.iter().any(|later| {
            later.kind == "cap_reset"
                && later.policy_id == alert.policy_id
                && later.scope_keys == alert.scope_keys
                && later.scope_values == alert.scope_values
                && later.raised_at_us > alert.raised_at_us
        })
    };
    let states: Vec<AlertState> = rows
        .iter()
        .map(|alert| {
            if !WINDOWED_KINDS.contains(&alert.kind.as_str()) {
                AlertState::Notice
            } else if alert.kind == "hard_cap" && lifted(alert) {
                AlertState::Resolved
            } else if i64::from(alert.window_end) <= now.timestamp() {
                AlertState::Ended
            } else {
                AlertState::Open
            }
        })
        .collect();
    rows.into_iter()
        .zip(states)
        .map(|(alert, state)| AlertStatus { alert, state })
        .collect()
}

/// The alerts raised, newest first (at most `limit`, of `policy` only when given), each with its
/// state at `now`; with `open_only`, only those still open.
pub async fn alerts(
    client: &clickhouse::Client,
    policy: Option<&str>,
    open_only: bool,
    limit: u64,
    now: DateTime<Utc>,
) -> Result<Vec<AlertStatus>, Error> {
    let rows: Vec<AlertRow> = client
        .query(
            "SELECT alert_id, dedup_key, policy_id, scope_keys, scope_values, kind, severity, \
             ifNull(threshold_percent, -1) AS threshold, unit, toString(observed) AS observed, \
             ifNull(toString(limit_value), '') AS limit_value, window_kind, \
             toUInt32(window_end) AS window_end, message, raised_at_us \
             FROM alerts FINAL WHERE (? = '' OR policy_id = ?) \
             ORDER BY raised_at_us DESC, alert_id LIMIT ?",
        )
        .bind(policy.unwrap_or_default())
        .bind(policy.unwrap_or_default())
        .bind(limit)
        .fetch_all()
        .await?;
    let mut statuses = alert_states(rows, now);
    if open_only {
        statuses.retain(|status| status.state == AlertState::Open);
    }
    Ok(statuses)
}

/// A plain-text table of `alerts`.
pub fn alerts_table(alerts: &[AlertStatus]) -> String {
    let mut out = format!(
        "{:<20} {:<9} {:<15} {:<9} {:<24} {:<32} {:>22}  {}\n",
        "raised", "state", "kind", "severity", "policy", "scope", "observed / limit", "message"
    );
    for status in alerts {
        let alert = &status.alert;
        let raised = DateTime::<Utc>::from_timestamp_micros(alert.raised_at_us as i64)
            .map_or_else(String::new, |at| at.format("%Y-%m-%d %H:%M:%S").to_string());
        let state = match status.state {
            AlertState::Open => "open",
            AlertState::Resolved => "resolved",
            AlertState::Ended => "ended",
            AlertState::Notice => "notice",
        };
        let amounts = if alert.limit_value.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{} / {} {}",
                trim_decimal(&alert.observed),
                trim_decimal(&alert.limit_value),
                alert.unit
            )
        };
        out.push_str(&format!(
            "{:<20} {:<9} {:<15} {:<9} {:<24} {:<32} {:>22}  {}\n",
            raised,
            state,
            alert.kind,
            alert.severity,
            alert.policy_id,
            alert.scope(),
            amounts,
            alert.message
        ));
    }
    out
}

/// `12.500000000000` → `12.5` (ClickHouse prints every decimal of the column's scale).
fn trim_decimal(text: &str) -> String {
    text.parse::<Decimal>()
        .map_or_else(|_| text.to_owned(), |value| value.normalize().to_string())
}

#[cfg(test)]
mod alert_tests {
    use super::*;

    fn row(kind: &str, scope: &str, window_end: i64, raised_s: u64) -> AlertRow {
        AlertRow {
            alert_id: format!("{kind}-{raised_s}"),
            dedup_key: String::new(),
            policy_id: "p".to_owned(),
            scope_keys: vec!["api_key_id".to_owned()],
            scope_values: vec![scope.to_owned()],
            kind: kind.to_owned(),
            severity: "warning".to_owned(),
            threshold: 50,
            unit: "cost_usd".to_owned(),
            observed: "5.000000000000".to_owned(),
            limit_value: "10.000000000000".to_owned(),
            window_kind: "day".to_owned(),
            window_end: u32::try_from(window_end).unwrap(),
            message: String::new(),
            raised_at_us: raised_s * 1_000_000,
        }
    }

    #[test]
    fn states_follow_resets_and_window_ends() {
        let now = DateTime::<Utc>::from_timestamp(1_000_000, 0).unwrap();
        let open_end = 1_000_100;
        let rows = vec![
            row("cap_reset", "k1", open_end, 999_990),
            row("hard_cap", "k2", open_end, 999_980),
            row("hard_cap", "k1", open_end, 999_970),
            row("soft_threshold", "k1", open_end, 999_960),
            row("soft_threshold", "k3", 999_999, 999_950),
            row("deprecated_model", "k1", open_end, 999_940),
        ];
        let states: Vec<AlertState> = alert_states(rows, now)
            .into_iter()
            .map(|status| status.state)
            .collect();
        assert_eq!(
            states,
            vec![
                AlertState::Notice,
                AlertState::Open,
                AlertState::Resolved,
                AlertState::Open,
                AlertState::Ended,
                AlertState::Notice,
            ]
        );
    }

    #[test]
    fn the_table_trims_decimals_and_names_the_state() {
        let now = DateTime::<Utc>::from_timestamp(1_000_000, 0).unwrap();
        let table = alerts_table(&alert_states(
            vec![row("hard_cap", "k1", 1_000_100, 1)],
            now,
        ));
        assert!(table.contains("open"), "{table}");
        assert!(table.contains("5 / 10 cost_usd"), "{table}");
        assert!(table.contains("api_key_id=k1"), "{table}");
    }
}
