-- Creation limits (SPEC §8), checked in the statement that inserts the tasks
-- (store/tasks.py), after the rows are written: when a limit is passed the
-- function raises and the whole statement, inserts included, is undone.
-- Re-applied by `taskflow migrate` whenever this file changes.
--
-- Limits come from user_limits where set, else the defaults passed in (from
-- config.json); 0 means no limit. A user who has limits takes an advisory
-- lock of their own until the insert commits, so concurrent creates of one
-- user count each other and never pass a limit together; users without
-- limits (the bench, trusted users) skip it.
--
-- Refusals raise SQLSTATE TF429 with the limit's config key as DETAIL and
-- the seconds until trying again can succeed as HINT: the API answers 429.

CREATE OR REPLACE FUNCTION taskflow_admission_lock_namespace() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 1952867330 $$;

-- `added` tasks of the user were just inserted by the calling statement,
-- `added_emails` of them send_email. They are among the rows counted below:
-- a function sees what its calling statement has written before calling it.
CREATE OR REPLACE FUNCTION taskflow_admit(
    user_id bigint,
    added integer,
    added_emails integer,
    default_max_active integer,
    default_email_per_day integer
) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    max_active integer;
    email_day integer;
    active integer;
    sent integer;
    today date := (now() AT TIME ZONE 'UTC')::date;
BEGIN
    SELECT coalesce(l.max_active_tasks, default_max_active),
           coalesce(l.email_per_day, default_email_per_day)
    INTO max_active, email_day
    FROM (SELECT 1) AS one LEFT JOIN user_limits l ON l.user_id = taskflow_admit.user_id;
    IF max_active = 0 AND (email_day = 0 OR added_emails = 0) THEN
        RETURN true;
    END IF;
    PERFORM pg_advisory_xact_lock(taskflow_admission_lock_namespace(),
                                  (taskflow_admit.user_id % 2147483647)::integer);
    IF max_active > 0 THEN
        SELECT count(*) INTO active FROM (
            SELECT 1 FROM tasks t
            WHERE t.user_id = taskflow_admit.user_id
              AND t.status IN ('blocked', 'postponed', 'queued', 'processing', 'retrying')
            LIMIT max_active + 1
        ) AS counted;
        IF active > max_active THEN
            RAISE EXCEPTION 'too many unfinished tasks: % allowed, % more asked for',
                    max_active, added
                USING ERRCODE = 'TF429', DETAIL = 'user_max_active_tasks', HINT = '30';
        END IF;
    END IF;
    IF email_day > 0 AND added_emails > 0 THEN
        INSERT INTO user_email_days AS d (user_id, day, created)
        VALUES (taskflow_admit.user_id, today, added_emails)
        ON CONFLICT (user_id, day) DO UPDATE SET created = d.created + excluded.created
        RETURNING d.created INTO sent;
        IF sent > email_day THEN
            RAISE EXCEPTION 'too many emails today: % allowed per UTC day', email_day
                USING ERRCODE = 'TF429', DETAIL = 'email_per_user_per_day',
                      HINT = ceil(extract(epoch FROM (today + 1)::timestamp
                                                     - (now() AT TIME ZONE 'UTC')))::text;
        END IF;
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION taskflow_admit(bigint, integer, integer, integer, integer) IS
    'Checks user_max_active_tasks and email_per_user_per_day for tasks just inserted.';

-- A schedule's slot (SPEC §9) is held to the same limits, checked before its
-- task is inserted (db/functions/60_schedules.sql): NULL when the task may be
-- created, else the limit's key, and the slot is skipped. A send_email slot
-- counts toward the day's emails once admitted.
CREATE OR REPLACE FUNCTION taskflow_slot_refusal(
    user_id bigint,
    is_email boolean,
    default_max_active integer,
    default_email_per_day integer
) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    max_active integer;
    email_day integer;
    active integer;
    sent integer;
    today date := (now() AT TIME ZONE 'UTC')::date;
BEGIN
    SELECT coalesce(l.max_active_tasks, default_max_active),
           coalesce(l.email_per_day, default_email_per_day)
    INTO max_active, email_day
    FROM (SELECT 1) AS one LEFT JOIN user_limits l ON l.user_id = taskflow_slot_refusal.user_id;
    IF max_active = 0 AND (email_day = 0 OR NOT is_email) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(taskflow_admission_lock_namespace(),
                                  (taskflow_slot_refusal.user_id % 2147483647)::integer);
    IF max_active > 0 THEN
        SELECT count(*) INTO active FROM (
            SELECT 1 FROM tasks t
            WHERE t.user_id = taskflow_slot_refusal.user_id
              AND t.status IN ('blocked', 'postponed', 'queued', 'processing', 'retrying')
            LIMIT max_active
        ) AS counted;
        IF active >= max_active THEN
            RETURN 'user_max_active_tasks';
        END IF;
    END IF;
    IF email_day > 0 AND is_email THEN
        SELECT d.created INTO sent FROM user_email_days d
        WHERE d.user_id = taskflow_slot_refusal.user_id AND d.day = today;
        IF coalesce(sent, 0) >= email_day THEN
            RETURN 'email_per_user_per_day';
        END IF;
        INSERT INTO user_email_days AS d (user_id, day, created)
        VALUES (taskflow_slot_refusal.user_id, today, 1)
        ON CONFLICT (user_id, day) DO UPDATE SET created = d.created + 1;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION taskflow_slot_refusal(bigint, boolean, integer, integer) IS
    'The creation limit a schedule slot''s task would pass (NULL: none); counts an admitted email.';
