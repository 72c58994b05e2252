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
