-- title: Async jobs in flight per customer
-- description: Jobs submitted and not finished, summed over every month window of the customer (a job
--   submitted in one month and finished in the next counts +1 then -1), with the oldest one's start.
SELECT
    scope_key AS customer_id,
    sum(jobs_in_flight) AS jobs_in_flight,
    minIf(oldest_pending_job_started_at_us, oldest_pending_job_started_at_us > 0) AS oldest_started_us
FROM window_totals_current
WHERE scope_kind = 'customer_id'
  AND window_kind = 'month'
  AND window_tz = 'UTC'
GROUP BY scope_key
HAVING jobs_in_flight > 0
ORDER BY jobs_in_flight DESC, customer_id;
