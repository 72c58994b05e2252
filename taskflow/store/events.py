"""Live events: the queries of the API's Server-Sent Events
(taskflow/api/events.py) and of the dashboard's operator overview
(taskflow/api/dashboard.py).

An event is a task_history row and its id is the history id
(db/migrations/0003_task_events.sql says why); these queries read them back
for a client that resumes or fell behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from taskflow.store.pool import Queries, Record

LIVE_EVENT_COLUMNS = """
    h.id, h.task_id, h.from_status, h.to_status AS status, left(h.event, 32) AS event,
    h.attempt, h.at
"""
# Where "now" is in the event log: a new stream resumes from here.
SELECT_HISTORY_WATERMARK = "SELECT coalesce(max(id), 0) FROM task_history"
# The rows after the cursor ($2), at most $4; plus, best effort, the rows at
# and before it written up to $3 seconds before the cursor's own row: history
# ids are taken at insert but seen at commit, so a transaction that took id
# 100 can commit after the one that took 101, and a client that saw 101 still
# needs 100. The row AT the cursor is sent too: a new stream's cursor is the
# newest id when it opened, which it never sent, and replaying a task's rows
# just before that without the cursor's own (its "completed", say) would leave
# a client applying them in order one step behind. The stream drops the ids it
# already sent; the client drops those it has seen.
# The time is read from the nearest row at or before the cursor: the cursor's
# own may be gone with its task (deleted), and without a time the look back
# would quietly not happen. Both halves use the primary key, the second also
# the BRIN index on task_history (at).
SELECT_OWN_EVENTS_SINCE = f"""
(SELECT {LIVE_EVENT_COLUMNS}
 FROM task_history h
 JOIN tasks t ON t.id = h.task_id
 WHERE t.user_id = $1 AND h.id > $2
 ORDER BY h.id
 LIMIT $4)
UNION ALL
(SELECT {LIVE_EVENT_COLUMNS}
 FROM task_history h
 JOIN tasks t ON t.id = h.task_id
 WHERE t.user_id = $1 AND h.id <= $2
   AND h.at >= (SELECT c.at FROM task_history c WHERE c.id <= $2 ORDER BY c.id DESC LIMIT 1)
               - make_interval(secs => $3)
 ORDER BY h.id DESC
 LIMIT $4)
"""
# One task's, the same way: task_history_task_idx, after the ownership check.
SELECT_OWN_TASK_EVENTS_SINCE = f"""
(SELECT {LIVE_EVENT_COLUMNS}
 FROM task_history h
 WHERE h.task_id = $2 AND h.id > $3
   AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = $2 AND t.user_id = $1)
 ORDER BY h.id
 LIMIT $5)
UNION ALL
(SELECT {LIVE_EVENT_COLUMNS}
 FROM task_history h
 WHERE h.task_id = $2 AND h.id <= $3
   AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = $2 AND t.user_id = $1)
   AND h.at >= (SELECT c.at FROM task_history c WHERE c.id <= $3 ORDER BY c.id DESC LIMIT 1)
               - make_interval(secs => $4)
 ORDER BY h.id DESC
 LIMIT $5)
"""

# The history trigger notifies only for users with a row here (0003 says why).
# Only ever extended, so two API processes watching one user never shorten
# each other's watch. Returns the users who were not watched until now (no
# row, or a lapsed one): their changes since then were not notified.
WATCH_USERS = """
WITH previous AS (
    SELECT user_id FROM task_event_watchers
    WHERE user_id = ANY($1::bigint[]) AND watched_until > now()
), renewed AS (
    INSERT INTO task_event_watchers (user_id, watched_until)
    SELECT w.user_id, now() + make_interval(secs => $2)
    FROM unnest($1::bigint[]) AS w(user_id)
    ON CONFLICT (user_id) DO UPDATE SET watched_until = excluded.watched_until
    WHERE task_event_watchers.watched_until < excluded.watched_until
)
SELECT w.user_id FROM unnest($1::bigint[]) AS w(user_id)
WHERE w.user_id NOT IN (SELECT user_id FROM previous)
"""
DELETE_EXPIRED_WATCHERS = """
DELETE FROM task_event_watchers WHERE watched_until < now() - make_interval(secs => $1)
"""

# The operator overview reads 0002's views where one answers the question, so
# the dashboard, `taskflow status` and psql agree; the views read this setting
# for "alive" (the API passes three leases, as the CLI does).
SET_OVERVIEW_WORKER_ALIVE_SECONDS = "SELECT set_config('taskflow.worker_alive_seconds', $1, true)"
SELECT_OVERVIEW_CLOCK = "SELECT now()"
# Every status, also those with no task (a zero on the dashboard, not a gap).
# Counts the whole table, like taskflow_queue_overview: finished rows are
# pruned after the retention period, which keeps this bounded.
SELECT_STATUS_COUNTS = """
SELECT s.status::text AS status, count(t.id) AS tasks
FROM unnest(enum_range(NULL::task_status)) AS s(status)
LEFT JOIN tasks t ON t.status = s.status
GROUP BY s.status
ORDER BY s.status
"""
# The ends of attempts per minute, as taskflow_throughput counts them, with
# empty minutes as zeros so a sparkline has one point per minute. A range scan
# of the BRIN index on task_history (at): $1 minutes of rows.
SELECT_THROUGHPUT_BY_MINUTE = """
WITH span AS (
    SELECT date_trunc('minute', now()) - make_interval(mins => $1 - 1) AS first_minute
)
SELECT m.minute AS at,
       coalesce(c.completed, 0) AS completed,
       coalesce(c.failed, 0) AS failed,
       coalesce(c.retried, 0) AS retried
FROM span,
     generate_series(span.first_minute, date_trunc('minute', now()), interval '1 minute')
         AS m(minute)
LEFT JOIN (
    SELECT date_trunc('minute', h.at) AS minute,
           count(*) FILTER (WHERE h.to_status = 'done') AS completed,
           count(*) FILTER (WHERE h.to_status = 'failed') AS failed,
           count(*) FILTER (WHERE h.to_status = 'retrying') AS retried
    FROM task_history h, span
    WHERE h.at >= span.first_minute
      AND h.from_status = 'processing'
      AND h.to_status IN ('done', 'failed', 'retrying')
    GROUP BY 1
) AS c ON c.minute = m.minute
ORDER BY m.minute
"""
SELECT_OVERVIEW_WORKERS = """
SELECT id, hostname, pid, state, concurrency, running_tasks, last_heartbeat_at, started_at
FROM taskflow_workers
"""
# count(*) OVER (): the total, while only the first $1 rows travel.
SELECT_OVERVIEW_STUCK = """
SELECT id, user_id, type, worker_id, attempts, max_retries, lease_expires_at, worker_alive,
       count(*) OVER () AS total
FROM taskflow_stuck
LIMIT $1
"""
SELECT_OVERVIEW_FAILURES = """
SELECT id, user_id, type, status, failed_at, attempts, max_retries, last_error,
       count(*) OVER () AS total
FROM taskflow_recent_failures
LIMIT $1
"""


@dataclass(frozen=True, slots=True)
class OperatorOverview:
    generated_at: datetime
    status_counts: list[Record]
    throughput: list[Record]
    workers: list[Record]
    stuck: list[Record]
    failures: list[Record]


class LiveEventsStore(Queries):
    """The queries of the live event streams and the dashboard, on the API's pool."""

    async def select_history_watermark(self) -> int:
        watermark: int = await self.pool.fetchval(SELECT_HISTORY_WATERMARK)
        return watermark

    async def select_own_events_since(
        self, user_id: int, after_id: int, *, overlap_seconds: float, limit: int
    ) -> list[Record]:
        return await self.pool.fetch(
            SELECT_OWN_EVENTS_SINCE, user_id, after_id, overlap_seconds, limit
        )

    async def select_own_task_events_since(
        self, user_id: int, task_id: UUID, after_id: int, *, overlap_seconds: float, limit: int
    ) -> list[Record]:
        return await self.pool.fetch(
            SELECT_OWN_TASK_EVENTS_SINCE, user_id, task_id, after_id, overlap_seconds, limit
        )

    async def watch_users(self, user_ids: Sequence[int], seconds: float) -> list[int]:
        """Watch these users for ``seconds`` more; returns those who were not
        watched until now."""
        rows = await self.pool.fetch(WATCH_USERS, list(user_ids), seconds)
        return [row["user_id"] for row in rows]

    async def delete_expired_watchers(self, older_than_seconds: float) -> int:
        status = await self.pool.execute(DELETE_EXPIRED_WATCHERS, older_than_seconds)
        return int(status.split()[-1])

    async def select_operator_overview(
        self, *, worker_alive_seconds: float, minutes: int, limit: int
    ) -> OperatorOverview:
        """Everything the overview shows, from one snapshot (a read-only
        repeatable-read transaction), so its numbers add up."""
        async with (
            self.pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            await connection.execute(SET_OVERVIEW_WORKER_ALIVE_SECONDS, str(worker_alive_seconds))
            return OperatorOverview(
                generated_at=await connection.fetchval(SELECT_OVERVIEW_CLOCK),
                status_counts=await connection.fetch(SELECT_STATUS_COUNTS),
                throughput=await connection.fetch(SELECT_THROUGHPUT_BY_MINUTE, minutes),
                workers=await connection.fetch(SELECT_OVERVIEW_WORKERS),
                stuck=await connection.fetch(SELECT_OVERVIEW_STUCK, limit),
                failures=await connection.fetch(SELECT_OVERVIEW_FAILURES, limit),
            )
