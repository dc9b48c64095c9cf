-- title: Decisions history
-- description: Enforcement decisions of the last 7 days, newest first, with the scope shown as
--   `name=value` pairs. FINAL shows each decision once, in its latest version.
SELECT
    issued_at,
    decision_id,
    key,
    policy_id,
    arrayStringConcat(arrayMap((name, value) -> concat(name, '=', value), scope_keys, scope_values), ',') AS scope,
    action,
    degrade_to,
    reason,
    unit,
    observed,
    limit_value,
    window_kind,
    window_start,
    window_end,
    expires_at
FROM decisions FINAL
WHERE issued_at >= now() - INTERVAL 7 DAY
ORDER BY issued_at_us DESC, decision_id
LIMIT 200;
