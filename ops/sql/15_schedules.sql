-- Which schedules are there, when does each fire next, what did its last slot
-- create, and which are paused? One row per schedule (SPEC §9): its owner,
-- cron and time zone, `state` (active; planning: resumed, its next slot is
-- planned at the next scheduler tick; paused), the next slot and how far off it
-- is, the last slot that created a task, and that task's status now (NULL once
-- the task is deleted). Times are UTC; the cron reads in the `timezone` column.
-- Pause and resume by hand with the two functions below, or a plain
--   UPDATE schedules SET paused = true WHERE id = '...';
-- A resumed schedule continues from its first slot after the resume: the
-- slots that passed while it was paused never run. After changing a
-- schedule's cron or timezone by hand, set next_run_at = NULL in the same
-- UPDATE, and the next tick plans its next slot by the new rule.
-- Safe on a live system: a read-only view, and functions that change one
-- schedule row each (a scheduler holding the row finishes its slot first).
--
--   SELECT * FROM taskflow_schedules;
--   SELECT * FROM taskflow_schedules WHERE email = 'ana@example.com';
--   SELECT taskflow_pause_schedule('0194f9f2-6d3c-4c1e-9a4b-2f0e8d7c6b5a');
--   SELECT taskflow_resume_schedule('0194f9f2-6d3c-4c1e-9a4b-2f0e8d7c6b5a');
-- (Dropped first, so a change of its columns applies too.)
DROP VIEW IF EXISTS taskflow_schedules;
CREATE VIEW taskflow_schedules AS
SELECT s.id,
       s.user_id,
       u.email,
       s.name,
       s.cron,
       s.timezone,
       s.type,
       CASE WHEN s.paused THEN 'paused'
            WHEN s.next_run_at IS NULL THEN 'planning'
            ELSE 'active' END AS state,
       s.paused,
       s.next_run_at AS next_slot,
       date_trunc('second', s.next_run_at - now()) AS next_slot_in,
       s.last_run_at AS last_slot,
       s.last_task_id,
       t.status AS last_task_status,
       s.last_skipped_at AS last_skipped_slot,
       s.last_skip_reason,
       s.created_at,
       s.updated_at
FROM schedules s
JOIN users u ON u.id = s.user_id
LEFT JOIN tasks t ON t.id = s.last_task_id
ORDER BY s.paused, s.next_run_at NULLS FIRST, s.id;
COMMENT ON VIEW taskflow_schedules IS
    'Schedules: owner, cron, time zone, state, next slot, last slot and its task.';

-- Pause a schedule: no new slot creates a task until it is resumed; tasks it
-- already created stay as they are. Returns true when paused; false (with a
-- NOTICE) when it was paused already or does not exist.
CREATE OR REPLACE FUNCTION taskflow_pause_schedule(schedule_id uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- The trigger schedules_fill_implied clears next_run_at.
    UPDATE schedules s SET paused = true, updated_at = now()
    WHERE s.id = taskflow_pause_schedule.schedule_id AND NOT s.paused;
    IF FOUND THEN
        RETURN true;
    END IF;
    RAISE NOTICE '%', CASE WHEN EXISTS (SELECT 1 FROM schedules s
                                       WHERE s.id = taskflow_pause_schedule.schedule_id)
                           THEN format('schedule %s is already paused; nothing changed',
                                       schedule_id)
                           ELSE format('no schedule %s; nothing changed', schedule_id)
                      END;
    RETURN false;
END
$$;
COMMENT ON FUNCTION taskflow_pause_schedule(uuid) IS
    'Pause a schedule: no new slot runs until it is resumed.';

-- Resume a paused schedule from its next future slot (planned by the next
-- scheduler tick); the slots it missed while paused never run. Returns true
-- when resumed; false (with a NOTICE) when it was not paused or does not exist.
CREATE OR REPLACE FUNCTION taskflow_resume_schedule(schedule_id uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE schedules s SET paused = false, next_run_at = NULL, updated_at = now()
    WHERE s.id = taskflow_resume_schedule.schedule_id AND s.paused;
    IF FOUND THEN
        RETURN true;
    END IF;
    RAISE NOTICE '%', CASE WHEN EXISTS (SELECT 1 FROM schedules s
                                       WHERE s.id = taskflow_resume_schedule.schedule_id)
                           THEN format('schedule %s is not paused; nothing changed', schedule_id)
                           ELSE format('no schedule %s; nothing changed', schedule_id)
                      END;
    RETURN false;
END
$$;
COMMENT ON FUNCTION taskflow_resume_schedule(uuid) IS
    'Resume a paused schedule from its next future slot (missed slots are skipped).';
