"""``taskflow pause TYPE`` and ``taskflow resume TYPE`` (SPEC §9): a paused
type's queued tasks stay queued and no worker claims them until it is
resumed; other types run as usual. The change is the one
``taskflow_pause_type()`` / ``taskflow_resume_type()`` make in psql, with
the pause recorded under the operator's name (``cli:<login>``).
"""

from __future__ import annotations

import asyncio

from taskflow.config import Settings
from taskflow.status.connection import opened_database
from taskflow.store.paused_types import PausedTypeStore


def pause_type(settings: Settings, task_type: str, *, reason: str | None, actor: str) -> bool:
    """False when the type was paused already: nothing changed."""

    async def main() -> bool:
        async with opened_database(settings, application_name="taskflow-pause") as database:
            return await PausedTypeStore(database.pool).pause_type(
                task_type, reason=reason, actor=actor
            )

    return asyncio.run(main())


def resume_type(settings: Settings, task_type: str) -> bool:
    """False when the type was not paused: nothing changed."""

    async def main() -> bool:
        async with opened_database(settings, application_name="taskflow-resume") as database:
            return await PausedTypeStore(database.pool).resume_type(task_type)

    return asyncio.run(main())
