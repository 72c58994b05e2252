"""The engine's guarded transitions: what workers and schedulers do to tasks.

Workers claim, heartbeat, finish and hand back; schedulers promote due rows,
rescue lapsed leases, republish and prune. Every statement by id probes the
primary key (see CLAIMED_COLUMNS' comment); every outcome is fenced by the
claim token of the attempt that wrote it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from taskflow.models import TaskStatus
from taskflow.store.pool import Queries, Record, name_change

# last_attempt: whether a failure of this attempt ends the task, by the one
# retry rule (taskflow/retries.py), for the handler's context. started: the
# claim marked the attempt as started (started_at), see below.
# files_max_bytes: the owner's user_files_max_bytes override (NULL: the
# default), for the handler's file area. has_dependencies: the handler's
# ctx.dependencies is worth reading. Every claim path returns these same
# columns (store/dispatch.py, db/functions/50_fair_dispatch.sql).
CLAIMED_COLUMNS = """
    t.id, t.user_id, t.type, t.payload, t.attempts, t.max_retries, t.result,
    t.claim_token, t.run_at,
    taskflow_attempt_status(t.attempts, t.max_retries, false) = 'failed' AS last_attempt,
    t.started_at IS NOT NULL AS started,
    (SELECT l.files_max_bytes FROM user_limits l WHERE l.user_id = t.user_id) AS files_max_bytes,
    EXISTS (SELECT 1 FROM task_dependencies d WHERE d.task_id = t.id) AS has_dependencies
"""
# The worker's statements by id compare the status as text ("t.status::text =
# 'processing'"). Compared as an enum, the guard matches the predicate of a
# partial index (tasks_queued_idx, tasks_lease_idx), and when the statistics
# say that slice is nearly empty (as they do whenever the last ANALYZE saw no
# task processing) the planner reads the whole partial index instead of probing
# the primary key. Those indexes churn with every claim and finish and hold
# thousands of dead entries during a drain: a finish of 30 tasks took seconds
# of CPU that way. As text the guard is only a filter after the primary key.
#
# The claim: a guarded UPDATE by id. A duplicate or stale message (the task was
# already claimed, finished or cancelled) matches nothing and is dropped, and
# so does an id the fair pick did not send (no dispatched_tasks row: from a
# message that outlived a crash, or published by hand): every cap is counted
# over what the pick sent, so nothing else may be claimed by id. Nor is a task
# of a type paused since it was picked.
#
# Started or claimed ahead: the first $4 ids go to free slots and start at
# once, so the claim marks them started (started_at). The others wait in the
# worker for a slot; their start is not written (that would be one more write
# per task on the hot path) but folded into the finish. If their worker dies,
# the rescue cannot tell whether they started and puts them back uncounted
# (db/functions/20_lease_rescue.sql); a task put back that way is never
# claimed ahead again (unstarted_rescues), so its next crash is counted.
# (The statement is db/functions/50_fair_dispatch.sql's taskflow_claim_dispatched,
# planned afresh at every call; it returns CLAIMED_COLUMNS.)
CLAIM_QUEUED_TASKS = """
SELECT id, user_id, type, payload, attempts, max_retries, result, claim_token, run_at,
       last_attempt, started, files_max_bytes, has_dependencies
FROM taskflow_claim_dispatched($1::uuid[], $2, $3, $4)
"""
# Fenced: only the attempt holding claim_token may write its outcome. A worker
# whose lease lapsed (and whose task was rescued or re-claimed) changes nothing.
# The worker says how the attempt ended (done, permanent, transient error);
# what follows is the one retry rule's (taskflow/retries.py): the next status
# from taskflow_attempt_status, the delay from the handler's own (Retry-After)
# or taskflow_backoff_seconds ($8, $9: the configured base and cap).
FINISH_PROCESSING_TASKS = """
UPDATE tasks t SET
    status = CASE WHEN o.ending = 'done' THEN 'done'::task_status
                  ELSE taskflow_attempt_status(t.attempts, t.max_retries, o.ending = 'permanent')
             END,
    result = CASE WHEN o.ending = 'done' OR o.has_result THEN o.result ELSE t.result END,
    last_error = coalesce(o.error, t.last_error),
    run_at = CASE WHEN o.ending <> 'done' AND taskflow_attempt_status(
                           t.attempts, t.max_retries, o.ending = 'permanent') = 'retrying'
                  THEN now() + make_interval(secs => coalesce(
                      o.delay_seconds, taskflow_backoff_seconds(t.attempts, $8, $9)))
                  ELSE t.run_at END,
    finished_at = CASE WHEN o.ending = 'done' OR taskflow_attempt_status(
                                t.attempts, t.max_retries, o.ending = 'permanent') = 'failed'
                       THEN now() END,
    -- An attempt claimed ahead started when its handler did: $10 seconds ago.
    started_at = coalesce(t.started_at, now() - make_interval(secs => o.run_seconds)),
    lease_expires_at = NULL,
    updated_at = now()
FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[], $5::bool[], $6::text[],
            $7::float8[], $10::float8[])
     AS o(id, claim_token, ending, result, has_result, error, delay_seconds, run_seconds)
WHERE t.id = o.id AND t.claim_token = o.claim_token AND t.status::text = 'processing'
RETURNING t.id, t.status
"""
EXTEND_LEASES = """
WITH beat AS (
    UPDATE workers SET last_heartbeat_at = now(), stopped_at = NULL WHERE id = $1
)
UPDATE tasks t SET lease_expires_at = now() + make_interval(secs => $4)
FROM unnest($2::uuid[], $3::bigint[]) AS h(id, claim_token)
WHERE t.id = h.id AND t.claim_token = h.claim_token AND t.status::text = 'processing'
RETURNING t.id
"""
# Graceful shutdown: the attempt did not really happen, so it is not counted.
HAND_BACK_TASKS = """
UPDATE tasks t SET status = 'queued', attempts = t.attempts - 1, worker_id = NULL,
    lease_expires_at = NULL, started_at = NULL, updated_at = now()
FROM unnest($1::uuid[], $2::bigint[]) AS h(id, claim_token)
WHERE t.id = h.id AND t.claim_token = h.claim_token AND t.status::text = 'processing'
RETURNING t.id
"""
SAVE_TASK_PROGRESS = """
UPDATE tasks SET result = $3, started_at = coalesce(started_at, now())
WHERE id = $1 AND claim_token = $2 AND status::text = 'processing'
RETURNING id
"""
# A worker's liveness key, and the lock its session holds while it lives
# (db/migrations/0008_worker_sessions.sql).
NEXT_LIVENESS_KEY = "SELECT nextval('worker_liveness_key_seq')::integer"
TAKE_LIVENESS_LOCK = "SELECT pg_advisory_lock(taskflow_worker_lock_namespace(), $1)"
LIVENESS_LOCK_WAIT_SECONDS = 30.0
# Both tell the dispatchers (NOTIFY taskflow_workers), which size what they
# send by the live workers' slots: a worker that joins gets ids at once, not
# at the dispatcher's next look at the fleet.
WORKERS_CHANNEL = "taskflow_workers"
REGISTER_WORKER = """
WITH registered AS (
    INSERT INTO workers (id, hostname, pid, concurrency, queue, liveness_key)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (id) DO UPDATE SET last_heartbeat_at = now(), stopped_at = NULL,
                                   liveness_key = excluded.liveness_key
    RETURNING id
)
SELECT pg_notify('taskflow_workers', 'joined') FROM registered
"""
DEREGISTER_WORKER = """
WITH deregistered AS (
    UPDATE workers SET stopped_at = now() WHERE id = $1 RETURNING id
)
SELECT pg_notify('taskflow_workers', 'left') FROM deregistered
"""

# SKIP LOCKED so two schedulers never promote the same row, nor wait on each other.
PROMOTE_DUE_TASKS = """
WITH due AS (
    SELECT id FROM tasks
    WHERE status IN ('postponed', 'retrying') AND run_at <= now()
    ORDER BY run_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t SET status = 'queued', updated_at = now()
FROM due WHERE t.id = due.id
RETURNING t.id
"""
# A lapsed lease means the worker died, hung or lost Postgres. The attempt
# counts; the task retries at once, unless it is out of retries or its handler
# keeps killing workers (quarantine after max_lease_crashes). The rule is one
# SQL function (ops/sql/14_requeue_stuck.sql), shared with the operators'
# taskflow_requeue_stuck().
RESCUE_EXPIRED_LEASES = """
SELECT id, status, worker_id, started FROM taskflow_rescue_expired_leases($1, $2)
"""
# A dead worker's session ended: its tasks go at once, by the same rule.
RESCUE_LOST_WORKERS = """
SELECT id, status, worker_id, started FROM taskflow_rescue_lost_workers($1, $2)
"""
# History retention (db/functions/05_history_partitions.sql): partitions past
# retention are dropped whole, new ones made ahead, and rows that landed in
# the default partition are deleted once past retention, a batch at a time.
HISTORY_UPKEEP = """
SELECT deleted_rows, dropped_rows, created_partitions
FROM taskflow_history_upkeep(make_interval(days => $1), make_interval(days => $2),
                             make_interval(days => $3), $4)
"""
TRY_SCHEDULER_DUTY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"


def history_partition_days(retention_days: int) -> int:
    """How many days one task_history partition spans: a day at the default
    30 days of retention, wider for longer ones, so about thirty partitions
    are kept whatever the retention (each query that cannot tell which
    partition holds its rows looks at every one)."""
    return max(1, math.ceil(retention_days / 30))


@dataclass(frozen=True, slots=True)
class HistoryUpkeep:
    deleted_rows: int  # from the default partition
    dropped_rows: int  # estimated, in the partitions dropped
    created_partitions: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a worker reports for one attempt: how it ended ("done",
    "permanent", "transient"), not what follows (the retry rule decides)."""

    task_id: UUID
    claim_token: int
    ending: str
    result: Any = None
    has_result: bool = False
    error: str | None = None
    delay_seconds: float | None = None
    # time.monotonic() when the handler started: an attempt claimed ahead
    # has no started_at until its outcome is written, from this.
    handler_started: float | None = None


class EngineStore(Queries):
    """The worker's and the scheduler's statements."""

    async def claim_queued_tasks(
        self,
        task_ids: Sequence[UUID],
        worker_id: str,
        lease_seconds: float,
        *,
        start_now: int | None = None,
    ) -> list[Record]:
        """Claim these ids; the first ``start_now`` (default: all) start at
        once, the others are claimed ahead. Rows come back started first."""
        rows = await self.pool.fetch(
            CLAIM_QUEUED_TASKS,
            list(task_ids),
            worker_id,
            lease_seconds,
            len(task_ids) if start_now is None else start_now,
        )
        return sorted(rows, key=lambda row: not row["started"])

    async def finish_processing_tasks(
        self, outcomes: Sequence[Outcome], *, backoff_base_ms: int, backoff_max_ms: int
    ) -> dict[UUID, TaskStatus]:
        """Write outcomes; returns the new status of each task whose fence
        held (the others were lost)."""
        # Seconds since each handler started, as of this statement: not its
        # run time, since an outcome may wait for the statement a while (the
        # outcomes of one moment are written together).
        now = time.monotonic()
        rows = await self.pool.fetch(
            FINISH_PROCESSING_TASKS,
            [o.task_id for o in outcomes],
            [o.claim_token for o in outcomes],
            [o.ending for o in outcomes],
            [o.result for o in outcomes],
            [o.has_result for o in outcomes],
            [o.error for o in outcomes],
            [o.delay_seconds for o in outcomes],
            backoff_base_ms,
            backoff_max_ms,
            [0.0 if o.handler_started is None else now - o.handler_started for o in outcomes],
        )
        return {row["id"]: TaskStatus(row["status"]) for row in rows}

    async def extend_leases(
        self, worker_id: str, claims: Sequence[tuple[UUID, int]], lease_seconds: float
    ) -> set[UUID]:
        rows = await self.pool.fetch(
            EXTEND_LEASES,
            worker_id,
            [task_id for task_id, _ in claims],
            [token for _, token in claims],
            lease_seconds,
        )
        return {row["id"] for row in rows}

    async def hand_back_tasks(self, claims: Sequence[tuple[UUID, int]]) -> list[UUID]:
        rows = await self.pool.fetch(
            HAND_BACK_TASKS, [task_id for task_id, _ in claims], [token for _, token in claims]
        )
        return [row["id"] for row in rows]

    async def save_task_progress(self, task_id: UUID, claim_token: int, result: Any) -> bool:
        return (
            await self.pool.fetchval(SAVE_TASK_PROGRESS, task_id, claim_token, result) is not None
        )

    @staticmethod
    async def take_liveness_lock(connection: asyncpg.Connection[Record], key: int) -> None:
        """Hold the worker's liveness lock for as long as ``connection`` lives.
        Waits while a previous session of the same worker still holds it (its
        end not yet noticed by the server), up to LIVENESS_LOCK_WAIT_SECONDS."""
        await connection.execute(TAKE_LIVENESS_LOCK, key, timeout=LIVENESS_LOCK_WAIT_SECONDS)

    async def next_liveness_key(self) -> int:
        key: int = await self.pool.fetchval(NEXT_LIVENESS_KEY)
        return key

    async def register_worker(
        self,
        worker_id: str,
        hostname: str,
        concurrency: int,
        queue: str | None,
        *,
        liveness_key: int | None,
    ) -> None:
        """Register after the worker's session holds its liveness lock: the
        scheduler takes a registered worker without the lock for dead."""
        await self.pool.execute(
            REGISTER_WORKER, worker_id, hostname, os.getpid(), concurrency, queue, liveness_key
        )

    async def deregister_worker(self, worker_id: str) -> None:
        await self.pool.execute(DEREGISTER_WORKER, worker_id)

    # ----- tasks, for the scheduler

    async def promote_due_tasks(self, limit: int) -> list[UUID]:
        async with self.pool.acquire() as connection, connection.transaction():
            await name_change(connection, actor="scheduler")
            rows = await connection.fetch(PROMOTE_DUE_TASKS, limit)
        return [row["id"] for row in rows]

    async def rescue_expired_leases(self, limit: int, max_lease_crashes: int) -> list[Record]:
        async with self.pool.acquire() as connection, connection.transaction():
            await name_change(connection, actor="scheduler", event="lease_expired")
            return await connection.fetch(RESCUE_EXPIRED_LEASES, limit, max_lease_crashes)

    async def rescue_lost_workers(self, limit: int, max_lease_crashes: int) -> list[Record]:
        async with self.pool.acquire() as connection, connection.transaction():
            await name_change(connection, actor="scheduler", event="worker_lost")
            return await connection.fetch(RESCUE_LOST_WORKERS, limit, max_lease_crashes)

    async def history_upkeep(self, retention_days: int, limit: int) -> HistoryUpkeep:
        """One round of history retention; see :func:`history_partition_days`."""
        width = history_partition_days(retention_days)
        [row] = await self.pool.fetch(HISTORY_UPKEEP, retention_days, width, 2 * width, limit)
        return HistoryUpkeep(
            deleted_rows=row["deleted_rows"],
            dropped_rows=row["dropped_rows"],
            created_partitions=row["created_partitions"],
        )

    async def with_duty_lock(self, lock_id: int, action: Callable[[], Awaitable[Any]]) -> bool:
        """Run ``action`` only if no other scheduler holds this duty right now."""
        async with self.pool.acquire() as connection, connection.transaction():
            if not await connection.fetchval(TRY_SCHEDULER_DUTY_LOCK, lock_id):
                return False
            await action()
            return True
