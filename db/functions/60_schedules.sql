-- What pausing a schedule implies, for changes made by hand (the trigger
-- schedules_fill_implied, db/migrations/0010_schedules.sql, fires only for a
-- paused row that still has a next slot). Re-applied by `taskflow migrate`
-- whenever this file changes.
--
-- A paused schedule has no next slot: next_run_at is cleared. Resuming leaves
-- it NULL, and the next scheduler tick plans the first slot after that moment,
-- so the slots that passed while it was paused never run.
CREATE OR REPLACE FUNCTION taskflow_schedules_fill_implied() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.paused THEN
        NEW.next_run_at := NULL;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION taskflow_schedules_fill_implied() IS
    'Clears next_run_at of a schedule paused by hand (a paused schedule has no next slot).';
