-- title: Output/input token ratio per model, today
-- description: Output tokens per input token; a jump means prompts or agents changed behaviour
--   (today's UTC day).
SELECT
    scope_key AS model,
    input_tokens,
    output_tokens,
    round(output_tokens / input_tokens, 4) AS output_input_ratio
FROM window_totals_current
WHERE scope_kind = 'model'
  AND window_kind = 'day'
  AND window_tz = 'UTC'
  AND window_start = toStartOfDay(now(), 'UTC')
  AND input_tokens > 0
ORDER BY output_input_ratio DESC, model;
