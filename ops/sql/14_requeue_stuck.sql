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
