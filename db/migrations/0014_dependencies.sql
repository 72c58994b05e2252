-- Task dependencies (SPEC §9). A task created with depends_on is `blocked`
-- until every dependency is `done`, then queued (or postponed until its
-- run_at); when one fails for good, is cancelled or deleted, it is cancelled
-- with last_error naming that dependency. Both happen in the transaction that
-- finishes the dependency (the status trigger, db/functions/00_history_triggers.sql),
-- so there is no polling lag.
INSERT INTO task_transitions (from_status, to_status) VALUES
    ('blocked', 'queued'), ('blocked', 'postponed'), ('blocked', 'cancelled');

-- One row per edge: task_id waits for depends_on_id. Both are the same user's
-- tasks (the API checks). No foreign key on depends_on_id: a dependency
-- deleted in psql must first cancel its blocked dependents (the delete
-- trigger does), and the edge is then removed with it.
CREATE TABLE task_dependencies (
    task_id        uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    depends_on_id  uuid NOT NULL,
    PRIMARY KEY (task_id, depends_on_id),
    CHECK (task_id <> depends_on_id)
);
-- A finished task's dependents: looked up for every task that finishes.
CREATE INDEX task_dependencies_depends_on_idx ON task_dependencies (depends_on_id);

-- A user's blocked tasks are unfinished too (user_max_active_tasks).
DROP INDEX tasks_waiting_user_idx;
CREATE INDEX tasks_waiting_user_idx ON tasks (user_id)
    WHERE status IN ('blocked', 'postponed', 'retrying');
