-- title: Top scopes by cost today
-- description: The 20 scopes (of any kind) with the highest counted cost in today's UTC day window,
--   from the aggregator's totals.
SELECT
    scope_kind,
    scope_key,
    cost_usd,
    requests,
    unpriced_events,
    updated_at
FROM window_totals_current
WHERE window_kind = 'day'
  AND window_tz = 'UTC'
  AND window_start = toStartOfDay(now(), 'UTC')
ORDER BY cost_usd DESC, scope_kind, scope_key
LIMIT 20;
