-- The lease rescue rule, shared by the scheduler's rescuer
-- (store/engine.py RESCUE_EXPIRED_LEASES) and the operators'
-- taskflow_requeue_stuck() (ops/sql/14_requeue_stuck.sql). A lapsed lease means
-- the worker died, hung or lost Postgres: the lost attempt counts, and the one
-- retry rule (10_retry_rule.sql) decides what follows, with a handler that
-- has now lost max_lease_crashes workers treated as a permanent failure
-- (quarantine). Re-applied by `taskflow migrate` whenever this file changes.

-- The caller names the actor and event for history
-- (set_config 'taskflow.actor' / 'taskflow.event'); batch_limit NULL takes all.
CREATE OR REPLACE FUNCTION taskflow_rescue_expired_leases(
    batch_limit integer, max_lease_crashes integer
)
RETURNS TABLE (id uuid, status task_status, worker_id text)
LANGUAGE sql VOLATILE AS $$
    WITH expired AS (
        SELECT e.id FROM tasks e
        WHERE e.status = 'processing' AND e.lease_expires_at < now()
        ORDER BY e.lease_expires_at
        LIMIT taskflow_rescue_expired_leases.batch_limit
        FOR UPDATE SKIP LOCKED
    ), decided AS (
        SELECT d.id,
               d.lease_crashes + 1 >= taskflow_rescue_expired_leases.max_lease_crashes
                   AS quarantined,
               taskflow_attempt_status(
                   d.attempts, d.max_retries,
                   d.lease_crashes + 1 >= taskflow_rescue_expired_leases.max_lease_crashes
               ) AS status,
               taskflow_attempt_status(d.attempts, d.max_retries, false) = 'failed'
                   AS out_of_retries
        FROM tasks d JOIN expired USING (id)
    )
    UPDATE tasks t SET
        status = d.status,
        finished_at = CASE WHEN d.status = 'failed' THEN now() END,
        lease_crashes = t.lease_crashes + 1,
        run_at = now(),
        last_error = format('worker %s lost: lease expired at %s', t.worker_id,
                            to_char(t.lease_expires_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
            || CASE WHEN d.quarantined AND NOT d.out_of_retries
                    THEN format('; quarantined after %s attempts ended with a lost worker',
                                t.lease_crashes + 1)
                    ELSE '' END,
        lease_expires_at = NULL,
        updated_at = now()
    FROM decided d
    WHERE t.id = d.id AND t.status = 'processing'
    RETURNING t.id, t.status, t.worker_id
$$;
COMMENT ON FUNCTION taskflow_rescue_expired_leases(integer, integer) IS
    'The lease rescue rule, shared by the scheduler and taskflow_requeue_stuck().';

