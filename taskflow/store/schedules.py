"""Schedules (SPEC §9): the API's queries, scoped to their owner, and the
schedulers' one transaction per batch of due slots.

The table and its invariants are db/migrations/0010_schedules.sql; when a slot
is due and what comes next is taskflow.schedules (the scheduler passes it in
as a plan).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from taskflow.errors import LimitExceeded, ValidationFailed
from taskflow.store.inserts import UNLIMITED, Admission
from taskflow.store.pool import Queries, Record

SCHEDULE_COLUMNS = """
    id, user_id, name, cron, timezone, type, payload, max_retries, priority, paused,
    next_run_at, last_run_at, last_task_id, last_skipped_at, last_skip_reason,
    created_at, updated_at
"""

# Creations of one user's schedules take turns on the user's row, so two at
# once cannot both pass the count below. NO KEY UPDATE: the foreign-key checks
# of the user's new tasks (KEY SHARE) never wait for it.
LOCK_USER_SCHEDULES = """
SELECT coalesce(l.max_schedules, $2::integer) AS max_schedules
FROM users u
LEFT JOIN user_limits l ON l.user_id = u.id
WHERE u.id = $1
FOR NO KEY UPDATE OF u
"""
# A statement of its own after the lock: its snapshot sees a creation that
# committed while this one waited. 0 means no limit.
INSERT_SCHEDULE = f"""
INSERT INTO schedules (user_id, name, cron, timezone, type, payload, max_retries, priority,
                       next_run_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
WHERE $10::integer = 0 OR (SELECT count(*) FROM schedules WHERE user_id = $1) < $10::integer
RETURNING {SCHEDULE_COLUMNS}
"""
SELECT_OWN_SCHEDULE = f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1 AND user_id = $2"
# Oldest first, keyset-paged on (created_at, id).
SELECT_OWN_SCHEDULES = f"""
SELECT {SCHEDULE_COLUMNS} FROM schedules
WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
ORDER BY created_at, id
LIMIT $4
"""
# Guarded by what the change was checked against (type for the payload,
# cron and timezone for next_run_at): a change in between makes no row.
UPDATE_OWN_SCHEDULE = f"""
UPDATE schedules SET
    name = coalesce($3, name),
    cron = coalesce($4, cron),
    timezone = coalesce($5, timezone),
    type = coalesce($6, type),
    payload = coalesce($7::jsonb, payload),
    max_retries = coalesce($8::integer, max_retries),
    priority = coalesce($9::smallint, priority),
    next_run_at = CASE WHEN $10::boolean AND NOT paused THEN $11::timestamptz
                       ELSE next_run_at END,
    updated_at = now()
WHERE id = $1 AND user_id = $2 AND type = $12 AND cron = $13 AND timezone = $14
RETURNING {SCHEDULE_COLUMNS}
"""
DELETE_OWN_SCHEDULE = "DELETE FROM schedules WHERE id = $1 AND user_id = $2 RETURNING id"
# The trigger schedules_fill_implied clears next_run_at.
PAUSE_OWN_SCHEDULE = f"""
UPDATE schedules SET paused = true, updated_at = now()
WHERE id = $1 AND user_id = $2 AND NOT paused
RETURNING {SCHEDULE_COLUMNS}
"""
RESUME_OWN_SCHEDULE = f"""
UPDATE schedules SET paused = false, next_run_at = $3, updated_at = now()
WHERE id = $1 AND user_id = $2 AND paused AND cron = $4 AND timezone = $5
RETURNING {SCHEDULE_COLUMNS}
"""

# The schedules whose slot has come, and those not planned yet (NULL: just
# resumed). SKIP LOCKED: two schedulers never plan the same schedule at once;
# the row stays locked until its slot's task is inserted and next_run_at
# moved on. $1 stands in for the clock in tests.
CLAIM_DUE_SCHEDULES = """
SELECT id, cron, timezone, next_run_at, coalesce($1::timestamptz, now()) AS now
FROM schedules
WHERE NOT paused AND coalesce(next_run_at, '-infinity'::timestamptz)
                     <= coalesce($1::timestamptz, now())
ORDER BY coalesce(next_run_at, '-infinity'::timestamptz)
LIMIT $2
FOR UPDATE SKIP LOCKED
"""
# One statement for the batch: the slots' tasks (ordinary tasks of the
# schedule's owner, queued once their slot has come) and each schedule's next
# slot. ON CONFLICT: a slot that already has its task (its next_run_at was
# set back by hand) gets no second one. A schedule with no next slot pauses.
# A slot whose owner is over a creation limit (taskflow_slot_refusal,
# db/functions/55_creation_limits.sql; $5, $6: the default limits) is
# skipped, and the schedule says which limit.
CREATE_SLOT_TASKS = """
WITH plan AS (
    SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::uuid[])
        AS p(schedule_id, next_run_at, slot, task_id)
), admitted AS (
    SELECT p.*, s.user_id, s.type, s.payload, s.priority, s.max_retries,
           taskflow_slot_refusal(s.user_id, s.type = 'send_email', $5, $6) AS refusal
    FROM plan p
    JOIN schedules s ON s.id = p.schedule_id
    WHERE p.slot IS NOT NULL
), created AS (
    INSERT INTO tasks (id, user_id, type, payload, status, priority, max_retries, run_at,
                       schedule_id, scheduled_for)
    SELECT a.task_id, a.user_id, a.type, a.payload, taskflow_initial_status(a.slot),
           a.priority, a.max_retries, a.slot, a.schedule_id, a.slot
    FROM admitted a
    WHERE a.refusal IS NULL
    ON CONFLICT (schedule_id, scheduled_for) WHERE schedule_id IS NOT NULL DO NOTHING
    RETURNING id, schedule_id, scheduled_for, type
), moved_on AS (
    UPDATE schedules s
    SET next_run_at = p.next_run_at,
        paused = s.paused OR p.next_run_at IS NULL,
        last_run_at = CASE WHEN a.refusal IS NULL THEN coalesce(p.slot, s.last_run_at)
                           ELSE s.last_run_at END,
        last_task_id = coalesce(c.id, s.last_task_id),
        last_skipped_at = CASE WHEN a.refusal IS NOT NULL THEN p.slot ELSE s.last_skipped_at END,
        last_skip_reason = CASE WHEN a.refusal IS NOT NULL THEN a.refusal
                                ELSE s.last_skip_reason END
    FROM plan p
    LEFT JOIN created c ON c.schedule_id = p.schedule_id
    LEFT JOIN admitted a ON a.schedule_id = p.schedule_id
    WHERE s.id = p.schedule_id
)
SELECT id, schedule_id, scheduled_for, type FROM created
"""


@dataclass(frozen=True, slots=True)
class NewSchedule:
    name: str
    cron: str
    timezone: str
    type: str
    payload: dict[str, Any]
    max_retries: int
    priority: int
    next_run_at: datetime | None


@dataclass(frozen=True, slots=True)
class ScheduleChange:
    """A PATCH, checked against ``type``, ``cron`` and ``timezone``; None keeps a field."""

    type: str
    cron: str
    timezone: str
    new_name: str | None = None
    new_cron: str | None = None
    new_timezone: str | None = None
    new_type: str | None = None
    new_payload: dict[str, Any] | None = None
    new_max_retries: int | None = None
    new_priority: int | None = None
    # Set next_run_at to this (unless paused): the cron or time zone changed.
    replan: bool = False
    next_run_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SlotPlan:
    """What one due schedule gets: the task of ``slot`` (with this id), if
    any, and its next slot (None: never again; the schedule pauses)."""

    schedule_id: UUID
    next_run_at: datetime | None
    slot: datetime | None = None
    task_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class SlotRun:
    # Schedules claimed in this batch (a full batch: there may be more).
    claimed: int
    # The tasks created: id, schedule_id, scheduled_for, type.
    created: list[Record]


class ScheduleStore(Queries):
    """The API's view of a user's schedules, and the schedulers' slots."""

    async def insert_schedule(
        self, user_id: int, schedule: NewSchedule, *, default_max_schedules: int
    ) -> Record:
        """Insert within the user's limit (user_limits, else the default);
        over it, LimitExceeded."""
        async with self.pool.acquire() as connection, connection.transaction():
            limit = await connection.fetchval(LOCK_USER_SCHEDULES, user_id, default_max_schedules)
            if limit is None:
                raise ValidationFailed("the user of this token no longer exists")
            row = await connection.fetchrow(
                INSERT_SCHEDULE,
                user_id,
                schedule.name,
                schedule.cron,
                schedule.timezone,
                schedule.type,
                schedule.payload,
                schedule.max_retries,
                schedule.priority,
                schedule.next_run_at,
                limit,
            )
        if row is None:
            raise LimitExceeded(
                f"at most {limit} schedules per user; delete one to create another",
                limit="user_max_schedules",
                # Only a deletion frees a place; a minute is a polite pace to look again.
                retry_after_seconds=60,
            )
        return row

    async def select_own_schedule(self, schedule_id: UUID, user_id: int) -> Record | None:
        return await self.pool.fetchrow(SELECT_OWN_SCHEDULE, schedule_id, user_id)

    async def select_own_schedules(
        self, user_id: int, *, after: tuple[datetime, UUID] | None, limit: int
    ) -> list[Record]:
        after_at, after_id = after if after else (None, None)
        return await self.pool.fetch(SELECT_OWN_SCHEDULES, user_id, after_at, after_id, limit)

    async def update_own_schedule(
        self, schedule_id: UUID, user_id: int, change: ScheduleChange
    ) -> Record | None:
        """None: no such schedule of this user, or it changed since it was read."""
        return await self.pool.fetchrow(
            UPDATE_OWN_SCHEDULE,
            schedule_id,
            user_id,
            change.new_name,
            change.new_cron,
            change.new_timezone,
            change.new_type,
            change.new_payload,
            change.new_max_retries,
            change.new_priority,
            change.replan,
            change.next_run_at,
            change.type,
            change.cron,
            change.timezone,
        )

    async def delete_own_schedule(self, schedule_id: UUID, user_id: int) -> bool:
        """Its tasks stay, with schedule_id NULL (ON DELETE SET NULL)."""
        deleted = await self.pool.fetchval(DELETE_OWN_SCHEDULE, schedule_id, user_id)
        return deleted is not None

    async def pause_own_schedule(self, schedule_id: UUID, user_id: int) -> Record | None:
        """None: no such schedule of this user, or it was paused already."""
        return await self.pool.fetchrow(PAUSE_OWN_SCHEDULE, schedule_id, user_id)

    async def resume_own_schedule(
        self,
        schedule_id: UUID,
        user_id: int,
        *,
        next_run_at: datetime | None,
        cron: str,
        timezone: str,
    ) -> Record | None:
        """None: no such paused schedule of this user with this cron and time zone."""
        return await self.pool.fetchrow(
            RESUME_OWN_SCHEDULE, schedule_id, user_id, next_run_at, cron, timezone
        )

    # ----- the schedulers

    async def create_slot_tasks(
        self,
        limit: int,
        plan: Callable[[Record], SlotPlan],
        *,
        now: datetime | None = None,
        admission: Admission = UNLIMITED,
    ) -> SlotRun:
        """Claim up to ``limit`` due or unplanned schedules, ask ``plan`` what
        each gets (it is given the row, with ``now``, the database's clock or
        the one passed in), and create their slots' tasks, all in one
        transaction."""
        async with self.pool.acquire() as connection, connection.transaction():
            due = await connection.fetch(CLAIM_DUE_SCHEDULES, now, limit)
            if not due:
                return SlotRun(claimed=0, created=[])
            plans = [plan(row) for row in due]
            created = await connection.fetch(
                CREATE_SLOT_TASKS,
                [p.schedule_id for p in plans],
                [p.next_run_at for p in plans],
                [p.slot for p in plans],
                [p.task_id for p in plans],
                admission.max_active_tasks,
                admission.email_per_day,
            )
        return SlotRun(claimed=len(due), created=created)
