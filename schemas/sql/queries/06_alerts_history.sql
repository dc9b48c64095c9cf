-- title: Alerts history
-- description: Alerts raised in the last 7 days, newest first, with their scope as `name=value` pairs
--   and how far past the limit the observed value was.
SELECT
    raised_at,
    alert_id,
    policy_id,
    arrayStringConcat(arrayMap((name, value) -> concat(name, '=', value), scope_keys, scope_values), ',') AS scope,
    kind,
    severity,
    threshold_percent,
    unit,
    observed,
    limit_value,
    window_kind,
    window_start,
    owner,
    message
FROM alerts FINAL
WHERE raised_at >= now() - INTERVAL 7 DAY
ORDER BY raised_at_us DESC, alert_id
LIMIT 200;
