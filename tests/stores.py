"""The store as tests use it: every family of queries on one pool, so a test
can reach whatever it sets up or checks. The product's processes each get
only the families they need (taskflow/runtime.py)."""

from __future__ import annotations

from uuid import UUID

from taskflow.config import Tunables
from taskflow.models import TaskStatus
from taskflow.store.accounts import AccountStore
from taskflow.store.engine import EngineStore, Outcome
from taskflow.store.events import LiveEventsStore
from taskflow.store.operators import OperatorStore
from taskflow.store.pool import Database
from taskflow.store.tasks import TaskStore


class Store(Database, AccountStore, TaskStore, EngineStore, OperatorStore, LiveEventsStore):
    """Opened with :meth:`Database.open`, closed with :meth:`close`."""


async def finish(store: EngineStore, *outcomes: Outcome) -> dict[UUID, TaskStatus]:
    """Finish attempts as a worker would, with the default retry backoff."""
    defaults = Tunables()
    return await store.finish_processing_tasks(
        outcomes,
        backoff_base_ms=defaults.retry_backoff_base_ms,
        backoff_max_ms=defaults.retry_backoff_max_ms,
    )
