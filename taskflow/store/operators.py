"""The operators' queries: for ``taskflow status`` / ``taskflow tasks show``
(taskflow/status/) and for the scheduler's retention.

The read queries go through the views and functions of ops/sql/*.sql, so the
terminal and psql give the same answers from one definition.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from taskflow.errors import ConfigError
from taskflow.store.dispatch import WRITE_DISPATCH_SETTINGS, FairLimits
from taskflow.store.inserts import TASK_COLUMNS
from taskflow.store.pool import Queries, Record

# Each arm is answered from its own partial index, so a scrape stays cheap with
# millions of finished rows. Waiting statuses report their most overdue row.
SELECT_QUEUE_DEPTH = """
SELECT 'queued' AS status, count(*) AS tasks,
       coalesce(extract(epoch FROM now() - min(run_at)), 0) AS oldest_seconds
FROM tasks WHERE status = 'queued'
UNION ALL
SELECT status::text, count(*),
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now())), 0)
FROM tasks WHERE status IN ('postponed', 'retrying') GROUP BY status
UNION ALL
SELECT 'processing', count(*),
       coalesce(extract(epoch FROM now() - min(started_at)), 0)
FROM tasks WHERE status = 'processing'
UNION ALL
SELECT 'blocked', count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)
FROM tasks WHERE status = 'blocked'
"""
SELECT_DATABASE_CLOCK = "SELECT now() AS now, current_database() AS database"
# The views read this setting (default 90 s); the CLI knows the real lease.
SET_WORKER_ALIVE_SECONDS = "SELECT set_config('taskflow.worker_alive_seconds', $1, true)"
SELECT_QUEUE_OVERVIEW = """
SELECT status, type, tasks, oldest_age, oldest_created_at FROM taskflow_queue_overview
"""
SELECT_WORKERS = """
SELECT id, hostname, pid, state, concurrency, running_tasks, expired_leases,
       last_heartbeat_at, heartbeat_age, started_at, stopped_at
FROM taskflow_workers
"""
COUNT_STUCK_TASKS = "SELECT count(*) FROM taskflow_stuck"
COUNT_DUE_UNCLAIMED_TASKS = "SELECT count(*) FROM taskflow_due_unclaimed"
# Whether history retention runs (db/functions/05_history_partitions.sql):
# how far ahead the partitions reach, and rows that found no partition.
SELECT_HISTORY_PARTITIONS_STATE = """
SELECT (SELECT max(p.ends_at) FROM taskflow_history_partitions p) AS partitions_end,
       (SELECT count(*) FROM task_history_default d
        WHERE d.at < now() - make_interval(secs => $1)) AS default_rows
"""
# count(*) OVER (): the total, while only the newest $1 rows travel.
SELECT_RECENT_FAILURES = """
SELECT id, type, status, failed_at, attempts, max_retries, quarantined, last_error,
       count(*) OVER () AS total
FROM taskflow_recent_failures
LIMIT $1
"""
SELECT_THROUGHPUT = """
SELECT period, completed, failed, retried, completed_per_second FROM taskflow_throughput
"""
SELECT_LONG_TRANSACTIONS = """
SELECT pid, user_name, application_name, state, xact_start, xact_age, holds_snapshot,
       last_query
FROM taskflow_open_transactions
WHERE xact_start < now() - make_interval(secs => $1)
"""
# Holders of the vacuum horizon other than plain transactions (those are
# above, with their query): slots and prepared transactions.
SELECT_HORIZON_HOLDERS = """
SELECT kind, holder, detail, age, xid_age FROM taskflow_vacuum_horizon
WHERE kind <> 'transaction' AND (age IS NULL OR age > make_interval(secs => $1))
"""
SELECT_HORIZON_AGES = """
SELECT kind, max(xid_age) AS xid_age FROM taskflow_vacuum_horizon GROUP BY kind
"""
# Any owner's task: operators are not scoped to a user.
SELECT_ANY_TASK = f"""
SELECT {TASK_COLUMNS}, worker_id, lease_expires_at, lease_crashes
FROM tasks WHERE id = $1
"""
SELECT_ANY_TASK_HISTORY = """
SELECT id, at, event, from_status, to_status, attempt, worker_id, error, actor
FROM task_history WHERE task_id = $1
ORDER BY id
"""
SELECT_TASK_WHY = "SELECT taskflow_why($1)"
# Oldest first along tasks_finished_idx, a batch at a time. finished_at is set
# exactly when the status is terminal (tasks_finished_iff_terminal), so only
# finished tasks match. SKIP LOCKED: a task being retried by hand right now is
# left for the next round. The delete trigger removes their history with them.
PRUNE_FINISHED_TASKS = """
DELETE FROM tasks WHERE id IN (
    SELECT id FROM tasks
    WHERE finished_at < now() - make_interval(days => $1)
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
"""
# Every worker process registers a new row; rows of workers long gone and
# holding no task only clutter taskflow_workers.
PRUNE_GONE_WORKERS = """
DELETE FROM workers w WHERE w.id IN (
    SELECT id FROM workers
    WHERE last_heartbeat_at < now() - make_interval(days => $1)
    LIMIT $2
)
AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.status = 'processing' AND t.worker_id = w.id)
"""


class OperatorStore(Queries):
    """The operators' queries, on the same pool as :class:`Store`.

    ``worker_alive_seconds`` overrides the views' default threshold (90 s) for
    calling a worker dead; the CLI passes three times the configured lease.
    """

    def __init__(self, pool: asyncpg.Pool, *, worker_alive_seconds: float | None = None) -> None:
        super().__init__(pool)
        self.worker_alive_seconds = worker_alive_seconds

    async def _fetch_views(self, query: str, *args: Any) -> list[Record]:
        try:
            if self.worker_alive_seconds is None:
                return await self.pool.fetch(query, *args)
            # set_config(..., true) lasts for the transaction only, so the pooled
            # connection goes back clean.
            async with self.pool.acquire() as connection, connection.transaction():
                await connection.execute(SET_WORKER_ALIVE_SECONDS, str(self.worker_alive_seconds))
                return await connection.fetch(query, *args)
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
            raise ConfigError(
                f"the operator views are missing ({exc}): run `taskflow migrate`"
            ) from exc

    async def _fetch_view_value(self, query: str, *args: Any) -> Any:
        rows = await self._fetch_views(query, *args)
        return rows[0][0]

    async def write_dispatch_settings(self, limits: FairLimits, *, written_by: str) -> None:
        """The defaults the fair pick runs with, for taskflow_why() and the views."""
        await self.pool.execute(WRITE_DISPATCH_SETTINGS, *limits.arguments(), written_by)

    async def select_queue_depth(self) -> list[Record]:
        """For /metrics: tasks and the oldest age per waiting status."""
        return await self.pool.fetch(SELECT_QUEUE_DEPTH, timeout=5)

    async def select_database_clock(self) -> tuple[datetime, str]:
        """The database's now() and name: reports use its clock, not the host's."""
        row = await self.pool.fetchrow(SELECT_DATABASE_CLOCK)
        assert row is not None
        return row["now"], row["database"]

    async def select_queue_overview(self) -> list[Record]:
        return await self._fetch_views(SELECT_QUEUE_OVERVIEW)

    async def select_workers(self) -> list[Record]:
        return await self._fetch_views(SELECT_WORKERS)

    async def count_stuck_tasks(self) -> int:
        count: int = await self._fetch_view_value(COUNT_STUCK_TASKS)
        return count

    async def count_due_unclaimed_tasks(self) -> int:
        count: int = await self._fetch_view_value(COUNT_DUE_UNCLAIMED_TASKS)
        return count

    async def select_history_partitions_state(self, default_age_seconds: float) -> Record:
        """The end of the newest task_history partition (None: none yet) and
        the rows in the default partition older than ``default_age_seconds``."""
        rows = await self._fetch_views(SELECT_HISTORY_PARTITIONS_STATE, default_age_seconds)
        return rows[0]

    async def select_recent_failures(self, limit: int) -> list[Record]:
        return await self._fetch_views(SELECT_RECENT_FAILURES, limit)

    async def select_throughput(self) -> list[Record]:
        return await self._fetch_views(SELECT_THROUGHPUT)

    async def select_long_transactions(self, older_than_seconds: float) -> list[Record]:
        return await self._fetch_views(SELECT_LONG_TRANSACTIONS, older_than_seconds)

    async def select_horizon_holders(self, older_than_seconds: float) -> list[Record]:
        return await self._fetch_views(SELECT_HORIZON_HOLDERS, older_than_seconds)

    async def select_horizon_ages(self) -> list[Record]:
        return await self._fetch_views(SELECT_HORIZON_AGES)

    async def select_any_task(self, task_id: UUID) -> Record | None:
        return await self.pool.fetchrow(SELECT_ANY_TASK, task_id)

    async def select_any_task_history(self, task_id: UUID) -> list[Record]:
        return await self.pool.fetch(SELECT_ANY_TASK_HISTORY, task_id)

    async def select_task_why(self, task_id: UUID) -> str:
        why: str = await self._fetch_view_value(SELECT_TASK_WHY, task_id)
        return why

    async def prune_finished_tasks(self, retention_days: int, limit: int) -> int:
        """Delete up to ``limit`` tasks finished more than ``retention_days``
        ago, with their history; returns how many. Call until it returns less
        than ``limit``."""
        status = await self.pool.execute(PRUNE_FINISHED_TASKS, retention_days, limit)
        return int(status.split()[-1])

    async def prune_gone_workers(self, retention_days: int, limit: int) -> int:
        """Delete up to ``limit`` worker rows silent for ``retention_days`` and
        holding no task; returns how many."""
        status = await self.pool.execute(PRUNE_GONE_WORKERS, retention_days, limit)
        return int(status.split()[-1])
