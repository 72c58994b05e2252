"""Every runtime query, and the only module that imports asyncpg.

Each query is a named constant run by the method of the same name. Every change
of a task's status is a guarded UPDATE (``... AND status = ...``): no returned
row means the transition was not allowed, or somebody else got there first.
History rows are written by the triggers in ``db/migrations/0001_initial.sql``
in the same transaction as the change.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from taskflow.errors import (
    ConfigError,
    EmailTaken,
    IdempotencyKeyReused,
    StoreUnavailable,
    ValidationFailed,
)
from taskflow.models import EDITABLE, RETRYABLE, TERMINAL, TaskStatus
from taskflow.waiting import wait_any

log = logging.getLogger(__name__)

Record = asyncpg.Record
NotifyCallback = Callable[[str, str], None]

TASK_COLUMNS = """
    id, user_id, type, payload, status, priority, attempts, retries, max_retries,
    run_at, created_at, updated_at, started_at, finished_at, last_error, result
"""

# Errors that mean "the database is not there right now", as opposed to a bug.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    # Raised when a connection broke in the middle of an operation and is reused.
    asyncpg.exceptions.InternalClientError,
)


# Everything the database can throw at a running process: worth logging and
# retrying in a loop that must not die (a claim, a heartbeat, a tick).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(connection: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await connection.set_type_codec(
            name, encoder=_json_dumps, decoder=orjson.loads, schema="pg_catalog"
        )


def _server_settings(
    application_name: str, actor: str | None, notify_queued: bool = True
) -> dict[str, str]:
    # Read by the triggers, set once per connection instead of once per
    # transaction: who makes the changes, and whether enqueues NOTIFY (see
    # taskflow_notify_queued_enabled in the schema).
    settings = {"application_name": application_name[:63]}
    if actor:
        settings["taskflow.actor"] = actor
    if not notify_queued:
        settings["taskflow.notify_queued"] = "off"
    return settings


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (RESET ALL, UNLISTEN *, ...):
    TaskFlow never leaves session state on a pooled connection (its
    set_config calls are transaction-local; LISTEN uses its own connection),
    and the reset would cost a round trip on every query."""


async def connect(
    dsn: str, *, application_name: str = "taskflow", actor: str | None = None
) -> asyncpg.Connection:
    connection = await asyncpg.connect(
        dsn, server_settings=_server_settings(application_name, actor), timeout=10
    )
    await _init_connection(connection)
    return connection


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    application_name: str = "taskflow",
    actor: str | None = None,
    notify_queued: bool = True,
) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_keep_session,
            server_settings=_server_settings(application_name, actor, notify_queued),
            timeout=10,
            command_timeout=60,
        )
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailable(f"cannot connect to Postgres: {exc}") from exc
    assert pool is not None
    return pool


# ----- migrations -------------------------------------------------------------

MIGRATIONS_LOCK_ID = 0x7461736B666C6F77  # "taskflow": one migrator at a time, cluster-wide per DB

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED_MIGRATIONS = "SELECT version, checksum FROM schema_migrations"
INSERT_APPLIED_MIGRATION = "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)"


def migrations_directory() -> Path:
    """The repo's ``db/migrations``, or the copy inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "db" / "migrations", here / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("cannot find db/migrations")


async def apply_migrations(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply each ``NNNN_*.sql`` once, in order, each in its own transaction.

    An advisory lock makes concurrent migrators wait for each other; a file
    whose checksum changed after it was applied is refused (forward-only).
    """
    directory = directory or migrations_directory()
    files = sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    applied_now: list[str] = []
    connection = await connect(dsn, application_name="taskflow-migrate")
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATIONS_LOCK_ID)
        try:
            await connection.execute(CREATE_MIGRATIONS_TABLE)
            applied = {
                row["version"]: row["checksum"]
                for row in await connection.fetch(SELECT_APPLIED_MIGRATIONS)
            }
            for path in files:
                sql = path.read_text(encoding="utf-8")
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                version = path.stem
                if version in applied:
                    if applied[version] != checksum:
                        raise ConfigError(
                            f"migration {path.name} changed after it was applied; "
                            "migrations only move forward: add a new file instead"
                        )
                    continue
                async with connection.transaction():
                    await connection.execute(sql)
                    await connection.execute(INSERT_APPLIED_MIGRATION, version, checksum)
                applied_now.append(version)
                log.info("migration applied", extra={"event": "migration", "version": version})
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATIONS_LOCK_ID)
    finally:
        await connection.close()
    return applied_now


# ----- users --------------------------------------------------------------------

INSERT_USER = """
INSERT INTO users (email, password_hash) VALUES ($1, $2) RETURNING id
"""
SELECT_USER_BY_EMAIL = """
SELECT id, email, password_hash, is_admin FROM users WHERE lower(email) = lower($1)
"""
SELECT_USER_BY_ID = "SELECT id, email, is_admin FROM users WHERE id = $1"

# ----- tasks: the API's queries -------------------------------------------------

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
SELECT_OWN_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2"
# Newest first, keyset-paged on (created_at, id) so a page is one index range.
SELECT_OWN_TASKS = f"""
SELECT {TASK_COLUMNS} FROM tasks
WHERE user_id = $1
  AND ($2::task_status IS NULL OR status = $2)
  AND ($3::text IS NULL OR type = $3)
  AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $6
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

# ----- tasks: the worker's queries ----------------------------------------------

CLAIMED_COLUMNS = """
    t.id, t.user_id, t.type, t.payload, t.attempts, t.max_retries, t.result,
    t.claim_token, t.run_at
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
# already claimed, finished or cancelled) matches nothing and is dropped.
CLAIM_QUEUED_TASKS = f"""
UPDATE tasks t SET status = 'processing', attempts = t.attempts + 1, worker_id = $2,
    lease_expires_at = now() + make_interval(secs => $3), started_at = now(),
    claim_token = nextval('task_claim_token_seq'), updated_at = now()
WHERE t.id = ANY($1::uuid[]) AND t.status::text = 'queued'
RETURNING {CLAIMED_COLUMNS}
"""
# Without a broker, or to balance load: take the next rows in priority order
# that have been queued for at least $4 seconds. SKIP LOCKED so many workers
# never wait on, or take, the same row.
CLAIM_NEXT_TASKS = f"""
WITH next AS (
    SELECT id FROM tasks
    WHERE status = 'queued'
      AND ($4::float8 = 0 OR updated_at < now() - make_interval(secs => $4::float8))
    ORDER BY priority DESC, run_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t SET status = 'processing', attempts = t.attempts + 1, worker_id = $2,
    lease_expires_at = now() + make_interval(secs => $3), started_at = now(),
    claim_token = nextval('task_claim_token_seq'), updated_at = now()
FROM next WHERE t.id = next.id
RETURNING {CLAIMED_COLUMNS}
"""
# Fenced: only the attempt holding claim_token may write its outcome. A worker
# whose lease lapsed (and whose task was rescued or re-claimed) changes nothing.
FINISH_PROCESSING_TASKS = """
UPDATE tasks t SET
    status = o.status,
    result = CASE WHEN o.status = 'done' OR o.has_result THEN o.result ELSE t.result END,
    last_error = coalesce(o.error, t.last_error),
    run_at = CASE WHEN o.status = 'retrying'
                  THEN now() + make_interval(secs => o.delay_seconds) ELSE t.run_at END,
    finished_at = CASE WHEN o.status IN ('done', 'failed') THEN now() END,
    lease_expires_at = NULL,
    updated_at = now()
FROM unnest($1::uuid[], $2::bigint[], $3::task_status[], $4::jsonb[], $5::bool[],
            $6::text[], $7::float8[])
     AS o(id, claim_token, status, result, has_result, error, delay_seconds)
WHERE t.id = o.id AND t.claim_token = o.claim_token AND t.status::text = 'processing'
RETURNING t.id
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
UPDATE tasks SET result = $3
WHERE id = $1 AND claim_token = $2 AND status::text = 'processing'
RETURNING id
"""
REGISTER_WORKER = """
INSERT INTO workers (id, hostname, pid, concurrency, queue) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE SET last_heartbeat_at = now(), stopped_at = NULL
"""
DEREGISTER_WORKER = "UPDATE workers SET stopped_at = now() WHERE id = $1"

# ----- tasks: the scheduler's queries -------------------------------------------

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
SELECT id, status, worker_id FROM taskflow_rescue_expired_leases($1, $2)
"""
# Touching updated_at marks the row as republished, so the next tick skips it.
REPUBLISH_STALE_QUEUED = """
WITH stale AS (
    SELECT id FROM tasks
    WHERE status = 'queued' AND updated_at < now() - make_interval(secs => $1)
    ORDER BY priority DESC, run_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t SET updated_at = now() FROM stale WHERE t.id = stale.id
RETURNING t.id
"""
PRUNE_HISTORY = """
DELETE FROM task_history WHERE id IN (
    SELECT h.id FROM task_history h JOIN tasks t ON t.id = h.task_id
    WHERE h.at < now() - make_interval(days => $1)
      AND t.status IN ('done', 'failed', 'cancelled')
    LIMIT $2
)
"""
TRY_SCHEDULER_DUTY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"

SELECT_READY = "SELECT 1"
NOTIFY_QUEUED = "SELECT pg_notify('taskflow_queued', '')"
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
class Outcome:
    """What a worker reports for one attempt."""

    task_id: UUID
    claim_token: int
    status: TaskStatus
    result: Any = None
    has_result: bool = False
    error: str | None = None
    delay_seconds: float = 0.0


class Store:
    """The database, as TaskFlow's processes use it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        application_name: str = "taskflow",
        actor: str | None = None,
        notify_queued: bool = True,
    ) -> Store:
        """``notify_queued=False``: this process publishes ids to RabbitMQ, and
        calls :meth:`notify_queued` itself when a publish fails."""
        return cls(
            await create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                application_name=application_name,
                actor=actor or application_name,
                notify_queued=notify_queued,
            )
        )

    async def close(self) -> None:
        await self.pool.close()

    async def ready(self) -> bool:
        await self.pool.fetchval(SELECT_READY, timeout=2)
        return True

    async def notify_queued(self) -> None:
        """Wake the workers that claim from Postgres (the broker missed ids)."""
        await self.pool.execute(NOTIFY_QUEUED)

    async def select_queue_depth(self) -> list[Record]:
        return await self.pool.fetch(SELECT_QUEUE_DEPTH, timeout=5)

    # ----- users

    async def insert_user(self, email: str, password_hash: str) -> int:
        try:
            user_id: int = await self.pool.fetchval(INSERT_USER, email, password_hash)
        except asyncpg.UniqueViolationError as exc:
            raise EmailTaken() from exc
        return user_id

    async def select_user_by_email(self, email: str) -> Record | None:
        return await self.pool.fetchrow(SELECT_USER_BY_EMAIL, email)

    async def select_user_by_id(self, user_id: int) -> Record | None:
        return await self.pool.fetchrow(SELECT_USER_BY_ID, user_id)

    # ----- tasks, for the API

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
    ) -> list[Record]:
        before_at, before_id = before if before else (None, None)
        return await self.pool.fetch(
            SELECT_OWN_TASKS, user_id, status, task_type, before_at, before_id, limit
        )

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
            await _name_change(connection, actor=actor)
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
            await _name_change(connection, actor=actor)
            return await connection.fetchrow(RETRY_FINISHED_TASK, task_id, user_id, list(RETRYABLE))

    async def delete_finished_task(self, task_id: UUID, user_id: int) -> bool:
        deleted = await self.pool.fetchval(DELETE_FINISHED_TASK, task_id, user_id, list(TERMINAL))
        return deleted is not None

    # ----- tasks, for the worker

    async def claim_queued_tasks(
        self, task_ids: Sequence[UUID], worker_id: str, lease_seconds: float
    ) -> list[Record]:
        return await self.pool.fetch(CLAIM_QUEUED_TASKS, list(task_ids), worker_id, lease_seconds)

    async def claim_next_tasks(
        self, limit: int, worker_id: str, lease_seconds: float, *, queued_for_seconds: float = 0
    ) -> list[Record]:
        return await self.pool.fetch(
            CLAIM_NEXT_TASKS, limit, worker_id, lease_seconds, queued_for_seconds
        )

    async def finish_processing_tasks(self, outcomes: Sequence[Outcome]) -> set[UUID]:
        """Write outcomes; returns the ids whose fence held (the others were lost)."""
        rows = await self.pool.fetch(
            FINISH_PROCESSING_TASKS,
            [o.task_id for o in outcomes],
            [o.claim_token for o in outcomes],
            [o.status for o in outcomes],
            [o.result for o in outcomes],
            [o.has_result for o in outcomes],
            [o.error for o in outcomes],
            [o.delay_seconds for o in outcomes],
        )
        return {row["id"] for row in rows}

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

    async def register_worker(
        self, worker_id: str, hostname: str, concurrency: int, queue: str | None
    ) -> None:
        await self.pool.execute(
            REGISTER_WORKER, worker_id, hostname, os.getpid(), concurrency, queue
        )

    async def deregister_worker(self, worker_id: str) -> None:
        await self.pool.execute(DEREGISTER_WORKER, worker_id)

    # ----- tasks, for the scheduler

    async def promote_due_tasks(self, limit: int) -> list[UUID]:
        async with self.pool.acquire() as connection, connection.transaction():
            await _name_change(connection, actor="scheduler")
            rows = await connection.fetch(PROMOTE_DUE_TASKS, limit)
        return [row["id"] for row in rows]

    async def rescue_expired_leases(self, limit: int, max_lease_crashes: int) -> list[Record]:
        async with self.pool.acquire() as connection, connection.transaction():
            await _name_change(connection, actor="scheduler", event="lease_expired")
            return await connection.fetch(RESCUE_EXPIRED_LEASES, limit, max_lease_crashes)

    async def republish_stale_queued(self, older_than_seconds: float, limit: int) -> list[UUID]:
        rows = await self.pool.fetch(REPUBLISH_STALE_QUEUED, older_than_seconds, limit)
        return [row["id"] for row in rows]

    async def prune_history(self, retention_days: int, limit: int) -> int:
        status = await self.pool.execute(PRUNE_HISTORY, retention_days, limit)
        return int(status.split()[-1])

    async def with_duty_lock(self, lock_id: int, action: Callable[[], Awaitable[Any]]) -> bool:
        """Run ``action`` only if no other scheduler holds this duty right now."""
        async with self.pool.acquire() as connection, connection.transaction():
            if not await connection.fetchval(TRY_SCHEDULER_DUTY_LOCK, lock_id):
                return False
            await action()
            return True


async def _name_change(
    connection: asyncpg.Connection[Record] | asyncpg.pool.PoolConnectionProxy[Record],
    *,
    actor: str,
    event: str | None = None,
) -> None:
    """Tell the history trigger who makes this transaction's changes."""
    await connection.execute(
        "SELECT set_config('taskflow.actor', $1, true), set_config('taskflow.event', $2, true)",
        actor,
        event or "",
    )


class Listener:
    """One connection LISTENing on channels, reconnecting when Postgres goes away."""

    def __init__(
        self, dsn: str, channels: Iterable[str], callback: NotifyCallback, *, name: str
    ) -> None:
        self.dsn = dsn
        self.channels = tuple(channels)
        self.callback = callback
        self.name = name
        self._connection: asyncpg.Connection | None = None
        self.connected = asyncio.Event()
        self.lost = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                self._connection = await connect(self.dsn, application_name=self.name)
                self.lost.clear()
                self._connection.add_termination_listener(lambda _c: self.lost.set())
                for channel in self.channels:
                    await self._connection.add_listener(channel, self._on_notify)
                self.connected.set()
                delay = 0.1
                # Wake up periodically to notice a silently dead connection.
                while not stop.is_set() and not self.lost.is_set():
                    await wait_any(stop, self.lost, timeout=5)
                    if not stop.is_set() and not self.lost.is_set():
                        await self._connection.execute("SELECT 1", timeout=5)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "listener connection lost",
                    extra={"event": "listener_lost", "error": str(exc)},
                )
            finally:
                self.connected.clear()
                if self._connection is not None:
                    self._connection.terminate()
                    self._connection = None
            if not stop.is_set():
                await wait_any(stop, timeout=delay)
                delay = min(delay * 2, 5)
                # Anything may have happened while we were deaf: let the owner look.
                self.callback("reconnected", "")

    def _on_notify(self, _connection: Any, _pid: int, channel: str, payload: object, /) -> None:
        self.callback(channel, str(payload))


async def create_database_if_missing(dsn: str) -> bool:
    """Create the database named in ``dsn`` (connecting to ``postgres`` to do it)."""
    from urllib.parse import unquote, urlsplit

    database = unquote(urlsplit(dsn).path.lstrip("/")) or "postgres"
    try:
        connection = await connect(dsn)
        await connection.close()
        return False
    except asyncpg.InvalidCatalogNameError:
        pass
    admin_dsn = _replace_database(dsn, "postgres")
    connection = await connect(admin_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{database.replace(chr(34), chr(34) * 2)}"')
    except asyncpg.DuplicateDatabaseError:
        return False
    finally:
        await connection.close()
    return True


def _replace_database(dsn: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


# ----- operator queries ----------------------------------------------------------
# For `taskflow status` / `taskflow tasks show` (taskflow/status.py) and for the
# scheduler's retention. The read queries go through the views and functions of
# db/migrations/0002_operator_views.sql (the text of ops/sql/*.sql), so the
# terminal and psql give the same answers from one definition.

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


class OperatorStore(Store):
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

    async def select_recent_failures(self, limit: int) -> list[Record]:
        return await self._fetch_views(SELECT_RECENT_FAILURES, limit)

    async def select_throughput(self) -> list[Record]:
        return await self._fetch_views(SELECT_THROUGHPUT)

    async def select_long_transactions(self, older_than_seconds: float) -> list[Record]:
        return await self._fetch_views(SELECT_LONG_TRANSACTIONS, older_than_seconds)

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


# ----- end of operator queries ---------------------------------------------------


# ----- live events ---------------------------------------------------------------
# For the API's Server-Sent Events (taskflow/api/events.py) and the dashboard's
# operator overview (taskflow/api/dashboard.py). An event is a task_history row
# and its id is the history id (db/migrations/0003_task_events.sql says why);
# these queries read them back for a client that resumes or fell behind.

LIVE_EVENT_COLUMNS = """
    h.id, h.task_id, h.from_status, h.to_status AS status, left(h.event, 32) AS event,
    h.attempt, h.at
"""
# Where "now" is in the event log: a new stream resumes from here.
SELECT_HISTORY_WATERMARK = "SELECT coalesce(max(id), 0) FROM task_history"
# The rows after the cursor ($2), at most $4; plus, best effort, rows before it
# written up to $3 seconds before the cursor's own row: history ids are taken
# at insert but seen at commit, so a transaction that took id 100 can commit
# after the one that took 101, and a client that saw 101 still needs 100. The
# stream drops the ids it already sent; the client drops those it has seen.
# The two halves use the primary key and the BRIN index on task_history (at).
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
 WHERE t.user_id = $1 AND h.id < $2
   AND h.at >= (SELECT c.at FROM task_history c WHERE c.id = $2) - make_interval(secs => $3)
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
 WHERE h.task_id = $2 AND h.id < $3
   AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = $2 AND t.user_id = $1)
   AND h.at >= (SELECT c.at FROM task_history c WHERE c.id = $3) - make_interval(secs => $4)
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


class LiveEventsStore(Store):
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


# ----- end of live events --------------------------------------------------------
