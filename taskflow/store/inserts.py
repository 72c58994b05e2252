"""Creating tasks: the inserts, the creation limits they check, and the
dependencies they record.

A task starts blocked (it waits for other tasks), postponed (until a future
run_at) or queued: one rule, taskflow_initial_status()
(db/functions/45_dependencies.sql), used by every insert here and by the
promotion of blocked tasks. Every insert ends with taskflow_admit()
(db/functions/55_creation_limits.sql) over what it inserted: over a creation
limit it raises TF429 and the insert is undone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from taskflow.config import Settings
from taskflow.errors import IdempotencyKeyReused, LimitExceeded, ValidationFailed
from taskflow.models import TaskStatus
from taskflow.store.pool import Connection, JsonText, Queries, Record

TASK_COLUMNS = """
    id, user_id, type, payload, status, priority, attempts, retries, max_retries,
    run_at, created_at, updated_at, started_at, finished_at, last_error, result
"""

# $10, $11 (or the two after the task columns): the default limits. The last,
# an array: whether each task starts blocked.
INSERT_TASK = f"""
WITH inserted AS (
    INSERT INTO tasks (id, user_id, type, payload, status, priority, max_retries, run_at,
                       idempotency_key, request_hash)
    VALUES ($1, $2, $3, $4, taskflow_initial_status($7::timestamptz, ($12::boolean[])[1]),
            $5, $6, coalesce($7::timestamptz, now()), $8, $9)
    ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING {TASK_COLUMNS}
)
SELECT inserted.* FROM inserted
WHERE taskflow_admit(inserted.user_id, 1, (inserted.type = 'send_email')::integer, $10, $11)
"""
SELECT_TASK_BY_IDEMPOTENCY_KEY = f"""
SELECT {TASK_COLUMNS}, request_hash FROM tasks WHERE user_id = $1 AND idempotency_key = $2
"""


def _insert_tasks(returning: str, selected: str) -> str:
    """A user's tasks in one statement: the inserted rows' ``returning`` columns
    (with type, which the admission check reads), of which ``selected`` is
    sent back."""
    return f"""
WITH inserted AS (
    INSERT INTO tasks (id, user_id, type, payload, status, priority, max_retries, run_at)
    SELECT t.id, $1, t.type, t.payload, taskflow_initial_status(t.run_at, t.blocked),
           t.priority, t.max_retries, coalesce(t.run_at, now())
    FROM unnest($2::uuid[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[],
                $7::timestamptz[], $10::boolean[])
         WITH ORDINALITY AS t(id, type, payload, priority, max_retries, run_at, blocked, position)
    ORDER BY t.position
    RETURNING {returning}
)
SELECT {selected} FROM inserted
WHERE (SELECT taskflow_admit($1, count(*)::integer,
                             (count(*) FILTER (WHERE i.type = 'send_email'))::integer, $8, $9)
       FROM inserted i)
"""


INSERT_TASKS = _insert_tasks(TASK_COLUMNS, "inserted.*")
# For a producer that needs only the new ids: the rows are not sent back and
# decoded (3.4 - 7 us a task of a bulk create's ~25 on the caller's side).
INSERT_TASK_IDS = _insert_tasks("id, type", "inserted.id")


def _insert_tasks_query(ids_only: bool) -> str:
    return INSERT_TASK_IDS if ids_only else INSERT_TASKS


# Single creates of many requests at once, in one statement (group commit).
# Never with dependencies: those take locks first (insert_task).
INSERT_TASKS_OF_USERS = f"""
WITH inserted AS (
    INSERT INTO tasks (id, user_id, type, payload, status, priority, max_retries, run_at)
    SELECT t.id, t.user_id, t.type, t.payload, taskflow_initial_status(t.run_at),
           t.priority, t.max_retries, coalesce(t.run_at, now())
    FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[],
                $7::timestamptz[])
         AS t(id, user_id, type, payload, priority, max_retries, run_at)
    RETURNING {TASK_COLUMNS}
), admitted AS (
    SELECT taskflow_admit(i.user_id, count(*)::integer,
                          (count(*) FILTER (WHERE i.type = 'send_email'))::integer, $8, $9)
               AS ok
    FROM inserted i GROUP BY i.user_id
)
SELECT inserted.* FROM inserted WHERE (SELECT bool_and(ok) FROM admitted)
"""
# The existing tasks new ones depend on, held until the insert commits: a
# dependency cannot finish (and miss its new dependents, or they miss it)
# between this check and the commit. In id order, so two creates never
# deadlock; another user's task is not found, as if it did not exist.
LOCK_DEPENDENCIES = """
SELECT t.id, t.status FROM tasks t
WHERE t.user_id = $1 AND t.id = ANY ($2::uuid[])
ORDER BY t.id
FOR SHARE
"""
INSERT_DEPENDENCIES = """
INSERT INTO task_dependencies (task_id, depends_on_id)
SELECT * FROM unnest($1::uuid[], $2::uuid[])
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class Admission:
    """The creation limits' defaults (SPEC §8, the settings file) for users without
    a user_limits row. 0 means no limit."""

    max_active_tasks: int = 0
    email_per_day: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Admission:
        return cls(settings.user_max_active_tasks, settings.email_per_user_per_day)


# No limits: the Python API's and the tools' default; the API passes the
# settings' (Admission.from_settings).
UNLIMITED = Admission()
REFUSED_SQLSTATE = "TF429"


def _refusal(exc: asyncpg.PostgresError) -> LimitExceeded | None:
    """taskflow_admit's refusal, as the error the API answers 429 for."""
    if getattr(exc, "sqlstate", None) != REFUSED_SQLSTATE:
        return None
    hint = getattr(exc, "hint", None) or "30"
    return LimitExceeded(
        str(getattr(exc, "message", None) or exc),
        limit=str(getattr(exc, "detail", None) or "limit"),
        retry_after_seconds=float(hint) if hint.replace(".", "", 1).isdigit() else 30.0,
    )


@dataclass(frozen=True, slots=True)
class NewTask:
    id: UUID
    type: str
    # JsonText: as the Enqueuer's validation wrote it.
    payload: dict[str, Any] | JsonText
    priority: int
    max_retries: int
    run_at: datetime | None
    # Tasks this one waits for: existing ones, or others of the same insert.
    depends_on: tuple[UUID, ...] = ()


class _Refusals:
    """Turns the insert's database errors into the API's."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if isinstance(exc, asyncpg.ForeignKeyViolationError):
            raise ValidationFailed("the user of this token no longer exists") from exc
        if isinstance(exc, asyncpg.PostgresError):
            refusal = _refusal(exc)
            if refusal is not None:
                raise refusal from exc


async def _blocked(connection: Connection, user_id: int, tasks: Sequence[NewTask]) -> list[bool]:
    """Lock the existing dependencies and say which tasks start blocked.

    Raises ValidationFailed for a dependency that is not the user's task, or
    that can never be done (failed, cancelled): nothing is created.
    """
    new_ids = {task.id for task in tasks}
    existing = sorted({dep for task in tasks for dep in task.depends_on if dep not in new_ids})
    status: dict[UUID, str] = {}
    if existing:
        rows = await connection.fetch(LOCK_DEPENDENCIES, user_id, existing)
        status = {row["id"]: row["status"] for row in rows}
    problems = []
    for index, task in enumerate(tasks):
        for position, dep in enumerate(task.depends_on):
            where = (
                f"tasks[{index}].depends_on[{position}]"
                if len(tasks) > 1
                else (f"depends_on[{position}]")
            )
            if dep in new_ids:
                continue
            if dep not in status:
                problems.append({"field": where, "message": f"no task {dep} of yours"})
            elif status[dep] in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                problems.append(
                    {
                        "field": where,
                        "message": f"task {dep} is {status[dep]}: it will never be done",
                    }
                )
    if problems:
        raise ValidationFailed("invalid depends_on", details=problems)
    return [
        any(dep in new_ids or status[dep] != TaskStatus.DONE for dep in task.depends_on)
        for task in tasks
    ]


async def _insert_edges(connection: Connection, tasks: Sequence[NewTask]) -> None:
    edges = [(task.id, dep) for task in tasks for dep in task.depends_on]
    if edges:
        await connection.execute(
            INSERT_DEPENDENCIES, [task for task, _ in edges], [dep for _, dep in edges]
        )


def _in_order(rows: Sequence[Record], tasks: Sequence[NewTask]) -> list[Record]:
    """An insert's returned rows in the order of its tasks (RETURNING keeps none)."""
    by_id = {row["id"]: row for row in rows}
    return [by_id[task.id] for task in tasks]


class PartInserts:
    """One all-or-nothing create sent as several statements in one transaction,
    each part sent before the caller prepares the next: the caller's work
    (validating the next part) runs while Postgres inserts this one, where a
    single statement would leave one of them idle. Made by
    TaskInserts.inserting_in_parts."""

    def __init__(
        self, connection: Connection, user_id: int, admission: Admission, query: str
    ) -> None:
        self._connection = connection
        self._user_id = user_id
        self._admission = admission
        self._query = query
        self._in_flight: asyncio.Future[list[Record]] | None = None
        self._rows: list[Record] = []

    async def send(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks`` (no dependencies) after the part before them; returns
        once the statement is on its way, not done."""
        await self._collect()
        self._in_flight = asyncio.ensure_future(
            self._connection.fetch(
                self._query,
                *_insert_tasks_arguments(self._user_id, tasks, self._admission),
                [False] * len(tasks),
            )
        )
        await asyncio.sleep(0)  # the statement goes out before the caller's next part

    async def rows(self) -> list[Record]:
        """Every part's rows, in the order the parts were sent."""
        await self._collect()
        return self._rows

    async def _collect(self) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            self._rows.extend(await in_flight)

    async def _settle(self) -> None:
        """After a failure elsewhere: the connection takes no ROLLBACK while a
        statement runs on it, and that statement's own outcome no longer matters."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            await asyncio.gather(in_flight, return_exceptions=True)


def _insert_tasks_arguments(
    user_id: int, tasks: Sequence[NewTask], admission: Admission
) -> tuple[Any, ...]:
    """INSERT_TASKS's parameters but the last (whether each task starts blocked)."""
    return (
        user_id,
        [t.id for t in tasks],
        [t.type for t in tasks],
        [t.payload for t in tasks],
        [t.priority for t in tasks],
        [t.max_retries for t in tasks],
        [t.run_at for t in tasks],
        admission.max_active_tasks,
        admission.email_per_day,
    )


class TaskInserts(Queries):
    async def _insert(
        self, tasks: Sequence[NewTask], user_id: int, query: str, *arguments: Any
    ) -> list[Record]:
        """Run an insert of ``tasks``; with dependencies, in a transaction that
        first locks them and then records the edges. Without, the one
        statement is the transaction (and ``pool`` may be a caller's
        connection, inside the caller's transaction)."""
        with _Refusals():
            if not any(task.depends_on for task in tasks):
                return await self.pool.fetch(query, *arguments, [False] * len(tasks))
            async with self.pool.acquire() as connection, connection.transaction():
                blocked = await _blocked(connection, user_id, tasks)
                rows = await connection.fetch(query, *arguments, blocked)
                if rows:
                    await _insert_edges(connection, tasks)
                return rows

    async def insert_task(
        self,
        user_id: int,
        task: NewTask,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        admission: Admission = UNLIMITED,
    ) -> tuple[Record, bool]:
        """Insert one task; returns (row, created). A repeated Idempotency-Key
        returns the original row with created=False. Raises LimitExceeded
        over a creation limit."""
        rows = await self._insert(
            [task],
            user_id,
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
            admission.max_active_tasks,
            admission.email_per_day,
        )
        if rows:
            return rows[0], True
        existing = await self.pool.fetchrow(
            SELECT_TASK_BY_IDEMPOTENCY_KEY, user_id, idempotency_key
        )
        if existing is None:  # deleted between the two statements
            raise IdempotencyKeyReused("the task for this Idempotency-Key was just deleted")
        if existing["request_hash"] != request_hash:
            raise IdempotencyKeyReused()
        return existing, False

    async def insert_tasks(
        self,
        user_id: int,
        tasks: Sequence[NewTask],
        *,
        admission: Admission = UNLIMITED,
        ids_only: bool = False,
    ) -> list[Record]:
        """All or nothing, in one transaction; rows in the order of ``tasks``,
        holding only ``id`` with ``ids_only``. Raises LimitExceeded over a
        creation limit."""
        rows = await self._insert(
            tasks,
            user_id,
            _insert_tasks_query(ids_only),
            *_insert_tasks_arguments(user_id, tasks, admission),
        )
        return _in_order(rows, tasks)

    @contextlib.asynccontextmanager
    async def inserting_in_parts(
        self, user_id: int, *, admission: Admission = UNLIMITED, ids_only: bool = False
    ) -> AsyncIterator[PartInserts]:
        """A create of many tasks sent part by part (PartInserts), committed when
        the block ends without an error, rolled back whole otherwise."""
        with _Refusals():
            async with self.pool.acquire() as connection, connection.transaction():
                parts = PartInserts(connection, user_id, admission, _insert_tasks_query(ids_only))
                try:
                    yield parts
                finally:
                    await parts._settle()

    async def insert_tasks_of_users(
        self, items: Sequence[tuple[int, NewTask]], *, admission: Admission = UNLIMITED
    ) -> list[Record]:
        """Tasks of several users in one statement: all or nothing, and the
        rows come back in the order of ``items``. One user over a limit fails
        the statement (the Enqueuer then inserts each alone). No dependencies."""
        if any(task.depends_on for _, task in items):
            raise ValueError("insert_tasks_of_users takes no tasks with dependencies")
        rows = await self.pool.fetch(
            INSERT_TASKS_OF_USERS,
            [task.id for _, task in items],
            [user_id for user_id, _ in items],
            [task.type for _, task in items],
            [task.payload for _, task in items],
            [task.priority for _, task in items],
            [task.max_retries for _, task in items],
            [task.run_at for _, task in items],
            admission.max_active_tasks,
            admission.email_per_day,
        )
        return _in_order(rows, [task for _, task in items])
