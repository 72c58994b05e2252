-- What the fair pick runs with, where an operator can read it, and task
-- types paused by an operator (SPEC §8, §9).
--
-- dispatch_settings: the defaults of config.json that the pick applies
-- (user_max_running, type_max_running, email_per_user_per_minute), written
-- by each scheduler when it starts. The pick itself takes them as
-- arguments from the process that runs it; this row is what taskflow_why()
-- and the operator views read to name the limit a task is held by.
CREATE TABLE dispatch_settings (
    only_row                   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    user_max_running           integer NOT NULL DEFAULT 0,
    type_max_running           jsonb NOT NULL DEFAULT '{}',
    email_per_user_per_minute  integer NOT NULL DEFAULT 0,
    written_by                 text,
    written_at                 timestamptz NOT NULL DEFAULT now()
);
INSERT INTO dispatch_settings DEFAULT VALUES;
COMMENT ON TABLE dispatch_settings IS
    'The fair-share defaults (config.json) as the schedulers last started with them.';

-- A paused type's tasks stay queued and are not claimed by any worker, on
-- any path (taskflow_pause_type / taskflow_resume_type, `taskflow pause`).
CREATE TABLE paused_task_types (
    type       text PRIMARY KEY CHECK (type ~ '^[a-z][a-z0-9_]{0,63}$'),
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text NOT NULL DEFAULT current_user,
    reason     text
);
COMMENT ON TABLE paused_task_types IS
    'Task types whose queued tasks no worker claims until resumed.';
