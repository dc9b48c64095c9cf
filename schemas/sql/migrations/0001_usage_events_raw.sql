-- Migration 0001: the raw usage archive and its deduplicated view.
--
-- File format (shared by infra's runner, schemas::ddl and dev/sql_check.py): a statement ends at a line
-- whose last non-blank character is `;` (comment lines never end a statement); chunks holding only
-- comments are skipped. Every statement is idempotent (IF NOT EXISTS) so a re-run, a crash between
-- applying and recording, or two services migrating at once are all harmless.
-- Every statement must run on ClickHouse 18.16 and on modern ClickHouse: no DateTime64, Map, TTL,
-- LowCardinality, Enum or window functions (see /work/shared/notes/clickhouse-18.16.md).
-- Times are DateTime('UTC'): the type carries the zone, so toYYYYMM/toDate/toStartOfDay give the same
-- answer whatever the server's timezone; sub-second precision lives in separate *_us epoch-micro columns.

-- usage_events_raw: every UsageEvent as written by ingest's archive consumer, one row per archived copy,
-- with the pricing ingest applied and the Kafka coordinates it came from.
-- Deduplication: ReplacingMergeTree(version) keyed by ORDER BY event_id, so copies of an event_id
-- re-sent by a producer (or re-archived after a crash) collapse to the copy with the highest version.
-- Copies only collapse within one partition (toYYYYMM(occurred_at)); a re-sent duplicate carries the same
-- occurred_at, so it lands in the same partition. Collapsing happens during background merges: read
-- through the `usage_events` view (below) to see each event_id exactly once at any time.
-- Resuming the archive needs no separate offsets table: the next offset of a partition is
-- max(kafka_offset) + 1 (schemas/sql/queries/02_archive_resume_offsets.sql).
-- Retention: no TTL in 18.16; drop whole months with ALTER TABLE usage_events_raw DROP PARTITION 202401.
-- Labels are two parallel arrays rather than Nested(key, value): a Nested column's shape depends on the
-- modern `flatten_nested` setting at CREATE time (one Array(Tuple) column when it is 0, two `labels.*`
-- columns when it is 1, as in 18.16), whereas two Array(String) columns are inserted and queried the same
-- way on every version and map one-to-one onto Rust fields. The writer keeps both arrays the same length.
CREATE TABLE IF NOT EXISTS usage_events_raw
(
    -- Producer-assigned unique id of the event; the deduplication key.
    event_id String,
    -- When the usage happened (producer clock), to the second; partitions and day/hour grouping use it.
    occurred_at DateTime('UTC'),
    -- The same instant in microseconds since the Unix epoch (DateTime64 does not exist in 18.16).
    occurred_at_us UInt64,
    -- Service or SDK that emitted the event.
    producer String,
    -- The provider request this event accounts for (one per attempt).
    request_id String,
    -- The user-level action the request belongs to; retries and fallbacks share it.
    action_id String,
    -- 1 for the first try of an action, 2 for the first retry, and so on.
    attempt Int32,
    -- The model this attempt fell back from; NULL when it is not a fallback.
    fallback_from_model Nullable(String),
    -- The quotaflow API key the request was made with.
    api_key_id String,
    -- Owning team (budget scope).
    team String,
    -- Workflow or feature name within the team (budget scope).
    workflow String,
    -- Deployment environment, e.g. prod, staging, dev.
    environment String,
    -- End user on whose behalf the request ran, when known.
    user_id Nullable(String),
    -- Customer (tenant) the usage is attributed to, when known.
    customer_id Nullable(String),
    -- AI provider, e.g. openai, anthropic, google.
    provider String,
    -- Provider model name as billed.
    model String,
    -- Provider endpoint, e.g. chat.completions, images.generate, embeddings.
    endpoint String,
    -- text, image, video, audio, embedding or batch (the Avro enum's symbol; a String, not an Enum, so a
    -- new symbol needs no migration).
    modality String,
    -- Prompt tokens billed at the input rate (excluding cached input).
    input_tokens Int64,
    -- Completion tokens.
    output_tokens Int64,
    -- Prompt tokens served from the provider's cache (cheaper rate).
    cached_input_tokens Int64,
    -- Tokens written to the provider's cache (cache-write rate).
    cache_write_tokens Int64,
    -- Number of images produced or edited.
    images Int32,
    -- Image quality tier: draft, preview, edit or final; NULL for non-image events.
    image_tier Nullable(String),
    -- Generated video length in milliseconds (0 when none).
    video_duration_ms Int64,
    -- Processed or generated audio length in milliseconds (0 when none).
    audio_duration_ms Int64,
    -- Video resolution, e.g. 720p, 1080p; NULL for non-video events.
    video_resolution Nullable(String),
    -- Asynchronous job id (video and batch jobs); NULL for synchronous requests.
    job_id Nullable(String),
    -- Job state carried by this event: submitted, running, succeeded, failed or cancelled.
    job_state Nullable(String),
    -- Outcome of the attempt: ok, rate_limited, quota_exceeded, invalid_request, policy_blocked,
    -- provider_error, timeout or cancelled.
    status String,
    -- HTTP status the provider answered with, when there was an answer.
    http_status Nullable(Int32),
    -- Provider's Retry-After in milliseconds, when given.
    retry_after_ms Nullable(Int64),
    -- 1 if the user or workflow accepted the output, 0 if rejected, NULL if unknown (Avro boolean).
    accepted Nullable(UInt8),
    -- Cost the provider reported for this request, in USD.
    reported_cost_usd Nullable(Decimal(38, 12)),
    -- Cost the producer estimated, in USD.
    estimated_cost_usd Nullable(Decimal(38, 12)),
    -- End-to-end latency of the request in milliseconds.
    latency_ms Nullable(Int64),
    -- Label names (the Avro labels map's keys: feature, campaign, customer tier ...), parallel to labels_values.
    labels_keys Array(String),
    -- Free-form label values, parallel to labels_keys.
    labels_values Array(String),
    -- The cost quotaflow counts, in USD (exact, scale 12 like the Avro decimal); NULL when unpriced.
    cost_usd Nullable(Decimal(38, 12)),
    -- The cost computed from the price catalog, in USD; NULL when the catalog has no price.
    priced_cost_usd Nullable(Decimal(38, 12)),
    -- Where cost_usd came from: reported, priced or unpriced.
    cost_source String,
    -- Version of the price catalog used for priced_cost_usd; '' when no catalog price applied.
    catalog_version String,
    -- Kafka topic the event was consumed from.
    kafka_topic String,
    -- Kafka partition the event was consumed from.
    kafka_partition Int32,
    -- Kafka offset of the event within its partition; resume the archive at max + 1.
    kafka_offset Int64,
    -- When ingest archived this copy.
    ingested_at DateTime('UTC'),
    -- Replacing version: the epoch microseconds at which ingest archived this copy, so among copies of
    -- one event_id the latest archived wins (and within a Kafka partition, the highest offset).
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY event_id;

-- usage_events: the archive with each event_id once, for analysts. FINAL merges the copies of an
-- event_id at read time and keeps the highest version; filters written against the view apply after
-- that merge on 18.16 and on modern ClickHouse alike (checked by dev/sql_check.py), so a stale copy never
-- leaks through a WHERE. The column list is explicit so the view's shape does not depend on how a
-- version expands `*`; a migration that adds columns recreates the view.
CREATE VIEW IF NOT EXISTS usage_events AS
SELECT
    event_id, occurred_at, occurred_at_us, producer, request_id, action_id, attempt, fallback_from_model,
    api_key_id, team, workflow, environment, user_id, customer_id, provider, model, endpoint, modality,
    input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, images, image_tier,
    video_duration_ms, audio_duration_ms, video_resolution, job_id, job_state, status, http_status,
    retry_after_ms, accepted, reported_cost_usd, estimated_cost_usd, latency_ms, labels_keys, labels_values,
    cost_usd, priced_cost_usd, cost_source, catalog_version, kafka_topic, kafka_partition, kafka_offset,
    ingested_at, version
FROM usage_events_raw FINAL;
