-- Operator views and functions for psql, and the tables' upkeep settings.
--
-- Part 1 installs ops/sql/*.sql, verbatim and in file order (the files say
-- what each object answers and whether it is safe on a live system). Those
-- files use CREATE OR REPLACE, so `psql -f ops/sql/<file>` installs one by
-- hand too. Migrations only move forward: to change one of them, edit the file
-- and add a new migration holding its new text (tests/integration/
-- test_ops_sql.py checks that every file appears verbatim in a migration).
--
-- Everything is in public, prefixed taskflow_, next to the engine's own
-- taskflow_ functions: every stack has its own database, operators need no
-- search_path, and `\dv taskflow_*` / `\df taskflow_*` list them all.
--
-- Part 2 sets autovacuum for task_history and adds the index that lets
-- finished tasks be pruned in small batches.

-- ===== Part 1: ops/sql/*.sql =================================================

-- ----- ops/sql/01_helpers.sql

-- Helpers shared by the operator views and functions in this directory.
-- Answers: "how long may a worker stay silent before it counts as dead?" and
-- formats times and durations the way the other files print them.
-- Safe on a live system: defines functions only; they read a setting and
-- format values, and touch no table.
--
-- Why in public with a taskflow_ prefix (not a separate schema): the engine's own
-- functions (taskflow_actor, taskflow_event_name) already live there, every
-- stack has its own database, and operators need no search_path change:
--   \dv taskflow_*      lists the views,   \df taskflow_*   lists the functions.

-- Workers heartbeat every lease_seconds / 3. A worker silent for three leases
-- (90 s at the default lease_seconds = 30) is reported dead. The lease lives in
-- config.json, not in the database, so a deployment with another lease says so
-- once per database, or per psql session:
--   ALTER DATABASE taskflow SET taskflow.worker_alive_seconds = '30';
--   SET taskflow.worker_alive_seconds = '30';
CREATE OR REPLACE FUNCTION taskflow_worker_alive_seconds() RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('taskflow.worker_alive_seconds', true), '')::double precision,
        90)
$$;
COMMENT ON FUNCTION taskflow_worker_alive_seconds() IS
    'Seconds without a heartbeat after which a worker counts as dead '
    '(setting taskflow.worker_alive_seconds, default 90 = 3 x the default lease).';

-- RFC 3339 in UTC, to the second, whatever the session's TimeZone.
CREATE OR REPLACE FUNCTION taskflow_format_time(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
$$;

-- "850ms", "4.2s", "46s", "3m 12s", "2h 5m", "3d 4h": the length of an interval,
-- its sign dropped (the sentence around it says "ago" or "in").
CREATE OR REPLACE FUNCTION taskflow_format_duration(length interval) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN s IS NULL THEN NULL
        WHEN s < 1 THEN round(s * 1000) || 'ms'
        WHEN s < 60 THEN trim_scale(round(s, 1)) || 's'
        WHEN s < 3600 THEN floor(s / 60) || 'm ' || floor(s)::bigint % 60 || 's'
        WHEN s < 86400 THEN floor(s / 3600) || 'h ' || floor(s)::bigint % 3600 / 60 || 'm'
        ELSE floor(s / 86400) || 'd ' || floor(s)::bigint % 86400 / 3600 || 'h'
    END
    FROM (SELECT abs(extract(epoch FROM length)) AS s) AS seconds
$$;

-- ----- ops/sql/02_queue_overview.sql

-- How deep is each queue? One row per (status, type): how many tasks, and how
-- old the oldest of them is.
-- Safe on a live system: a read-only view. It counts every row of tasks (a
-- sequential scan), so it costs as much as the table is big; finished tasks are
-- pruned after the retention period, which keeps that bounded.
--
--   SELECT * FROM taskflow_queue_overview;
--   SELECT * FROM taskflow_queue_overview WHERE status NOT IN ('done', 'cancelled');
CREATE OR REPLACE VIEW taskflow_queue_overview AS
SELECT t.status,
       t.type,
       count(*) AS tasks,
       date_trunc('second', now() - min(t.created_at)) AS oldest_age,
       min(t.created_at) AS oldest_created_at
FROM tasks t
GROUP BY t.status, t.type
ORDER BY t.status, t.type;
COMMENT ON VIEW taskflow_queue_overview IS
    'How deep is each queue: tasks and oldest age per status and type.';

-- ----- ops/sql/03_due_unclaimed.sql

-- What should be running but is not? Tasks that are due and unclaimed: queued,
-- or postponed/retrying whose run_at has passed (the scheduler promotes those
-- every tick, so they should not linger). In claim order: priority, then due time.
-- `waiting_for` is how long each has been due.
-- Safe on a live system: a read-only view over the partial indexes of the
-- waiting states; it never locks a row, so workers keep claiming meanwhile.
--
--   SELECT * FROM taskflow_due_unclaimed LIMIT 20;
--   SELECT type, count(*), max(waiting_for) FROM taskflow_due_unclaimed GROUP BY type;
CREATE OR REPLACE VIEW taskflow_due_unclaimed AS
SELECT t.id,
       t.user_id,
       t.type,
       t.status,
       t.priority,
       t.attempts,
       t.max_retries,
       t.run_at,
       date_trunc('second', now() - t.run_at) AS waiting_for,
       t.created_at
FROM tasks t
WHERE t.status = 'queued'
   OR (t.status IN ('postponed', 'retrying') AND t.run_at <= now())
ORDER BY t.priority DESC, t.run_at, t.id;
COMMENT ON VIEW taskflow_due_unclaimed IS
    'Due but not claimed: queued, or postponed/retrying past run_at; in claim order.';

-- ----- ops/sql/04_stuck.sql

-- What is stuck? Tasks in `processing` whose worker's lease has expired: the
-- worker died, hung or lost Postgres. The scheduler rescues these every tick;
-- rows that stay here mean no scheduler is running (or it cannot keep up).
-- `worker_alive` says whether that worker still heartbeats (see
-- taskflow_worker_alive_seconds). To rescue them by hand:
-- SELECT taskflow_requeue_stuck();
-- Safe on a live system: a read-only view over the partial index of
-- processing rows.
--
--   SELECT * FROM taskflow_stuck;
CREATE OR REPLACE VIEW taskflow_stuck AS
SELECT t.id,
       t.user_id,
       t.type,
       t.worker_id,
       t.attempts,
       t.max_retries,
       t.lease_crashes,
       t.started_at,
       t.lease_expires_at,
       date_trunc('second', now() - t.lease_expires_at) AS expired_for,
       w.last_heartbeat_at AS worker_last_heartbeat_at,
       coalesce(w.stopped_at IS NULL
                AND w.last_heartbeat_at
                    > now() - make_interval(secs => taskflow_worker_alive_seconds()),
                false) AS worker_alive
FROM tasks t
LEFT JOIN workers w ON w.id = t.worker_id
WHERE t.status = 'processing' AND t.lease_expires_at < now()
ORDER BY t.lease_expires_at;
COMMENT ON VIEW taskflow_stuck IS
    'Processing past lease_expires_at: the worker is gone; fix with taskflow_requeue_stuck().';

-- ----- ops/sql/05_recent_failures.sql

-- What failed recently, and why? Tasks that failed for good in the last 24
-- hours, and tasks retrying now after a failed attempt; newest first, with the
-- last error and the attempts used. `quarantined` marks tasks failed because
-- their handler kept killing workers (the lease-crash limit), whatever retries
-- were left. A failed task runs again with SELECT taskflow_retry('<id>');
-- Safe on a live system: a read-only view.
--
--   SELECT * FROM taskflow_recent_failures LIMIT 20;
--   SELECT type, last_error, count(*) FROM taskflow_recent_failures
--   GROUP BY 1, 2 ORDER BY 3 DESC;
CREATE OR REPLACE VIEW taskflow_recent_failures AS
SELECT t.id,
       t.user_id,
       t.type,
       t.status,
       coalesce(t.finished_at, t.updated_at) AS failed_at,
       t.attempts,
       t.max_retries,
       coalesce(position('quarantined' IN t.last_error) > 0, false) AS quarantined,
       t.worker_id AS last_worker_id,
       t.last_error
FROM tasks t
WHERE (t.status = 'failed' AND t.finished_at > now() - interval '24 hours')
   OR t.status = 'retrying'
ORDER BY failed_at DESC, t.id;
COMMENT ON VIEW taskflow_recent_failures IS
    'Failed in the last 24 h or retrying now: last error, attempts, quarantined.';

-- ----- ops/sql/06_workers.sql

-- Which workers are alive? Every worker process registers itself and
-- heartbeats every lease_seconds / 3. `state` is alive (heartbeat within
-- taskflow_worker_alive_seconds(), 90 s by default), stopped (shut down
-- cleanly) or dead (went silent: killed, hung or cut off). Shown: workers alive
-- or dead within the last day, stopped within the last hour, and any worker
-- still holding tasks. `running_tasks` counts its processing rows,
-- `expired_leases` those of them past their lease (see taskflow_stuck).
-- Safe on a live system: a read-only view.
--
--   SELECT * FROM taskflow_workers;
--   SET taskflow.worker_alive_seconds = '15';   -- a deployment with lease_seconds = 5
CREATE OR REPLACE VIEW taskflow_workers AS
SELECT w.id,
       w.hostname,
       w.pid,
       CASE WHEN w.stopped_at IS NOT NULL THEN 'stopped'
            WHEN w.last_heartbeat_at
                 > now() - make_interval(secs => taskflow_worker_alive_seconds()) THEN 'alive'
            ELSE 'dead' END AS state,
       w.concurrency,
       coalesce(r.running_tasks, 0) AS running_tasks,
       coalesce(r.expired_leases, 0) AS expired_leases,
       w.last_heartbeat_at,
       date_trunc('second', now() - w.last_heartbeat_at) AS heartbeat_age,
       w.queue,
       w.started_at,
       w.stopped_at
FROM workers w
LEFT JOIN (
    SELECT t.worker_id,
           count(*) AS running_tasks,
           count(*) FILTER (WHERE t.lease_expires_at < now()) AS expired_leases
    FROM tasks t
    WHERE t.status = 'processing'
    GROUP BY t.worker_id
) r ON r.worker_id = w.id
WHERE (w.stopped_at IS NULL AND w.last_heartbeat_at > now() - interval '1 day')
   OR w.stopped_at > now() - interval '1 hour'
   OR r.running_tasks > 0
ORDER BY w.stopped_at IS NOT NULL, w.last_heartbeat_at DESC, w.id;
COMMENT ON VIEW taskflow_workers IS
    'Registered workers: alive/dead/stopped, last heartbeat, running task count.';

-- ----- ops/sql/07_throughput.sql

-- How fast is work getting done? Attempts that ended in the last minute and
-- the last hour, from the history: completed (-> done), failed (-> failed, out
-- of retries or permanent) and retried (an attempt failed, -> retrying).
-- Safe on a live system: a read-only view; a range scan of the history's
-- time index, about one hour of rows.
--
--   SELECT * FROM taskflow_throughput;
CREATE OR REPLACE VIEW taskflow_throughput AS
SELECT p.period,
       count(h.id) FILTER (WHERE h.to_status = 'done') AS completed,
       count(h.id) FILTER (WHERE h.to_status = 'failed') AS failed,
       count(h.id) FILTER (WHERE h.to_status = 'retrying') AS retried,
       round(count(h.id) FILTER (WHERE h.to_status = 'done')
             / extract(epoch FROM p.span), 3) AS completed_per_second
FROM (VALUES (1, 'last minute', interval '1 minute'),
             (2, 'last hour', interval '1 hour')) AS p(position, period, span)
LEFT JOIN task_history h
       ON h.at > now() - p.span
      AND h.from_status = 'processing'
      AND h.to_status IN ('done', 'failed', 'retrying')
GROUP BY p.position, p.period, p.span
ORDER BY p.position;
COMMENT ON VIEW taskflow_throughput IS
    'Attempts completed / failed / retried in the last minute and hour (from task_history).';

-- ----- ops/sql/08_user_backlog.sql

-- Whose work is waiting? One row per user with unfinished tasks: how many in
-- each waiting state, how many are due now, and how long the oldest due one
-- has waited. A user far ahead of the others is flooding the queue.
-- Safe on a live system: a read-only view over unfinished tasks.
--
--   SELECT * FROM taskflow_user_backlog LIMIT 10;
CREATE OR REPLACE VIEW taskflow_user_backlog AS
SELECT t.user_id,
       u.email,
       count(*) FILTER (WHERE t.status = 'postponed') AS postponed,
       count(*) FILTER (WHERE t.status = 'queued') AS queued,
       count(*) FILTER (WHERE t.status = 'processing') AS processing,
       count(*) FILTER (WHERE t.status = 'retrying') AS retrying,
       count(*) AS unfinished,
       count(*) FILTER (WHERE t.status = 'queued' OR t.run_at <= now()
                          AND t.status IN ('postponed', 'retrying')) AS due,
       date_trunc('second', now() - min(t.run_at) FILTER (
           WHERE t.status = 'queued' OR t.run_at <= now()
             AND t.status IN ('postponed', 'retrying'))) AS oldest_due_age
FROM tasks t
JOIN users u ON u.id = t.user_id
WHERE t.status IN ('postponed', 'queued', 'processing', 'retrying')
GROUP BY t.user_id, u.email
ORDER BY unfinished DESC, t.user_id;
COMMENT ON VIEW taskflow_user_backlog IS
    'Unfinished tasks per user: by waiting state, due now, oldest due age.';

-- ----- ops/sql/09_open_transactions.sql

-- What holds back vacuum? Transactions open in this database, oldest first.
-- While one stays open, autovacuum cannot remove any row version that died
-- after it began: tasks and task_history bloat, and the claim and promotion
-- queries slow down. `holds_snapshot` says it pins the vacuum horizon.
-- Anything older than a few minutes deserves a look;
-- SELECT pg_cancel_backend(pid) stops its statement, pg_terminate_backend(pid)
-- ends its session (its transaction rolls back).
-- Safe on a live system: a read-only view of pg_stat_activity. Without
-- superuser or pg_read_all_stats, other roles' query text shows as
-- <insufficient privilege>.
--
--   SELECT * FROM taskflow_open_transactions WHERE xact_age > interval '5 minutes';
CREATE OR REPLACE VIEW taskflow_open_transactions AS
SELECT a.pid,
       a.usename AS user_name,
       a.application_name,
       a.client_addr,
       a.state,
       a.xact_start,
       date_trunc('second', now() - a.xact_start) AS xact_age,
       (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL) AS holds_snapshot,
       a.wait_event_type,
       left(a.query, 200) AS last_query
FROM pg_stat_activity a
WHERE a.datname = current_database()
  AND a.backend_type = 'client backend'
  AND a.xact_start IS NOT NULL
  AND a.state IS DISTINCT FROM 'idle'
  AND a.pid <> pg_backend_pid()
ORDER BY a.xact_start;
COMMENT ON VIEW taskflow_open_transactions IS
    'Open transactions in this database, oldest first: old ones hold back vacuum.';

-- ----- ops/sql/10_table_health.sql

-- Is vacuum keeping up? Live and dead rows, size, the last (auto)vacuum and
-- the autovacuum settings of TaskFlow's tables. A dead_percent that keeps
-- growing means autovacuum is held back (see taskflow_open_transactions) or
-- too slow for the churn.
-- Safe on a live system: a read-only view of the statistics collector.
--
--   SELECT * FROM taskflow_table_health;
CREATE OR REPLACE VIEW taskflow_table_health AS
SELECT s.relname AS table_name,
       s.n_live_tup AS live_rows,
       s.n_dead_tup AS dead_rows,
       round(100.0 * s.n_dead_tup / nullif(s.n_live_tup + s.n_dead_tup, 0), 1) AS dead_percent,
       pg_size_pretty(pg_total_relation_size(s.relid)) AS total_size,
       greatest(s.last_autovacuum, s.last_vacuum) AS last_vacuum,
       greatest(s.last_autoanalyze, s.last_analyze) AS last_analyze,
       s.autovacuum_count,
       c.reloptions AS settings
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
WHERE s.relid IN ('tasks'::regclass, 'task_history'::regclass, 'workers'::regclass)
ORDER BY s.relname;
COMMENT ON VIEW taskflow_table_health IS
    'Dead rows, size, last vacuum and autovacuum settings of tasks, task_history, workers.';

-- ----- ops/sql/11_why.sql

-- Why isn't this task running? One sentence about one task: not due until
-- when; waiting for a free worker (and how many tasks are ahead of it); which
-- worker holds its lease, until when; stuck past its lease; done; cancelled (by
-- whom, why); out of retries (after how many attempts, with the last error);
-- no live worker registered.
-- Safe on a live system: read-only; looks at one task, the workers and, for a
-- queued task, counts the queued tasks ahead of it.
--
--   SELECT taskflow_why('0194f9f2-6d3c-7c1e-9a4b-2f0e8d7c6b5a');
--   SELECT id, taskflow_why(id) FROM taskflow_due_unclaimed LIMIT 5;
CREATE OR REPLACE FUNCTION taskflow_why(task_id uuid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    task tasks%ROWTYPE;
    holder workers%ROWTYPE;
    cancel_event task_history%ROWTYPE;
    alive_window interval := make_interval(secs => taskflow_worker_alive_seconds());
    live_workers bigint;
    live_slots bigint;
    busy_slots bigint;
    ahead bigint;
    queued_since timestamptz;
    answer text;
BEGIN
    SELECT * INTO task FROM tasks t WHERE t.id = taskflow_why.task_id;
    IF NOT FOUND THEN
        RETURN format('no task %s: it never existed, or it was deleted '
                      '(finished tasks are pruned after the retention period)',
                      taskflow_why.task_id);
    END IF;

    SELECT count(*), coalesce(sum(w.concurrency), 0) INTO live_workers, live_slots
    FROM workers w
    WHERE w.stopped_at IS NULL AND w.last_heartbeat_at > now() - alive_window;

    CASE task.status
    WHEN 'done' THEN
        RETURN format('done at %s after %s attempt(s): nothing left to run',
                      taskflow_format_time(task.finished_at), task.attempts);

    WHEN 'failed' THEN
        RETURN CASE WHEN task.attempts > task.max_retries
                    THEN format('out of retries: failed at %s after %s attempt(s) '
                                '(max_retries %s): %s',
                                taskflow_format_time(task.finished_at), task.attempts,
                                task.max_retries, coalesce(task.last_error, 'no error recorded'))
                    ELSE format('failed for good at %s after %s attempt(s), with retries left '
                                '(a permanent error, a quarantine or an operator): %s',
                                taskflow_format_time(task.finished_at), task.attempts,
                                coalesce(task.last_error, 'no error recorded'))
               END
               || format('. To run it again: SELECT taskflow_retry(%L);', task.id);

    WHEN 'cancelled' THEN
        SELECT * INTO cancel_event FROM task_history h
        WHERE h.task_id = taskflow_why.task_id AND h.to_status = 'cancelled'
        ORDER BY h.id DESC LIMIT 1;
        RETURN format('cancelled at %s by %s%s. To run it again: SELECT taskflow_retry(%L);',
                      taskflow_format_time(task.finished_at),
                      coalesce(cancel_event.actor, 'an unknown actor'),
                      coalesce(': ' || cancel_event.error, ''), task.id);

    WHEN 'postponed', 'retrying' THEN
        IF task.run_at <= now() THEN
            answer := format('%s and due since %s (%s ago), but not queued yet: the scheduler '
                             'queues due tasks every tick, so if this lasts, check that a '
                             'scheduler is running',
                             task.status, taskflow_format_time(task.run_at),
                             taskflow_format_duration(now() - task.run_at));
        ELSIF task.status = 'postponed' THEN
            answer := format('postponed: not due until %s (in %s)',
                             taskflow_format_time(task.run_at),
                             taskflow_format_duration(task.run_at - now()));
        ELSE
            answer := format('retrying: attempt %s of %s failed (%s); the next one is not due '
                             'until %s (in %s)',
                             task.attempts, task.max_retries + 1,
                             coalesce(task.last_error, 'no error recorded'),
                             taskflow_format_time(task.run_at),
                             taskflow_format_duration(task.run_at - now()));
        END IF;
        IF live_workers = 0 THEN
            answer := answer || format('; and no live worker is registered (none has '
                                       'heartbeated in the last %s): start `taskflow worker`',
                                       taskflow_format_duration(alive_window));
        END IF;
        RETURN answer;

    WHEN 'queued' THEN
        -- The last move to queued, not run_at: a task handed back or retried by
        -- hand keeps an old run_at.
        SELECT max(h.at) INTO queued_since FROM task_history h
        WHERE h.task_id = taskflow_why.task_id AND h.to_status = 'queued';
        queued_since := coalesce(queued_since, task.created_at);
        answer := format('queued for %s (since %s)',
                         taskflow_format_duration(now() - queued_since),
                         taskflow_format_time(queued_since));
        IF live_workers = 0 THEN
            RETURN answer || format(', but no live worker is registered (none has heartbeated '
                                    'in the last %s): start `taskflow worker`',
                                    taskflow_format_duration(alive_window));
        END IF;
        -- Claim order without a broker: priority, then due time (tasks_queued_idx).
        SELECT count(*) INTO ahead FROM tasks q
        WHERE q.status = 'queued'
          AND (q.priority > task.priority
               OR (q.priority = task.priority AND (q.run_at, q.id) < (task.run_at, task.id)));
        SELECT count(*) INTO busy_slots FROM tasks p JOIN workers w ON w.id = p.worker_id
        WHERE p.status = 'processing' AND w.stopped_at IS NULL
          AND w.last_heartbeat_at > now() - alive_window;
        answer := answer || format(': waiting for %s; %s task(s) ahead of it (higher '
                                   'priority, or due earlier); %s live worker(s) with %s '
                                   'slot(s), %s busy',
                                   CASE WHEN busy_slots < live_slots THEN 'a worker to claim it'
                                        ELSE 'a free worker' END,
                                   ahead, live_workers, live_slots, busy_slots);
        IF busy_slots < live_slots AND now() - queued_since > interval '10 seconds' THEN
            -- Workers on RabbitMQ only hear of ids published to it; a task queued
            -- in SQL (by hand, or after a lost publish) waits for the scheduler's
            -- republish pass.
            answer := answer || '. Slots are free, yet nobody has claimed it: with RabbitMQ, '
                                'a task queued outside the API is published by the '
                                'scheduler''s republish pass (republish_after_seconds, 30 s by '
                                'default); check that a scheduler is running and RabbitMQ is up';
        END IF;
        RETURN answer;

    WHEN 'processing' THEN
        SELECT * INTO holder FROM workers w WHERE w.id = task.worker_id;
        IF task.lease_expires_at < now() THEN
            RETURN format('stuck: the lease of worker %s expired at %s (%s ago): that worker '
                          'is gone (killed, hung or cut off from Postgres). The scheduler '
                          'rescues such tasks every tick, so if this lasts, check that a '
                          'scheduler is running, or run SELECT taskflow_requeue_stuck();',
                          task.worker_id, taskflow_format_time(task.lease_expires_at),
                          taskflow_format_duration(now() - task.lease_expires_at));
        END IF;
        answer := format('processing: attempt %s of %s, started %s (%s ago); the lease is '
                         'held by worker %s until %s',
                         task.attempts, task.max_retries + 1,
                         taskflow_format_time(task.started_at),
                         taskflow_format_duration(now() - task.started_at),
                         task.worker_id, taskflow_format_time(task.lease_expires_at));
        IF holder.id IS NULL THEN
            answer := answer || '; that worker is not registered';
        ELSIF holder.stopped_at IS NOT NULL
              OR holder.last_heartbeat_at <= now() - alive_window THEN
            answer := answer || format('; but that worker last heartbeated %s ago: if it is '
                                       'gone, the scheduler rescues the task once the lease '
                                       'expires',
                                       taskflow_format_duration(now() - holder.last_heartbeat_at));
        END IF;
        RETURN answer;
    END CASE;
END
$$;
COMMENT ON FUNCTION taskflow_why(uuid) IS
    'Why is this task not running (or done)? One sentence, for a human.';

-- ----- ops/sql/12_retry.sql

-- Run a failed or cancelled task again, by hand. It gets a fresh set of
-- attempts (attempts = 0); its history keeps the old ones. Returns true when
-- the task was re-queued; false (with a NOTICE saying why) when it was not
-- failed or cancelled, or does not exist: a done, waiting or running task is
-- left exactly as it was.
-- Safe on a live system: one guarded UPDATE of one row (WHERE status IN
-- failed/cancelled), checked by the transition trigger. History records it as
-- event 'retried' by actor 'ops:<your role>', with the reason in its error
-- column. Workers without a broker are woken at once by the trigger's NOTIFY;
-- with RabbitMQ, the task is published by the scheduler's republish pass, which
-- picks up tasks queued for republish_after_seconds (30 s by default).
--
--   SELECT taskflow_retry('0194f9f2-6d3c-7c1e-9a4b-2f0e8d7c6b5a', 'SMTP fixed');
--   SELECT id, taskflow_retry(id, 'mail outage over') FROM taskflow_recent_failures
--   WHERE status = 'failed' AND type = 'send_email';
CREATE OR REPLACE FUNCTION taskflow_retry(task_id uuid, reason text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    -- Restored at the end, so later statements in the caller's transaction are
    -- not recorded under this function's name.
    previous_actor text := coalesce(current_setting('taskflow.actor', true), '');
    previous_event text := coalesce(current_setting('taskflow.event', true), '');
    found_status task_status;
    changed boolean;
BEGIN
    PERFORM set_config('taskflow.actor', 'ops:' || current_user, true);
    PERFORM set_config('taskflow.event', 'retried', true);
    -- Mirrors store.RETRY_FINISHED_TASK: a clean slate for the new attempts.
    UPDATE tasks t
    SET status = 'queued', attempts = 0, lease_crashes = 0, run_at = now(),
        started_at = NULL, finished_at = NULL, worker_id = NULL, lease_expires_at = NULL,
        updated_at = now()
    WHERE t.id = taskflow_retry.task_id
      AND t.status = ANY ('{failed,cancelled}'::task_status[]);
    changed := FOUND;
    IF changed AND reason IS NOT NULL THEN
        -- The trigger has just written this change's history row; our row lock
        -- on the task keeps any other change of it out until we commit.
        UPDATE task_history h SET error = reason
        WHERE h.id = (SELECT max(l.id) FROM task_history l
                      WHERE l.task_id = taskflow_retry.task_id);
    END IF;
    PERFORM set_config('taskflow.actor', previous_actor, true);
    PERFORM set_config('taskflow.event', previous_event, true);
    IF NOT changed THEN
        SELECT t.status INTO found_status FROM tasks t WHERE t.id = taskflow_retry.task_id;
        RAISE NOTICE '%', CASE WHEN found_status IS NULL
                               THEN format('no task %s; nothing changed', task_id)
                               ELSE format('task %s is %s: only failed or cancelled tasks can '
                                           'be retried; nothing changed', task_id, found_status)
                          END;
    END IF;
    RETURN changed;
END
$$;
COMMENT ON FUNCTION taskflow_retry(uuid, text) IS
    'Re-queue a failed or cancelled task with fresh attempts; recorded as ops:<role>.';

-- ----- ops/sql/13_cancel.sql

-- Cancel a task by hand: postponed, queued, retrying or processing. A running
-- task's worker hears of it at once (the trigger sends NOTIFY taskflow_cancel)
-- and stops its handler; its late outcome cannot land (the completion is fenced
-- on status = 'processing'). Returns true when cancelled; false (with a NOTICE)
-- when the task was already finished or does not exist, in which case nothing
-- changes.
-- Safe on a live system: one guarded UPDATE of one row (WHERE status IN the
-- unfinished states), checked by the transition trigger. History records it as
-- event 'cancelled' by actor 'ops:<your role>', with the reason in its error
-- column; the reason also becomes the task's last_error, as a cancel through
-- the API does.
--
--   SELECT taskflow_cancel('0194f9f2-6d3c-7c1e-9a4b-2f0e8d7c6b5a', 'duplicate of another task');
CREATE OR REPLACE FUNCTION taskflow_cancel(task_id uuid, reason text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    previous_actor text := coalesce(current_setting('taskflow.actor', true), '');
    previous_event text := coalesce(current_setting('taskflow.event', true), '');
    found_status task_status;
    changed boolean;
BEGIN
    PERFORM set_config('taskflow.actor', 'ops:' || current_user, true);
    PERFORM set_config('taskflow.event', 'cancelled', true);
    -- Mirrors store.CANCEL_TASK. worker_id stays: history names who was running it.
    UPDATE tasks t
    SET status = 'cancelled', finished_at = now(), updated_at = now(),
        lease_expires_at = NULL, last_error = coalesce(reason, t.last_error)
    WHERE t.id = taskflow_cancel.task_id
      AND t.status = ANY ('{postponed,queued,retrying,processing}'::task_status[]);
    changed := FOUND;
    IF changed AND reason IS NOT NULL THEN
        UPDATE task_history h SET error = reason
        WHERE h.id = (SELECT max(l.id) FROM task_history l
                      WHERE l.task_id = taskflow_cancel.task_id);
    END IF;
    PERFORM set_config('taskflow.actor', previous_actor, true);
    PERFORM set_config('taskflow.event', previous_event, true);
    IF NOT changed THEN
        SELECT t.status INTO found_status FROM tasks t WHERE t.id = taskflow_cancel.task_id;
        RAISE NOTICE '%', CASE WHEN found_status IS NULL
                               THEN format('no task %s; nothing changed', task_id)
                               ELSE format('task %s is already %s; nothing changed',
                                           task_id, found_status)
                          END;
    END IF;
    RETURN changed;
END
$$;
COMMENT ON FUNCTION taskflow_cancel(uuid, text) IS
    'Cancel an unfinished task (a running one is stopped); recorded as ops:<role>.';

-- ----- ops/sql/14_requeue_stuck.sql

-- Rescue every task stuck in `processing` past its lease (see taskflow_stuck),
-- exactly as the scheduler's rescuer does: the lost attempt counts; the task is
-- retrying and due at once, or failed when it is out of retries or its handler
-- has now lost max_lease_crashes workers (quarantine; the engine's default is
-- 3, pass the deployment's value if it differs). Returns how many tasks it
-- moved. The scheduler then queues and publishes the retrying ones on its next tick.
-- Safe on a live system: rows are taken FOR UPDATE SKIP LOCKED, so it never
-- waits for, nor races, a running scheduler (each row is rescued once); only
-- rows whose lease has already expired are touched, and a worker that comes
-- back late cannot finish the lost attempt (completion is fenced on its claim).
-- History records each as event 'lease_expired' by actor 'ops:<your role>'.
--
--   SELECT taskflow_requeue_stuck();
--   SELECT taskflow_requeue_stuck(max_lease_crashes => 5);
CREATE OR REPLACE FUNCTION taskflow_requeue_stuck(max_lease_crashes integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    previous_actor text := coalesce(current_setting('taskflow.actor', true), '');
    previous_event text := coalesce(current_setting('taskflow.event', true), '');
    moved integer;
BEGIN
    PERFORM set_config('taskflow.actor', 'ops:' || current_user, true);
    PERFORM set_config('taskflow.event', 'lease_expired', true);
    -- The same decision and the same last_error as store.RESCUE_EXPIRED_LEASES.
    WITH expired AS (
        SELECT e.id FROM tasks e
        WHERE e.status = 'processing' AND e.lease_expires_at < now()
        ORDER BY e.lease_expires_at
        FOR UPDATE SKIP LOCKED
    ), decided AS (
        SELECT d.id,
               d.attempts > d.max_retries AS out_of_retries,
               d.lease_crashes + 1 >= taskflow_requeue_stuck.max_lease_crashes AS quarantined
        FROM tasks d JOIN expired USING (id)
    )
    UPDATE tasks t SET
        status = CASE WHEN d.out_of_retries OR d.quarantined
                      THEN 'failed' ELSE 'retrying' END::task_status,
        finished_at = CASE WHEN d.out_of_retries OR d.quarantined THEN now() END,
        lease_crashes = t.lease_crashes + 1,
        run_at = now(),
        last_error = format('worker %s lost: lease expired at %s', t.worker_id,
                            to_char(t.lease_expires_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
            || CASE WHEN d.quarantined AND NOT d.out_of_retries
                    THEN format('; quarantined after %s attempts ended with a lost worker',
                                t.lease_crashes + 1)
                    ELSE '' END,
        lease_expires_at = NULL,
        updated_at = now()
    FROM decided d
    WHERE t.id = d.id AND t.status = 'processing';
    GET DIAGNOSTICS moved = ROW_COUNT;
    PERFORM set_config('taskflow.actor', previous_actor, true);
    PERFORM set_config('taskflow.event', previous_event, true);
    RETURN moved;
END
$$;
COMMENT ON FUNCTION taskflow_requeue_stuck(integer) IS
    'Rescue processing tasks past their lease (as the scheduler does); returns the count.';

-- ===== Part 2: upkeep ========================================================

-- task_history is append-mostly: one row per transition, never updated by the
-- engine, deleted in batches by the scheduler's pruning. The defaults suit it
-- badly at scale: vacuum would wait for 20 % of the table to be dead (millions
-- of rows after a prune) and an insert-only table would be visited rarely, so
-- index-only scans lose the visibility map and freezing comes all at once.
-- SET (...) takes a SHARE UPDATE EXCLUSIVE lock: reads and writes go on.
ALTER TABLE task_history SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 1
);
-- tasks keeps 0001's settings (fillfactor 80 for HOT updates, vacuum and
-- analyze at 2 % churn, little cost delay): right for a table whose rows each
-- change status a few times in a short life. Finished rows are only inserted
-- and then left alone until pruned, so let inserts trigger vacuum as well,
-- which keeps the visibility map and freezing current.
ALTER TABLE tasks SET (autovacuum_vacuum_insert_scale_factor = 0.05);

-- Pruning finished tasks walks this index from its old end, a batch at a time,
-- instead of scanning the whole table for each batch. Migrations run in a
-- transaction, so this is a plain CREATE INDEX, which blocks writes to tasks
-- while it builds: on an already big table, build it first by hand with
--   CREATE INDEX CONCURRENTLY tasks_finished_idx ON tasks (finished_at)
--       WHERE finished_at IS NOT NULL;
-- and this statement then does nothing.
CREATE INDEX IF NOT EXISTS tasks_finished_idx ON tasks (finished_at)
    WHERE finished_at IS NOT NULL;
