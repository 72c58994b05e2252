"""One claimed attempt as the worker holds it (:class:`Running`), and what its
handler is given beside the payload (:class:`TaskContext`): its file area
under the owner's quota, its dependencies' results, and a fenced way to save
progress."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from taskflow.config import Settings
from taskflow.files import UserFiles
from taskflow.files.quota import effective_quota
from taskflow.handlers import TaskContext
from taskflow.store.dependencies import DependencyStore
from taskflow.store.engine import EngineStore
from taskflow.store.pool import Record


@dataclass
class Running:
    task_id: UUID
    claim_token: int
    task_type: str
    attempt: int
    job: asyncio.Task[None] | None = None  # None while claimed ahead, waiting for a slot
    stop_reason: str | None = None  # "cancelled", "lease_lost", "shutdown"
    recorded: bool = False  # the outcome is written; the lease no longer matters
    slot_held: bool = False

    def stop(self, reason: str) -> None:
        """Stop the handler, or keep it from starting if it is still waiting."""
        self.stop_reason = self.stop_reason or reason
        if self.job is not None:
            self.job.cancel()


class Contexts:
    def __init__(self, settings: Settings, store: EngineStore) -> None:
        self.settings = settings
        self.store = store
        self.dependencies = DependencyStore(store.pool)

    async def prepare(
        self,
        row: Record,
        *,
        task_id: UUID,
        claim_token: int,
        task_type: str,
        attempt: int,
        on_lost: Callable[[], None],
    ) -> Callable[[], TaskContext]:
        """Read what the context needs from Postgres now; the context itself
        is made when the handler is about to run (after payload validation)."""

        async def save_progress(result: Any) -> None:
            if not await self.store.save_task_progress(task_id, claim_token, result):
                # Cancelled or rescued meanwhile: stop here, the attempt is no longer ours.
                on_lost()
                raise asyncio.CancelledError("lease lost")

        # Only for a task created with depends_on: a query the others skip.
        dependencies = await self.dependencies.results(task_id) if row["has_dependencies"] else {}
        settings = self.settings

        def make_context() -> TaskContext:
            quota = effective_quota(row["files_max_bytes"], settings.user_files_max_bytes)
            return TaskContext(
                task_id=task_id,
                user_id=row["user_id"],
                task_type=task_type,
                attempt=attempt,
                max_retries=row["max_retries"],
                settings=settings,
                files=UserFiles(settings.base_file_path, row["user_id"], quota_bytes=quota),
                previous_result=row["result"],
                save_progress=save_progress,
                is_last_attempt=row["last_attempt"],
                dependencies=dependencies,
            )

        return make_context
