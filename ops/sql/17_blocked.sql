-- What is a blocked task waiting for? One row per dependency it still waits
-- for (SPEC §9): a blocked task runs once all of them are done, and is
-- cancelled, naming the dependency, when one fails for good, is cancelled or
-- deleted. A task waiting on a failed dependency is not shown here: it has
-- been cancelled already.
-- Safe on a live system: a read-only view over blocked tasks.
--
--   SELECT * FROM taskflow_blocked LIMIT 20;
--   SELECT * FROM taskflow_blocked WHERE waits_for_status = 'processing';
CREATE OR REPLACE VIEW taskflow_blocked AS
SELECT t.id, t.user_id, t.type, t.created_at,
       d.depends_on_id AS waits_for, dep.type AS waits_for_type, dep.status AS waits_for_status,
       (SELECT count(*) FROM task_dependencies a WHERE a.task_id = t.id) AS dependencies
FROM tasks t
JOIN task_dependencies d ON d.task_id = t.id
LEFT JOIN tasks dep ON dep.id = d.depends_on_id
WHERE t.status = 'blocked' AND dep.status IS DISTINCT FROM 'done'
ORDER BY t.created_at, t.id, d.depends_on_id;
COMMENT ON VIEW taskflow_blocked IS
    'Blocked tasks, one row per dependency they still wait for (its type and status).';
