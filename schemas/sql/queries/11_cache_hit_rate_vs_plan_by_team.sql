-- title: Cache-hit rate versus plan, per team, today
-- description: Cached input tokens as a share of input tokens, next to the rate each team planned for
--   (the plan is written in the query: edit the two arrays; teams not listed are planned at 20 %).
SELECT
    scope_key AS team,
    input_tokens,
    cached_input_tokens,
    round(cached_input_tokens / input_tokens, 4) AS cache_hit_rate,
    transform(scope_key, ['search', 'support'], [0.5, 0.3], 0.2) AS planned_rate,
    round(cached_input_tokens / input_tokens - transform(scope_key, ['search', 'support'], [0.5, 0.3], 0.2), 4) AS versus_plan
FROM window_totals_current
WHERE scope_kind = 'team'
  AND window_kind = 'day'
  AND window_tz = 'UTC'
  AND window_start = toStartOfDay(now(), 'UTC')
  AND input_tokens > 0
ORDER BY versus_plan, team;
