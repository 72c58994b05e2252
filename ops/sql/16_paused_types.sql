-- Pause and resume a task type, e.g. during an incident (the mail provider is
-- down): its queued tasks stay queued and no worker claims them, on any path
-- (RabbitMQ or Postgres); ids already on their way are refused at claim.
-- Other types run as usual. `taskflow pause TYPE` and `taskflow resume TYPE`
-- do the same. taskflow_why() says when a task waits for its type.
-- Safe on a live system: one row in paused_task_types; pausing also takes
-- the type's ids out of the dispatch window (they are picked again after
-- the resume), and resuming rings the dispatchers (NOTIFY taskflow_queued).
--
--   SELECT taskflow_pause_type('send_email', 'mail provider down');
--   SELECT * FROM paused_task_types;
--   SELECT taskflow_resume_type('send_email');
CREATE OR REPLACE FUNCTION taskflow_pause_type(task_type text, reason text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO paused_task_types (type, paused_by, reason)
    VALUES (task_type, 'ops:' || current_user, reason)
    ON CONFLICT (type) DO NOTHING;
    IF NOT FOUND THEN
        RAISE NOTICE 'task type % is already paused; nothing changed', task_type;
        RETURN false;
    END IF;
    DELETE FROM dispatched_tasks d WHERE d.type = task_type;
    RETURN true;
END
$$;
COMMENT ON FUNCTION taskflow_pause_type(text, text) IS
    'Pause a task type: its queued tasks are not claimed until taskflow_resume_type().';

CREATE OR REPLACE FUNCTION taskflow_resume_type(task_type text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM paused_task_types p WHERE p.type = task_type;
    IF NOT FOUND THEN
        RAISE NOTICE 'task type % is not paused; nothing changed', task_type;
        RETURN false;
    END IF;
    PERFORM pg_notify('taskflow_queued', '');
    RETURN true;
END
$$;
COMMENT ON FUNCTION taskflow_resume_type(text) IS
    'Resume a paused task type: its queued tasks are picked again.';
