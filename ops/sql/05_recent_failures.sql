-- What failed recently, and why? Tasks that failed for good in the last 24
-- hours, and tasks retrying now after a failed attempt; newest first, with the
-- last error and the attempts used. `quarantined` marks tasks failed because
-- their handler kept killing workers (the lease-crash limit), whatever retries
-- were left. A failed task runs again with SELECT taskflow_retry('<id>');
-- Safe on a live system: a read-only view.
--
--   SELECT * FROM taskflow_recent_failures LIMIT 20;
--   SELECT type, last_error, count(*) FROM taskflow_recent_failures
--   GROUP BY 1, 2 ORDER BY 3 DESC;
CREATE OR REPLACE VIEW taskflow_recent_failures AS
SELECT t.id,
       t.user_id,
       t.type,
       t.status,
       coalesce(t.finished_at, t.updated_at) AS failed_at,
       t.attempts,
       t.max_retries,
       coalesce(position('quarantined' IN t.last_error) > 0, false) AS quarantined,
       t.worker_id AS last_worker_id,
       t.last_error
FROM tasks t
WHERE (t.status = 'failed' AND t.finished_at > now() - interval '24 hours')
   OR t.status = 'retrying'
ORDER BY failed_at DESC, t.id;
COMMENT ON VIEW taskflow_recent_failures IS
    'Failed in the last 24 h or retrying now: last error, attempts, quarantined.';
