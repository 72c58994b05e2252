-- The one retry rule (taskflow/retries.py says who applies it). Re-applied by
-- `taskflow migrate` whenever this file changes.

-- What an attempt that ended in error leaves its task as: failed when the error
-- is permanent or the task is out of retries (it runs at most 1 + max_retries
-- times), retrying otherwise. Inlined by the planner where it is called: each
-- label is cast on its own, so the body is constants the planner may fold. (A
-- cast of the CASE's text to the enum runs enum_in, which is only stable: the
-- planner would not inline the function into the claims and finishes, and
-- every statement calling it set up a function call, ~20 us, plus ~1 us a row.)
CREATE OR REPLACE FUNCTION taskflow_attempt_status(
    attempts integer, max_retries integer, permanent boolean
) RETURNS task_status
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN permanent OR attempts > max_retries
                THEN 'failed'::task_status ELSE 'retrying'::task_status END
$$;
COMMENT ON FUNCTION taskflow_attempt_status(integer, integer, boolean) IS
    'The retry rule: failed when permanent or attempts > max_retries, else retrying.';

-- Seconds before the retry that follows `attempt` (1 = the first run failed).
-- The ceiling doubles per attempt (base, 2*base, 4*base, ... up to max_ms); the
-- delay is drawn from the upper half of it ("equal jitter"), so retries of
-- tasks that failed together spread out but never come back sooner than half
-- the ceiling.
CREATE OR REPLACE FUNCTION taskflow_backoff_seconds(
    attempt integer, base_ms integer, max_ms integer
) RETURNS double precision
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT least(max_ms::double precision,
                 base_ms * power(2::double precision, least(greatest(attempt - 1, 0), 62)))
           * (0.5 + random() / 2) / 1000
$$;
COMMENT ON FUNCTION taskflow_backoff_seconds(integer, integer, integer) IS
    'Retry delay in seconds: exponential from base_ms, capped at max_ms, equal jitter.';
