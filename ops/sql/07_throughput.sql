-- How fast is work getting done? Attempts that ended in the last minute and
-- the last hour, from the history: completed (-> done), failed (-> failed, out
-- of retries or permanent) and retried (an attempt failed, -> retrying).
-- Safe on a live system: a read-only view; a range scan of the history's
-- time index, about one hour of rows.
--
--   SELECT * FROM taskflow_throughput;
CREATE OR REPLACE VIEW taskflow_throughput AS
SELECT p.period,
       count(h.id) FILTER (WHERE h.to_status = 'done') AS completed,
       count(h.id) FILTER (WHERE h.to_status = 'failed') AS failed,
       count(h.id) FILTER (WHERE h.to_status = 'retrying') AS retried,
       round(count(h.id) FILTER (WHERE h.to_status = 'done')
             / extract(epoch FROM p.span), 3) AS completed_per_second
FROM (VALUES (1, 'last minute', interval '1 minute'),
             (2, 'last hour', interval '1 hour')) AS p(position, period, span)
LEFT JOIN task_history h
       ON h.at > now() - p.span
      AND h.from_status = 'processing'
      AND h.to_status IN ('done', 'failed', 'retrying')
GROUP BY p.position, p.period, p.span
ORDER BY p.position;
COMMENT ON VIEW taskflow_throughput IS
    'Attempts completed / failed / retried in the last minute and hour (from task_history).';
