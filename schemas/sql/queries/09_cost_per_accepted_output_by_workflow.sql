-- title: Cost and billable attempts per accepted output, per workflow, today
-- description: What one output a user kept really costs, retries and fallbacks included, and how
--   many billable attempts it took (today's UTC day; workflows with at least one accepted output).
SELECT
    scope_key AS workflow,
    cost_usd,
    accepted_outputs,
    cost_usd / accepted_outputs AS cost_per_accepted_output,
    round(billable_attempts / accepted_outputs, 3) AS attempts_per_accepted_output
FROM window_totals_current
WHERE scope_kind = 'workflow'
  AND window_kind = 'day'
  AND window_tz = 'UTC'
  AND window_start = toStartOfDay(now(), 'UTC')
  AND accepted_outputs > 0
ORDER BY cost_usd DESC, workflow;
