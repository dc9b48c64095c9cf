-- title: Dead letters by service and error kind
-- description: How many records each service gave up on in the last 7 days, per source topic and error
--   kind, with the latest failure and one example message.
SELECT
    service,
    source_topic,
    error_kind,
    count() AS records,
    max(failed_at) AS last_failed_at,
    any(error_message) AS example_error
FROM dead_letters FINAL
WHERE failed_at >= now() - INTERVAL 7 DAY
GROUP BY service, source_topic, error_kind
ORDER BY records DESC, service, source_topic, error_kind;
