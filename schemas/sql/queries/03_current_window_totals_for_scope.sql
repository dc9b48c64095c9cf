-- title: Current window totals for one scope
-- description: The newest totals of every window that contains the present moment (this minute, hour,
--   day, week, month and any running campaign) for one scope. Edit the two values on the WITH line
--   (query parameters do not exist in 18.16).
WITH 'team' AS wanted_scope_kind, 'ml-research' AS wanted_scope_key
SELECT
    window_kind,
    window_tz,
    window_start,
    window_end,
    requests,
    input_tokens,
    output_tokens,
    cost_usd,
    unpriced_events,
    errors_4xx,
    errors_5xx,
    jobs_in_flight,
    updated_at
FROM window_totals_current
WHERE scope_kind = wanted_scope_kind
  AND scope_key = wanted_scope_key
  AND window_start <= now()
  AND window_end > now()
ORDER BY window_end - window_start, window_kind, window_tz;
