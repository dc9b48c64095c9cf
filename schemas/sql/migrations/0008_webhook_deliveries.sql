-- Migration 0008: the delivery status of every notice sent to the generic signed webhook (issue 17,
-- point 5), one row per delivery round: sent, pending (failed this round, kept for another), failed
-- (refused, not retried) or dropped (pushed out of a full redelivery queue). A ReplacingMergeTree
-- keyed by (delivery_id, round): a round audited twice after a retried write collapses. The latest
-- status of a delivery is its row with the highest at_us:
--   SELECT delivery_id, argMax(status, at_us) FROM webhook_deliveries FINAL GROUP BY delivery_id

CREATE TABLE IF NOT EXISTS webhook_deliveries
(
    -- The notice's delivery id (the Quotaflow-Delivery header): the same on every round of one notice.
    delivery_id String,
    -- alert.triggered or alert.resolved.
    event String,
    policy_id String,
    -- The notice's scope, rendered (`team=search|model=gpt-4o`).
    scope String,
    -- sent, pending, failed or dropped.
    status String,
    -- Which round (1 = the first; 0 for a drop).
    round UInt32,
    -- HTTP attempts in the round.
    attempts UInt32,
    -- The last HTTP status of the round; 0 when the receiver never answered.
    http_status UInt16,
    -- Why it was not sent, for people (no secret: URLs and keys are redacted).
    error String,
    -- When the round ended, to the second.
    at DateTime('UTC'),
    -- The same instant in epoch microseconds: the replacing version.
    at_us UInt64
)
ENGINE = ReplacingMergeTree(at_us)
PARTITION BY toYYYYMM(at)
ORDER BY (delivery_id, round);
