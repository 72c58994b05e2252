"""The store as tests use it: every family of queries on one pool, so a test
can reach whatever it sets up or checks. The product's processes each get
only the families they need (taskflow/runtime.py)."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from taskflow.config import Tunables
from taskflow.models import TaskStatus
from taskflow.store.accounts import AccountStore
from taskflow.store.dependencies import DependencyStore
from taskflow.store.dispatch import DispatchStore
from taskflow.store.engine import EngineStore, Outcome
from taskflow.store.events import LiveEventsStore
from taskflow.store.operators import OperatorStore
from taskflow.store.pool import Database, Record
from taskflow.store.tasks import TaskStore

# Back to no task_history partition but the default, as before any retention
# round: migrating a database makes today's and two days ahead.
DROP_HISTORY_PARTITIONS = """
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT i.inhrelid::regclass FROM pg_inherits i
                WHERE i.inhparent = 'task_history'::regclass
                  AND i.inhrelid <> 'task_history_default'::regclass
    LOOP
        EXECUTE format('DROP TABLE %s', part);
    END LOOP;
END
$$
"""


class Store(
    Database,
    AccountStore,
    TaskStore,
    EngineStore,
    DispatchStore,
    OperatorStore,
    LiveEventsStore,
    DependencyStore,
):
    """Opened with :meth:`Database.open`, closed with :meth:`close`."""


async def finish(store: EngineStore, *outcomes: Outcome) -> dict[UUID, TaskStatus]:
    """Finish attempts as a worker would, with the default retry backoff."""
    defaults = Tunables()
    return await store.finish_processing_tasks(
        outcomes,
        backoff_base_ms=defaults.retry_backoff_base_ms,
        backoff_max_ms=defaults.retry_backoff_max_ms,
    )


async def claim(
    store: Store,
    task_ids: Sequence[UUID],
    worker_id: str,
    lease_seconds: float,
    *,
    start_now: int | None = None,
) -> list[Record]:
    """Claim these ids as a worker that received them would: claims by id take
    only what the fair pick sent, so they are put in the dispatch window first
    (where they are queued), as the dispatcher would have."""
    await store.pool.execute(
        "INSERT INTO dispatched_tasks (task_id, user_id, type) "
        "SELECT t.id, t.user_id, t.type FROM tasks t "
        "WHERE t.id = ANY($1) AND t.status = 'queued' ON CONFLICT DO NOTHING",
        list(task_ids),
    )
    return await store.claim_queued_tasks(task_ids, worker_id, lease_seconds, start_now=start_now)
