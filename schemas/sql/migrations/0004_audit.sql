-- Migration 0004: the audit trail of enforcement decisions, alerts and limit approvals.
-- Each table is a ReplacingMergeTree keyed by its id, so replaying the Kafka topic it is written from
-- does not duplicate rows; a replayed copy carries the same timestamps, so it lands in the same monthly
-- partition and collapses with the original. Read with FINAL for exact counts.
-- Scopes are two parallel Array(String) columns (scope_keys[i] = scope_values[i]) rather than Map (not in
-- 18.16) or Nested (shape depends on modern `flatten_nested`).

-- decisions: every control decision the alerter issued (the ControlDecision contract).
CREATE TABLE IF NOT EXISTS decisions
(
    -- Unique id of the decision; the deduplication key.
    decision_id String,
    -- The decision's compaction key (policy and scope); the latest version per key is in force.
    key String,
    -- The policy that produced the decision.
    policy_id String,
    -- Scope dimension names, e.g. ['team', 'model'].
    scope_keys Array(String),
    -- Scope dimension values, parallel to scope_keys.
    scope_values Array(String),
    -- What gateways must do for traffic in scope: allow, block or degrade.
    action String,
    -- Model to degrade to when action is degrade.
    degrade_to Nullable(String),
    -- Human-readable reason.
    reason String,
    -- Unit of observed and limit_value, e.g. usd, tokens, requests, images, video_ms.
    unit String,
    -- The measured value that triggered the decision.
    observed Decimal(38, 12),
    -- The limit it was compared against (the contract's `limit`, a keyword in SQL).
    limit_value Decimal(38, 12),
    -- Window kind, e.g. day, minute, campaign:<name> (the contract's `window`, named like
    -- window_totals.window_kind so the two join by name).
    window_kind String,
    -- Start of the measured window.
    window_start DateTime('UTC'),
    -- Exclusive end of the measured window.
    window_end DateTime('UTC'),
    -- When the decision was issued, to the second.
    issued_at DateTime('UTC'),
    -- The same instant in epoch microseconds.
    issued_at_us UInt64,
    -- When the decision stops applying; NULL until revoked.
    expires_at Nullable(DateTime('UTC')),
    -- Replacing version (the contract's version, monotonic per key): a re-issued decision_id keeps its newest.
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(issued_at)
ORDER BY decision_id;

-- alerts: every alert the alerter raised (the Alert contract).
CREATE TABLE IF NOT EXISTS alerts
(
    -- Unique id of the alert; the deduplication key.
    alert_id String,
    -- Key that suppresses repeats of the same condition (policy, scope, window, threshold).
    dedup_key String,
    -- The policy that raised it.
    policy_id String,
    -- Scope dimension names.
    scope_keys Array(String),
    -- Scope dimension values, parallel to scope_keys.
    scope_values Array(String),
    -- What triggered it: soft_threshold, hard_cap, cap_reset, throughput, concurrency, pending_job,
    -- deprecated_model, model_not_allowed, fallback_budget, retry_budget, non_retryable_retry or anomaly.
    kind String,
    -- info, warning, error or critical.
    severity String,
    -- The crossed threshold in percent of the limit, for threshold alerts.
    threshold_percent Nullable(Int32),
    -- Unit of observed and limit_value.
    unit String,
    -- The measured value.
    observed Decimal(38, 12),
    -- The limit, when the alert has one (the contract's `limit`).
    limit_value Nullable(Decimal(38, 12)),
    -- Window kind, e.g. day, minute, campaign:<name> (the contract's `window`).
    window_kind String,
    -- Start of the measured window.
    window_start DateTime('UTC'),
    -- Exclusive end of the measured window.
    window_end DateTime('UTC'),
    -- Who is notified (team or person).
    owner String,
    -- Human-readable message as sent.
    message String,
    -- When the alert was raised, to the second.
    raised_at DateTime('UTC'),
    -- The same instant in epoch microseconds.
    raised_at_us UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(raised_at)
ORDER BY alert_id;

-- approvals: requests to raise a limit temporarily, and what became of them.
CREATE TABLE IF NOT EXISTS approvals
(
    -- Unique id of the approval request; the deduplication key.
    approval_id String,
    -- The policy whose limit is changed.
    policy_id String,
    -- Scope dimension names.
    scope_keys Array(String),
    -- Scope dimension values, parallel to scope_keys.
    scope_values Array(String),
    -- The requested limit, in the policy's unit.
    new_limit Decimal(38, 12),
    -- Until when the new limit holds.
    valid_until DateTime('UTC'),
    -- Why it was requested.
    reason String,
    -- Who approved or rejected it.
    approved_by String,
    -- When it was requested.
    requested_at DateTime('UTC'),
    -- e.g. pending, applied, rejected, expired.
    status String,
    -- When the status was decided; the replacing version, so the latest status wins.
    decided_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(decided_at)
PARTITION BY toYYYYMM(requested_at)
ORDER BY approval_id;
