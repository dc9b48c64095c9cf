-- Migration 0006: window totals as per-partition partials, and checkpoints that carry the
-- aggregator's replay state. Replaces the tables of 0002 and 0003, which no release ever wrote.
--
-- Why partials: the usage topic has several partitions and each is aggregated by one aggregator process
-- at a time (a consumer group). A scope's events are spread over every partition, so each partition
-- keeps its own exact partial total per (scope, window) and the view adds them up. A partial is a
-- function of the partition's records up to its version (an offset), which is what makes writes
-- idempotent and replays exact.
--
-- The DROPs run once per database (the migration is recorded after it succeeds). Services applying it at
-- the same moment each drop and then create, so the tables exist afterwards whatever the interleaving;
-- a checkpoint written in that first second could be dropped, which only makes its partition replay from
-- the start (totals stay exact, see the aggregator's docs).

-- (DROP TABLE, not DROP VIEW: 18.16 has no DROP VIEW; both engines drop a view this way.)
DROP TABLE IF EXISTS window_totals_current;

DROP TABLE IF EXISTS window_totals;

DROP TABLE IF EXISTS aggregator_checkpoints;

-- window_partials: per input partition, scope and time window, the absolute partial total the aggregator
-- computed. ReplacingMergeTree(version) keeps the highest version per key (scope_kind, scope_key,
-- window_kind, window_tz, window_start, source_topic, source_partition). Analysts read
-- `window_totals_current`, which adds the partials up. Retention: ALTER TABLE window_partials DROP
-- PARTITION 202401 (minute windows grow fastest).
CREATE TABLE IF NOT EXISTS window_partials
(
    -- What the scope groups by, e.g. global, team, api_key, workflow, team_model, customer.
    scope_kind String,
    -- The scope's value(s), e.g. `ml-research` for a team or `ml-research/gpt-4o` for team_model.
    scope_key String,
    -- minute, hour, day, week, month or campaign:<name>.
    window_kind String,
    -- IANA timezone the calendar boundaries were computed in, e.g. UTC or Asia/Shanghai.
    window_tz String,
    -- Input topic this partial total counts.
    source_topic String,
    -- Input partition this partial total counts (one aggregator writes a partition at a time).
    source_partition Int32,
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
    -- Images of an event without a quality tier.
    images_untiered UInt64,
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
    -- Replacing version: the input offset of the last event this partial includes. A row is the exact
    -- total of its window over the partition's records up to that offset, so a higher version is
    -- always the newer total and re-writing a row after a crash or replay is harmless.
    version UInt64,
    -- When the aggregator wrote this row.
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (scope_kind, scope_key, window_kind, window_tz, window_start, source_topic, source_partition);

-- window_totals_current: the current total of every (scope, window): the newest partial of each input
-- partition (FINAL), added up. Filter it like a table; no FINAL, argMax or GROUP BY needed.
-- `partials` is how many input partitions contributed; `updated_at` is the newest write among them.
CREATE VIEW IF NOT EXISTS window_totals_current AS
SELECT
    scope_kind,
    scope_key,
    window_kind,
    window_tz,
    window_start,
    any(window_end) AS window_end,
    sum(requests) AS requests,
    sum(billable_attempts) AS billable_attempts,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(images_draft) AS images_draft,
    sum(images_preview) AS images_preview,
    sum(images_edit) AS images_edit,
    sum(images_final) AS images_final,
    sum(images_untiered) AS images_untiered,
    sum(video_jobs) AS video_jobs,
    sum(video_ms) AS video_ms,
    sum(audio_ms) AS audio_ms,
    sum(embedding_tokens) AS embedding_tokens,
    sum(cost_usd) AS cost_usd,
    sum(unpriced_events) AS unpriced_events,
    sum(retries) AS retries,
    sum(fallback_attempts) AS fallback_attempts,
    sum(fallback_cost_usd) AS fallback_cost_usd,
    sum(accepted_outputs) AS accepted_outputs,
    sum(errors_4xx) AS errors_4xx,
    sum(errors_5xx) AS errors_5xx,
    sum(errors_other) AS errors_other,
    sum(late_events) AS late_events,
    sum(jobs_in_flight) AS jobs_in_flight,
    minIf(oldest_pending_job_started_at_us, oldest_pending_job_started_at_us > 0) AS oldest_pending_job_started_at_us,
    max(updated_at) AS updated_at,
    count() AS partials
FROM window_partials FINAL
GROUP BY scope_kind, scope_key, window_kind, window_tz, window_start;

-- aggregator_checkpoints: where each input partition resumes, written after the partials it covers.
-- ReplacingMergeTree(version) with version = next_offset keeps the furthest checkpoint per
-- (consumer_group, topic, partition); read it with FINAL. A checkpoint is a deterministic function of the
-- partition's records before next_offset, so a late write by a process that lost the partition can only
-- repeat a checkpoint, never move one backwards.
CREATE TABLE IF NOT EXISTS aggregator_checkpoints
(
    -- Kafka consumer group of the aggregator instance set.
    consumer_group String,
    -- Input topic.
    topic String,
    -- Input partition.
    partition Int32,
    -- The first offset not yet included in the stored partials.
    next_offset Int64,
    -- Where a restart re-reads from to rebuild the duplicate filter (the oldest event id it still
    -- holds); records before next_offset are only remembered, not counted again.
    replay_from Int64,
    -- The rest of the partition's state at next_offset, as JSON: the watermark, the close horizon and the
    -- pending asynchronous jobs (see the aggregator's `checkpoint` module).
    state String,
    -- = next_offset.
    version UInt64,
    -- When the checkpoint was written.
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (consumer_group, topic, partition);
