"""Paused task types (SPEC §9): ``taskflow pause|resume TYPE`` and the list
``taskflow status`` shows. Pausing and resuming go through the operators'
SQL functions (ops/sql/16_paused_types.sql), so the command line and psql
make one and the same change.
"""

from __future__ import annotations

from taskflow.store.pool import Queries, Record

PAUSE_TYPE = "SELECT taskflow_pause_type($1, $2)"
# The function records a pause as made in psql (ops:<role>); one made from
# the command line is the operator's, named in the same transaction.
NAME_PAUSED_BY = "UPDATE paused_task_types SET paused_by = $2 WHERE type = $1"
RESUME_TYPE = "SELECT taskflow_resume_type($1)"
# With the queued tasks each pause holds back (a scan of the queued rows, as
# taskflow_queue_overview makes: a report's cost, not a hot path's).
SELECT_PAUSED_TYPES = """
SELECT p.type, p.paused_at, p.paused_by, p.reason,
       (SELECT count(*) FROM tasks t WHERE t.status = 'queued' AND t.type = p.type) AS queued
FROM paused_task_types p
ORDER BY p.paused_at, p.type
"""


class PausedTypeStore(Queries):
    async def pause_type(self, task_type: str, *, reason: str | None, actor: str) -> bool:
        """False when the type was paused already (nothing changes then)."""
        async with self.pool.acquire() as connection, connection.transaction():
            paused: bool = await connection.fetchval(PAUSE_TYPE, task_type, reason)
            if paused:
                await connection.execute(NAME_PAUSED_BY, task_type, actor)
            return paused

    async def resume_type(self, task_type: str) -> bool:
        """False when the type was not paused."""
        resumed: bool = await self.pool.fetchval(RESUME_TYPE, task_type)
        return resumed

    async def select_paused_types(self) -> list[Record]:
        return await self.pool.fetch(SELECT_PAUSED_TYPES)
