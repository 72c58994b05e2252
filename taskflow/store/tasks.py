"""The API's task queries: read, list, edit, cancel, retry, delete (create:
:mod:`taskflow.store.inserts`).

Every query is scoped to its owner (``user_id``), except where an operator
passes None: another user's task is indistinguishable from a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from taskflow.errors import ValidationFailed
from taskflow.models import EDITABLE, RETRYABLE, TERMINAL, TaskStatus
from taskflow.store.inserts import TASK_COLUMNS, TaskInserts
from taskflow.store.inserts import UNLIMITED as UNLIMITED
from taskflow.store.inserts import Admission as Admission
from taskflow.store.inserts import NewTask as NewTask
from taskflow.store.pool import Record, name_change

_TASK_COLUMN_NAMES = [name.strip() for name in TASK_COLUMNS.split(",")]
_TASK_COLUMNS_OF_T = ", ".join(f"t.{name}" for name in _TASK_COLUMN_NAMES)
_TASK_COLUMNS_OF_NEXT = ", ".join(f"next.{name}" for name in _TASK_COLUMN_NAMES)

SELECT_OWN_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2"
# An upper bound on a task's bytes in the API's JSON: Postgres writes JSON with
# spaces after ":" and "," and escapes strings as orjson does, so its text is
# never shorter; 600 covers the other fields and their names.
_TASK_JSON_BYTES = """
    octet_length(t.payload::text) + coalesce(octet_length(t.result::text), 0)
    + coalesce(octet_length(to_json(t.last_error)::text), 0) + 600
"""
_OWN_TASKS_FILTER = """
    t.user_id = $1
    AND ($2::task_status IS NULL OR t.status = $2)
    AND ($3::text IS NULL OR t.type = $3)
"""
# Newest first, keyset-paged on (created_at, id), at most $6 rows and $7 bytes
# of JSON (a first row over that comes alone). Tasks carry payloads of up to a few
# MiB, so the page is cut by size here, a row at a time: each step is one
# probe of tasks_user_created_idx after the previous row, and sizes are
# computed (payloads detoasted) only for the rows walked. One row past the cut
# is walked but not returned: ``cut`` says the page stopped for its size.
SELECT_OWN_TASKS = f"""
WITH RECURSIVE page AS (
    (SELECT {_TASK_COLUMNS_OF_T}, 1 AS n, {_TASK_JSON_BYTES} AS bytes, true AS fits
     FROM tasks t
     WHERE {_OWN_TASKS_FILTER}
       AND ($4::timestamptz IS NULL OR (t.created_at, t.id) < ($4, $5::uuid))
     ORDER BY t.created_at DESC, t.id DESC
     LIMIT 1)
  UNION ALL
    SELECT {_TASK_COLUMNS_OF_NEXT}, page.n + 1, page.bytes + next.bytes,
           page.bytes + next.bytes <= $7
    FROM page CROSS JOIN LATERAL (
        SELECT {_TASK_COLUMNS_OF_T}, {_TASK_JSON_BYTES} AS bytes
        FROM tasks t
        WHERE {_OWN_TASKS_FILTER}
          AND (t.created_at, t.id) < (page.created_at, page.id)
        ORDER BY t.created_at DESC, t.id DESC
        LIMIT 1
    ) next
    WHERE page.fits AND page.n < $6
)
SELECT {TASK_COLUMNS}, EXISTS (SELECT FROM page WHERE NOT fits) AS cut
FROM page
WHERE fits
ORDER BY n
"""
SELECT_OWN_TASK_HISTORY = """
SELECT h.id, h.at, h.event, h.from_status, h.to_status, h.attempt, h.worker_id, h.error,
       h.actor
FROM task_history h
WHERE h.task_id = $1 AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = $1 AND t.user_id = $2)
ORDER BY h.id
"""
# Only waiting tasks can be edited. A queued task cannot be pushed into the
# future (queued -> postponed is not a transition); a postponed task whose new
# run_at has come is queued at once.
UPDATE_WAITING_TASK = f"""
UPDATE tasks SET
    payload = coalesce($3::jsonb, payload),
    max_retries = coalesce($4::int, max_retries),
    priority = coalesce($5::smallint, priority),
    run_at = coalesce($6::timestamptz, run_at),
    status = CASE WHEN status = 'postponed' AND coalesce($6::timestamptz, run_at) <= now()
                  THEN 'queued'::task_status ELSE status END,
    updated_at = now()
WHERE id = $1 AND user_id = $2 AND status = ANY($7::task_status[])
  AND NOT (status = 'queued' AND coalesce($6::timestamptz > now(), false))
RETURNING {TASK_COLUMNS}
"""
CANCEL_TASK = f"""
UPDATE tasks SET status = 'cancelled', finished_at = now(), updated_at = now(),
                 lease_expires_at = NULL, last_error = coalesce($3, last_error)
WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2) AND status = ANY($4::task_status[])
RETURNING {TASK_COLUMNS}
"""
# A manual retry gives the task a fresh set of attempts; history keeps the old
# ones. Refused while a dependency is not done: the task would run without it.
RETRY_FINISHED_TASK = f"""
UPDATE tasks SET status = 'queued', attempts = 0, lease_crashes = 0, run_at = now(),
                 started_at = NULL, finished_at = NULL, worker_id = NULL,
                 lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2) AND status = ANY($3::task_status[])
  AND NOT EXISTS (SELECT 1 FROM task_dependencies d LEFT JOIN tasks dep ON dep.id = d.depends_on_id
                  WHERE d.task_id = $1 AND dep.status IS DISTINCT FROM 'done')
RETURNING {TASK_COLUMNS}
"""
# An operator's reason for a cancel or a retry goes on the history row the
# status trigger has just written for it (ops/sql/12_retry.sql does the same):
# the row lock the change holds on the task keeps any later change of it,
# and so any newer history row, out until this transaction commits.
RECORD_REASON = """
UPDATE task_history SET error = $2
WHERE id = (SELECT max(id) FROM task_history WHERE task_id = $1)
"""
DELETE_FINISHED_TASK = """
DELETE FROM tasks WHERE id = $1 AND user_id = $2 AND status = ANY($3::task_status[])
RETURNING id
"""


@dataclass(frozen=True, slots=True)
class TaskPage:
    rows: list[Record]
    # Stopped short of the limit for its size: more rows may follow.
    cut: bool


class TaskStore(TaskInserts):
    """The API's (and the Python enqueuer's) view of tasks; creating them is
    :class:`taskflow.store.inserts.TaskInserts`."""

    async def select_own_task(self, task_id: UUID, user_id: int) -> Record | None:
        return await self.pool.fetchrow(SELECT_OWN_TASK, task_id, user_id)

    async def select_own_tasks(
        self,
        user_id: int,
        *,
        status: TaskStatus | None,
        task_type: str | None,
        before: tuple[datetime, UUID] | None,
        limit: int,
        max_bytes: int,
    ) -> TaskPage:
        """A page of at most ``limit`` tasks and about ``max_bytes`` of JSON."""
        before_at, before_id = before if before else (None, None)
        rows = await self.pool.fetch(
            SELECT_OWN_TASKS, user_id, status, task_type, before_at, before_id, limit, max_bytes
        )
        return TaskPage(rows, cut=bool(rows) and rows[0]["cut"])

    async def select_own_task_history(self, task_id: UUID, user_id: int) -> list[Record]:
        return await self.pool.fetch(SELECT_OWN_TASK_HISTORY, task_id, user_id)

    async def update_waiting_task(
        self,
        task_id: UUID,
        user_id: int,
        *,
        payload: dict[str, Any] | None,
        max_retries: int | None,
        priority: int | None,
        run_at: datetime | None,
    ) -> Record | None:
        try:
            return await self.pool.fetchrow(
                UPDATE_WAITING_TASK,
                task_id,
                user_id,
                payload,
                max_retries,
                priority,
                run_at,
                list(EDITABLE),
            )
        except asyncpg.CheckViolationError as exc:
            if exc.constraint_name == "tasks_attempts_bounds":
                raise ValidationFailed(
                    "max_retries cannot be lower than the retries already performed",
                    details=[{"field": "max_retries", "message": "below retries performed"}],
                ) from exc
            raise

    async def cancel_task(
        self, task_id: UUID, user_id: int | None, *, reason: str | None = None, actor: str
    ) -> Record | None:
        """Cancel a waiting or running task. user_id None: an operator, any owner.
        The reason becomes the task's last_error and its history row's error."""
        async with self.pool.acquire() as connection, connection.transaction():
            await name_change(connection, actor=actor)
            row = await connection.fetchrow(
                CANCEL_TASK,
                task_id,
                user_id,
                reason,
                [s for s in TaskStatus if s not in TERMINAL],
            )
            if row is not None and reason is not None:
                await connection.execute(RECORD_REASON, task_id, reason)
            return row

    async def retry_finished_task(
        self, task_id: UUID, user_id: int | None, *, reason: str | None = None, actor: str
    ) -> Record | None:
        """Queue a failed or cancelled task again. The reason goes on its history
        row only: last_error keeps what the last attempt (or cancel) left."""
        async with self.pool.acquire() as connection, connection.transaction():
            await name_change(connection, actor=actor)
            row = await connection.fetchrow(RETRY_FINISHED_TASK, task_id, user_id, list(RETRYABLE))
            if row is not None and reason is not None:
                await connection.execute(RECORD_REASON, task_id, reason)
            return row

    async def delete_finished_task(self, task_id: UUID, user_id: int) -> bool:
        deleted = await self.pool.fetchval(DELETE_FINISHED_TASK, task_id, user_id, list(TERMINAL))
        return deleted is not None

    # ----- tasks, for the worker
