"""Who runs next: the fair pick into the dispatch window, and the claims
that go with it (db/functions/50_fair_dispatch.sql has the rule,
db/migrations/0009_fair_dispatch.sql the design)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from taskflow.config import Settings
from taskflow.store.pool import Queries, Record


@dataclass(frozen=True, slots=True)
class FairLimits:
    """The defaults of SPEC §8 that the pick applies (the settings file), for users
    without a user_limits row. 0 means no limit."""

    user_max_running: int = 0
    type_max_running: dict[str, int] | None = None
    email_per_user_per_minute: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> FairLimits:
        return cls(
            user_max_running=settings.user_max_running,
            type_max_running=dict(settings.type_max_running),
            email_per_user_per_minute=settings.email_per_user_per_minute,
        )

    def arguments(self) -> tuple[int, dict[str, int], int]:
        return (
            self.user_max_running,
            dict(self.type_max_running or {}),
            self.email_per_user_per_minute,
        )


# The slots of the workers alive now (heartbeat within $1 seconds), the
# least the window holds so that no slot waits for the dispatcher.
COUNT_LIVE_SLOTS = """
SELECT coalesce(sum(concurrency), 0)::integer AS slots, count(*)::integer AS workers
FROM workers
WHERE stopped_at IS NULL AND last_heartbeat_at > now() - make_interval(secs => $1)
"""
# How many ids are on their way to workers now: the window's fill.
COUNT_DISPATCHED = "SELECT count(*) FROM dispatched_tasks"
DISPATCH = "SELECT id, user_id, type FROM taskflow_dispatch($1, $2, $3, $4)"
# The defaults the pick runs with, where taskflow_why() and the operator
# views read them (db/migrations/0012).
WRITE_DISPATCH_SETTINGS = """
UPDATE dispatch_settings SET user_max_running = $1, type_max_running = $2,
    email_per_user_per_minute = $3, written_by = $4, written_at = now()
"""
# Ids picked but never claimed (a publish lost with RabbitMQ, a worker that
# died holding the message): picked again in place, and published again.
# SKIP LOCKED: two dispatchers never republish the same mark.
REDISPATCH_STALE = """
WITH stale AS (
    SELECT task_id FROM dispatched_tasks
    WHERE dispatched_at < now() - make_interval(secs => $1)
    ORDER BY dispatched_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE dispatched_tasks d SET dispatched_at = now()
FROM stale WHERE d.task_id = stale.task_id
RETURNING d.task_id
"""
# A publish that failed: the ids leave the window, so workers claiming from
# Postgres can take them, and the next round picks them again.
UNDISPATCH = "DELETE FROM dispatched_tasks WHERE task_id = ANY($1::uuid[])"
# Taken straight from the pick by a worker (no broker, or idle and woken).
CLAIM_FAIR = """
SELECT id, user_id, type, payload, attempts, max_retries, result, claim_token, run_at,
       last_attempt, started, files_max_bytes, has_dependencies
FROM taskflow_claim_fair($1, $2, $3, $4, $5, $6, $7)
"""
# Balancing: ids picked a while ago that nobody claimed yet, typically waiting
# in another worker's buffer behind its long tasks. Already counted against
# every cap when they were picked; SKIP LOCKED so two workers never take one.
CLAIM_STALE_DISPATCHED = """
WITH stale AS (
    SELECT d.task_id FROM dispatched_tasks d
    WHERE d.dispatched_at < now() - make_interval(secs => $4)
      AND NOT EXISTS (SELECT 1 FROM paused_task_types p WHERE p.type = d.type)
    ORDER BY d.dispatched_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t SET status = 'processing', attempts = t.attempts + 1, worker_id = $2,
    lease_expires_at = now() + make_interval(secs => $3), started_at = now(),
    claim_token = nextval('task_claim_token_seq'), updated_at = now()
FROM stale WHERE t.id = stale.task_id AND t.status::text = 'queued'
RETURNING t.id, t.user_id, t.type, t.payload, t.attempts, t.max_retries, t.result,
          t.claim_token, t.run_at,
          taskflow_attempt_status(t.attempts, t.max_retries, false) = 'failed' AS last_attempt,
          true AS started,
          (SELECT l.files_max_bytes FROM user_limits l WHERE l.user_id = t.user_id)
              AS files_max_bytes,
          EXISTS (SELECT 1 FROM task_dependencies d WHERE d.task_id = t.id) AS has_dependencies
"""


class DispatchStore(Queries):
    """The dispatcher's and the workers' side of the fair pick."""

    async def live_worker_slots(self, *, alive_seconds: float) -> tuple[int, int]:
        row = await self.pool.fetchrow(COUNT_LIVE_SLOTS, alive_seconds)
        assert row is not None
        return row["slots"], row["workers"]

    async def count_dispatched(self) -> int:
        count: int = await self.pool.fetchval(COUNT_DISPATCHED)
        return count

    async def dispatch(self, room: int, limits: FairLimits) -> list[Record]:
        """Pick up to ``room`` tasks into the window."""
        return await self.pool.fetch(DISPATCH, room, *limits.arguments())

    async def undispatch(self, task_ids: Sequence[UUID]) -> None:
        await self.pool.execute(UNDISPATCH, list(task_ids))

    async def redispatch_stale(self, older_than_seconds: float, limit: int) -> list[UUID]:
        rows = await self.pool.fetch(REDISPATCH_STALE, older_than_seconds, limit)
        return [row["task_id"] for row in rows]

    async def claim_fair(
        self,
        worker_id: str,
        lease_seconds: float,
        wanted: int,
        *,
        start_now: int,
        limits: FairLimits,
    ) -> list[Record]:
        rows: Sequence[Record] = await self.pool.fetch(
            CLAIM_FAIR, worker_id, lease_seconds, wanted, start_now, *limits.arguments()
        )
        return sorted(rows, key=lambda row: not row["started"])

    async def claim_stale_dispatched(
        self, limit: int, worker_id: str, lease_seconds: float, *, older_than_seconds: float
    ) -> list[Record]:
        return await self.pool.fetch(
            CLAIM_STALE_DISPATCHED, limit, worker_id, lease_seconds, older_than_seconds
        )
