-- What is stuck? Tasks in `processing` whose worker's lease has expired: the
-- worker died, hung or lost Postgres. The scheduler rescues these every tick;
-- rows that stay here mean no scheduler is running (or it cannot keep up).
-- `worker_alive` says whether that worker still heartbeats (see
-- taskflow_worker_alive_seconds). To rescue them by hand:
-- SELECT taskflow_requeue_stuck();
-- Safe on a live system: a read-only view over the partial index of
-- processing rows.
--
--   SELECT * FROM taskflow_stuck;
CREATE OR REPLACE VIEW taskflow_stuck AS
SELECT t.id,
       t.user_id,
       t.type,
       t.worker_id,
       t.attempts,
       t.max_retries,
       t.lease_crashes,
       t.started_at,
       t.lease_expires_at,
       date_trunc('second', now() - t.lease_expires_at) AS expired_for,
       w.last_heartbeat_at AS worker_last_heartbeat_at,
       coalesce(w.stopped_at IS NULL
                AND w.last_heartbeat_at
                    > now() - make_interval(secs => taskflow_worker_alive_seconds()),
                false) AS worker_alive
FROM tasks t
LEFT JOIN workers w ON w.id = t.worker_id
WHERE t.status = 'processing' AND t.lease_expires_at < now()
ORDER BY t.lease_expires_at;
COMMENT ON VIEW taskflow_stuck IS
    'Processing past lease_expires_at: the worker is gone; fix with taskflow_requeue_stuck().';
