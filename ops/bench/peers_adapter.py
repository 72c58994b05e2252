"""TaskFlow as one more system in the shared harness (``../shared/bench/peers.py``).

Run from the repository root, in the harness's own virtualenv (see
``../shared/bench/README.md``) with TaskFlow installed into it too::

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install pgqueuer procrastinate celery 'dramatiq[rabbitmq]' \\
        asyncpg aio-pika 'psycopg[binary]' uvloop py-spy
    /tmp/benchvenv/bin/pip install -e .          # TaskFlow's dependencies
    /tmp/benchvenv/bin/python ../shared/bench/peers.py \\
        --adapter ops.bench.peers_adapter:TaskFlowAdapter \\
        --systems taskflow,pgqueuer,pgqueuer_b10,procrastinate,celery,dramatiq,aiopika_raw

``--adapter`` takes a *module* path (``importlib.import_module``; the current
directory is put on ``sys.path``), so it is ``ops.bench.peers_adapter``, not
the file name. ``ops`` has no ``__init__.py``: it is found as a namespace package,
and ``ops.bench`` is a package that imports nothing when it is loaded.

What runs is TaskFlow's real code: the producer is ``Enqueuer`` (one INSERT
per call, durable at return; its NOTIFY wakes the dispatcher and idle
workers); a ``taskflow scheduler`` process, started with the workers, is the
dispatcher that publishes a fair window of ids through RabbitMQ; each worker
process runs ``taskflow.worker.process.Worker`` with ``concurrency = --slots``
on uvloop, with a ``bench_noop`` handler that calls the harness's
``Reporter.hit(seq)`` first thing. The scheduler's CPU counts as the harness's
(it is the harness's child).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

# The harness runs from its own directory and venv: make this checkout's
# ``taskflow`` importable whatever is (or is not) installed there.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import peers  # noqa: E402 - the harness re-imports itself under this name

QUEUE = "bench_taskflow"
TASK_TYPE = "bench_noop"


def _settings(database: str) -> Any:
    from taskflow.config import load_settings

    # Only what the harness dictates; tunables come from the repo's config.json.
    return load_settings(
        {
            "DATABASE_URL": peers.pg_url_for(database),
            "AMQP_URL": peers.AMQP_URL,
            "AMQP_QUEUE": QUEUE,
            "TASKFLOW_ENV_FILE": "/nonexistent/.env",
            "TASKFLOW_LOG_LEVEL": "WARNING",
        }
    )


def _scheduler_env(database: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKFLOW_", "AMQP_"))}
    env.update(
        DATABASE_URL=peers.pg_url_for(database),
        AMQP_URL=peers.AMQP_URL,
        AMQP_QUEUE=QUEUE,
        TASKFLOW_ENV_FILE="/nonexistent/.env",
        TASKFLOW_LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


def _start_scheduler(database: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskflow", "scheduler"],
        env=_scheduler_env(database),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _registry(reporter: Any) -> Any:
    """Only the bench type: its handler reports through the harness's Reporter."""
    from ops.bench.plugin import BenchPayload
    from taskflow.handlers import Registry, TaskContext, TaskType

    async def bench_noop(payload: BenchPayload, ctx: TaskContext) -> None:
        if reporter is not None:
            reporter.hit(payload.seq)

    registry = Registry()
    registry.register(TaskType(TASK_TYPE, BenchPayload, bench_noop, timeout_seconds=30))
    return registry


class TaskFlowAdapter(peers.Adapter):  # type: ignore[misc]
    name = "taskflow"
    pg_db = "bench_taskflow"

    def describe(self) -> str:
        from taskflow.enqueue import INSERT_PART_SIZE

        ids_per_message = _settings(self.pg_db).ids_per_message
        return (
            f"{self.h.procs} procs x taskflow Worker(concurrency={self.h.slots}), uvloop, "
            f"RabbitMQ ids (up to {ids_per_message} per message, prefetch = slots messages), "
            "batched claim (with claim-ahead)/finish; producer: Enqueuer (one INSERT per "
            "create; create_many_ids per chunk: INSERT ... unnest in parts of "
            f"{INSERT_PART_SIZE}, one transaction; nothing published: the "
            "scheduler's dispatcher publishes a fair window)"
        )

    async def setup(self) -> None:
        from taskflow.broker import Broker
        from taskflow.enqueue import Enqueuer
        from taskflow.store.accounts import AccountStore
        from taskflow.store.migrations import apply_migrations
        from taskflow.store.pool import Database
        from taskflow.store.tasks import TaskStore

        class Store(Database, AccountStore, TaskStore):
            """The producer's pool: creates the harness's user and its tasks."""

        await super().setup()  # drops and creates the database
        peers.rmq_delete_queues([QUEUE])
        settings = _settings(self.pg_db)
        dsn = settings.database_url.get_secret_value()
        await apply_migrations(dsn)
        self.store = await Store.open(dsn, min_size=1, max_size=2, application_name="peers")
        # A task belongs to a user; the harness is that user.
        self.user_id = await self.store.insert_user("peers@example.com", "not-a-password-hash")
        # Connecting declares the queue the workers consume.
        self.broker = Broker(settings.amqp_url.get_secret_value(), QUEUE, name="peers-producer")
        self.broker.start()
        if not await self.broker.wait_connected(10):
            raise RuntimeError("RabbitMQ is unreachable")
        self.enqueuer = Enqueuer(self.store, _registry(None))
        self.scheduler = await asyncio.to_thread(_start_scheduler, self.pg_db)
        await self._scheduler_ready()

    async def _scheduler_ready(self, timeout: float = 30.0) -> None:
        """Untimed, like the rest of setup: the scheduler runs in a deployment
        before anything is enqueued, so its start (imports, connections: most
        of a second of CPU on this box) must not overlap the timed phases.
        Ready: its dispatcher is listening, and had time for its first round."""
        from taskflow.dispatcher import LISTENER_NAME

        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"the scheduler exited at start ({self.scheduler.returncode})")
            listening = await self.store.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = $1",
                LISTENER_NAME,
            )
            if listening:
                await asyncio.sleep(0.5)
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the scheduler was not ready within {timeout:g}s")

    async def enqueue_bulk(self, seqs: list[int]) -> None:
        from taskflow.models import TaskCreate

        # The ids, as PGQueuer's Queries.enqueue returns them: the rows are
        # what the REST batch endpoint answers with, and no producer here reads them.
        await self.enqueuer.create_many_ids(
            self.user_id, [TaskCreate(type=TASK_TYPE, payload={"seq": s}) for s in seqs]
        )

    async def enqueue_one(self, seq: int) -> None:
        from taskflow.models import TaskCreate

        await self.enqueuer.create(self.user_id, TaskCreate(type=TASK_TYPE, payload={"seq": seq}))

    async def stop(self) -> None:
        await self.stop_workers()
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.terminate()
            try:
                scheduler.wait(15)
            except subprocess.TimeoutExpired:
                scheduler.kill()
            self.scheduler = None
        if getattr(self, "broker", None) is not None:
            await self.broker.close()
            self.broker = None
        if getattr(self, "store", None) is not None:
            await self.store.close()
            self.store = None

    async def teardown(self) -> None:
        peers.rmq_delete_queues([QUEUE])

    @classmethod
    def worker_main(cls, rep: Any, slots: int) -> None:
        import uvloop

        from taskflow.cli.startup import tune_gc
        from taskflow.runtime import worker_runtime

        settings = _settings(cls.pg_db)
        registry = _registry(rep)
        tune_gc()  # as `taskflow worker` does

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            async with worker_runtime(settings, registry, concurrency=slots) as worker:
                await worker.run(stop)

        # Everything is imported by now; the worker opens its pool and its
        # consumer after GO, as PGQueuer's QueueManager.run does.
        rep.ready_and_wait_go()
        uvloop.run(main())
