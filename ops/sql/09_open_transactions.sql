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
