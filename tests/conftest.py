"""Shared fixtures: a fresh database per test (cloned from a migrated template),
a fresh RabbitMQ queue per test, settings pointing at both, and an API client.

Everything talks to the real Postgres and RabbitMQ of the machine:
TASKFLOW_TEST_ADMIN_DSN and TASKFLOW_TEST_AMQP_URL say where they are.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from taskflow.api import create_app
from taskflow.broker import decode_ids
from taskflow.config import Settings, load_settings
from taskflow.handlers import Registry, build_registry
from taskflow.runtime import api_services, scheduler_runtime, worker_runtime
from taskflow.scheduler import Scheduler
from taskflow.store.migrations import apply_migrations
from taskflow.worker.process import Worker
from tests.stores import Store

ADMIN_DSN = os.environ.get("TASKFLOW_TEST_ADMIN_DSN", "postgresql://root@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("TASKFLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
RUN_ID = uuid.uuid4().hex[:8]
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"


@pytest.fixture(autouse=True)
def _garbage_of_this_test() -> Iterator[None]:
    """A socket or file a test leaves open in a reference cycle is reported
    (a ResourceWarning, an error here) when the collector frees it, which
    without this is whenever a later test happens to trigger a full
    collection. Collecting at teardown makes the test that leaked it fail."""
    yield
    gc.collect()


def dsn_for(database: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """One migrated database per test run; each test clones it."""
    name = f"taskflow_tpl_{RUN_ID}"

    async def create() -> None:
        await _admin(f'DROP DATABASE IF EXISTS "{name}"')
        await _admin(f'CREATE DATABASE "{name}"')
        await apply_migrations(dsn_for(name))

    asyncio.run(create())
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database(template_database: str) -> AsyncIterator[str]:
    name = f"taskflow_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield dsn_for(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def queue_name() -> AsyncIterator[str]:
    name = f"taskflow_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    yield name
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.queue_delete(name)
    finally:
        await connection.close()


def make_settings(
    dsn: str,
    *,
    queue: str | None,
    files: Path,
    **overrides: Any,
) -> Settings:
    environ = {
        "DATABASE_URL": dsn,
        "AMQP_URL": AMQP_URL if queue else "off",
        "AMQP_QUEUE": queue or "tasks",
        "SECRET_KEY": TEST_SECRET,
        "BASE_FILE_PATH": str(files),
        "TASKFLOW_ENV_FILE": "/nonexistent/.env",
        "TASKFLOW_LOG_FORMAT": "text",
    }
    defaults: dict[str, Any] = {
        "download_allow_private": True,
        "plugins": ("tests.plugins:TASK_TYPES",),
    }
    return load_settings(environ, overrides={**defaults, **overrides})


@pytest.fixture
def settings(database: str, queue_name: str, tmp_path: Path) -> Settings:
    return make_settings(database, queue=queue_name, files=tmp_path / "files")


@pytest.fixture
def registry(settings: Settings) -> Registry:
    return build_registry(settings)


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    opened = await Store.open(database, min_size=1, max_size=8, application_name="taskflow-test")
    yield opened
    await opened.close()


@pytest.fixture
async def app(settings: Settings, registry: Registry) -> AsyncIterator[Quart]:
    application = create_app(settings, registry, api_services)
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[misc]


@pytest.fixture
def client(app: Quart) -> TestClientProtocol:
    return app.test_client()


async def auth_headers(
    client: TestClientProtocol, email: str = "user@example.com"
) -> dict[str, str]:
    """Register and log in; return the Authorization header as the seed uses it."""
    password = "secret-password"
    response = await client.post("/api/register", json={"email": email, "password": password})
    assert response.status_code in (201, 409), await response.get_data()
    response = await client.post("/api/login", json={"email": email, "password": password})
    assert response.status_code == 200, await response.get_data()
    token = (await response.get_json())["token"]
    return {"Authorization": token}


# ----- running engine components in-process


@asynccontextmanager
async def running(component: Any) -> AsyncIterator[Any]:
    """Run a Worker or Scheduler (anything with ``run(stop)``) for the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(component.run(stop))
    try:
        yield component
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def running_worker(
    settings: Settings, registry: Registry | None = None, **options: Any
) -> AsyncIterator[Worker]:
    """A worker built as ``taskflow worker`` builds it, running for the block."""
    async with (
        worker_runtime(settings, registry or build_registry(settings), **options) as worker,
        running(worker),
    ):
        yield worker


@asynccontextmanager
async def running_scheduler(settings: Settings) -> AsyncIterator[Scheduler]:
    async with scheduler_runtime(settings) as scheduler, running(scheduler):
        yield scheduler


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float = 15, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def waiting_on_a_lock(store: Store) -> bool:
    """Whether some session of the test's database waits for a lock now."""
    waiting: int = await store.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return waiting > 0


async def new_user(store: Store, email: str = "worker-test@example.com") -> int:
    return await store.insert_user(email, "not-a-real-hash")


async def published_ids(queue: str) -> list[uuid.UUID]:
    """Every task id waiting in a queue, in order. The messages are read
    unacked and go back to the queue when the connection closes."""
    connection = await aio_pika.connect(AMQP_URL)
    ids: list[uuid.UUID] = []
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, durable=True, passive=True)
        while (message := await declared.get(no_ack=False, fail=False)) is not None:
            decoded = decode_ids(message.body)
            assert decoded is not None, message.body
            ids.extend(decoded)
    finally:
        await connection.close()
    return ids
