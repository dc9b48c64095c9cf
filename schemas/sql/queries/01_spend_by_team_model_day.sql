-- title: Spend by team, model and day
-- description: Counted cost (exact USD), requests and tokens per UTC day, team and model over the last
--   30 days, from the deduplicated `usage_events` view. Unpriced events are counted separately because
--   their cost is missing from total_cost_usd (sum skips NULL). Decimals print with all 12 digits on
--   18.16 and without trailing zeros on modern ClickHouse; read them as text, never as floats.
SELECT
    toDate(occurred_at) AS day,
    team,
    model,
    count() AS requests,
    sum(input_tokens) AS input_tokens_total,
    sum(output_tokens) AS output_tokens_total,
    sum(cost_usd) AS total_cost_usd,
    countIf(cost_usd IS NULL) AS unpriced_events
FROM usage_events
WHERE occurred_at >= toStartOfDay(now() - INTERVAL 30 DAY, 'UTC')
GROUP BY day, team, model
ORDER BY day DESC, total_cost_usd DESC, team, model;
