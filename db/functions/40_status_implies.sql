-- What a change of status implies, for changes made by hand (the trigger
-- tasks_fill_implied, db/migrations/0007, fires only when the new row would
-- otherwise break a constraint). Re-applied by `taskflow migrate` whenever
-- this file changes.
--
-- - Into done, failed or cancelled: finished now; no lease held any more.
-- - Out of them: not finished. Back to queued from failed or cancelled is a
--   manual retry: a fresh set of attempts, due now, as taskflow_retry() does.
-- - Any other change out of processing: the lease goes with it.
-- Into processing cannot be implied (a claim needs a worker, a lease and a
-- fencing token): such an UPDATE still fails on tasks_processing_has_lease.
CREATE OR REPLACE FUNCTION taskflow_tasks_fill_implied() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('done', 'failed', 'cancelled') THEN
        NEW.finished_at := coalesce(NEW.finished_at, now());
        NEW.lease_expires_at := NULL;
    ELSE
        NEW.finished_at := NULL;
        IF NEW.status <> 'processing' THEN
            NEW.lease_expires_at := NULL;
        END IF;
        IF OLD.status IN ('failed', 'cancelled') AND NEW.status = 'queued' THEN
            NEW.attempts := 0;
            NEW.lease_crashes := 0;
            NEW.run_at := now();
            NEW.started_at := NULL;
            NEW.worker_id := NULL;
        END IF;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION taskflow_tasks_fill_implied() IS
    'Fills in what a status changed by hand implies (finished_at, lease, fresh attempts).';
