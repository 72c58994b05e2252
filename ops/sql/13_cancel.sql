-- Cancel a task by hand: blocked, postponed, queued, retrying or processing. A running
-- task's worker hears of it at once (the trigger sends NOTIFY taskflow_cancel)
-- and stops its handler; its late outcome cannot land (the completion is fenced
-- on status = 'processing'). Returns true when cancelled; false (with a NOTICE)
-- when the task was already finished or does not exist, in which case nothing
-- changes.
-- Safe on a live system: one guarded UPDATE of one row (WHERE status IN the
-- unfinished states), checked by the transition trigger. History records it as
-- event 'cancelled' by actor 'ops:<your role>', with the reason in its error
-- column; the reason also becomes the task's last_error, as a cancel through
-- the API does.
--
--   SELECT taskflow_cancel('0194f9f2-6d3c-7c1e-9a4b-2f0e8d7c6b5a', 'duplicate of another task');
CREATE OR REPLACE FUNCTION taskflow_cancel(task_id uuid, reason text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    previous_actor text := coalesce(current_setting('taskflow.actor', true), '');
    previous_event text := coalesce(current_setting('taskflow.event', true), '');
    found_status task_status;
    changed boolean;
BEGIN
    PERFORM set_config('taskflow.actor', 'ops:' || current_user, true);
    PERFORM set_config('taskflow.event', 'cancelled', true);
    -- Mirrors store.CANCEL_TASK. worker_id stays: history names who was running it.
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(), updated_at = now(),
        lease_expires_at = NULL, last_error = coalesce(reason, t.last_error)
    WHERE t.id = taskflow_cancel.task_id
      AND t.status = ANY ('{blocked,postponed,queued,retrying,processing}'::task_status[]);
    changed := FOUND;
    IF changed AND reason IS NOT NULL THEN
        UPDATE task_history h SET error = reason
        WHERE h.id = (SELECT max(l.id) FROM task_history l
                      WHERE l.task_id = taskflow_cancel.task_id);
    END IF;
    PERFORM set_config('taskflow.actor', previous_actor, true);
    PERFORM set_config('taskflow.event', previous_event, true);
    IF NOT changed THEN
        SELECT t.status INTO found_status FROM tasks t WHERE t.id = taskflow_cancel.task_id;
        RAISE NOTICE '%', CASE WHEN found_status IS NULL
                               THEN format('no task %s; nothing changed', task_id)
                               ELSE format('task %s is already %s; nothing changed',
                                           task_id, found_status)
                          END;
    END IF;
    RETURN changed;
END
$$;
COMMENT ON FUNCTION taskflow_cancel(uuid, text) IS
    'Cancel an unfinished task (a running one is stopped); recorded as ops:<role>.';
