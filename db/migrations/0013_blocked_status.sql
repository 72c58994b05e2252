-- A task that waits for other tasks (SPEC §3, §9): `blocked` until every
-- dependency is done. On its own migration: a new enum value can be used
-- only once the transaction that added it has committed, and the next
-- migration (0014_dependencies.sql) uses it.
ALTER TYPE task_status ADD VALUE IF NOT EXISTS 'blocked' BEFORE 'postponed';
