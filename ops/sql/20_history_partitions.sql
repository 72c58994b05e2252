-- task_history's partitions (db/migrations/0015): the range of `at` each
-- holds, its rows (the planner's estimate) and size. The scheduler drops a
-- partition once its range ends past history_retention_days and keeps about
-- two partitions' width of them ahead of now; rows of the default partition
-- are those no range covered when they were written (no scheduler ran for a
-- while): they stay there, deleted in batches once past retention, and
-- partitions go on from the first range without such rows.
-- Safe on a live system: a read-only view of the catalog.
--
--   SELECT * FROM taskflow_history_partitions;
--   SELECT * FROM taskflow_history_upkeep(interval '30 days', interval '1 day',
--                                         interval '2 days', 10000);  -- a round by hand
CREATE OR REPLACE VIEW taskflow_history_partitions AS
SELECT c.relname AS partition,
       taskflow_history_partition_start(c.oid) AS starts_at,
       taskflow_history_partition_end(c.oid) AS ends_at,
       greatest(c.reltuples, 0)::bigint AS rows_estimate,
       pg_size_pretty(pg_total_relation_size(c.oid)) AS total_size
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'task_history'::regclass
ORDER BY taskflow_history_partition_end(c.oid) NULLS LAST;
COMMENT ON VIEW taskflow_history_partitions IS
    'task_history partitions: range, estimated rows and size; the default last.';
