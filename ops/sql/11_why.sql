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
