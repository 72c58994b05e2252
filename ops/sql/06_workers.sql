-- Which workers are alive? Every worker process registers itself, holds an
-- advisory lock on its own Postgres session for as long as it lives, and
-- heartbeats every lease_seconds / 3. `state`: stopped (shut down cleanly);
-- lost (its session is gone, so its lock is: killed, crashed or cut off; the
-- scheduler rescues its tasks within a second); silent (its session lives but
-- no heartbeat within taskflow_worker_alive_seconds(), 90 s by default: hung,
-- paused, or its event loop blocked); alive. `session` says whether the lock
-- is held now. Shown: workers alive or lost within the last day, stopped
-- within the last hour, and any worker still holding tasks. `running_tasks`
-- counts its processing rows, `expired_leases` those past their lease (see
-- taskflow_stuck).
-- Safe on a live system: a read-only view.
--
--   SELECT * FROM taskflow_workers;
--   SET taskflow.worker_alive_seconds = '15';   -- a deployment with lease_seconds = 5
-- (Dropped first, so a change of its columns applies too.)
DROP VIEW IF EXISTS taskflow_workers;
CREATE VIEW taskflow_workers AS
SELECT w.id,
       w.hostname,
       w.pid,
       CASE WHEN w.stopped_at IS NOT NULL THEN 'stopped'
            WHEN lost.id IS NOT NULL THEN 'lost'
            WHEN w.last_heartbeat_at
                 <= now() - make_interval(secs => taskflow_worker_alive_seconds()) THEN 'silent'
            ELSE 'alive' END AS state,
       w.stopped_at IS NULL AND lost.id IS NULL AND w.liveness_key IS NOT NULL AS session,
       w.concurrency,
       coalesce(r.running_tasks, 0) AS running_tasks,
       coalesce(r.expired_leases, 0) AS expired_leases,
       w.last_heartbeat_at,
       date_trunc('second', now() - w.last_heartbeat_at) AS heartbeat_age,
       w.queue,
       w.started_at,
       w.stopped_at
FROM workers w
LEFT JOIN (
    SELECT t.worker_id,
           count(*) AS running_tasks,
           count(*) FILTER (WHERE t.lease_expires_at < now()) AS expired_leases
    FROM tasks t
    WHERE t.status = 'processing'
    GROUP BY t.worker_id
) r ON r.worker_id = w.id
LEFT JOIN taskflow_lost_worker_ids() AS lost(id) ON lost.id = w.id
WHERE (w.stopped_at IS NULL AND w.last_heartbeat_at > now() - interval '1 day')
   OR w.stopped_at > now() - interval '1 hour'
   OR r.running_tasks > 0
ORDER BY w.stopped_at IS NOT NULL, w.last_heartbeat_at DESC, w.id;
COMMENT ON VIEW taskflow_workers IS
    'Registered workers: alive, silent, lost (session gone) or stopped; heartbeat; running tasks.';
