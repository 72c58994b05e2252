-- The engine's trigger functions: history rows for every creation, change of
-- status and deletion of a task, in the same transaction as the change, for
-- every writer including a person in psql; the transition check; the owner
-- rule; and the NOTIFY doorbells. The triggers that call them are declared in
-- db/migrations (0001, 0003, 0017); the functions live here, re-applied by
-- `taskflow migrate` whenever this file changes.
--
-- A writer may name the event and the actor for its transaction with
--   SELECT set_config('taskflow.event', 'lease_expired', true);
--   SELECT set_config('taskflow.actor', 'scheduler', true);
-- otherwise the event is derived from the (from, to) pair and the actor is the
-- database role.

CREATE OR REPLACE FUNCTION taskflow_event_name(from_s task_status, to_s task_status) RETURNS text
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
        WHEN from_s = 'blocked' THEN 'unblocked'
        WHEN to_s = 'queued' THEN 'due'
        ELSE 'changed'
    END
$$;

CREATE OR REPLACE FUNCTION taskflow_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('taskflow.actor', true), ''), 'sql:' || current_user)
$$;

-- NOTIFY taskflow_queued rings when tasks become queued: it wakes the
-- dispatchers (taskflow/dispatcher.py), which pick fairly what goes to the
-- workers, and workers that claim from Postgres. A transaction that NOTIFYs
-- takes a database-wide lock through its commit, so it rings once per
-- statement, not per row; a connection may turn it off
-- (taskflow.notify_queued = off) when something else wakes the dispatchers.
CREATE OR REPLACE FUNCTION taskflow_notify_queued_enabled() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('taskflow.notify_queued', true), ''), 'on') <> 'off'
$$;

-- A task belongs to a user who exists (db/migrations/0017): checked once per
-- statement, where a foreign key would look the same user up and lock it
-- again for every row. The owner is held FOR KEY SHARE, as the key would hold
-- it, so a user deleted meanwhile waits for this insert and then takes its
-- tasks along (taskflow_users_deleted); an insert that waited for a deletion
-- finds the user gone and fails with the key's SQLSTATE.
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

-- The rest of the owner rule: deleting users deletes their tasks, in the
-- same statement; neither a task's owner nor a user's id ever changes.
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

CREATE OR REPLACE FUNCTION taskflow_tasks_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    named_event text := nullif(current_setting('taskflow.event', true), '');
    actor text := taskflow_actor();
    forbidden bigint;
    any_queued boolean;
    cancelled_ids uuid[];
    finished_ids uuid[];
    left_queued uuid[];
    bad record;
BEGIN
    WITH changed AS (
        SELECT n.id, o.status AS from_status, n.status AS to_status, n.attempts,
               coalesce(n.worker_id, o.worker_id) AS worker_id, n.last_error,
               t.from_status IS NOT NULL AS allowed
        FROM old_rows o
        JOIN new_rows n USING (id)
        LEFT JOIN task_transitions t ON t.from_status = o.status AND t.to_status = n.status
        WHERE o.status <> n.status
    ), written AS (
        -- Written even when a row is forbidden: the RAISE below undoes it.
        INSERT INTO task_history (task_id, at, event, from_status, to_status, attempt,
                                  worker_id, error, actor)
        SELECT c.id, now(), coalesce(named_event, taskflow_event_name(c.from_status, c.to_status)),
               c.from_status, c.to_status, c.attempts, c.worker_id,
               CASE WHEN c.to_status IN ('retrying', 'failed')
                      OR (c.from_status = 'blocked' AND c.to_status = 'cancelled')
                    THEN c.last_error END,
               actor
        FROM changed c
    )
    SELECT count(*) FILTER (WHERE NOT c.allowed),
           coalesce(bool_or(c.to_status = 'queued'), false),
           array_agg(c.id) FILTER (WHERE c.from_status = 'processing'
                                     AND c.to_status = 'cancelled'),
           array_agg(c.id) FILTER (WHERE c.to_status IN ('done', 'failed', 'cancelled')),
           array_agg(c.id) FILTER (WHERE c.from_status = 'queued')
    INTO forbidden, any_queued, cancelled_ids, finished_ids, left_queued
    FROM changed c;

    -- A task that leaves queued (claimed, cancelled) leaves the dispatch
    -- window with it (db/migrations/0009_fair_dispatch.sql). EXECUTE, planned
    -- afresh each time: plpgsql keeps a plan for the session, and one made
    -- while the window held a page would scan it whole ever after, however
    -- large it grew (measured: 4-9 ms a claim, most of the claim's cost).
    IF left_queued IS NOT NULL THEN
        EXECUTE 'DELETE FROM dispatched_tasks WHERE task_id = ANY ($1)' USING left_queued;
    END IF;

    IF forbidden > 0 THEN
        SELECT o.id, o.status AS from_status, n.status AS to_status INTO bad
        FROM old_rows o JOIN new_rows n USING (id)
        WHERE o.status <> n.status
          AND NOT EXISTS (SELECT 1 FROM task_transitions t
                          WHERE t.from_status = o.status AND t.to_status = n.status)
        LIMIT 1;
        RAISE EXCEPTION 'task %: % -> % is not an allowed transition',
            bad.id, bad.from_status, bad.to_status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'task_transitions';
    END IF;
    IF any_queued THEN
        IF taskflow_notify_queued_enabled() THEN
            PERFORM pg_notify('taskflow_queued', '');
        END IF;
    END IF;
    -- The worker running a task it was told to stop hears about it here.
    IF cancelled_ids IS NOT NULL THEN
        PERFORM pg_notify('taskflow_cancel', id::text) FROM unnest(cancelled_ids) AS id;
    END IF;
    -- Tasks blocked on these run or are cancelled now, in this transaction
    -- (db/functions/45_dependencies.sql).
    IF finished_ids IS NOT NULL THEN
        PERFORM taskflow_settle_dependents(finished_ids);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION taskflow_tasks_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A task's history starts at its creation: the partitions before the
    -- oldest deleted task's are not even looked at.
    DELETE FROM task_history h USING old_rows o
    WHERE h.task_id = o.id AND h.at >= (SELECT min(x.created_at) FROM old_rows x);
    DELETE FROM dispatched_tasks d USING old_rows o WHERE d.task_id = o.id;
    -- Tasks blocked on a deleted task are cancelled, naming it; then its
    -- edges go (those of the deleted task itself go by foreign key).
    IF EXISTS (SELECT 1 FROM task_dependencies d JOIN old_rows o ON o.id = d.depends_on_id) THEN
        PERFORM taskflow_settle_dependents(array(SELECT o.id FROM old_rows o), deleted => true);
        DELETE FROM task_dependencies d USING old_rows o WHERE d.depends_on_id = o.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION taskflow_history_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The common case on a busy system: nobody is watching anyone.
    IF NOT EXISTS (SELECT 1 FROM task_event_watchers WHERE watched_until > now()) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('taskflow_events', chunk.payload)
    FROM (
        SELECT json_agg(e.body ORDER BY e.id)::text AS payload
        FROM (
            SELECT h.id,
                   (row_number() OVER (ORDER BY h.id) - 1) / 16 AS chunk_number,
                   -- row_to_json writes no blanks: the most compact JSON text.
                   row_to_json(r) AS body
            FROM new_rows h
            JOIN tasks t ON t.id = h.task_id
            JOIN task_event_watchers w ON w.user_id = t.user_id AND w.watched_until > now()
            CROSS JOIN LATERAL (
                SELECT h.id, h.task_id, t.user_id, h.from_status, h.to_status AS status,
                       left(h.event, 32) AS event, h.attempt, h.at
            ) AS r
        ) AS e
        GROUP BY e.chunk_number
    ) AS chunk;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION taskflow_history_notify() IS
    'NOTIFY taskflow_events with new history rows of watched users, 16 per payload.';
