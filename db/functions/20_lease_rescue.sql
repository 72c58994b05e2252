-- Rescuing the tasks of a lost worker: one rule, two ways to notice the loss.
-- Re-applied by `taskflow migrate` whenever this file changes.
--
-- - taskflow_rescue_lost_workers(): the worker's Postgres session ended (it
--   died: db/migrations/0008 says how that is seen). Called by the scheduler
--   every tick.
-- - taskflow_rescue_expired_leases(): its lease lapsed (it died, hung, froze
--   or was cut off). Called by the scheduler every tick, and by operators
--   through taskflow_requeue_stuck() (ops/sql/14_requeue_stuck.sql).
--
-- Both hand the tasks they take (FOR UPDATE SKIP LOCKED, so schedulers and
-- operators never rescue one row twice) to taskflow_rescue_attempts(), which
-- decides. An attempt that really started (started_at set: it began at its
-- claim, or its handler ran) counts: its crash is added to lease_crashes, and
-- the one retry rule (10_retry_rule.sql) decides, with a handler that has now
-- lost max_lease_crashes workers treated as a permanent failure (quarantine):
-- failed, or retrying and due at once (the crash was the worker's, so no
-- backoff: the scheduler queues and publishes it in the same tick).
-- An attempt claimed ahead that may never have started is put back as if it
-- never happened: queued at once, attempts and crashes unchanged, and counted
-- in unstarted_rescues so it is never claimed ahead again.
-- A worker that comes back late cannot finish a rescued attempt: completion
-- is fenced on its claim token. The callers name the event and actor for
-- history (set_config 'taskflow.event' / 'taskflow.actor').

-- The advisory lock a worker holds while its session lives: pg_locks shows it
-- as (classid = this namespace, objid = liveness_key, objsubid = 2).
CREATE OR REPLACE FUNCTION taskflow_worker_lock_namespace() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1952867329 $$;

-- Registered, running workers whose session no longer holds their lock.
CREATE OR REPLACE FUNCTION taskflow_lost_worker_ids() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT w.id FROM workers w
    WHERE w.stopped_at IS NULL AND w.liveness_key IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM pg_locks l
          WHERE l.locktype = 'advisory' AND l.granted
            AND l.database = (SELECT d.oid FROM pg_database d
                              WHERE d.datname = current_database())
            AND l.classid = taskflow_worker_lock_namespace()::oid
            AND l.objid = w.liveness_key::oid
            AND l.objsubid = 2)
$$;

CREATE OR REPLACE FUNCTION taskflow_rescue_attempts(
    task_ids uuid[], max_lease_crashes integer, reason text
)
RETURNS TABLE (id uuid, status task_status, worker_id text, started boolean)
LANGUAGE sql VOLATILE AS $$
    WITH decided AS (
        SELECT d.id,
               d.started_at IS NOT NULL AS started,
               d.lease_crashes + 1 >= taskflow_rescue_attempts.max_lease_crashes
                   AS quarantined,
               taskflow_attempt_status(
                   d.attempts, d.max_retries,
                   d.lease_crashes + 1 >= taskflow_rescue_attempts.max_lease_crashes
               ) AS after_crash,
               taskflow_attempt_status(d.attempts, d.max_retries, false) = 'failed'
                   AS out_of_retries
        FROM tasks d
        WHERE d.id = ANY(taskflow_rescue_attempts.task_ids) AND d.status = 'processing'
    )
    UPDATE tasks t SET
        status = CASE WHEN NOT d.started THEN 'queued' ELSE d.after_crash END::task_status,
        finished_at = CASE WHEN d.started AND d.after_crash = 'failed' THEN now() END,
        attempts = CASE WHEN d.started THEN t.attempts ELSE t.attempts - 1 END,
        lease_crashes = CASE WHEN d.started THEN t.lease_crashes + 1 ELSE t.lease_crashes END,
        unstarted_rescues = t.unstarted_rescues + CASE WHEN d.started THEN 0 ELSE 1 END,
        run_at = now(),
        last_error = CASE WHEN d.started THEN
            format('worker %s lost: %s', t.worker_id, coalesce(
                taskflow_rescue_attempts.reason,
                'lease expired at ' || to_char(t.lease_expires_at AT TIME ZONE 'UTC',
                                               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')))
            || CASE WHEN d.quarantined AND NOT d.out_of_retries
                    THEN format('; quarantined after %s attempts ended with a lost worker',
                                t.lease_crashes + 1)
                    ELSE '' END
            ELSE t.last_error END,
        lease_expires_at = NULL,
        updated_at = now()
    FROM decided d
    WHERE t.id = d.id AND t.status = 'processing'
    RETURNING t.id, t.status, t.worker_id, d.started
$$;
COMMENT ON FUNCTION taskflow_rescue_attempts(uuid[], integer, text) IS
    'The rescue rule for attempts of a lost worker: counted if started, else put back.';

-- batch_limit NULL takes all. (Dropped first: its result gained a column.)
DROP FUNCTION IF EXISTS taskflow_rescue_expired_leases(integer, integer);
CREATE OR REPLACE FUNCTION taskflow_rescue_expired_leases(
    batch_limit integer, max_lease_crashes integer
)
RETURNS TABLE (id uuid, status task_status, worker_id text, started boolean)
LANGUAGE sql VOLATILE AS $$
    WITH expired AS (
        SELECT e.id FROM tasks e
        WHERE e.status = 'processing' AND e.lease_expires_at < now()
        ORDER BY e.lease_expires_at
        LIMIT taskflow_rescue_expired_leases.batch_limit
        FOR UPDATE SKIP LOCKED
    )
    SELECT r.* FROM taskflow_rescue_attempts(
        (SELECT array_agg(expired.id) FROM expired),
        taskflow_rescue_expired_leases.max_lease_crashes,
        NULL  -- each task's own lease time
    ) AS r
$$;
COMMENT ON FUNCTION taskflow_rescue_expired_leases(integer, integer) IS
    'Rescue processing tasks past their lease; shared by the scheduler and taskflow_requeue_stuck().';

CREATE OR REPLACE FUNCTION taskflow_rescue_lost_workers(
    batch_limit integer, max_lease_crashes integer
)
RETURNS TABLE (id uuid, status task_status, worker_id text, started boolean)
LANGUAGE sql VOLATILE AS $$
    WITH lost AS (
        SELECT e.id FROM tasks e
        WHERE e.status = 'processing'
          AND e.worker_id IN (SELECT taskflow_lost_worker_ids())
        ORDER BY e.claim_token
        LIMIT taskflow_rescue_lost_workers.batch_limit
        FOR UPDATE SKIP LOCKED
    )
    SELECT r.* FROM taskflow_rescue_attempts(
        (SELECT array_agg(lost.id) FROM lost),
        taskflow_rescue_lost_workers.max_lease_crashes,
        'its Postgres session ended'
    ) AS r
$$;
COMMENT ON FUNCTION taskflow_rescue_lost_workers(integer, integer) IS
    'Rescue the processing tasks of workers whose Postgres session ended (they died).';
