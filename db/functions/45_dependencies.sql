-- Task dependencies (SPEC §9): the status a new task starts in, and what a
-- finished or deleted dependency does to the tasks blocked on it. Called by
-- the triggers (00_history_triggers.sql) in the transaction that finishes or
-- deletes the dependency, whoever the writer is: a worker, the API, a person
-- in psql. Re-applied by `taskflow migrate` whenever this file changes.

-- The one rule for where a task starts: blocked while it waits for other
-- tasks, else postponed until a future run_at, else queued. Promotion out of
-- blocked applies it again with blocked = false.
CREATE OR REPLACE FUNCTION taskflow_initial_status(run_at timestamptz, blocked boolean DEFAULT false)
RETURNS task_status LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN blocked THEN 'blocked'
                WHEN run_at > now() THEN 'postponed'
                ELSE 'queued' END::task_status
$$;

-- Tasks in `finished` just became done, failed or cancelled (or, with
-- deleted = true, were deleted). Their blocked dependents are cancelled when
-- one of their dependencies failed, was cancelled or deleted, and promoted
-- when every dependency is done.
--
-- Why the lock comes first, in its own statement: two dependencies of one
-- task may finish in two concurrent transactions, and each, reading before
-- the other commits, would see the other unfinished and leave the task
-- blocked for ever. Both lock the dependent; the second waits for the first
-- to commit, and its next statement (a new snapshot) sees both done. Ids are
-- locked in order, so two such transactions never deadlock on them.
CREATE OR REPLACE FUNCTION taskflow_settle_dependents(finished uuid[], deleted boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    -- The event a writer named is about its own rows, not these.
    named_event text := current_setting('taskflow.event', true);
BEGIN
    PERFORM 1 FROM tasks t
    WHERE t.id IN (SELECT d.task_id FROM task_dependencies d WHERE d.depends_on_id = ANY (finished))
      AND t.status = 'blocked'
    ORDER BY t.id
    FOR UPDATE OF t;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM set_config('taskflow.event', '', true);

    -- Cancelled with everything blocked behind them, in one statement: a
    -- cascade task by task would nest a trigger per step of a long chain.
    -- Each names its own dependency that stopped it.
    WITH RECURSIVE doomed (task_id, cause_id, cause) AS (
        SELECT d.task_id, d.depends_on_id,
               CASE WHEN deleted THEN 'was deleted' ELSE coalesce(f.status::text, 'was deleted') END
        FROM task_dependencies d
        JOIN tasks t ON t.id = d.task_id AND t.status = 'blocked'
        LEFT JOIN tasks f ON f.id = d.depends_on_id
        WHERE d.depends_on_id = ANY (finished)
          AND (deleted OR f.status IS NULL OR f.status IN ('failed', 'cancelled'))
      UNION
        SELECT d.task_id, d.depends_on_id, 'cancelled'
        FROM doomed x
        JOIN task_dependencies d ON d.depends_on_id = x.task_id
        JOIN tasks t ON t.id = d.task_id AND t.status = 'blocked'
    ), first_cause AS (
        SELECT DISTINCT ON (task_id) task_id, cause_id, cause
        FROM doomed ORDER BY task_id, cause_id
    )
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(),
        last_error = format('dependency %s %s', c.cause_id,
                            CASE c.cause WHEN 'was deleted' THEN 'was deleted'
                                         WHEN 'failed' THEN 'failed'
                                         ELSE 'was cancelled' END)
    FROM first_cause c
    WHERE t.id = c.task_id AND t.status = 'blocked';

    IF NOT deleted THEN
        UPDATE tasks t
        SET status = taskflow_initial_status(t.run_at)
        WHERE t.id IN (SELECT d.task_id FROM task_dependencies d
                       WHERE d.depends_on_id = ANY (finished))
          AND t.status = 'blocked'
          AND NOT EXISTS (SELECT 1 FROM task_dependencies d
                          LEFT JOIN tasks dep ON dep.id = d.depends_on_id
                          WHERE d.task_id = t.id AND dep.status IS DISTINCT FROM 'done');
    END IF;
    PERFORM set_config('taskflow.event', coalesce(named_event, ''), true);
END
$$;
COMMENT ON FUNCTION taskflow_settle_dependents(uuid[], boolean) IS
    'Promotes or cancels the blocked dependents of tasks that finished or were deleted.';
