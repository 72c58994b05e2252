"""The API's task queries: create, read, list, edit, cancel, retry, delete.

Every query is scoped to its owner (``user_id``), except where an operator
passes None: another user's task is indistinguishable from a missing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from taskflow.errors import IdempotencyKeyReused, ValidationFailed
from taskflow.models import EDITABLE, RETRYABLE, TERMINAL, TaskStatus
from taskflow.store.pool import Queries, Record, name_change

TASK_COLUMNS = """
    id, user_id, type, payload, status, priority, attempts, retries, max_retries,
    run_at, created_at, updated_at, started_at, finished_at, last_error, result
"""

# A run_at in the future makes the task postponed; otherwise it is queued now.
INSERT_TASK = f"""
INSERT INTO tasks (id, user_id, type, payload, status, priority, max_retries, run_at,
                   idempotency_key, request_hash)
VALUES ($1, $2, $3, $4,
        CASE WHEN $7::timestamptz > now() THEN 'postponed' ELSE 'queued' END::task_status,
        $5, $6, coalesce($7::timestamptz, now()), $8, $9)
ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING {TASK_COLUMNS}
"""
SELECT_TASK_BY_IDEMPOTENCY_KEY = f"""
SELECT {TASK_COLUMNS}, request_hash FROM tasks WHERE user_id = $1 AND idempotency_key = $2
"""
INSERT_TASKS = f"""
INSERT INTO tasks (id, user_id, type, payload, status, priority, max_retries, run_at)
SELECT t.id, $1, t.type, t.payload,
       CASE WHEN t.run_at > now() THEN 'postponed' ELSE 'queued' END::task_status,
       t.priority, t.max_retries, coalesce(t.run_at, now())
FROM unnest($2::uuid[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[], $7::timestamptz[])
     WITH ORDINALITY AS t(id, type, payload, priority, max_retries, run_at, position)
ORDER BY t.position
RETURNING {TASK_COLUMNS}
"""
# Single creates of many requests at once, in one statement (group commit).
INSERT_TASKS_OF_USERS = f"""
INSERT INTO tasks (id, user_id, type, payload, status, priority, max_retries, run_at)
SELECT t.id, t.user_id, t.type, t.payload,
       CASE WHEN t.run_at > now() THEN 'postponed' ELSE 'queued' END::task_status,
       t.priority, t.max_retries, coalesce(t.run_at, now())
FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[],
            $7::timestamptz[])
     AS t(id, user_id, type, payload, priority, max_retries, run_at)
RETURNING {TASK_COLUMNS}
"""
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
# A manual retry gives the task a fresh set of attempts; history keeps the old ones.
RETRY_FINISHED_TASK = f"""
UPDATE tasks SET status = 'queued', attempts = 0, lease_crashes = 0, run_at = now(),
                 started_at = NULL, finished_at = NULL, worker_id = NULL,
                 lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2) AND status = ANY($3::task_status[])
RETURNING {TASK_COLUMNS}
"""
DELETE_FINISHED_TASK = """
DELETE FROM tasks WHERE id = $1 AND user_id = $2 AND status = ANY($3::task_status[])
RETURNING id
"""


@dataclass(frozen=True, slots=True)
class NewTask:
    id: UUID
    type: str
    payload: dict[str, Any]
    priority: int
    max_retries: int
    run_at: datetime | None


@dataclass(frozen=True, slots=True)
class TaskPage:
    rows: list[Record]
    # Stopped short of the limit for its size: more rows may follow.
    cut: bool


class TaskStore(Queries):
    """The API's (and the Python enqueuer's) view of tasks."""

    async def insert_task(
        self,
        user_id: int,
        task: NewTask,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[Record, bool]:
        """Insert one task; returns (row, created). A repeated Idempotency-Key
        returns the original row with created=False."""
        try:
            row = await self.pool.fetchrow(
                INSERT_TASK,
                task.id,
                user_id,
                task.type,
                task.payload,
                task.priority,
                task.max_retries,
                task.run_at,
                idempotency_key,
                request_hash,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise ValidationFailed("the user of this token no longer exists") from exc
        if row is not None:
            return row, True
        existing = await self.pool.fetchrow(
            SELECT_TASK_BY_IDEMPOTENCY_KEY, user_id, idempotency_key
        )
        if existing is None:  # deleted between the two statements
            raise IdempotencyKeyReused("the task for this Idempotency-Key was just deleted")
        if existing["request_hash"] != request_hash:
            raise IdempotencyKeyReused()
        return existing, False

    async def insert_tasks(self, user_id: int, tasks: Sequence[NewTask]) -> list[Record]:
        """All or nothing: one statement, one transaction."""
        try:
            return await self.pool.fetch(
                INSERT_TASKS,
                user_id,
                [t.id for t in tasks],
                [t.type for t in tasks],
                [t.payload for t in tasks],
                [t.priority for t in tasks],
                [t.max_retries for t in tasks],
                [t.run_at for t in tasks],
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise ValidationFailed("the user of this token no longer exists") from exc

    async def insert_tasks_of_users(self, items: Sequence[tuple[int, NewTask]]) -> list[Record]:
        """Tasks of several users in one statement: all or nothing, and the
        rows come back in the order of ``items``."""
        rows = await self.pool.fetch(
            INSERT_TASKS_OF_USERS,
            [task.id for _, task in items],
            [user_id for user_id, _ in items],
            [task.type for _, task in items],
            [task.payload for _, task in items],
            [task.priority for _, task in items],
            [task.max_retries for _, task in items],
            [task.run_at for _, task in items],
        )
        by_id = {row["id"]: row for row in rows}
        return [by_id[task.id] for _, task in items]

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
        """Cancel a waiting or running task. user_id None: an operator, any owner."""
        async with self.pool.acquire() as connection, connection.transaction():
            await name_change(connection, actor=actor)
            return await connection.fetchrow(
                CANCEL_TASK,
                task_id,
                user_id,
                reason,
                [s for s in TaskStatus if s not in TERMINAL],
            )

    async def retry_finished_task(
        self, task_id: UUID, user_id: int | None, *, actor: str
    ) -> Record | None:
        async with self.pool.acquire() as connection, connection.transaction():
            await name_change(connection, actor=actor)
            return await connection.fetchrow(RETRY_FINISHED_TASK, task_id, user_id, list(RETRYABLE))

    async def delete_finished_task(self, task_id: UUID, user_id: int) -> bool:
        deleted = await self.pool.fetchval(DELETE_FINISHED_TASK, task_id, user_id, list(TERMINAL))
        return deleted is not None

    # ----- tasks, for the worker
