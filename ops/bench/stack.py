"""The private stack the bench measures, started for one run and then removed.

It is the real one: a fresh database ``taskflow_bench_<random>`` on the
configured Postgres server, migrated; a RabbitMQ queue of its own; the API,
the scheduler and the workers as ``python -m taskflow ...`` subprocesses; and
the ``bench_noop`` task type loaded through ``TASKFLOW_PLUGINS``. The bench's
own producer (a pool, a broker and an ``Enqueuer``) lives here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

import taskflow
from ops.bench.options import TASK_TYPE, BenchOptions
from ops.bench.probes import CpuSnapshot, StartBlock, StartCollector, cpu_snapshot
from ops.bench.processes import Child, find_pyspy, free_port, record_profile
from taskflow.broker import BROKER_ERRORS, Broker
from taskflow.config import Settings
from taskflow.enqueue import Enqueuer
from taskflow.errors import StoreUnavailable
from taskflow.handlers import Registry, build_registry
from taskflow.store.migrations import apply_migrations
from taskflow.store.pool import DATABASE_ERRORS, Database, connect, create_database_if_missing
from taskflow.store.tasks import TaskStore
from taskflow.waiting import wait_event

LIFT_CREATION_LIMITS = """
INSERT INTO user_limits (user_id, max_active_tasks, email_per_day, note)
VALUES ($1, 0, 0, 'bench: a trusted producer')
ON CONFLICT (user_id) DO UPDATE SET max_active_tasks = 0, email_per_day = 0
"""

BENCH_PLUGIN = "ops.bench.plugin:TASK_TYPES"
# The checkout holding ``ops/``: the workers import the plugin from it.
CHECKOUT_ROOT = Path(__file__).resolve().parents[2]
# Used when no broker is configured: the bench measures TaskFlow with RabbitMQ.
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
# A drain that makes no progress for this long is over, whatever its timeout.
STALL_SECONDS = 60.0
CLEANUP_DATABASE_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, StoreUnavailable)
CLEANUP_BROKER_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, ConnectionError)

SELECT_DATABASE_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = $1"
SELECT_SERVER_VERSION = "SELECT current_setting('server_version')"
# What the figures depend on: a server without autovacuum measures a long
# backlog with every dead row version left in place.
SELECT_SERVER_SETTINGS = """
SELECT name, setting FROM pg_settings
WHERE name IN ('autovacuum', 'shared_buffers', 'synchronous_commit', 'fsync')
"""


class Store(Database, TaskStore):
    """The bench's producer: a pool of its own, and the API's task queries."""


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


def _server_label(dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}"


class Stack:
    def __init__(self, settings: Settings, options: BenchOptions, *, kind: str = "bench") -> None:
        """``kind`` names its database, queue and log directory (the chaos
        run's stack is a ``chaos`` one)."""
        self.settings = settings
        self.options = options
        suffix = secrets.token_hex(4)
        self.database = f"taskflow_{kind}_{suffix}"
        self.queue = f"taskflow_{kind}_{suffix}"
        server_dsn = settings.database_url.get_secret_value()
        self.dsn = with_database(server_dsn, self.database)
        self.admin_dsn = with_database(server_dsn, "postgres")
        self.amqp_url = (
            settings.amqp_url.get_secret_value() if settings.amqp_url else DEFAULT_AMQP_URL
        )
        self.logs = Path(tempfile.mkdtemp(prefix=f"taskflow-{kind}-"))
        self.collector = StartCollector()
        self.registry = self._registry()
        self.children: list[Child] = []
        self.workers: list[Child] = []
        self.store: Store | None = None
        self.broker: Broker | None = None
        self.enqueuer: Enqueuer | None = None
        self.user_id = 0
        self.token = ""
        self.api_url = ""
        self.next_seq = 0
        self.database_created = False
        self.pyspy: list[subprocess.Popen[bytes]] = []

    def _registry(self) -> Registry:
        registry = build_registry(self.settings)
        if TASK_TYPE not in registry:
            registry.load_plugin(BENCH_PLUGIN)
        return registry

    def seqs(self, count: int) -> range:
        lo = self.next_seq
        self.next_seq += count
        return range(lo, lo + count)

    # ----- processes

    def child_env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("POSTGRES_", "AMQP_", "DATABASE_URL"))
        }
        plugins = [p for p in self.settings.plugins if p != BENCH_PLUGIN] + [BENCH_PLUGIN]
        secret = self.settings.secret_key
        package_root = str(Path(taskflow.__file__).resolve().parent.parent)
        paths = (str(CHECKOUT_ROOT), package_root, os.environ.get("PYTHONPATH", ""))
        env.update(
            DATABASE_URL=self.dsn,
            AMQP_URL=self.amqp_url,
            AMQP_QUEUE=self.queue,
            TASKFLOW_PLUGINS=",".join(plugins),
            BENCH_REPORT_ADDR=self.collector.address,
            TASKFLOW_LOG_FORMAT="text",
            # The bench's own key when none (or a weak one) is configured: the API
            # refuses to start without 32 bytes, and this stack lives minutes.
            SECRET_KEY=(
                secret.get_secret_value()
                if secret is not None and len(secret.get_secret_value().encode()) >= 32
                else secrets.token_urlsafe(48)
            ),
            PYTHONPATH=os.pathsep.join(dict.fromkeys(p for p in paths if p)),
        )
        return env

    def spawn(self, name: str, args: list[str]) -> Child:
        child = Child(name, args, self.child_env(), self.logs)
        self.children.append(child)
        return child

    def start_workers(self) -> None:
        base = len([c for c in self.children if c.name.startswith("worker")])
        self.workers = [
            self.spawn(
                f"worker-{base + i + 1}", ["worker", "--concurrency", str(self.options.slots)]
            )
            for i in range(self.options.procs)
        ]
        print(f"  workers started: pids {', '.join(str(w.pid) for w in self.workers)}", flush=True)

    async def stop_workers(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))
        self.workers = []

    def start_pyspy(self, phase: str) -> None:
        if self.options.pyspy_seconds <= 0:
            return
        executable = find_pyspy()
        if executable is None:
            print("  py-spy not found; no profile", flush=True)
            return
        for worker in self.workers:
            process, out = record_profile(
                executable, worker.pid, self.options.pyspy_seconds, self.logs, phase
            )
            self.pyspy.append(process)
            print(f"  py-spy recording worker {worker.pid} -> {out}", flush=True)

    async def wait_block(self, block: StartBlock, timeout: float) -> None:
        """Until every task of ``block`` started, the timeout passed, progress
        stalled, or every worker died."""
        deadline = time.monotonic() + timeout
        last_count, last_progress = -1, time.monotonic()
        while not block.done.is_set():
            now = time.monotonic()
            if block.count != last_count:
                last_count, last_progress = block.count, now
            if now > deadline or now - last_progress > STALL_SECONDS:
                break
            if self.workers and not any(w.alive() for w in self.workers):
                break
            await wait_event(block.done, 0.5)

    # ----- start

    async def open(self) -> None:
        print(
            f"# taskflow bench: database {self.database} on {_server_label(self.dsn)}, "
            f"queue {self.queue}, {self.options.procs} worker processes x "
            f"{self.options.slots} slots, {self.options.api_processes} API processes; "
            f"logs in {self.logs}",
            flush=True,
        )
        await self.collector.start()
        self.database_created = True  # set first: a half-created database is dropped too
        await create_database_if_missing(self.dsn)
        await apply_migrations(self.dsn)
        await self._open_producer()
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        api = self.spawn(
            "api",
            [
                "api",
                *("--host", "127.0.0.1", "--port", str(port)),
                *("--processes", str(self.options.api_processes)),
            ],
        )
        scheduler = self.spawn("scheduler", ["scheduler"])
        await self._wait_ready(api)
        if not scheduler.alive():
            raise RuntimeError(f"the scheduler exited at start:\n{scheduler.tail()}")
        self.user_id, self.token = await self.register_user()

    async def _open_store(self) -> Store:
        return await Store.open(
            self.dsn,
            min_size=2,
            max_size=4,
            application_name="taskflow-bench",
            actor="bench",
        )

    async def _open_producer(self) -> None:
        """The bench's own pool, broker (connecting declares the queue) and Enqueuer."""
        self.store = await self._open_store()
        self.broker = Broker(self.amqp_url, self.queue, name="taskflow-bench")
        self.broker.start()
        if not await self.broker.wait_connected(10):
            raise RuntimeError(f"RabbitMQ at {urlsplit(self.amqp_url).hostname} is unreachable")
        self.enqueuer = Enqueuer(self.store, self.registry)

    async def reopen_pool(self) -> None:
        """A backend sends its statistics when idle for a while or at exit: closing
        the pool makes the bench's own inserts count before the counters are read."""
        assert self.store is not None
        await self.store.close()
        self.store = await self._open_store()
        self.enqueuer = Enqueuer(self.store, self.registry)

    async def _wait_ready(self, api: Child, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if not api.alive():
                    raise RuntimeError(f"the API exited at start:\n{api.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(f"{self.api_url}/readyz")
                    if response.status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the API was not ready within {timeout:g}s:\n{api.tail()}")

    async def register_user(self) -> tuple[int, str]:
        """A new user through the API, as anyone registers: its id and token."""
        email = f"bench-{secrets.token_hex(6)}@example.com"
        password = secrets.token_urlsafe(24)
        async with httpx.AsyncClient(base_url=self.api_url, timeout=30) as client:
            response = await client.post(
                "/api/register", json={"email": email, "password": password}
            )
            response.raise_for_status()
            user_id = int(response.json()["user_id"])
            response = await client.post("/api/login", json={"email": email, "password": password})
            response.raise_for_status()
        # The bench's users are trusted producers: the creation limits meant
        # for the public (user_max_active_tasks, 10,000 by default) would
        # refuse its backlogs. Fair dispatch still treats them as anyone.
        connection = await connect(self.dsn, application_name="taskflow-bench")
        try:
            await connection.execute(LIFT_CREATION_LIMITS, user_id)
        finally:
            await connection.close()
        return user_id, str(response.json()["token"])

    async def environment(self) -> dict[str, Any]:
        connection = await connect(self.dsn, application_name="taskflow-bench")
        try:
            version = await connection.fetchval(SELECT_SERVER_VERSION)
            settings = {
                row["name"]: row["setting"]
                for row in await connection.fetch(SELECT_SERVER_SETTINGS)
            }
        finally:
            await connection.close()
        if settings.get("autovacuum") == "off":
            print(
                "  note: this Postgres runs with autovacuum = off: long phases measure "
                "without vacuum",
                flush=True,
            )
        return {
            "postgres": version,
            "postgres_settings": settings,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "taskflow": taskflow.__version__,
        }

    # ----- while it runs

    async def sql(self, *statements: str) -> None:
        connection = await connect(self.dsn, application_name="taskflow-bench", actor="bench")
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    async def postgres_backends(self) -> set[int]:
        connection = await connect(self.admin_dsn, application_name="taskflow-bench-stats")
        try:
            rows = await connection.fetch(SELECT_DATABASE_BACKENDS, self.database)
        finally:
            await connection.close()
        return {int(row["pid"]) for row in rows}

    async def cpu(self) -> CpuSnapshot:
        services = {c.pid for c in self.children if c not in self.workers and c.alive()}
        groups = {"workers": {w.pid for w in self.workers}, "api_scheduler": services}
        return cpu_snapshot(groups, await self.postgres_backends())

    # ----- stop

    async def close(self) -> None:
        """Always runs: stop every process, then delete the queue and drop the
        database; what cannot be removed is named, so it can be by hand."""
        for process in self.pyspy:
            if process.poll() is None:
                process.kill()
        await asyncio.gather(
            *(child.stop(timeout=10) for child in self.children), return_exceptions=True
        )
        await self._delete_queue()
        if self.store is not None:
            await self.store.close()
        if self.database_created:
            try:
                await self.drop_database(self.database)
            except CLEANUP_DATABASE_ERRORS as exc:
                print(f"taskflow bench: could not drop {self.database}: {exc}", file=sys.stderr)
        await self.collector.close()

    async def _delete_queue(self) -> None:
        # Connecting declares the queue, so a broker opened just for this works too.
        broker = self.broker or Broker(self.amqp_url, self.queue, name="taskflow-bench-cleanup")
        if self.broker is None:
            broker.start()
        try:
            if not await broker.wait_connected(5):
                raise ConnectionError("RabbitMQ unreachable")
            await broker.delete_queue()
        except CLEANUP_BROKER_ERRORS as exc:
            print(f"taskflow bench: could not delete queue {self.queue}: {exc}", file=sys.stderr)
        finally:
            await broker.close()

    async def drop_database(self, database: str) -> None:
        name = database.replace('"', '""')
        connection = await connect(self.admin_dsn, application_name="taskflow-bench")
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
