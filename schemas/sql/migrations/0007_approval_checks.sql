-- Migration 0007: what the alerter's checks found for each approval record, with the reason.
-- `approvals` (0004) keeps one row per approval_id with its latest status; this table adds what that
-- row cannot say: why a record was applied, rejected or expired, when the broker first stored it (the
-- time max_duration is measured from), and the signed record itself, so an audit or a replay can verify
-- the signature again. It is a new table rather than new columns of `approvals` because ClickHouse
-- 18.16 has no `ADD COLUMN IF NOT EXISTS`, and migrations must be idempotent.
-- A ReplacingMergeTree keyed by (approval_id, record_sha256): the same record checked again after a
-- restart replaces its row (the latest check wins); a different record reusing an approval_id (a forgery
-- of an applied one) gets its own row and never hides the applied one. Read with FINAL.

CREATE TABLE IF NOT EXISTS approval_checks
(
    -- The record's approval_id (as written; ids are not trusted until the signature verifies).
    approval_id String,
    -- SHA-256 of the record bytes as read from Kafka, hex: tells apart records sharing an approval_id.
    record_sha256 String,
    -- The policy the record names.
    policy_id String,
    -- Who the record says approved it.
    approved_by String,
    -- applied, rejected or expired.
    status String,
    -- Why, for people: which check failed, or what was raised until when.
    check_reason String,
    -- When the broker appended the record (LogAppendTime), to the second; max_duration counts from here.
    first_seen_at DateTime('UTC'),
    -- The same instant in epoch microseconds; 0 when the record carried no broker append time.
    first_seen_at_us UInt64,
    -- The record as read from Kafka (Avro single-object encoding), standard base64.
    record_base64 String,
    -- The record's Kafka key (approvals are keyed by their approval_id; anything else is rejected).
    record_key String,
    -- When the alerter decided, to the second.
    decided_at DateTime('UTC'),
    -- The same instant in epoch microseconds: the replacing version, so the latest check wins.
    decided_at_us UInt64
)
ENGINE = ReplacingMergeTree(decided_at_us)
PARTITION BY toYYYYMM(first_seen_at)
ORDER BY (approval_id, record_sha256);
