"""The dashboard's operator queries (taskflow/api/admin.py): any user's tasks
found by a filter, retried or cancelled in bulk; task types paused and
resumed; every user's schedules.

A bulk retry or cancel is the single-task change of :mod:`taskflow.store.tasks`
(RETRY_FINISHED_TASK, CANCEL_TASK) applied to a batch of ids at a time: the
same SET, the same status guard, the same dependency rule, so a bulk action
can never do what the one-task buttons and the psql functions would refuse.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from taskflow.models import RETRYABLE, TERMINAL, TaskStatus
from taskflow.store.paused_types import PausedTypeStore
from taskflow.store.pool import Connection, Record, name_change
from taskflow.store.tasks import CANCEL_TASK, RETRY_FINISHED_TASK

CANCELLABLE_STATUSES = [status for status in TaskStatus if status not in TERMINAL]
RETRYABLE_STATUSES = sorted(RETRYABLE)
# The guarded UPDATE of one batch; returns the ids it changed.
BatchChange = Callable[[Connection, list[UUID]], Awaitable[list[UUID]]]
# One transaction (and one guarded UPDATE) per batch: row locks are held for
# a batch's time, not for the whole request's.
BULK_BATCH_SIZE = 1000


def _over_ids(query: str) -> str:
    """A single-task query of taskflow.store.tasks over an array of ids ($1),
    counted rather than returned (a batch's payloads need not travel).

    Its text is taken, not copied: a change to the single-task rule is a
    change to the bulk one. If the shape it relies on ever changes, this
    fails at import, not in the middle of an operator's bulk action."""
    single, many = "WHERE id = $1 AND", "WHERE id = ANY($1::uuid[]) AND"
    # The dependency rule names the task by $1 too; in the batch, by its row
    # (the inner tasks are aliased dep, so "tasks" is the row being updated).
    single_dependency, many_dependency = "d.task_id = $1", "d.task_id = tasks.id"
    if query.count(single) != 1:
        raise RuntimeError("the single-task query no longer reads 'WHERE id = $1 AND'")
    batch = query.replace(single, many).replace(single_dependency, many_dependency)
    if "$1" in batch.replace("ANY($1::uuid[])", ""):
        raise RuntimeError("the single-task query names $1 where the batch cannot")
    return f"WITH changed AS ({batch}) SELECT coalesce(array_agg(id), '{{}}') FROM changed"


RETRY_TASK_BATCH = _over_ids(RETRY_FINISHED_TASK)
CANCEL_TASK_BATCH = _over_ids(CANCEL_TASK)
# As taskflow.store.tasks.RECORD_REASON, for each task of a batch.
RECORD_REASONS = """
UPDATE task_history SET error = $2
WHERE id IN (SELECT max(id) FROM task_history WHERE task_id = ANY($1::uuid[]) GROUP BY task_id)
"""

# $1 status, $2 type, $3 owner's email (any of them NULL: not filtered on).
_FILTER = """
    ($1::task_status IS NULL OR t.status = $1)
    AND ($2::text IS NULL OR t.type = $2)
    AND ($3::text IS NULL
         OR t.user_id = (SELECT u.id FROM users u WHERE lower(u.email) = lower($3)))
"""
# RETRY_FINISHED_TASK's dependency rule, to pick and count what it would
# take; its UPDATE's own copy is the one that decides.
_DEPENDENCIES_DONE = """
    NOT EXISTS (SELECT 1 FROM task_dependencies d LEFT JOIN tasks dep ON dep.id = d.depends_on_id
                WHERE d.task_id = t.id AND dep.status IS DISTINCT FROM 'done')
"""
# What a bulk action would take: retryable counts as RETRY_FINISHED_TASK
# would take them, its dependency rule included. Each count stops at $6, so
# a broad filter over millions of finished tasks costs a bounded scan.
COUNT_MATCHING_TASKS = f"""
SELECT
    (SELECT count(*) FROM (SELECT FROM tasks t WHERE {_FILTER} LIMIT $6) AS m) AS matching,
    (SELECT count(*) FROM (SELECT FROM tasks t
                           WHERE {_FILTER} AND t.status = ANY($4::task_status[])
                             AND {_DEPENDENCIES_DONE}
                           LIMIT $6) AS r) AS retryable,
    (SELECT count(*) FROM (SELECT FROM tasks t
                           WHERE {_FILTER} AND t.status = ANY($5::task_status[])
                           LIMIT $6) AS c) AS cancellable
"""
# Ids are UUIDv7: newest first along the primary key, no sort of the matches.
SELECT_MATCHING_TASKS = f"""
SELECT t.id, t.user_id, u.email, t.type, t.status, t.attempts, t.max_retries,
       t.created_at, t.updated_at, t.last_error
FROM tasks t
JOIN users u ON u.id = t.user_id
WHERE {_FILTER}
ORDER BY t.id DESC
LIMIT $4
"""


def _select_batch(rule: str) -> str:
    """The next batch of candidates after $5, in id order: what the counts
    above count, so an operator's confirmed number is the number taken. The
    guarded UPDATE checks again; a task it refuses (changed meanwhile) is
    not met again."""
    return f"""
SELECT t.id FROM tasks t
WHERE {_FILTER}
  AND t.status = ANY($4::task_status[])
  AND ($5::uuid IS NULL OR t.id > $5)
  {rule}
ORDER BY t.id
LIMIT $6
"""


SELECT_RETRY_BATCH = _select_batch(f"AND {_DEPENDENCIES_DONE}")
SELECT_CANCEL_BATCH = _select_batch("")
# Every registered type ($1) and every paused one, registered or not any
# more, with its queued tasks: one pass over the queued rows' partial index.
SELECT_TASK_TYPES = """
SELECT n.type, p.type IS NOT NULL AS paused, p.paused_at, p.paused_by, p.reason,
       coalesce(q.queued, 0) AS queued
FROM (SELECT unnest($1::text[]) UNION SELECT type FROM paused_task_types) AS n(type)
LEFT JOIN paused_task_types p ON p.type = n.type
LEFT JOIN (SELECT t.type, count(*) AS queued FROM tasks t WHERE t.status = 'queued'
           GROUP BY t.type) AS q ON q.type = n.type
ORDER BY n.type
"""
# count(*) OVER (): the total, while only the first $1 rows travel.
SELECT_ALL_SCHEDULES = """
SELECT id, user_id, email, name, cron, timezone, type, state, paused, next_slot, last_slot,
       last_task_id, last_task_status, last_skipped_slot, last_skip_reason, created_at,
       updated_at, count(*) OVER () AS total
FROM taskflow_schedules
LIMIT $1
"""


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which tasks an operator means: None matches anything."""

    status: TaskStatus | None = None
    task_type: str | None = None
    email: str | None = None

    def arguments(self) -> tuple[TaskStatus | None, str | None, str | None]:
        return self.status, self.task_type, self.email


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    changed: int
    # Picked, but refused by the guarded UPDATE: changed by someone else in
    # between (or, for a retry, a dependency no longer done).
    skipped: int
    # Tasks past max_tasks still match: the operator runs the action again.
    more: bool


class AdminStore(PausedTypeStore):
    """The operator queries of the dashboard, on the API's pool."""

    async def count_matching_tasks(self, task_filter: TaskFilter, *, up_to: int) -> Record:
        """``matching``, ``retryable`` and ``cancellable``, each counted up to ``up_to``."""
        row = await self.pool.fetchrow(
            COUNT_MATCHING_TASKS,
            *task_filter.arguments(),
            RETRYABLE_STATUSES,
            CANCELLABLE_STATUSES,
            up_to,
        )
        assert row is not None  # an aggregate always answers one row
        return row

    async def select_matching_tasks(self, task_filter: TaskFilter, limit: int) -> list[Record]:
        return await self.pool.fetch(SELECT_MATCHING_TASKS, *task_filter.arguments(), limit)

    async def retry_matching_tasks(
        self, task_filter: TaskFilter, *, max_tasks: int, actor: str, reason: str | None
    ) -> BulkOutcome:
        """Queue again, with fresh attempts, up to ``max_tasks`` failed or
        cancelled tasks that match; those waiting for a dependency that is
        not done are not taken (nor counted as retryable)."""

        async def retry(connection: Connection, ids: list[UUID]) -> list[UUID]:
            changed: list[UUID] = await connection.fetchval(
                RETRY_TASK_BATCH, ids, None, RETRYABLE_STATUSES
            )
            return changed

        return await self._in_batches(
            task_filter,
            SELECT_RETRY_BATCH,
            RETRYABLE_STATUSES,
            retry,
            max_tasks=max_tasks,
            actor=actor,
            reason=reason,
        )

    async def cancel_matching_tasks(
        self, task_filter: TaskFilter, *, max_tasks: int, actor: str, reason: str | None
    ) -> BulkOutcome:
        """Cancel up to ``max_tasks`` unfinished tasks that match (a running
        one's worker is told to stop it); the reason becomes each one's
        last_error, as a single cancel's does."""

        async def cancel(connection: Connection, ids: list[UUID]) -> list[UUID]:
            changed: list[UUID] = await connection.fetchval(
                CANCEL_TASK_BATCH, ids, None, reason, CANCELLABLE_STATUSES
            )
            return changed

        return await self._in_batches(
            task_filter,
            SELECT_CANCEL_BATCH,
            CANCELLABLE_STATUSES,
            cancel,
            max_tasks=max_tasks,
            actor=actor,
            reason=reason,
        )

    async def _in_batches(
        self,
        task_filter: TaskFilter,
        select_batch: str,
        statuses: Sequence[TaskStatus],
        change: BatchChange,
        *,
        max_tasks: int,
        actor: str,
        reason: str | None,
    ) -> BulkOutcome:
        changed = skipped = 0
        after: UUID | None = None
        taken = 0
        while taken < max_tasks:
            size = min(BULK_BATCH_SIZE, max_tasks - taken)
            async with self.pool.acquire() as connection, connection.transaction():
                ids = [
                    row["id"]
                    for row in await connection.fetch(
                        select_batch, *task_filter.arguments(), list(statuses), after, size
                    )
                ]
                if not ids:
                    return BulkOutcome(changed, skipped, more=False)
                await name_change(connection, actor=actor)
                done = await change(connection, ids)
                if done and reason is not None:
                    await connection.execute(RECORD_REASONS, done, reason)
            changed += len(done)
            skipped += len(ids) - len(done)
            taken += len(ids)
            after = ids[-1]
            if len(ids) < size:
                return BulkOutcome(changed, skipped, more=False)
        more = await self.pool.fetch(
            select_batch, *task_filter.arguments(), list(statuses), after, 1
        )
        return BulkOutcome(changed, skipped, more=bool(more))

    async def select_task_types(self, registered: Sequence[str]) -> list[Record]:
        """Each type: paused or not (by whom, when, why) and its queued tasks."""
        return await self.pool.fetch(SELECT_TASK_TYPES, list(registered))

    async def select_all_schedules(self, limit: int) -> list[Record]:
        """The first ``limit`` rows of taskflow_schedules, each with ``total``."""
        return await self.pool.fetch(SELECT_ALL_SCHEDULES, limit)
