-- Who runs next (SPEC §8): the fair pick, the dispatch window, and the claim
-- that takes straight from the pick. db/migrations/0009_fair_dispatch.sql
-- has the tables and the design; taskflow/dispatcher.py drives the window.
-- Re-applied by `taskflow migrate` whenever this file changes.
--
-- The rule. Free worker slots go round-robin among the users who have queued
-- tasks, a user of weight w taking w at each turn; a user's own tasks go in
-- priority order, then by due time. Tasks of a paused type
-- (paused_task_types) are not picked at all. Nobody is served past a cap:
-- max_running (a user's tasks processing or on their way to a worker),
-- type_max_running (a task type's, across every worker), and for send_email
-- the user's email_per_minute (tasks started in the last minute plus those on
-- their way). A task held by a cap stays queued and is picked later; it never
-- fails for it. Every pick runs under one advisory lock, so what it counts
-- cannot change under it: the caps hold across every scheduler and worker.

-- The lock every pick runs under (a transaction-level advisory lock).
CREATE OR REPLACE FUNCTION taskflow_dispatch_lock() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 7378427582459741248 $$;

-- The lowest user id strictly between `above` and `below` (NULL: no bound)
-- with a queued task, or NULL: one loose index scan, both bounds index
-- conditions. (A bare EXISTS over tasks is planned as a sequential scan once
-- plpgsql's plan is generic.) plpgsql, not sql: a SQL function with a LIMIT
-- is not inlined, and one that is not is parsed and planned at every call;
-- plpgsql keeps the plan for the session. A pick makes up to four of these
-- probes, and planning them was ~40 % of an idle worker's claim.
CREATE OR REPLACE FUNCTION taskflow_queued_user_in(above bigint, below bigint) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT t.user_id FROM tasks t
            WHERE t.status = 'queued'
              AND t.user_id > coalesce(above, -9223372036854775808)
              AND t.user_id < coalesce(below, 9223372036854775807)
            ORDER BY t.user_id LIMIT 1);
END
$$;

-- The next user after `after` with a queued task, wrapping around to the
-- first; NULL when nobody has one.
CREATE OR REPLACE FUNCTION taskflow_next_queued_user(after bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(taskflow_queued_user_in(after, NULL), taskflow_queued_user_in(NULL, NULL))
$$;

-- Up to `wanted` queued tasks, fairly chosen, none of them already on its way
-- to a worker; each goes into dispatched_tasks as it is picked, so what is
-- counted against the caps includes this pick's own. Callers hold
-- taskflow_dispatch_lock() for their transaction.
-- Users are visited round-robin from where the last pick stopped
-- (dispatch_state); each visit takes up to weight x quantum of the user's
-- next tasks. The quantum starts at 1 and, after each full circle, becomes
-- what is left to pick shared among the users who took all they were offered
-- (they may have more), so a single heavy user does not cost a visit a task.
-- When only one user has queued tasks, the quantum is the whole pick: one
-- visit, no circles.
-- A user's limits: user_limits where set, else the defaults passed in (from
-- config.json); 0 means no limit.
CREATE OR REPLACE FUNCTION taskflow_fair_pick(
    wanted integer,
    default_max_running integer,
    type_max_running jsonb,
    default_email_per_minute integer
)
RETURNS TABLE (id uuid, user_id bigint, type text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    start_after bigint;
    current_user_id bigint;
    first_user bigint := NULL;
    picked integer := 0;
    picked_this_circle integer := 0;
    hungry_this_circle integer := 0;
    picked_this_visit integer;
    quantum integer := 1;
    sole_user boolean;
    take integer;
    weight integer;
    cap integer;
    user_room integer;
    email_cap integer;
    email_room integer;
    full_types text[];
    paused_types text[];
    type_room jsonb := '{}';
    capped_type text;
    candidate record;
BEGIN
    IF wanted <= 0 THEN
        RETURN;
    END IF;
    SELECT s.last_user_id INTO start_after FROM dispatch_state s;
    -- The first user to visit: the next after where the last pick stopped.
    -- Nobody: an empty pick (every worker that hears of a task looks) ends here.
    current_user_id := taskflow_next_queued_user(start_after);
    IF current_user_id IS NULL THEN
        RETURN;
    END IF;
    -- The only user with queued tasks (the idle case, and one user's
    -- backlog) is served in a single visit: there is nobody to take turns
    -- with, and a second circle would only find the rest held by the caps.
    sole_user := taskflow_queued_user_in(current_user_id, NULL) IS NULL
             AND taskflow_queued_user_in(NULL, current_user_id) IS NULL;
    IF sole_user THEN
        quantum := wanted;
    END IF;
    -- Each capped type's room: its cap less what of it runs or is on its way.
    FOR capped_type, cap IN
        SELECT c.key, c.value::integer FROM jsonb_each_text(type_max_running) AS c
        WHERE c.value::integer > 0
    LOOP
        type_room := type_room || jsonb_build_object(capped_type, cap - (
            (SELECT count(*) FROM tasks p WHERE p.status = 'processing' AND p.type = capped_type)
            + (SELECT count(*) FROM dispatched_tasks d WHERE d.type = capped_type)));
    END LOOP;
    SELECT coalesce(array_agg(p.type), '{}') INTO paused_types FROM paused_task_types p;
    LOOP
        IF first_user IS NOT NULL THEN
            EXIT WHEN sole_user;
            -- The next user, wrapping around.
            current_user_id := taskflow_next_queued_user(current_user_id);
            EXIT WHEN current_user_id IS NULL;  -- nothing is queued
        END IF;
        IF current_user_id = first_user THEN
            -- A full circle: stop when it picked nothing, else share what is
            -- left among the users who still had something to take.
            EXIT WHEN picked_this_circle = 0 OR hungry_this_circle = 0;
            quantum := greatest(1, ceil((wanted - picked)::numeric
                                        / hungry_this_circle)::integer);
            picked_this_circle := 0;
            hungry_this_circle := 0;
        END IF;
        first_user := coalesce(first_user, current_user_id);

        SELECT coalesce(l.weight, 1),
               coalesce(l.max_running, default_max_running),
               coalesce(l.email_per_minute, default_email_per_minute)
        INTO weight, cap, email_cap
        FROM (SELECT 1) AS one
        LEFT JOIN user_limits l ON l.user_id = current_user_id;
        take := least(weight * quantum, wanted - picked);
        IF cap > 0 THEN
            user_room := cap - (
                (SELECT count(*) FROM tasks p
                 WHERE p.status = 'processing' AND p.user_id = current_user_id)
                + (SELECT count(*) FROM dispatched_tasks d WHERE d.user_id = current_user_id));
            take := least(take, user_room);
        END IF;
        email_room := NULL;
        IF email_cap > 0 THEN
            email_room := email_cap - (
                (SELECT count(*) FROM tasks e
                 WHERE e.user_id = current_user_id AND e.type = 'send_email'
                   AND e.started_at > now() - interval '1 minute')
                + (SELECT count(*) FROM dispatched_tasks d
                   WHERE d.user_id = current_user_id AND d.type = 'send_email'));
        END IF;
        SELECT paused_types || coalesce(array_agg(r.key), '{}') INTO full_types
        FROM jsonb_each_text(type_room) AS r WHERE r.value::integer <= 0;
        IF email_room IS NOT NULL AND email_room <= 0 THEN
            full_types := full_types || 'send_email'::text;
        END IF;

        picked_this_visit := 0;
        IF take > 0 AND type_room = '{}' THEN
            -- No type cap can fill part way through this visit: the user's
            -- next tasks are marked in one statement, not one INSERT a task.
            -- The email rate, the one cap of a user's own, is kept by
            -- counting the emails among them in order (as the loop below
            -- does): those past email_room stay queued.
            RETURN QUERY
            WITH candidates AS (
                SELECT c.id, c.user_id, c.type,
                       count(*) FILTER (WHERE c.type = 'send_email')
                           OVER (ORDER BY c.priority DESC, c.run_at, c.id) AS emails_so_far
                FROM (
                    SELECT t.id, t.user_id, t.type, t.priority, t.run_at FROM tasks t
                    WHERE t.user_id = current_user_id AND t.status = 'queued'
                      AND t.type <> ALL(full_types)
                      AND NOT EXISTS (SELECT 1 FROM dispatched_tasks d WHERE d.task_id = t.id)
                    ORDER BY t.priority DESC, t.run_at, t.id
                    LIMIT take
                ) AS c
            ), marked AS (
                INSERT INTO dispatched_tasks AS m (task_id, user_id, type)
                SELECT k.id, k.user_id, k.type FROM candidates k
                WHERE email_room IS NULL OR k.type <> 'send_email'
                   OR k.emails_so_far <= email_room
                ON CONFLICT (task_id) DO NOTHING
                RETURNING m.task_id, m.user_id, m.type
            )
            SELECT marked.task_id, marked.user_id, marked.type FROM marked;
            GET DIAGNOSTICS picked_this_visit = ROW_COUNT;
            picked := picked + picked_this_visit;
            picked_this_circle := picked_this_circle + picked_this_visit;
        ELSIF take > 0 THEN
            FOR candidate IN
                SELECT t.id, t.type FROM tasks t
                WHERE t.user_id = current_user_id AND t.status = 'queued'
                  AND t.type <> ALL(full_types)
                  AND NOT EXISTS (SELECT 1 FROM dispatched_tasks d WHERE d.task_id = t.id)
                ORDER BY t.priority DESC, t.run_at, t.id
                LIMIT take
            LOOP
                -- A cap the candidates of this visit may fill part way.
                IF type_room ? candidate.type THEN
                    CONTINUE WHEN (type_room ->> candidate.type)::integer <= 0;
                    type_room := jsonb_set(type_room, ARRAY[candidate.type],
                        to_jsonb((type_room ->> candidate.type)::integer - 1));
                END IF;
                IF candidate.type = 'send_email' THEN
                    CONTINUE WHEN email_room IS NOT NULL AND email_room <= 0;
                    email_room := email_room - 1;
                END IF;
                INSERT INTO dispatched_tasks (task_id, user_id, type)
                VALUES (candidate.id, current_user_id, candidate.type)
                ON CONFLICT (task_id) DO NOTHING;
                -- Marked meanwhile outside the lock (only by hand): not ours.
                CONTINUE WHEN NOT FOUND;
                id := candidate.id;
                user_id := current_user_id;
                type := candidate.type;
                RETURN NEXT;
                picked := picked + 1;
                picked_this_circle := picked_this_circle + 1;
                picked_this_visit := picked_this_visit + 1;
            END LOOP;
        END IF;
        IF take > 0 AND picked_this_visit = take THEN
            hungry_this_circle := hungry_this_circle + 1;
        END IF;
        EXIT WHEN picked >= wanted;
    END LOOP;
    IF current_user_id IS NOT NULL THEN
        UPDATE dispatch_state SET last_user_id = current_user_id
        WHERE last_user_id IS DISTINCT FROM current_user_id;
    END IF;
END
$$;
COMMENT ON FUNCTION taskflow_fair_pick(integer, integer, jsonb, integer) IS
    'Up to `wanted` queued tasks, round-robin over users, within every cap (SPEC §8).';

-- The dispatcher's round: pick fairly into the window of ids on their way to
-- workers, at most `room` of them. Picks take turns on the lock: each is a
-- few milliseconds.
CREATE OR REPLACE FUNCTION taskflow_dispatch(
    room integer,
    default_max_running integer,
    type_max_running jsonb,
    default_email_per_minute integer
)
RETURNS TABLE (id uuid, user_id bigint, type text)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF room <= 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(taskflow_dispatch_lock());
    RETURN QUERY
    SELECT p.id, p.user_id, p.type
    FROM taskflow_fair_pick(room, default_max_running, type_max_running,
                            default_email_per_minute) AS p;
END
$$;
COMMENT ON FUNCTION taskflow_dispatch(integer, integer, jsonb, integer) IS
    'Pick up to `room` tasks fairly into the dispatch window (dispatched_tasks).';

-- A worker's own claim from the pick, for the paths with no ids to claim
-- (the claim takes the picked tasks out of the window again, by trigger):
-- workers without a broker, and an idle worker woken by a new task (it
-- claims straight away instead of waiting for the dispatcher's message).
-- The first `start_now` start at once and are marked started (see
-- store/engine.py for why).
-- (Dropped first: re-created with this exact result type.)
DROP FUNCTION IF EXISTS taskflow_claim_fair(text, double precision, integer, integer, integer, jsonb, integer);
CREATE FUNCTION taskflow_claim_fair(
    worker_id text,
    lease_seconds double precision,
    wanted integer,
    start_now integer,
    default_max_running integer,
    type_max_running jsonb,
    default_email_per_minute integer
)
RETURNS TABLE (id uuid, user_id bigint, type text, payload jsonb, attempts integer,
               max_retries integer, result jsonb, claim_token bigint,
               run_at timestamptz, last_attempt boolean, started boolean,
               files_max_bytes bigint, has_dependencies boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    picked_ids uuid[];
BEGIN
    IF wanted <= 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(taskflow_dispatch_lock());
    SELECT array_agg(p.id) INTO picked_ids
    FROM taskflow_fair_pick(wanted, default_max_running, type_max_running,
                            default_email_per_minute) AS p;
    IF picked_ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE tasks t SET status = 'processing', attempts = t.attempts + 1,
        worker_id = taskflow_claim_fair.worker_id,
        lease_expires_at = now() + make_interval(secs => lease_seconds),
        started_at = CASE WHEN p.position <= start_now THEN now() END,
        claim_token = nextval('task_claim_token_seq'), updated_at = now()
    FROM unnest(picked_ids) WITH ORDINALITY AS p(id, position)
    WHERE t.id = p.id AND t.status = 'queued'
      AND (p.position <= start_now OR t.unstarted_rescues = 0)
    RETURNING t.id, t.user_id, t.type, t.payload, t.attempts, t.max_retries, t.result,
              t.claim_token, t.run_at,
              taskflow_attempt_status(t.attempts, t.max_retries, false) = 'failed',
              t.started_at IS NOT NULL,
              (SELECT l.files_max_bytes FROM user_limits l WHERE l.user_id = t.user_id),
              EXISTS (SELECT 1 FROM task_dependencies d WHERE d.task_id = t.id);
    -- The claimed left the window by trigger; those it did not take (claimed
    -- ahead only into a free slot) leave it too, for the next pick.
    DELETE FROM dispatched_tasks d WHERE d.task_id = ANY(picked_ids);
END
$$;
COMMENT ON FUNCTION taskflow_claim_fair(text, double precision, integer, integer, integer, jsonb, integer) IS
    'Claim up to `wanted` tasks straight from the fair pick (no broker, or an idle worker).';

-- A worker's claim of ids it was sent (store/engine.py explains the guards).
-- A SQL function, not a statement the worker prepares: a prepared statement
-- keeps one plan, made while dispatched_tasks may have held a page, and would
-- scan the window whole for every claim ever after however large it grew
-- (measured: 4 ms and more a claim, most of its cost); this UPDATE is planned
-- at every call, for the window's size then.
DROP FUNCTION IF EXISTS taskflow_claim_dispatched(uuid[], text, double precision, integer);
CREATE FUNCTION taskflow_claim_dispatched(
    task_ids uuid[],
    worker_id text,
    lease_seconds double precision,
    start_now integer
)
RETURNS TABLE (id uuid, user_id bigint, type text, payload jsonb, attempts integer,
               max_retries integer, result jsonb, claim_token bigint,
               run_at timestamptz, last_attempt boolean, started boolean,
               files_max_bytes bigint, has_dependencies boolean)
LANGUAGE sql VOLATILE AS $$
    UPDATE tasks t SET status = 'processing', attempts = t.attempts + 1,
        worker_id = taskflow_claim_dispatched.worker_id,
        lease_expires_at = now() + make_interval(secs => lease_seconds),
        started_at = CASE WHEN w.position <= start_now THEN now() END,
        claim_token = nextval('task_claim_token_seq'), updated_at = now()
    FROM unnest(task_ids) WITH ORDINALITY AS w(id, position)
    WHERE t.id = w.id AND t.status::text = 'queued'
      AND (w.position <= start_now OR t.unstarted_rescues = 0)
      AND EXISTS (SELECT 1 FROM dispatched_tasks d WHERE d.task_id = t.id)
      AND NOT EXISTS (SELECT 1 FROM paused_task_types p WHERE p.type = t.type)
    RETURNING t.id, t.user_id, t.type, t.payload, t.attempts, t.max_retries, t.result,
              t.claim_token, t.run_at,
              taskflow_attempt_status(t.attempts, t.max_retries, false) = 'failed',
              t.started_at IS NOT NULL,
              (SELECT l.files_max_bytes FROM user_limits l WHERE l.user_id = t.user_id),
              EXISTS (SELECT 1 FROM task_dependencies d WHERE d.task_id = t.id);
$$;
COMMENT ON FUNCTION taskflow_claim_dispatched(uuid[], text, double precision, integer) IS
    'Claim ids the fair pick sent: guarded by status, dispatch mark and paused types.';
