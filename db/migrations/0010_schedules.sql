-- Periodic tasks (SPEC §9): "send the report every Monday at 9 in Europe/Berlin".
--
-- A schedule is a row, not a process: every scheduler (taskflow/scheduler.py)
-- takes the due rows FOR UPDATE SKIP LOCKED, inserts the task of each due
-- slot and moves next_run_at on in the same transaction, so any number of
-- schedulers may run. next_run_at is computed in Python from the cron
-- expression in the schedule's time zone (taskflow/schedules.py); NULL means
-- "not planned": a paused schedule, or one just resumed, whose next slot the
-- next scheduler tick plans from the time it runs.
--
-- Each slot makes exactly one task, whatever the number of schedulers: the
-- task records its schedule and slot (schedule_id, scheduled_for), and a
-- unique index on the pair refuses a second one. Deleting a schedule leaves
-- its tasks (schedule_id becomes NULL; scheduled_for stays).
CREATE TABLE schedules (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Five fields, single spaces: the API stores them so (taskflow.schedules).
    cron         text NOT NULL CHECK (cron ~ '^[!-~]+( [!-~]+){4}$' AND length(cron) <= 200),
    timezone     text NOT NULL DEFAULT 'UTC' CHECK (length(timezone) BETWEEN 1 AND 64),
    -- What each slot's task is, as in tasks.
    type         text NOT NULL CHECK (type ~ '^[a-z][a-z0-9_]{0,63}$'),
    payload      jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    max_retries  integer NOT NULL DEFAULT 3 CHECK (max_retries BETWEEN 0 AND 10),
    priority     smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    paused       boolean NOT NULL DEFAULT false,
    next_run_at  timestamptz,
    -- The latest slot that created a task, and that task (which may since have
    -- been deleted: no foreign key).
    last_run_at  timestamptz,
    last_task_id uuid,
    -- The latest slot skipped because its owner was over a creation limit
    -- (SPEC §8), and that limit's key.
    last_skipped_at   timestamptz,
    last_skip_reason  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_paused_not_planned CHECK (NOT paused OR next_run_at IS NULL)
);
COMMENT ON TABLE schedules IS
    'Periodic tasks: each slot of cron (in timezone) creates one task. See taskflow_schedules.';

-- The schedulers' scan: due or unplanned rows first, and only the active ones.
CREATE INDEX schedules_due_idx ON schedules ((coalesce(next_run_at, '-infinity'::timestamptz)))
    WHERE NOT paused;
-- Each user's schedules in the order the API lists them (and counts them).
CREATE INDEX schedules_user_idx ON schedules (user_id, created_at, id);

ALTER TABLE tasks
    ADD COLUMN schedule_id uuid REFERENCES schedules (id) ON DELETE SET NULL,
    ADD COLUMN scheduled_for timestamptz,
    ADD CONSTRAINT tasks_schedule_has_slot CHECK (schedule_id IS NULL OR scheduled_for IS NOT NULL);
-- One task per slot; also what ON DELETE SET NULL finds a schedule's tasks by.
CREATE UNIQUE INDEX tasks_schedule_slot_key ON tasks (schedule_id, scheduled_for)
    WHERE schedule_id IS NOT NULL;

-- SPEC §8: schedules count toward a user's limits (config.json's
-- user_max_schedules; NULL here keeps it, 0 means no limit).
ALTER TABLE user_limits ADD COLUMN max_schedules integer CHECK (max_schedules >= 0);

-- A paused schedule has no next slot. A plain
--   UPDATE schedules SET paused = true WHERE id = ...
-- in psql would otherwise fail on schedules_paused_not_planned: the trigger
-- clears next_run_at (db/functions/60_schedules.sql holds the body; a stub
-- here so the trigger can be declared). It fires only for such rows.
CREATE OR REPLACE FUNCTION taskflow_schedules_fill_implied() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;

CREATE TRIGGER schedules_fill_implied BEFORE INSERT OR UPDATE OF paused, next_run_at
    ON schedules
    FOR EACH ROW
    WHEN (NEW.paused AND NEW.next_run_at IS NOT NULL)
    EXECUTE FUNCTION taskflow_schedules_fill_implied();
