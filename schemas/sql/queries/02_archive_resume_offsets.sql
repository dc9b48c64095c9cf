-- title: Archive resume offsets per partition
-- description: Where ingest's archive consumer resumes: for every topic and partition, the next offset is
--   the highest archived kafka_offset + 1. Reads the raw table (every archived copy counts, not only the
--   surviving one). Deduplication can only remove rows, so the answer is never past what was archived:
--   at worst a few records are read again and collapse as duplicates.
SELECT
    kafka_topic,
    kafka_partition,
    max(kafka_offset) + 1 AS next_offset,
    count() AS archived_rows
FROM usage_events_raw
GROUP BY kafka_topic, kafka_partition
ORDER BY kafka_topic, kafka_partition;
