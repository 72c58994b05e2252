-- Fair share and limits (SPEC §8): who runs next is decided in Postgres.
--
-- Before, every enqueue published its task's id to RabbitMQ at once, so the
-- order of one FIFO queue decided who ran next: one user's 100,000 queued
-- tasks delayed everybody else's until they drained. Now a task that becomes
-- queued is only that, until the dispatcher (a duty of every scheduler,
-- taskflow/dispatcher.py) picks it: a bounded window of ids at a time, chosen
-- by taskflow_fair_pick() (db/functions/50_fair_dispatch.sql) round-robin
-- over the users with queued tasks, each user's own in priority order, within
-- every cap. Only picked ids go to RabbitMQ; the backlog stays here. Workers
-- still claim each row with a guarded UPDATE, and only a picked one.

-- Per-user overrides of config.json's defaults, set by an operator in psql.
-- NULL keeps the default; 0 in a limit means no limit for that user.
CREATE TABLE user_limits (
    user_id             bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    weight              integer CHECK (weight BETWEEN 1 AND 1000),
    max_running         integer CHECK (max_running >= 0),
    max_active_tasks    integer CHECK (max_active_tasks >= 0),
    email_per_minute    integer CHECK (email_per_minute >= 0),
    email_per_day       integer CHECK (email_per_day >= 0),
    files_max_bytes     bigint CHECK (files_max_bytes >= 0),
    note                text,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE user_limits IS
    'Per-user overrides of the limits in config.json (NULL: the default; 0: no limit).';

-- The dispatch window: tasks picked and published but not claimed yet. A row
-- leaves when its task leaves queued (the status trigger deletes it), so its
-- size is the number of ids on their way to a worker. UNLOGGED: it is a
-- bookkeeping of messages in flight, not of tasks. After a crash of Postgres
-- it is empty, every queued task is undispatched again, and the ids of
-- messages still in RabbitMQ are refused by the claim until re-picked.
CREATE UNLOGGED TABLE dispatched_tasks (
    task_id       uuid PRIMARY KEY,
    user_id       bigint NOT NULL,
    type          text NOT NULL,
    dispatched_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dispatched_tasks_user_idx ON dispatched_tasks (user_id);
CREATE INDEX dispatched_tasks_at_idx ON dispatched_tasks (dispatched_at);

-- Where the round-robin stands: the last user served. One row.
CREATE TABLE dispatch_state (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_user_id  bigint NOT NULL DEFAULT 0
);
INSERT INTO dispatch_state DEFAULT VALUES;

-- Each user's queued tasks in the order they run: the pick walks users with
-- queued tasks (a loose scan of the leading column) and takes each one's
-- next. It replaces the global priority order, which no path uses any more.
CREATE INDEX tasks_queued_user_idx ON tasks (user_id, priority DESC, run_at, id)
    WHERE status = 'queued';
DROP INDEX tasks_queued_idx;
-- What each user and type runs now, for max_running and type_max_running.
CREATE INDEX tasks_processing_user_idx ON tasks (user_id, type) WHERE status = 'processing';
-- A user's tasks waiting for their time (with queued and processing above:
-- the user's active tasks, for user_max_active_tasks).
CREATE INDEX tasks_waiting_user_idx ON tasks (user_id) WHERE status IN ('postponed', 'retrying');
-- send_email started in the last minute (the rate) and created today (the quota).
CREATE INDEX tasks_email_started_idx ON tasks (user_id, started_at) WHERE type = 'send_email';
CREATE INDEX tasks_email_created_idx ON tasks (user_id, created_at) WHERE type = 'send_email';
