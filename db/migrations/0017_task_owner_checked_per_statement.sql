-- A task belongs to a user (tasks.user_id). That was a foreign key, which
-- Postgres checks row by row: a 1,000-task insert looked the same user up
-- and locked it 1,000 times. EXPLAIN (ANALYZE) of such an insert:
--   Trigger for constraint tasks_user_id_fkey: time=4.4 - 8.6 ms calls=1000
-- of a 27 - 55 ms statement, and ~9 us of Postgres's 40 us a task in the bulk
-- enqueue (taskflow bench / the shared harness's bulk phase).
--
-- The same rule, checked once per statement:
--   * every inserted task's user exists, and is held FOR KEY SHARE until the
--     insert commits, as the key held it: taskflow_tasks_inserted();
--   * deleting users deletes their tasks in the same statement:
--     taskflow_users_deleted();
--   * a task's owner never changes, and neither does a user's id.
-- A refusal keeps the foreign key's SQLSTATE, 23503 foreign_key_violation.
--
-- The functions' bodies live in db/functions/00_history_triggers.sql from now
-- on; they are written here as well so that no moment between this migration
-- and that file's re-application lets a task in without its owner.

ALTER TABLE tasks DROP CONSTRAINT tasks_user_id_fkey;

CREATE OR REPLACE FUNCTION taskflow_tasks_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    orphan bigint;
BEGIN
    SELECT o.user_id INTO orphan
    FROM (SELECT DISTINCT n.user_id FROM new_rows n) AS o
    LEFT JOIN LATERAL (SELECT u.id FROM users u WHERE u.id = o.user_id FOR KEY SHARE) AS held
           ON true
    WHERE held.id IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert on table "tasks" violates its owner rule'
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'tasks_owner_exists',
                  DETAIL = format('Key (user_id)=(%s) is not present in table "users".', orphan);
    END IF;
    INSERT INTO task_history (task_id, at, event, from_status, to_status, attempt, actor)
    SELECT n.id, n.created_at, 'created', NULL, n.status, n.attempts, taskflow_actor()
    FROM new_rows n;
    IF taskflow_notify_queued_enabled() THEN
        IF EXISTS (SELECT 1 FROM new_rows WHERE status = 'queued') THEN
            PERFORM pg_notify('taskflow_queued', '');
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION taskflow_users_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM tasks t USING old_rows o WHERE t.user_id = o.id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION taskflow_refuse_owner_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- TG_ARGV[0]: the column that names the owner.
    RAISE EXCEPTION 'update on table "%" changes %: % -> %', TG_TABLE_NAME, TG_ARGV[0],
        to_jsonb(OLD) ->> TG_ARGV[0], to_jsonb(NEW) ->> TG_ARGV[0]
        USING ERRCODE = 'foreign_key_violation', CONSTRAINT = TG_NAME;
END
$$;

CREATE TRIGGER users_delete_tasks AFTER DELETE ON users
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_users_deleted();
CREATE TRIGGER tasks_owner_fixed BEFORE UPDATE OF user_id ON tasks
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION taskflow_refuse_owner_change('user_id');
CREATE TRIGGER users_id_fixed BEFORE UPDATE OF id ON users
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION taskflow_refuse_owner_change('id');
