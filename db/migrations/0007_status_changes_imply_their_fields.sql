-- A status changed by hand implies the fields that go with it. A plain
--   UPDATE tasks SET status = 'cancelled' WHERE id = ...
-- in psql is an allowed transition, but it failed on tasks_finished_iff_terminal
-- because nothing set finished_at. The function taskflow_tasks_fill_implied()
-- (db/functions/40_status_implies.sql) fills in what the new status implies;
-- the history trigger records the change as for any other writer.
--
-- The WHEN clause fires it only for rows that would otherwise be inconsistent:
-- the engine's own statements always write consistent rows, so on the hot path
-- it costs one expression per updated row and never calls the function. A
-- stub is created here so the trigger can be declared; the repeatable file
-- holds the real body.
CREATE OR REPLACE FUNCTION taskflow_tasks_fill_implied() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;

CREATE TRIGGER tasks_fill_implied BEFORE UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND (
        (NEW.finished_at IS NULL) = (NEW.status IN ('done', 'failed', 'cancelled'))
        OR (NEW.status <> 'processing' AND NEW.lease_expires_at IS NOT NULL)
        OR (OLD.status IN ('failed', 'cancelled') AND NEW.status = 'queued'
            AND NEW.attempts > 0)
    ))
    EXECUTE FUNCTION taskflow_tasks_fill_implied();
