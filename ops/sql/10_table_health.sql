-- Is vacuum keeping up? Live and dead rows, size, the last (auto)vacuum and
-- the autovacuum settings of TaskFlow's tables. A dead_percent that keeps
-- growing means autovacuum is held back (see taskflow_open_transactions) or
-- too slow for the churn.
-- task_history is one row for all its partitions (taskflow_history_partitions
-- lists them): the sums, the oldest of their last vacuums (the partition
-- vacuum reached least recently), and the settings each partition is made with.
-- Safe on a live system: a read-only view of the statistics collector.
--
--   SELECT * FROM taskflow_table_health;
CREATE OR REPLACE VIEW taskflow_table_health AS
WITH per_table AS (
    SELECT t.relname AS table_name,
           s.n_live_tup, s.n_dead_tup,
           pg_total_relation_size(s.relid) AS bytes,
           greatest(s.last_autovacuum, s.last_vacuum) AS last_vacuum,
           greatest(s.last_autoanalyze, s.last_analyze) AS last_analyze,
           s.autovacuum_count,
           c.reloptions
    FROM pg_stat_user_tables s
    JOIN pg_class c ON c.oid = s.relid
    LEFT JOIN pg_inherits p ON p.inhrelid = s.relid AND p.inhparent = 'task_history'::regclass
    JOIN pg_class t ON t.oid = coalesce(p.inhparent, s.relid)
    WHERE s.relid IN ('tasks'::regclass, 'task_history'::regclass, 'workers'::regclass)
       OR p.inhparent IS NOT NULL
)
SELECT table_name,
       sum(n_live_tup)::bigint AS live_rows,
       sum(n_dead_tup)::bigint AS dead_rows,
       round(100.0 * sum(n_dead_tup) / nullif(sum(n_live_tup + n_dead_tup), 0), 1) AS dead_percent,
       pg_size_pretty(sum(bytes)) AS total_size,
       min(last_vacuum) AS last_vacuum,
       min(last_analyze) AS last_analyze,
       sum(autovacuum_count)::bigint AS autovacuum_count,
       max(reloptions) AS settings
FROM per_table
GROUP BY table_name
ORDER BY table_name;
COMMENT ON VIEW taskflow_table_health IS
    'Dead rows, size, last vacuum and autovacuum settings of tasks, task_history, workers.';
