-- Migration 0005: records a service could not process.

-- dead_letters: one row per Kafka record a service gave up on (undecodable, invalid, rejected by
-- ClickHouse as a data error). Keyed by the record's coordinates and the service, so re-dead-lettering
-- the same record on a replay replaces the earlier row (ReplacingMergeTree(failed_at): the latest failure
-- wins). Not partitioned: a replay has a later failed_at and must land in the same partition to collapse.
CREATE TABLE IF NOT EXISTS dead_letters
(
    -- Service that gave up: ingest, aggregator or alerter.
    service String,
    -- Topic of the failed record.
    source_topic String,
    -- Partition of the failed record.
    source_partition Int32,
    -- Offset of the failed record.
    source_offset Int64,
    -- Machine-readable class of failure, e.g. decode, validation, clickhouse_data.
    error_kind String,
    -- Human-readable error.
    error_message String,
    -- The record's value, byte for byte, base64-encoded (standard alphabet, padded) so that every text
    -- format (TSV, JSON) shows it intact.
    payload_base64 String,
    -- The record's key, base64-encoded like the payload; NULL when the record had no key.
    key_base64 Nullable(String),
    -- When the service gave up; the replacing version.
    failed_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(failed_at)
ORDER BY (service, source_topic, source_partition, source_offset);
