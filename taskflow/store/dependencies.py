"""Reading task dependencies (SPEC §9): what a task waits for and what waits
for it, for the API, the worker (``ctx.dependencies``) and a manual retry.

Recording them is part of creating tasks (:mod:`taskflow.store.inserts`);
promoting and cancelling dependents happens in the database, in the
transaction that finishes a dependency (db/functions/45_dependencies.sql).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from taskflow.store.pool import Queries, Record

# How many of each side one answer lists; a fan-out may have many more.
LINKS_LIMIT = 1000

SELECT_DEPENDENCIES = """
SELECT t.id, t.type, t.status FROM task_dependencies d
JOIN tasks t ON t.id = d.depends_on_id
WHERE d.task_id = $1
ORDER BY t.created_at, t.id
LIMIT $2
"""
SELECT_DEPENDENTS = """
SELECT t.id, t.type, t.status FROM task_dependencies d
JOIN tasks t ON t.id = d.task_id
WHERE d.depends_on_id = $1
ORDER BY t.created_at, t.id
LIMIT $2
"""
SELECT_DEPENDENCY_RESULTS = """
SELECT t.id, t.result FROM task_dependencies d
JOIN tasks t ON t.id = d.depends_on_id
WHERE d.task_id = $1
ORDER BY t.created_at, t.id
"""
SELECT_UNFINISHED_DEPENDENCIES = """
SELECT d.depends_on_id AS id, t.status FROM task_dependencies d
LEFT JOIN tasks t ON t.id = d.depends_on_id
WHERE d.task_id = $1 AND t.status IS DISTINCT FROM 'done'
ORDER BY d.depends_on_id
LIMIT 10
"""


@dataclass(frozen=True, slots=True)
class Links:
    dependencies: list[Record]
    dependents: list[Record]


class DependencyStore(Queries):
    async def links(self, task_id: UUID) -> Links:
        """A task's dependencies and dependents (its owner is checked by the caller)."""
        async with self.pool.acquire() as connection:
            return Links(
                await connection.fetch(SELECT_DEPENDENCIES, task_id, LINKS_LIMIT + 1),
                await connection.fetch(SELECT_DEPENDENTS, task_id, LINKS_LIMIT + 1),
            )

    async def results(self, task_id: UUID) -> dict[UUID, Any]:
        """The results of a task's dependencies, by id, oldest first."""
        rows = await self.pool.fetch(SELECT_DEPENDENCY_RESULTS, task_id)
        return {row["id"]: row["result"] for row in rows}

    async def unfinished(self, task_id: UUID) -> list[Record]:
        """Dependencies not done (a few): a manual retry waits for them."""
        return await self.pool.fetch(SELECT_UNFINISHED_DEPENDENCIES, task_id)
