-- What holds back vacuum, of every kind? Row versions that died after the
-- oldest of these began cannot be removed: tasks and task_history bloat, and
-- the claim and promotion queries slow down. One row per holder: a
-- transaction of this database (or a session holding a snapshot), a
-- replication slot (a standby or a logical consumer that stopped reading
-- holds it for ever), or a prepared transaction (two-phase commit never
-- finished). `xid_age` is how many transactions ago it began, the measure
-- vacuum uses; `age` is in time, where Postgres knows it (not for slots).
-- taskflow status warns about each, and the API's /metrics exports the
-- oldest per kind (taskflow_vacuum_horizon_xid_age).
-- Safe on a live system: a read-only view of pg_stat_activity,
-- pg_replication_slots and pg_prepared_xacts.
--
--   SELECT * FROM taskflow_vacuum_horizon LIMIT 5;
--   SELECT pg_drop_replication_slot('a_dead_standby');   -- a slot nobody reads
--   ROLLBACK PREPARED 'the_gid';                           -- a forgotten 2PC
CREATE OR REPLACE VIEW taskflow_vacuum_horizon AS
SELECT 'transaction'::text AS kind,
       a.pid::text AS holder,
       coalesce(nullif(a.application_name, ''), a.usename::text) AS detail,
       date_trunc('second', now() - a.xact_start) AS age,
       age(coalesce(a.backend_xmin, a.backend_xid)) AS xid_age
FROM pg_stat_activity a
WHERE a.datname = current_database()
  AND coalesce(a.backend_xmin, a.backend_xid) IS NOT NULL
  AND a.pid <> pg_backend_pid()
UNION ALL
SELECT 'replication slot',
       s.slot_name::text,
       s.slot_type || CASE WHEN s.active THEN ', active' ELSE ', inactive' END,
       NULL::interval,
       greatest(age(s.xmin), age(s.catalog_xmin))
FROM pg_replication_slots s
WHERE s.xmin IS NOT NULL OR s.catalog_xmin IS NOT NULL
UNION ALL
SELECT 'prepared transaction',
       p.gid,
       p.owner::text,
       date_trunc('second', now() - p.prepared),
       age(p.transaction)
FROM pg_prepared_xacts p
WHERE p.database = current_database()
ORDER BY xid_age DESC NULLS LAST;
COMMENT ON VIEW taskflow_vacuum_horizon IS
    'Transactions, replication slots and prepared transactions holding back vacuum, oldest first.';
