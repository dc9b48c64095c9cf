-- Migration 0003: where the aggregator resumes.

-- aggregator_checkpoints: the next Kafka offset to read per consumer group and partition, written by the
-- aggregator together with the totals it covers (the Kafka commit is advisory). ReplacingMergeTree(version)
-- keeps the newest row per (consumer_group, topic, partition); read it with FINAL. A small table: not
-- partitioned, so every version of a key is always in the same partition.
CREATE TABLE IF NOT EXISTS aggregator_checkpoints
(
    -- Kafka consumer group of the aggregator instance set.
    consumer_group String,
    -- Input topic.
    topic String,
    -- Input partition.
    partition Int32,
    -- The first offset not yet included in the stored totals.
    next_offset Int64,
    -- Replacing version, increasing with every write of the key; the highest is current.
    version UInt64,
    -- When the checkpoint was written.
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (consumer_group, topic, partition);
