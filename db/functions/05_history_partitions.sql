-- task_history's partitions (db/migrations/0015): ranges of `at` on UTC day
-- boundaries, each `width` long, created ahead of need and dropped whole once
-- past retention. The scheduler's retention duty calls
-- taskflow_history_upkeep() under its duty lock (one scheduler at a time);
-- an operator may call it too.
--
-- Locks: creating or dropping a partition takes ACCESS EXCLUSIVE on
-- task_history for a moment (writers wait for it, a few milliseconds a day).
-- Both wait at most lock_timeout_ms for it: a long transaction on
-- task_history makes the duty give up and try again at its next round, never
-- queue every writer behind it.

-- The upper bound of a partition, from its catalog entry ("FOR VALUES FROM
-- (...) TO ('...')"); NULL for the default partition.
CREATE OR REPLACE FUNCTION taskflow_history_partition_end(partition regclass) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM $re$TO \('([^']+)'\)$re$)::timestamptz
    FROM pg_class c WHERE c.oid = partition
$$;

CREATE OR REPLACE FUNCTION taskflow_history_partition_start(partition regclass) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM $re$FROM \('([^']+)'\)$re$)::timestamptz
    FROM pg_class c WHERE c.oid = partition
$$;

-- Partitions until `until` is covered. A range that rows in the default
-- partition already fall into (no scheduler ran for a while) gets none: its
-- rows stay in the default, deleted once past retention, and partitions go on
-- from the next range. (Moving them would hold the exclusive lock below for
-- as long as copying takes.) Returns how many partitions were created.
CREATE OR REPLACE FUNCTION taskflow_history_extend(
    width interval, as_of timestamptz, until timestamptz, lock_timeout_ms integer DEFAULT 200
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    created integer := 0;
    range_start timestamptz;
    range_end timestamptz;
    name text;
BEGIN
    IF width < interval '1 day' THEN
        RAISE EXCEPTION 'a history partition is at least a day wide, not %', width;
    END IF;
    PERFORM set_config('lock_timeout', lock_timeout_ms || 'ms', true);
    SELECT max(taskflow_history_partition_end(i.inhrelid)) INTO range_start
    FROM pg_inherits i WHERE i.inhparent = 'task_history'::regclass;
    IF range_start IS NULL THEN
        -- None yet: from today. Older rows in the default stay there until
        -- they are past retention and deleted.
        range_start := date_trunc('day', as_of AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    END IF;
    IF range_start < until THEN
        -- Taken before anything else (CREATE ... PARTITION OF takes it too):
        -- with ATTACH's lighter lock, an INSERT that routed its row to the
        -- default partition just before would fail its check after it. Held
        -- for the few catalog changes below and the scan of the default
        -- partition each needs (empty, unless a scheduler was away).
        LOCK TABLE task_history IN ACCESS EXCLUSIVE MODE;
    END IF;
    WHILE range_start < until LOOP
        range_end := range_start + width;
        IF EXISTS (SELECT 1 FROM task_history_default d
                   WHERE d.at >= range_start AND d.at < range_end) THEN
            range_start := range_end;
            CONTINUE;
        END IF;
        name := 'task_history_' || to_char(range_start AT TIME ZONE 'UTC', 'YYYYMMDD');
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF task_history FOR VALUES FROM (%L) TO (%L) WITH ('
            'autovacuum_vacuum_scale_factor = 0.05, '
            'autovacuum_vacuum_insert_scale_factor = 0.05, '
            'autovacuum_analyze_scale_factor = 0.05, '
            'autovacuum_vacuum_cost_delay = 1)', name, range_start, range_end);
        created := created + 1;
        range_start := range_end;
    END LOOP;
    RETURN created;
EXCEPTION WHEN lock_not_available THEN
    -- Whatever this call created is undone with it; the next round retries.
    RAISE NOTICE 'task_history partitions not extended: a lock was not available';
    RETURN 0;
END
$$;

-- Drops the partitions that end at or before `older_than`. Returns the
-- number of rows they held, by the planner's estimate (exact counts would
-- read them all just before dropping them).
CREATE OR REPLACE FUNCTION taskflow_history_drop_before(
    older_than timestamptz, lock_timeout_ms integer DEFAULT 200
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    dropped bigint := 0;
    expired record;
BEGIN
    PERFORM set_config('lock_timeout', lock_timeout_ms || 'ms', true);
    FOR expired IN
        SELECT i.inhrelid::regclass AS partition, greatest(c.reltuples, 0)::bigint AS rows
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'task_history'::regclass
          AND taskflow_history_partition_end(i.inhrelid) <= older_than
        ORDER BY taskflow_history_partition_end(i.inhrelid)
    LOOP
        EXECUTE format('DROP TABLE %s', expired.partition);
        dropped := dropped + expired.rows;
    END LOOP;
    RETURN dropped;
EXCEPTION WHEN lock_not_available THEN
    RAISE NOTICE 'task_history partitions not dropped: a lock was not available';
    RETURN 0;
END
$$;

-- One round of history retention: rows in the default partition older than
-- `retention` (at most `batch` of them: a DELETE, as the default has no range
-- to drop), partitions wholly older than it, and partitions ahead until
-- `ahead` past `as_of`. `as_of` is now() but for tests, and for operators
-- who want to see what a later day would do.
CREATE OR REPLACE FUNCTION taskflow_history_upkeep(
    retention interval,
    width interval,
    ahead interval,
    batch integer,
    as_of timestamptz DEFAULT now(),
    OUT deleted_rows bigint,
    OUT dropped_rows bigint,
    OUT created_partitions integer
)
LANGUAGE plpgsql AS $$
BEGIN
    WITH expired AS (
        DELETE FROM task_history_default WHERE id IN (
            SELECT d.id FROM task_history_default d WHERE d.at < as_of - retention LIMIT batch
        )
        RETURNING 1
    )
    SELECT count(*) INTO deleted_rows FROM expired;
    dropped_rows := taskflow_history_drop_before(as_of - retention);
    created_partitions := taskflow_history_extend(width, as_of, as_of + ahead);
END
$$;
COMMENT ON FUNCTION taskflow_history_upkeep(interval, interval, interval, integer, timestamptz) IS
    'History retention: drop partitions past retention, create them ahead, prune the default.';
