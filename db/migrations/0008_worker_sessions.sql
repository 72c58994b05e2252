-- A dead worker is seen from its Postgres session ending (SPEC §7.3).
--
-- Each worker process takes a session-level advisory lock, keyed by its own
-- liveness_key, on its listening connection before it registers or claims
-- anything, and holds it for as long as it runs. When the process dies
-- (kill -9, OOM, a crash) its sessions end and Postgres releases the lock at
-- once; the scheduler's next tick finds a registered worker whose lock nobody
-- holds (pg_locks) and rescues its tasks (taskflow_rescue_lost_workers in
-- db/functions/20_lease_rescue.sql), instead of waiting for their leases. The
-- lease stays the rule for a worker that is alive but frozen or cut off: its
-- session, and so its lock, lives on.
CREATE SEQUENCE worker_liveness_key_seq AS integer CYCLE;
ALTER TABLE workers ADD COLUMN liveness_key integer;

-- A task claimed ahead of a free slot may not have started when its worker
-- died: such an attempt is put back without counting, neither as an attempt
-- nor as a crash (started_at is set at claim only for tasks that start at
-- once; see store/engine.py). unstarted_rescues counts those put-backs: a task
-- put back once is never claimed ahead again, so a handler that kills its
-- worker the instant it starts is counted the next time.
ALTER TABLE tasks ADD COLUMN unstarted_rescues integer NOT NULL DEFAULT 0
    CHECK (unstarted_rescues >= 0);
