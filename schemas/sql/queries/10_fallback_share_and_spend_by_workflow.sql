-- title: Fallback share and fallback spend per workflow, today
-- description: Attempts that fell back to another model, as a share of requests, and what they cost
--   (today's UTC day).
SELECT
    scope_key AS workflow,
    requests,
    fallback_attempts,
    round(fallback_attempts / requests, 4) AS fallback_share,
    fallback_cost_usd,
    cost_usd
FROM window_totals_current
WHERE scope_kind = 'workflow'
  AND window_kind = 'day'
  AND window_tz = 'UTC'
  AND window_start = toStartOfDay(now(), 'UTC')
  AND requests > 0
ORDER BY fallback_cost_usd DESC, workflow;
