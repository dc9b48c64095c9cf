-- title: Top scopes by percent of cap, current windows
-- description: For every (policy, scope) with a soft alert in a window that is still open, the amount
--   at its latest alert as a percentage of the cap (from the alerts audit; hard-cap alerts name the
--   enforced scope, which adds the policy's fixed dimensions, so they are left out here).
SELECT
    policy_id,
    scope_keys,
    scope_values,
    window_kind,
    argMax(observed, raised_at_us) AS latest_observed,
    argMax(assumeNotNull(limit_value), raised_at_us) AS cap,
    round(100 * toFloat64(latest_observed) / toFloat64(cap), 1) AS percent_of_cap
FROM alerts FINAL
WHERE kind = 'soft_threshold'
  AND limit_value IS NOT NULL
  AND window_end > now()
GROUP BY policy_id, scope_keys, scope_values, window_kind
ORDER BY percent_of_cap DESC, policy_id
LIMIT 20;
