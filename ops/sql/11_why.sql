-- Why isn't this task running? One sentence about one task: blocked on
-- which dependencies; not due until when; its type paused; held by a limit (naming it: max_running,
-- type_max_running, email_per_user_per_minute); waiting for its turn (how many
-- of its user's tasks go first, how many users share the slots); picked and
-- on its way to a worker; which worker holds its lease, until when; stuck
-- past its lease; done; cancelled (by whom, why); out of retries (after how
-- many attempts, with the last error); no live worker registered.
-- Safe on a live system: read-only; looks at one task, the workers, the
-- limits and, for a queued task, counts what is ahead of it.
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
    users_waiting bigint;
    running bigint;
    cap integer;
    email_cap integer;
    picked_at timestamptz;
    paused paused_task_types%ROWTYPE;
    fair dispatch_settings%ROWTYPE;
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

    WHEN 'blocked' THEN
        SELECT string_agg(format('%s (%s, %s)', w.waits_for, w.waits_for_type,
                                 coalesce(w.waits_for_status::text, 'deleted')),
                          ', ' ORDER BY w.waits_for)
        INTO answer
        FROM (SELECT * FROM taskflow_blocked b WHERE b.id = taskflow_why.task_id LIMIT 5) AS w;
        ahead := (SELECT count(*) FROM taskflow_blocked b WHERE b.id = taskflow_why.task_id);
        RETURN format('blocked: waits for %s of its dependencies to be done: %s%s; it runs when '
                      'all are done, and is cancelled if one fails for good',
                      ahead, coalesce(answer, 'none (it should be promoted at once)'),
                      CASE WHEN ahead > 5 THEN ', ...' ELSE '' END);

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
        SELECT * INTO paused FROM paused_task_types p WHERE p.type = task.type;
        IF FOUND THEN
            RETURN answer || format(': its type %s is paused (since %s, by %s%s); no worker '
                                    'claims it until SELECT taskflow_resume_type(%L);',
                                    task.type, taskflow_format_time(paused.paused_at),
                                    paused.paused_by, coalesce(': ' || paused.reason, ''),
                                    task.type);
        END IF;
        IF live_workers = 0 THEN
            RETURN answer || format(', but no live worker is registered (none has heartbeated '
                                    'in the last %s): start `taskflow worker`',
                                    taskflow_format_duration(alive_window));
        END IF;
        SELECT d.dispatched_at INTO picked_at FROM dispatched_tasks d
        WHERE d.task_id = taskflow_why.task_id;
        IF FOUND THEN
            answer := answer || format(': picked %s ago and on its way to a worker (in the '
                                       'dispatch window)', taskflow_format_duration(now() - picked_at));
            IF now() - picked_at > interval '10 seconds' THEN
                answer := answer || '; nobody has claimed it yet: an idle worker takes it '
                                    'within a poll interval, and the dispatcher publishes it '
                                    'again after republish_after_seconds';
            END IF;
            RETURN answer;
        END IF;
        -- Held by a cap of SPEC §8? The limits as the schedulers run them.
        SELECT * INTO fair FROM dispatch_settings;
        SELECT coalesce(l.max_running, fair.user_max_running),
               coalesce(l.email_per_minute, fair.email_per_user_per_minute)
        INTO cap, email_cap
        FROM (SELECT 1) AS one LEFT JOIN user_limits l ON l.user_id = task.user_id;
        IF cap > 0 THEN
            SELECT (SELECT count(*) FROM tasks p
                    WHERE p.status = 'processing' AND p.user_id = task.user_id)
                   + (SELECT count(*) FROM dispatched_tasks d WHERE d.user_id = task.user_id)
            INTO running;
            IF running >= cap THEN
                RETURN answer || format(': held by max_running: its user runs %s task(s) at '
                                        'once, the most allowed (%s: user_limits.max_running, '
                                        'else user_max_running)', running, cap);
            END IF;
        END IF;
        cap := coalesce((fair.type_max_running ->> task.type)::integer, 0);
        IF cap > 0 THEN
            SELECT (SELECT count(*) FROM tasks p
                    WHERE p.status = 'processing' AND p.type = task.type)
                   + (SELECT count(*) FROM dispatched_tasks d WHERE d.type = task.type)
            INTO running;
            IF running >= cap THEN
                RETURN answer || format(': held by type_max_running: %s task(s) of type %s run '
                                        'at once across all workers, the most allowed (%s)',
                                        running, task.type, cap);
            END IF;
        END IF;
        IF task.type = 'send_email' AND email_cap > 0 THEN
            SELECT (SELECT count(*) FROM tasks e
                    WHERE e.user_id = task.user_id AND e.type = 'send_email'
                      AND e.started_at > now() - interval '1 minute')
                   + (SELECT count(*) FROM dispatched_tasks d
                      WHERE d.user_id = task.user_id AND d.type = 'send_email')
            INTO running;
            IF running >= email_cap THEN
                RETURN answer || format(': held by email_per_user_per_minute: its user sent '
                                        '%s email(s) in the last minute, the most allowed (%s); '
                                        'it waits, it does not fail', running, email_cap);
            END IF;
        END IF;
        -- Waiting for its turn: round-robin over users, then the user's own order.
        SELECT count(*) INTO ahead FROM tasks q
        WHERE q.status = 'queued' AND q.user_id = task.user_id
          AND (q.priority > task.priority
               OR (q.priority = task.priority AND (q.run_at, q.id) < (task.run_at, task.id)))
          AND NOT EXISTS (SELECT 1 FROM dispatched_tasks d WHERE d.task_id = q.id);
        SELECT count(DISTINCT q.user_id) INTO users_waiting FROM tasks q WHERE q.status = 'queued';
        SELECT count(*) INTO busy_slots FROM tasks p JOIN workers w ON w.id = p.worker_id
        WHERE p.status = 'processing' AND w.stopped_at IS NULL
          AND w.last_heartbeat_at > now() - alive_window;
        RETURN answer || format(': waiting for its turn; %s of its user''s queued task(s) go '
                                'first (higher priority, or due earlier); %s user(s) have '
                                'queued tasks and take free slots in turn; %s live worker(s) '
                                'with %s slot(s), %s busy',
                                ahead, users_waiting, live_workers, live_slots, busy_slots);

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
