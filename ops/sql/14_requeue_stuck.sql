-- Rescue every task stuck in `processing` past its lease (see taskflow_stuck),
-- exactly as the scheduler's rescuer does, because both call the one rule,
-- taskflow_rescue_expired_leases: the lost attempt counts; the task is
-- retrying and due at once, or failed when it is out of retries or its handler
-- has now lost max_lease_crashes workers (quarantine; the engine's default is
-- 3, pass the deployment's value if it differs). Returns how many tasks it
-- moved. The scheduler then queues and publishes the retrying ones on its next tick.
-- Safe on a live system: rows are taken FOR UPDATE SKIP LOCKED, so it never
-- waits for, nor races, a running scheduler (each row is rescued once); only
-- rows whose lease has already expired are touched, and a worker that comes
-- back late cannot finish the lost attempt (completion is fenced on its claim).
-- History records each as event 'lease_expired' by actor 'ops:<your role>'.
--
--   SELECT taskflow_requeue_stuck();
--   SELECT taskflow_requeue_stuck(max_lease_crashes => 5);

-- The rule, written once. The caller names the actor and event for history
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
               d.attempts > d.max_retries AS out_of_retries,
               d.lease_crashes + 1 >= taskflow_rescue_expired_leases.max_lease_crashes
                   AS quarantined
        FROM tasks d JOIN expired USING (id)
    )
    UPDATE tasks t SET
        status = CASE WHEN d.out_of_retries OR d.quarantined
                      THEN 'failed' ELSE 'retrying' END::task_status,
        finished_at = CASE WHEN d.out_of_retries OR d.quarantined THEN now() END,
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

CREATE OR REPLACE FUNCTION taskflow_requeue_stuck(max_lease_crashes integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    previous_actor text := coalesce(current_setting('taskflow.actor', true), '');
    previous_event text := coalesce(current_setting('taskflow.event', true), '');
    moved integer;
BEGIN
    PERFORM set_config('taskflow.actor', 'ops:' || current_user, true);
    PERFORM set_config('taskflow.event', 'lease_expired', true);
    SELECT count(*) INTO moved
    FROM taskflow_rescue_expired_leases(NULL, taskflow_requeue_stuck.max_lease_crashes);
    PERFORM set_config('taskflow.actor', previous_actor, true);
    PERFORM set_config('taskflow.event', previous_event, true);
    RETURN moved;
END
$$;
COMMENT ON FUNCTION taskflow_requeue_stuck(integer) IS
    'Rescue processing tasks past their lease (as the scheduler does); returns the count.';
