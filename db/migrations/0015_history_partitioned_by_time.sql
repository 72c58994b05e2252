-- task_history partitioned by time (SPEC §10). Retention drops whole
-- partitions instead of deleting rows: no DELETE churn, no dead rows for
-- vacuum, and the cost of writing history stays the same however much of it
-- is kept.
--
-- Partitions are ranges of `at` (UTC day boundaries), created ahead of time
-- and dropped once wholly past history_retention_days by the scheduler's
-- retention duty (db/functions/05_history_partitions.sql). A row no range
-- covers yet goes to task_history_default, so no row is refused when no
-- scheduler ran for a while; in a running system the default stays empty.
--
-- The existing rows stay where they are: the old table becomes the partition
-- for everything before tomorrow (UTC), and is dropped whole once that day is
-- past retention. Attaching it builds its (id, at) key: 1.1 s for 2 million
-- rows on the 2-core test machine, once, under this migration's lock.

-- The operators' views over task_history would follow the old table;
-- ops/sql/ re-creates them over the new one right after this migration.
DROP VIEW IF EXISTS taskflow_throughput, taskflow_table_health;
ALTER TABLE task_history RENAME TO task_history_unpartitioned;
DROP TRIGGER task_history_notify ON task_history_unpartitioned;
ALTER TABLE task_history_unpartitioned DROP CONSTRAINT task_history_pkey;
ALTER INDEX task_history_task_idx RENAME TO task_history_unpartitioned_task_idx;
ALTER INDEX task_history_at_brin RENAME TO task_history_unpartitioned_at_brin;
-- Its identity sequence goes with the identity; the new table's own one
-- continues from the last id, so ids keep growing across the change (the live
-- event stream orders and resumes by id).
CREATE TEMPORARY TABLE history_last_id ON COMMIT DROP AS
    SELECT coalesce(max(id), 0) AS id FROM task_history_unpartitioned;
ALTER TABLE task_history_unpartitioned ALTER COLUMN id DROP IDENTITY;

-- Unique per partition only, so the key must hold `at`; ids are unique
-- anyway, from one sequence.
CREATE TABLE task_history (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    task_id     uuid NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    event       text NOT NULL,
    from_status task_status,
    to_status   task_status NOT NULL,
    attempt     integer NOT NULL,
    worker_id   text,
    error       text,
    actor       text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE INDEX task_history_task_idx ON task_history (task_id, id);
CREATE INDEX task_history_at_brin ON task_history USING brin (at) WITH (pages_per_range = 32);
-- Storage parameters are per partition (a partitioned table takes none):
-- the same as 0002 gave the old table, here and on each new partition.
CREATE TABLE task_history_default PARTITION OF task_history DEFAULT WITH (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 1
);

SELECT setval(pg_get_serial_sequence('task_history', 'id'), id + 1, false) FROM history_last_id;

DO $$
DECLARE
    tomorrow timestamptz := (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day')
                            AT TIME ZONE 'UTC';
BEGIN
    IF EXISTS (SELECT 1 FROM task_history_unpartitioned) THEN
        -- Checked here, so the attach below need not scan the table again.
        EXECUTE format('ALTER TABLE task_history_unpartitioned ADD CONSTRAINT '
                       'task_history_unpartitioned_range CHECK (at < %L)', tomorrow);
        EXECUTE format('ALTER TABLE task_history ATTACH PARTITION task_history_unpartitioned '
                       'FOR VALUES FROM (MINVALUE) TO (%L)', tomorrow);
        ALTER TABLE task_history_unpartitioned DROP CONSTRAINT task_history_unpartitioned_range;
    ELSE
        DROP TABLE task_history_unpartitioned;
    END IF;
END
$$;

CREATE TRIGGER task_history_notify AFTER INSERT ON task_history
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_history_notify();

COMMENT ON TABLE task_history IS
    'Every status change of every task, partitioned by `at`; see taskflow_history_partitions.';
COMMENT ON TABLE task_history_default IS
    'History rows no partition covered when written; deleted once past retention.';
