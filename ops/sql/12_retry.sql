-- Run a failed or cancelled task again, by hand. It gets a fresh set of
-- attempts (attempts = 0); its history keeps the old ones. Returns true when
-- the task was re-queued; false (with a NOTICE saying why) when it was not
-- failed or cancelled, or does not exist, or waits for a dependency that is
-- not done (retry that one first): such a task is left exactly as it was.
-- Safe on a live system: one guarded UPDATE of one row (WHERE status IN
-- failed/cancelled), checked by the transition trigger. History records it as
-- event 'retried' by actor 'ops:<your role>', with the reason in its error
-- column. The trigger's NOTIFY wakes the dispatchers, which hand it to a
-- worker in its turn.
--
--   SELECT taskflow_retry('0194f9f2-6d3c-7c1e-9a4b-2f0e8d7c6b5a', 'SMTP fixed');
--   SELECT id, taskflow_retry(id, 'mail outage over') FROM taskflow_recent_failures
--   WHERE status = 'failed' AND type = 'send_email';
CREATE OR REPLACE FUNCTION taskflow_retry(task_id uuid, reason text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    -- Restored at the end, so later statements in the caller's transaction are
    -- not recorded under this function's name.
    previous_actor text := coalesce(current_setting('taskflow.actor', true), '');
    previous_event text := coalesce(current_setting('taskflow.event', true), '');
    found_status task_status;
    changed boolean;
BEGIN
    PERFORM set_config('taskflow.actor', 'ops:' || current_user, true);
    PERFORM set_config('taskflow.event', 'retried', true);
    -- Mirrors store.RETRY_FINISHED_TASK: a clean slate for the new attempts.
    UPDATE tasks t
    SET status = 'queued', attempts = 0, lease_crashes = 0, run_at = now(),
        started_at = NULL, finished_at = NULL, worker_id = NULL, lease_expires_at = NULL,
        updated_at = now()
    WHERE t.id = taskflow_retry.task_id
      AND t.status = ANY ('{failed,cancelled}'::task_status[])
      AND NOT EXISTS (SELECT 1 FROM task_dependencies d
                      LEFT JOIN tasks dep ON dep.id = d.depends_on_id
                      WHERE d.task_id = t.id AND dep.status IS DISTINCT FROM 'done');
    changed := FOUND;
    IF changed AND reason IS NOT NULL THEN
        -- The trigger has just written this change's history row; our row lock
        -- on the task keeps any other change of it out until we commit.
        UPDATE task_history h SET error = reason
        WHERE h.id = (SELECT max(l.id) FROM task_history l
                      WHERE l.task_id = taskflow_retry.task_id);
    END IF;
    PERFORM set_config('taskflow.actor', previous_actor, true);
    PERFORM set_config('taskflow.event', previous_event, true);
    IF NOT changed THEN
        SELECT t.status INTO found_status FROM tasks t WHERE t.id = taskflow_retry.task_id;
        RAISE NOTICE '%', CASE WHEN found_status IS NULL
                               THEN format('no task %s; nothing changed', task_id)
                               WHEN found_status IN ('failed', 'cancelled')
                               THEN format('task %s waits for a dependency that is not done '
                                           '(SELECT * FROM task_dependencies WHERE task_id = %L); '
                                           'retry that one first; nothing changed',
                                           task_id, task_id)
                               ELSE format('task %s is %s: only failed or cancelled tasks can '
                                           'be retried; nothing changed', task_id, found_status)
                          END;
    END IF;
    RETURN changed;
END
$$;
COMMENT ON FUNCTION taskflow_retry(uuid, text) IS
    'Re-queue a failed or cancelled task with fresh attempts; recorded as ops:<role>.';
