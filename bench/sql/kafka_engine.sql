-- Contender (b): ClickHouse's own Kafka table engine plus a materialized view into a
-- SummingMergeTree, computing the common set of the benchmark (bench/src/recount.rs): the ten
-- single-dimension scopes x UTC minute, hour, day, ISO week (Monday) and month windows x the
-- measures requests, billable_attempts, four token sums, video_ms, audio_ms, retries,
-- unpriced_events and cost_usd (exact Decimal(38, 12)); `records` counts the records consumed.
--
-- Runs on ClickHouse 18.16 (no Avro input there: the Kafka table reads the JSONEachRow topic the
-- bench writes from the same events). {database}, {brokers}, {topic}, {group} and {consumers} are
-- filled in by the bench; statements are separated by lines holding only `;`.
--
-- 18.16 notes: a query may hold only one ARRAY JOIN clause, a materialized view over a subquery
-- fails on insert ("Unknown identifier"), and a view's extra columns must exist in its TO table.
-- So the cross product of scopes and windows is two arrayJoin() calls at the top level, each
-- written twice with identical text (ClickHouse computes an expression once per block).
-- The view groups each consumed block before inserting; SummingMergeTree adds up across blocks
-- at merge time, so readers sum() with GROUP BY.
--
-- Delivery: at least once. The engine commits Kafka offsets after the block is written; a crash
-- in between consumes the block again, and duplicate records are counted as often as they come.

CREATE DATABASE IF NOT EXISTS `{database}`
;
CREATE TABLE `{database}`.queue
(
    event_id String,
    occurred_at UInt32,
    request_id String,
    api_key_id String,
    team String,
    user_id String,
    customer_id String,
    workflow String,
    environment String,
    provider String,
    model String,
    endpoint String,
    modality String,
    job_state String,
    attempt UInt32,
    status String,
    http_status UInt16,
    input_tokens UInt64,
    output_tokens UInt64,
    cached_input_tokens UInt64,
    cache_write_tokens UInt64,
    images UInt32,
    video_duration_ms UInt64,
    audio_duration_ms UInt64,
    -- The event's cost_usd, null when unpriced (named apart from the view's cost_usd alias,
    -- which would shadow it in 18.16).
    cost Nullable(Decimal(38, 12))
)
ENGINE = Kafka SETTINGS
    kafka_broker_list = '{brokers}',
    kafka_topic_list = '{topic}',
    kafka_group_name = '{group}',
    kafka_format = 'JSONEachRow',
    kafka_num_consumers = {consumers}
;
CREATE TABLE `{database}`.totals
(
    scope_kind String,
    scope_key String,
    window_kind String,
    window_start DateTime('UTC'),
    records UInt64,
    requests UInt64,
    billable_attempts UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cached_input_tokens UInt64,
    cache_write_tokens UInt64,
    video_ms UInt64,
    audio_ms UInt64,
    retries UInt64,
    unpriced_events UInt64,
    cost_usd Decimal(38, 12)
)
ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(window_start)
ORDER BY (scope_kind, scope_key, window_kind, window_start)
;
CREATE MATERIALIZED VIEW `{database}`.totals_view TO `{database}`.totals AS
SELECT
    tupleElement(arrayJoin(arrayFilter(scope -> scope.2 != '', [('api_key_id', api_key_id), ('team', team), ('user_id', user_id), ('customer_id', customer_id), ('workflow', workflow), ('environment', environment), ('provider', provider), ('model', model), ('endpoint', endpoint), ('modality', modality)])), 1) AS scope_kind,
    tupleElement(arrayJoin(arrayFilter(scope -> scope.2 != '', [('api_key_id', api_key_id), ('team', team), ('user_id', user_id), ('customer_id', customer_id), ('workflow', workflow), ('environment', environment), ('provider', provider), ('model', model), ('endpoint', endpoint), ('modality', modality)])), 2) AS scope_key,
    tupleElement(arrayJoin([('minute', toStartOfMinute(toDateTime(occurred_at, 'UTC'))), ('hour', toStartOfHour(toDateTime(occurred_at, 'UTC'))), ('day', toStartOfDay(toDateTime(occurred_at, 'UTC'), 'UTC')), ('week', toDateTime(toMonday(toDateTime(occurred_at, 'UTC'), 'UTC'), 'UTC')), ('month', toDateTime(toStartOfMonth(toDateTime(occurred_at, 'UTC'), 'UTC'), 'UTC'))]), 1) AS window_kind,
    tupleElement(arrayJoin([('minute', toStartOfMinute(toDateTime(occurred_at, 'UTC'))), ('hour', toStartOfHour(toDateTime(occurred_at, 'UTC'))), ('day', toStartOfDay(toDateTime(occurred_at, 'UTC'), 'UTC')), ('week', toDateTime(toMonday(toDateTime(occurred_at, 'UTC'), 'UTC'), 'UTC')), ('month', toDateTime(toStartOfMonth(toDateTime(occurred_at, 'UTC'), 'UTC'), 'UTC'))]), 2) AS window_start,
    count() AS records,
    sum(job_state IN ('', 'submitted')) AS requests,
    sum(job_state NOT IN ('submitted', 'running')) AS billable_attempts,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(video_duration_ms) AS video_ms,
    sum(audio_duration_ms) AS audio_ms,
    sum(attempt > 1) AS retries,
    sum(isNull(cost)) AS unpriced_events,
    sum(ifNull(cost, toDecimal128(0, 12))) AS cost_usd
FROM `{database}`.queue
GROUP BY scope_kind, scope_key, window_kind, window_start
