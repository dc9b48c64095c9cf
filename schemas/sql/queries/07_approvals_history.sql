-- title: Approvals history
-- description: Limit-raise requests of the last 30 days with their latest status, newest first.
SELECT
    requested_at,
    approval_id,
    policy_id,
    arrayStringConcat(arrayMap((name, value) -> concat(name, '=', value), scope_keys, scope_values), ',') AS scope,
    new_limit,
    valid_until,
    status,
    approved_by,
    decided_at,
    reason
FROM approvals FINAL
WHERE requested_at >= now() - INTERVAL 30 DAY
ORDER BY requested_at DESC, approval_id
LIMIT 200;
