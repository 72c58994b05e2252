-- Whose work is waiting? One row per user with unfinished tasks: how many in
-- each waiting state, how many are due now, and how long the oldest due one
-- has waited. A user far ahead of the others is flooding the queue.
-- Safe on a live system: a read-only view over unfinished tasks.
--
--   SELECT * FROM taskflow_user_backlog LIMIT 10;
-- (Dropped first: its columns changed, which CREATE OR REPLACE cannot do.)
DROP VIEW IF EXISTS taskflow_user_backlog;
CREATE VIEW taskflow_user_backlog AS
SELECT t.user_id,
       u.email,
       count(*) FILTER (WHERE t.status = 'blocked') AS blocked,
       count(*) FILTER (WHERE t.status = 'postponed') AS postponed,
       count(*) FILTER (WHERE t.status = 'queued') AS queued,
       count(*) FILTER (WHERE t.status = 'processing') AS processing,
       count(*) FILTER (WHERE t.status = 'retrying') AS retrying,
       count(*) AS unfinished,
       count(*) FILTER (WHERE t.status = 'queued' OR t.run_at <= now()
                          AND t.status IN ('postponed', 'retrying')) AS due,
       date_trunc('second', now() - min(t.run_at) FILTER (
           WHERE t.status = 'queued' OR t.run_at <= now()
             AND t.status IN ('postponed', 'retrying'))) AS oldest_due_age
FROM tasks t
JOIN users u ON u.id = t.user_id
WHERE t.status IN ('blocked', 'postponed', 'queued', 'processing', 'retrying')
GROUP BY t.user_id, u.email
ORDER BY unfinished DESC, t.user_id;
COMMENT ON VIEW taskflow_user_backlog IS
    'Unfinished tasks per user: by waiting state, due now, oldest due age.';
