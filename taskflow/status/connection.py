"""The operator commands' pool: two connections at most, named in
pg_stat_activity, opened for one command and closed after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from taskflow.config import Settings
from taskflow.store.operators import OperatorStore
from taskflow.store.pool import Database


def worker_alive_seconds(settings: Settings, override: float | None = None) -> float:
    # Three leases, as the views' default assumes for lease_seconds = 30:
    # a worker heartbeats every lease / 3, so this is nine missed beats.
    return override if override else 3 * settings.lease_seconds


@asynccontextmanager
async def opened_database(
    settings: Settings, *, application_name: str = "taskflow-status"
) -> AsyncIterator[Database]:
    database = await Database.open(
        settings.database_url.get_secret_value(),
        min_size=1,
        max_size=2,
        application_name=application_name,
    )
    try:
        yield database
    finally:
        await database.close()


def operator_store(
    database: Database, settings: Settings, worker_alive_override: float | None = None
) -> OperatorStore:
    return OperatorStore(
        database.pool, worker_alive_seconds=worker_alive_seconds(settings, worker_alive_override)
    )
