-- How deep is each queue? One row per (status, type): how many tasks, and how
-- old the oldest of them is.
-- Safe on a live system: a read-only view. It counts every row of tasks (a
-- sequential scan), so it costs as much as the table is big; finished tasks are
-- pruned after the retention period, which keeps that bounded.
--
--   SELECT * FROM taskflow_queue_overview;
--   SELECT * FROM taskflow_queue_overview WHERE status NOT IN ('done', 'cancelled');
CREATE OR REPLACE VIEW taskflow_queue_overview AS
SELECT t.status,
       t.type,
       count(*) AS tasks,
       date_trunc('second', now() - min(t.created_at)) AS oldest_age,
       min(t.created_at) AS oldest_created_at
FROM tasks t
GROUP BY t.status, t.type
ORDER BY t.status, t.type;
COMMENT ON VIEW taskflow_queue_overview IS
    'How deep is each queue: tasks and oldest age per status and type.';
