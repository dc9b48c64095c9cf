-- Migration 0002: the aggregator's window totals and the view analysts read them through.

-- window_totals: per scope and time window, the running totals the aggregator computed. Each row is the
-- absolute total of its window at one version (never a delta), so re-writing a row after a crash or a
-- replay is harmless: ReplacingMergeTree(version) keeps the row with the highest version per key
-- (scope_kind, scope_key, window_kind, window_tz, window_start). window_end is a function of the key and
-- is not part of it. One window's rows share window_start, hence the partition toYYYYMM(window_start).
-- Read through `window_totals_current` to get the newest row per window without FINAL or argMax.
-- Retention: ALTER TABLE window_totals DROP PARTITION 202401 (minute windows grow fastest).
CREATE TABLE IF NOT EXISTS window_totals
(
    -- What the scope groups by, e.g. global, team, api_key, workflow, team_model, customer.
    scope_kind String,
    -- The scope's value(s), e.g. `ml-research` for a team or `ml-research/gpt-4o` for team_model.
    scope_key String,
    -- minute, hour, day, week, month or campaign:<name>.
    window_kind String,
    -- IANA timezone the calendar boundaries were computed in, e.g. UTC or Asia/Shanghai.
    window_tz String,
    -- Inclusive start of the window (an instant; shown in UTC).
    window_start DateTime('UTC'),
    -- Exclusive end of the window.
    window_end DateTime('UTC'),
    -- Usage events counted (every attempt, billable or not).
    requests UInt64,
    -- Attempts the provider bills for (excludes e.g. rejected-before-processing requests).
    billable_attempts UInt64,
    -- Sum of input_tokens.
    input_tokens UInt64,
    -- Sum of output_tokens.
    output_tokens UInt64,
    -- Sum of cached_input_tokens.
    cached_input_tokens UInt64,
    -- Sum of cache_write_tokens.
    cache_write_tokens UInt64,
    -- Images generated at the draft tier.
    images_draft UInt64,
    -- Images generated at the preview tier.
    images_preview UInt64,
    -- Images edited.
    images_edit UInt64,
    -- Images generated at the final tier.
    images_final UInt64,
    -- Video jobs submitted.
    video_jobs UInt64,
    -- Generated video length in milliseconds.
    video_ms UInt64,
    -- Audio length in milliseconds.
    audio_ms UInt64,
    -- Tokens sent to embedding models.
    embedding_tokens UInt64,
    -- Counted cost in USD (exact).
    cost_usd Decimal(38, 12),
    -- Events that had no price (their cost is missing from cost_usd).
    unpriced_events UInt64,
    -- Attempts after the first of an action (attempt > 1).
    retries UInt64,
    -- Attempts that fell back to another model.
    fallback_attempts UInt64,
    -- Cost of the fallback attempts in USD.
    fallback_cost_usd Decimal(38, 12),
    -- Outputs the user accepted.
    accepted_outputs UInt64,
    -- Attempts answered with an HTTP 4xx.
    errors_4xx UInt64,
    -- Attempts answered with an HTTP 5xx.
    errors_5xx UInt64,
    -- Failed attempts without an HTTP status (timeouts, connection errors).
    errors_other UInt64,
    -- Events that arrived after their window had been closed.
    late_events UInt64,
    -- Asynchronous jobs submitted and not yet finished (a gauge, hence signed).
    jobs_in_flight Int64,
    -- Start of the oldest unfinished job in epoch microseconds; 0 when none.
    oldest_pending_job_started_at_us UInt64,
    -- Replacing version, increasing with every write of a window (the aggregator derives it from the
    -- input offsets the total includes); the highest version is the current total.
    version UInt64,
    -- When the aggregator wrote this row.
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (scope_kind, scope_key, window_kind, window_tz, window_start);

-- window_totals_current: the newest total of every window. FINAL keeps the highest version per key at
-- read time (filters on the view apply after it, on 18.16 and modern ClickHouse alike).
CREATE VIEW IF NOT EXISTS window_totals_current AS
SELECT
    scope_kind, scope_key, window_kind, window_tz, window_start, window_end, requests, billable_attempts,
    input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, images_draft, images_preview,
    images_edit, images_final, video_jobs, video_ms, audio_ms, embedding_tokens, cost_usd, unpriced_events,
    retries, fallback_attempts, fallback_cost_usd, accepted_outputs, errors_4xx, errors_5xx, errors_other,
    late_events, jobs_in_flight, oldest_pending_job_started_at_us, version, updated_at
FROM window_totals FINAL;
