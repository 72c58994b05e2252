-- TaskFlow schema: users, tasks, per-task history, the worker registry.
-- The task states and their allowed transitions mirror taskflow/models.py
-- (TaskStatus, TRANSITIONS); tests/unit/test_state_machine.py checks both agree.

CREATE TYPE task_status AS ENUM (
    'postponed', 'queued', 'processing', 'retrying', 'done', 'failed', 'cancelled'
);

-- The allowed (from, to) pairs. The tasks trigger rejects any other change of
-- status, whoever makes it: the API, a worker or a person in psql.
CREATE TABLE task_transitions (
    from_status task_status NOT NULL,
    to_status   task_status NOT NULL,
    PRIMARY KEY (from_status, to_status)
);
INSERT INTO task_transitions (from_status, to_status) VALUES
    ('postponed', 'queued'), ('postponed', 'cancelled'),
    ('queued', 'processing'), ('queued', 'cancelled'),
    ('processing', 'done'), ('processing', 'retrying'), ('processing', 'failed'),
    ('processing', 'queued'), ('processing', 'cancelled'),
    ('retrying', 'queued'), ('retrying', 'cancelled'),
    ('failed', 'queued'), ('cancelled', 'queued');

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash text NOT NULL,
    is_admin      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Emails are unique regardless of case: Foo@x.org and foo@x.org are one user.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TABLE workers (
    id                text PRIMARY KEY,
    hostname          text NOT NULL,
    pid               integer NOT NULL,
    concurrency       integer NOT NULL CHECK (concurrency > 0),
    queue             text,
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at        timestamptz
);

-- Fencing tokens: every claim takes a new one, so a worker that lost its lease
-- can never finish an attempt that was handed to someone else.
CREATE SEQUENCE task_claim_token_seq;

CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    user_id          bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type             text NOT NULL CHECK (type ~ '^[a-z][a-z0-9_]{0,63}$'),
    payload          jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    status           task_status NOT NULL,
    priority         smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    attempts         integer NOT NULL DEFAULT 0,
    max_retries      integer NOT NULL DEFAULT 3 CHECK (max_retries BETWEEN 0 AND 10),
    retries          integer GENERATED ALWAYS AS (greatest(attempts - 1, 0)) STORED,
    run_at           timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    last_error       text,
    result           jsonb,
    worker_id        text,
    lease_expires_at timestamptz,
    claim_token      bigint,
    lease_crashes    integer NOT NULL DEFAULT 0 CHECK (lease_crashes >= 0),
    idempotency_key  text CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     text,
    -- A task runs at most 1 + max_retries times; a manual retry starts a fresh count.
    CONSTRAINT tasks_attempts_bounds CHECK (attempts BETWEEN 0 AND max_retries + 1),
    CONSTRAINT tasks_finished_iff_terminal CHECK (
        (finished_at IS NOT NULL) = (status IN ('done', 'failed', 'cancelled'))
    ),
    CONSTRAINT tasks_processing_has_lease CHECK (
        status <> 'processing'
        OR (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL
            AND claim_token IS NOT NULL AND attempts >= 1)
    )
) WITH (fillfactor = 80);

-- Hot rows change status several times in a short life: leave room on each page
-- for HOT updates and let autovacuum visit often.
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);

-- What the engine queries, each a partial index over its own small slice:
-- the no-broker claim (priority first, then due time),
CREATE INDEX tasks_queued_idx ON tasks (priority DESC, run_at, id) WHERE status = 'queued';
-- the scheduler's promotion of due postponed and retrying rows,
CREATE INDEX tasks_due_idx ON tasks (run_at) WHERE status IN ('postponed', 'retrying');
-- the rescuer's scan for expired leases,
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE status = 'processing';
-- and each user's newest-first listing with its keyset cursor.
CREATE INDEX tasks_user_created_idx ON tasks (user_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE task_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     uuid NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    event       text NOT NULL,
    from_status task_status,
    to_status   task_status NOT NULL,
    attempt     integer NOT NULL,
    worker_id   text,
    error       text,
    actor       text
);
CREATE INDEX task_history_task_idx ON task_history (task_id, id);
CREATE INDEX task_history_at_idx ON task_history (at);

-- History is written by these statement-level triggers, in the same transaction
-- as the change, for every writer including a person in psql. Statement-level
-- with transition tables so a batch of N rows costs one INSERT ... SELECT, not N.
--
-- A writer may name the event and the actor for its transaction with
--   SELECT set_config('taskflow.event', 'lease_expired', true);
--   SELECT set_config('taskflow.actor', 'scheduler', true);
-- otherwise the event is derived from the (from, to) pair and the actor is the
-- database role.

CREATE FUNCTION taskflow_event_name(from_s task_status, to_s task_status) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN from_s IS NULL THEN 'created'
        WHEN to_s = 'processing' THEN 'claimed'
        WHEN to_s = 'done' THEN 'completed'
        WHEN to_s = 'cancelled' THEN 'cancelled'
        WHEN from_s = 'processing' AND to_s = 'retrying' THEN 'attempt_failed'
        WHEN from_s = 'processing' AND to_s = 'failed' THEN 'failed'
        WHEN from_s = 'processing' AND to_s = 'queued' THEN 'handed_back'
        WHEN from_s IN ('failed', 'cancelled') AND to_s = 'queued' THEN 'retried'
        WHEN to_s = 'queued' THEN 'due'
        ELSE 'changed'
    END
$$;

CREATE FUNCTION taskflow_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('taskflow.actor', true), ''), 'sql:' || current_user)
$$;

-- NOTIFY taskflow_queued wakes workers that claim from Postgres. A process
-- that hands ids to RabbitMQ turns it off for its connections
-- (taskflow.notify_queued = off) and notifies by itself only when a publish
-- fails: a NOTIFY makes its transaction take a database-wide lock through
-- commit, which would serialise every enqueue behind one WAL flush at a time.
CREATE FUNCTION taskflow_notify_queued_enabled() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('taskflow.notify_queued', true), ''), 'on') <> 'off'
$$;

CREATE FUNCTION taskflow_tasks_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_history (task_id, at, event, from_status, to_status, attempt, actor)
    SELECT n.id, n.created_at, 'created', NULL, n.status, n.attempts, taskflow_actor()
    FROM new_rows n;
    IF taskflow_notify_queued_enabled()
       AND EXISTS (SELECT 1 FROM new_rows WHERE status = 'queued') THEN
        PERFORM pg_notify('taskflow_queued', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION taskflow_tasks_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
    named_event text := nullif(current_setting('taskflow.event', true), '');
BEGIN
    SELECT o.id, o.status AS from_status, n.status AS to_status INTO bad
    FROM old_rows o JOIN new_rows n USING (id)
    WHERE o.status <> n.status
      AND NOT EXISTS (SELECT 1 FROM task_transitions t
                      WHERE t.from_status = o.status AND t.to_status = n.status)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'task %: % -> % is not an allowed transition',
            bad.id, bad.from_status, bad.to_status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'task_transitions';
    END IF;

    INSERT INTO task_history (task_id, at, event, from_status, to_status, attempt,
                              worker_id, error, actor)
    SELECT n.id, now(),
           coalesce(named_event, taskflow_event_name(o.status, n.status)),
           o.status, n.status, n.attempts,
           coalesce(n.worker_id, o.worker_id),
           CASE WHEN n.status IN ('retrying', 'failed') THEN n.last_error END,
           taskflow_actor()
    FROM old_rows o JOIN new_rows n USING (id)
    WHERE o.status <> n.status;

    IF taskflow_notify_queued_enabled()
       AND EXISTS (SELECT 1 FROM old_rows o JOIN new_rows n USING (id)
                   WHERE n.status = 'queued' AND o.status <> 'queued') THEN
        PERFORM pg_notify('taskflow_queued', '');
    END IF;
    -- The worker running a task it was told to stop hears about it here.
    PERFORM pg_notify('taskflow_cancel', o.id::text)
    FROM old_rows o JOIN new_rows n USING (id)
    WHERE o.status = 'processing' AND n.status = 'cancelled';
    RETURN NULL;
END
$$;

CREATE FUNCTION taskflow_tasks_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_history h USING old_rows o WHERE h.task_id = o.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_history_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_tasks_inserted();
CREATE TRIGGER tasks_history_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_tasks_updated();
CREATE TRIGGER tasks_history_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_tasks_deleted();
