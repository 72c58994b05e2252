-- What should be running but is not? Tasks that are due and unclaimed: queued,
-- or postponed/retrying whose run_at has passed (the scheduler promotes those
-- every tick, so they should not linger). In claim order: priority, then due time.
-- `waiting_for` is how long each has been due.
-- Safe on a live system: a read-only view over the partial indexes of the
-- waiting states; it never locks a row, so workers keep claiming meanwhile.
--
--   SELECT * FROM taskflow_due_unclaimed LIMIT 20;
--   SELECT type, count(*), max(waiting_for) FROM taskflow_due_unclaimed GROUP BY type;
CREATE OR REPLACE VIEW taskflow_due_unclaimed AS
SELECT t.id,
       t.user_id,
       t.type,
       t.status,
       t.priority,
       t.attempts,
       t.max_retries,
       t.run_at,
       date_trunc('second', now() - t.run_at) AS waiting_for,
       t.created_at
FROM tasks t
WHERE t.status = 'queued'
   OR (t.status IN ('postponed', 'retrying') AND t.run_at <= now())
ORDER BY t.priority DESC, t.run_at, t.id;
COMMENT ON VIEW taskflow_due_unclaimed IS
    'Due but not claimed: queued, or postponed/retrying past run_at; in claim order.';
