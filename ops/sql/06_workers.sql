-- Which workers are alive? Every worker process registers itself and
-- heartbeats every lease_seconds / 3. `state` is alive (heartbeat within
-- taskflow_worker_alive_seconds(), 90 s by default), stopped (shut down
-- cleanly) or dead (went silent: killed, hung or cut off). Shown: workers alive
-- or dead within the last day, stopped within the last hour, and any worker
-- still holding tasks. `running_tasks` counts its processing rows,
-- `expired_leases` those of them past their lease (see taskflow_stuck).
-- Safe on a live system: a read-only view.
--
--   SELECT * FROM taskflow_workers;
--   SET taskflow.worker_alive_seconds = '15';   -- a deployment with lease_seconds = 5
CREATE OR REPLACE VIEW taskflow_workers AS
SELECT w.id,
       w.hostname,
       w.pid,
       CASE WHEN w.stopped_at IS NOT NULL THEN 'stopped'
            WHEN w.last_heartbeat_at
                 > now() - make_interval(secs => taskflow_worker_alive_seconds()) THEN 'alive'
            ELSE 'dead' END AS state,
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
WHERE (w.stopped_at IS NULL AND w.last_heartbeat_at > now() - interval '1 day')
   OR w.stopped_at > now() - interval '1 hour'
   OR r.running_tasks > 0
ORDER BY w.stopped_at IS NOT NULL, w.last_heartbeat_at DESC, w.id;
COMMENT ON VIEW taskflow_workers IS
    'Registered workers: alive/dead/stopped, last heartbeat, running task count.';
