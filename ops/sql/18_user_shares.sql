-- Who gets the worker slots? One row per user with unfinished tasks: their
-- fair-share weight, what they run now (running: processing), what is on its
-- way to a worker (dispatched: picked into the dispatch window, not claimed
-- yet), what waits to be picked (queued: queued and not dispatched), their
-- share of all running tasks, their caps and whether a cap holds their
-- queued tasks back (SPEC §8).
--
-- The caps are the effective ones, as the fair pick applies them: the user's
-- user_limits row where set, else the defaults the schedulers last started
-- with (dispatch_settings); NULL means no cap. held_by names the cap
-- ('max_running': running + dispatched have reached max_running;
-- 'email_per_user_per_minute': emails started in the last minute + on their
-- way have reached email_per_minute while send_email tasks wait), as
-- taskflow_why() names it for one task. A held task waits; it never fails.
-- A weight w takes w slots at each turn of the round-robin, so with every
-- user busy, running_share tends to weight / sum(weight).
-- Safe on a live system: a read-only view over unfinished tasks (their
-- partial indexes) and the dispatch window.
--
--   SELECT * FROM taskflow_user_shares LIMIT 10;
--   SELECT user_id, email, running, queued, held_by FROM taskflow_user_shares
--   WHERE held_by IS NOT NULL;
--   SELECT * FROM taskflow_user_shares WHERE running_share > 0.5;   -- one user has most slots
CREATE OR REPLACE VIEW taskflow_user_shares AS
WITH work AS (
    SELECT t.user_id,
           count(*) FILTER (WHERE t.status = 'processing') AS running,
           count(*) FILTER (WHERE t.status = 'queued') AS queued_all,
           count(*) FILTER (WHERE t.status = 'queued' AND t.type = 'send_email') AS emails_queued_all,
           count(*) AS unfinished
    FROM tasks t
    WHERE t.status IN ('blocked', 'postponed', 'queued', 'processing', 'retrying')
    GROUP BY t.user_id
), on_their_way AS (
    SELECT d.user_id, count(*) AS dispatched,
           count(*) FILTER (WHERE d.type = 'send_email') AS emails_dispatched
    FROM dispatched_tasks d
    GROUP BY d.user_id
), shares AS (
    SELECT w.user_id,
           u.email,
           coalesce(l.weight, 1) AS weight,
           w.running,
           coalesce(o.dispatched, 0) AS dispatched,
           -- The window holds only queued tasks (a task leaving queued leaves it).
           greatest(w.queued_all - coalesce(o.dispatched, 0), 0) AS queued,
           greatest(w.emails_queued_all - coalesce(o.emails_dispatched, 0), 0) AS emails_queued,
           coalesce(o.emails_dispatched, 0) AS emails_dispatched,
           w.unfinished,
           round(w.running::numeric / nullif(sum(w.running) OVER (), 0), 3) AS running_share,
           nullif(coalesce(l.max_running, s.user_max_running), 0) AS max_running,
           nullif(coalesce(l.email_per_minute, s.email_per_user_per_minute), 0) AS email_per_minute,
           (SELECT count(*) FROM tasks e
            WHERE e.user_id = w.user_id AND e.type = 'send_email'
              AND e.started_at > now() - interval '1 minute') AS emails_last_minute
    FROM work w
    JOIN users u ON u.id = w.user_id
    CROSS JOIN dispatch_settings s
    LEFT JOIN user_limits l ON l.user_id = w.user_id
    LEFT JOIN on_their_way o ON o.user_id = w.user_id
)
SELECT user_id, email, weight, running, dispatched, queued, unfinished, running_share,
       max_running, email_per_minute, emails_last_minute,
       CASE WHEN queued > 0 AND running + dispatched >= max_running
            THEN 'max_running'
            WHEN emails_queued > 0 AND emails_last_minute + emails_dispatched >= email_per_minute
            THEN 'email_per_user_per_minute'
       END AS held_by
FROM shares
ORDER BY running DESC, dispatched DESC, queued DESC, user_id;
COMMENT ON VIEW taskflow_user_shares IS
    'Per user with unfinished tasks: weight, running, dispatched, queued, share of running '
    'tasks, effective max_running and email_per_minute (NULL: none), the cap holding them.';
