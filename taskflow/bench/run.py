"""``taskflow bench``: start a private TaskFlow stack and measure it.

The stack is the real one: a fresh database ``taskflow_bench_<random>`` on the
configured Postgres server, migrated; a RabbitMQ queue of its own; the API,
the scheduler and the workers as ``python -m taskflow ...`` subprocesses; and
the ``bench_noop`` task type loaded through ``TASKFLOW_PLUGINS``. Every number
comes from TaskFlow's own code paths (``Enqueuer``, the REST API, ``Worker``).

Phases, in order (workers run only during the drains):

1. Drain: ``Enqueuer.create_many`` in chunks of 1,000 (the bulk enqueue rate),
   ``ANALYZE``, start the workers; drain rate = N / (last handler start - first
   handler start), as the shared harness computes it. Then, on the idle system,
   enqueue->start latency of single ``Enqueuer.create`` calls, one every 5 ms.
   Postgres row writes, commits and WAL per task are the change over this
   phase (enqueue + drain + latency tasks, read after the workers exit), the
   same window as the harness's ``pg_writes``.
2. Backlog (``--backlog N``, 0 skips): N tasks inserted with
   ``Store.insert_tasks`` and published in batches, then drained the same way.
3. REST (unless ``--skip-rest``), workers stopped: ``POST /api/tasks/batch`` in
   chunks of 1,000, then one-at-a-time ``POST /api/tasks`` at concurrency 1 and
   32. Last, so its tasks (queued, never run) stay out of the drains and its
   statistics out of the per-task Postgres counts.

Handler starts arrive over TCP from the plugin (``$BENCH_REPORT_ADDR``), each
stamped with ``time.monotonic_ns()`` in the worker: one clock for the host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

import taskflow
from taskflow.bench.loadgen import HttpError, KeepAliveConnection
from taskflow.bench.probes import (
    CpuSnapshot,
    StartBlock,
    StartCollector,
    cpu_per_task,
    cpu_snapshot,
    percentile,
)
from taskflow.bench.processes import Child, free_port
from taskflow.broker import BROKER_ERRORS, Broker
from taskflow.config import Settings
from taskflow.enqueue import Enqueuer, new_task_id
from taskflow.errors import StoreUnavailable
from taskflow.handlers import Registry, build_registry
from taskflow.models import TaskCreate
from taskflow.store.migrations import apply_migrations
from taskflow.store.pool import DATABASE_ERRORS, Database, connect, create_database_if_missing
from taskflow.store.tasks import NewTask, TaskStore
from taskflow.waiting import wait_event

BENCH_PLUGIN = "taskflow.bench.plugin:TASK_TYPES"


class Store(Database, TaskStore):
    """The bench's producer: a pool of its own, and the API's task queries."""


TASK_TYPE = "bench_noop"
# Used when no broker is configured: the bench measures TaskFlow with RabbitMQ.
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
ENQUEUE_CHUNK = 1000
BACKLOG_INSERT_CHUNK = 50_000
BACKLOG_PUBLISH_CHUNK = 10_000
LATENCY_GAP_SECONDS = 0.005
IDLE_BEFORE_LATENCY_SECONDS = 1.0
PHASE_TIMEOUT_SECONDS = 300.0  # any enqueue phase
LATENCY_TIMEOUT_SECONDS = 30.0
# A drain that makes no progress for this long is over, whatever its timeout.
STALL_SECONDS = 60.0
REST_CONCURRENCY = (1, 32)
CLEANUP_DATABASE_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, StoreUnavailable)
CLEANUP_BROKER_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, ConnectionError)

# ----- queries (measurement only: the product's runtime queries live in store.py)

SELECT_TABLE_STATS = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, seq_scan,
       coalesce(idx_scan, 0) AS idx_scan
FROM pg_stat_user_tables
"""
SELECT_COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
SELECT_WAL_POSITION = "SELECT pg_current_wal_lsn()::text"
# asyncpg has no codec for pg_lsn parameters: positions travel as text.
SELECT_WAL_DIFF = "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)"
SELECT_DATABASE_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = $1"
SELECT_SERVER_VERSION = "SELECT current_setting('server_version')"


# ----- options


@dataclass(frozen=True)
class BenchOptions:
    procs: int = 2
    slots: int = 8
    api_processes: int = 1
    drain: int = 20_000
    backlog: int = 1_000_000
    latency_samples: int = 500
    rest_requests: int = 2000
    skip_rest: bool = False
    drain_timeout_seconds: float = 600.0
    pyspy_seconds: float = 0.0
    json_path: Path | None = None
    keep_logs: bool = False
    repeat: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchOptions:
        quick = bool(getattr(args, "quick", False))

        def pick(name: str, default: Any, quick_value: Any) -> Any:
            value = getattr(args, name, None)
            if value is not None:
                return value
            return quick_value if quick else default

        options = cls(
            procs=pick("procs", 2, 2),
            slots=pick("slots", 8, 8),
            api_processes=pick("api_processes", 1, 1),
            drain=pick("drain", 20_000, 2000),
            backlog=pick("backlog", 1_000_000, 0),
            latency_samples=pick("latency_samples", 500, 200),
            rest_requests=pick("rest_requests", 2000, 500),
            skip_rest=bool(getattr(args, "skip_rest", False)),
            drain_timeout_seconds=pick("drain_timeout", 600.0, 120.0),
            pyspy_seconds=pick("pyspy", 0.0, 0.0),
            json_path=Path(args.json) if getattr(args, "json", None) else None,
            keep_logs=bool(getattr(args, "keep_logs", False)),
            repeat=pick("repeat", 1, 1),
        )
        for name in (
            "procs",
            "slots",
            "api_processes",
            "drain",
            "latency_samples",
            "rest_requests",
            "repeat",
        ):
            if getattr(options, name) < 1:
                raise SystemExit(f"taskflow bench: --{name.replace('_', '-')} must be >= 1")
        if options.backlog < 0:
            raise SystemExit("taskflow bench: --backlog must be >= 0")
        return options


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


def _server_label(dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"{parts.hostname}:{parts.port or 5432}"


# ----- the bench


@dataclass
class Report:
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)  # key: (label, unit)

    def add(self, key: str, label: str, value: float, unit: str, detail: str = "") -> None:
        self.metrics[key] = value
        self.labels[key] = (label, unit)
        shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
        self.rows.append((label, shown, unit, detail))
        print(f"  {label}: {shown} {unit}  {detail}", flush=True)


class Bench:
    def __init__(self, settings: Settings, options: BenchOptions) -> None:
        self.settings = settings
        self.options = options
        suffix = secrets.token_hex(4)
        self.database = f"taskflow_bench_{suffix}"
        self.queue = f"taskflow_bench_{suffix}"
        server_dsn = settings.database_url.get_secret_value()
        self.dsn = _with_database(server_dsn, self.database)
        self.admin_dsn = _with_database(server_dsn, "postgres")
        self.amqp_url = (
            settings.amqp_url.get_secret_value() if settings.amqp_url else DEFAULT_AMQP_URL
        )
        self.logs = Path(tempfile.mkdtemp(prefix="taskflow-bench-"))
        self.collector = StartCollector()
        self.report = Report()
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

    # ----- stack

    def child_env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("POSTGRES_", "AMQP_", "DATABASE_URL"))
        }
        plugins = [p for p in self.settings.plugins if p != BENCH_PLUGIN] + [BENCH_PLUGIN]
        secret = self.settings.secret_key
        package_root = str(Path(taskflow.__file__).resolve().parent.parent)
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
            PYTHONPATH=os.pathsep.join(
                p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
            ),
        )
        return env

    def spawn(self, name: str, args: list[str]) -> Child:
        child = Child(name, args, self.child_env(), self.logs)
        self.children.append(child)
        return child

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
        await self._register_user()
        self.report.details["environment"] = await self._environment()

    async def _open_store(self) -> Store:
        return await Store.open(
            self.dsn,
            min_size=2,
            max_size=4,
            application_name="taskflow-bench",
            actor="bench",
            notify_queued=False,  # it publishes the ids, as the API does
        )

    async def _open_producer(self) -> None:
        """The bench's own pool, broker (connecting declares the queue) and Enqueuer."""
        self.store = await self._open_store()
        self.broker = Broker(self.amqp_url, self.queue, name="taskflow-bench")
        self.broker.start()
        if not await self.broker.wait_connected(10):
            raise RuntimeError(f"RabbitMQ at {urlsplit(self.amqp_url).hostname} is unreachable")
        self.enqueuer = Enqueuer(self.store, self.registry, self.broker)

    async def _reopen_pool(self) -> None:
        """A backend sends its statistics when idle for a while or at exit: closing
        the pool makes the bench's own inserts count before the counters are read."""
        assert self.store is not None
        await self.store.close()
        self.store = await self._open_store()
        assert self.broker is not None
        self.enqueuer = Enqueuer(self.store, self.registry, self.broker)

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

    async def _register_user(self) -> None:
        email = f"bench-{secrets.token_hex(6)}@example.com"
        password = secrets.token_urlsafe(24)
        async with httpx.AsyncClient(base_url=self.api_url, timeout=30) as client:
            response = await client.post(
                "/api/register", json={"email": email, "password": password}
            )
            response.raise_for_status()
            self.user_id = int(response.json()["user_id"])
            response = await client.post("/api/login", json={"email": email, "password": password})
            response.raise_for_status()
            self.token = str(response.json()["token"])

    async def _environment(self) -> dict[str, Any]:
        connection = await connect(self.dsn, application_name="taskflow-bench")
        try:
            version = await connection.fetchval(SELECT_SERVER_VERSION)
        finally:
            await connection.close()
        return {
            "postgres": version,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "taskflow": taskflow.__version__,
        }

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
                await self._drop_database()
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

    async def _drop_database(self) -> None:
        name = self.database.replace('"', '""')
        connection = await connect(self.admin_dsn, application_name="taskflow-bench")
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    # ----- helpers

    async def sql(self, *statements: str) -> None:
        connection = await connect(self.dsn, application_name="taskflow-bench", actor="bench")
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    async def pg_stats(self) -> dict[str, Any]:
        """Cumulative counters: row changes per table, commits, WAL position.
        A fresh connection each time: statistics are cached per transaction."""
        connection = await connect(self.dsn, application_name="taskflow-bench-stats")
        try:
            tables = {
                row["relname"]: [int(row[k]) for k in list(row.keys())[1:]]
                for row in await connection.fetch(SELECT_TABLE_STATS)
            }
            commits = int(await connection.fetchval(SELECT_COMMITS))
            wal = str(await connection.fetchval(SELECT_WAL_POSITION))
        finally:
            await connection.close()
        return {"tables": tables, "commits": commits, "wal": wal}

    async def pg_stats_delta(
        self, before: dict[str, Any], after: dict[str, Any], tasks: int
    ) -> dict[str, Any]:
        connection = await connect(self.dsn, application_name="taskflow-bench-stats")
        try:
            wal_bytes = float(
                await connection.fetchval(SELECT_WAL_DIFF, after["wal"], before["wal"])
            )
        finally:
            await connection.close()
        per_table: dict[str, dict[str, float]] = {}
        writes = 0
        for table, values in sorted(after["tables"].items()):
            old = before["tables"].get(table, [0] * len(values))
            inserted, updated, deleted, hot, seq_scan, idx_scan = (
                a - b for a, b in zip(values, old, strict=True)
            )
            writes += inserted + updated + deleted
            if inserted or updated or deleted or seq_scan or idx_scan:
                per_table[table] = {
                    "inserted": round(inserted / tasks, 3),
                    "updated": round(updated / tasks, 3),
                    "deleted": round(deleted / tasks, 3),
                    "hot_updated": round(hot / tasks, 3),
                    "seq_scans": seq_scan,
                    "index_scans": idx_scan,
                }
        return {
            "tasks": tasks,
            "row_writes_per_task": round(writes / tasks, 3),
            "commits_per_task": round((after["commits"] - before["commits"]) / tasks, 3),
            "wal_bytes_per_task": round(wal_bytes / tasks),
            "per_table": per_table,
        }

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
        executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(executable).exists():
            print("  py-spy not found; no profile", flush=True)
            return
        for worker in self.workers:
            out = self.logs / f"pyspy-{phase}-{worker.pid}.txt"
            with (self.logs / f"pyspy-{phase}-{worker.pid}.log").open("ab") as log_file:
                self.pyspy.append(
                    subprocess.Popen(  # noqa: S603 - py-spy on our own worker
                        [
                            executable,
                            "record",
                            "--pid",
                            str(worker.pid),
                            "--duration",
                            str(max(1, round(self.options.pyspy_seconds))),
                            "--rate",
                            "200",
                            "--format",
                            "raw",
                            "--nonblocking",
                            "--output",
                            str(out),
                        ],
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                    )
                )
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

    async def measure_drain(self, phase: str, block: StartBlock) -> dict[str, Any]:
        """Start the workers on a filled queue; the rate between the first and the
        last handler start, and the CPU split over that window."""
        spawned = time.monotonic_ns()
        self.start_workers()
        deadline = time.monotonic() + 120
        while not block.first.is_set() and time.monotonic() < deadline:
            if not all(w.alive() for w in self.workers):
                break
            await wait_event(block.first, 0.2)
        if not block.first.is_set():
            raise RuntimeError(
                f"{phase}: no task started (workers alive: "
                f"{[w.alive() for w in self.workers]})\n"
                + "\n".join(w.tail() for w in self.workers)
            )
        cpu_before = await self.cpu()
        self.start_pyspy(phase)
        await self.wait_block(block, self.options.drain_timeout_seconds)
        cpu_after = await self.cpu()
        if block.count < block.size:
            self.report.failures.append(f"{phase}: only {block.count} of {block.size} tasks ran")
        if block.duplicates:
            self.report.failures.append(f"{phase}: {block.duplicates} tasks started twice")
        return {
            "tasks": block.count,
            "of": block.size,
            "seconds": round(block.span_seconds, 3),
            "spawn_to_first_start_ms": round((block.first_ns - spawned) / 1e6),
            "duplicates": block.duplicates,
            "cpu_per_task": cpu_per_task(cpu_before, cpu_after, block.count),
        }

    # ----- phases

    async def run_rest(self) -> None:
        options = self.options
        headers = {"Authorization": self.token, "Content-Type": "application/json"}
        print("# REST API (workers stopped)", flush=True)
        limits = httpx.Limits(max_connections=max(REST_CONCURRENCY), max_keepalive_connections=64)
        async with httpx.AsyncClient(
            base_url=self.api_url, headers=headers, timeout=60, limits=limits
        ) as client:
            # Bulk: POST /api/tasks/batch, 1,000 per request, as many as the drain.
            count = options.drain
            cpu_before = await self.cpu()
            started = time.perf_counter()
            done = 0
            for lo in range(0, count, ENQUEUE_CHUNK):
                seqs = self.seqs(min(ENQUEUE_CHUNK, count - lo))
                body = orjson.dumps(
                    {"tasks": [{"type": TASK_TYPE, "payload": {"seq": s}} for s in seqs]}
                )
                response = await client.post("/api/tasks/batch", content=body)
                if response.status_code != 201:
                    raise RuntimeError(
                        f"POST /api/tasks/batch: {response.status_code} {response.text[:300]}"
                    )
                done += len(seqs)
                if time.perf_counter() - started > PHASE_TIMEOUT_SECONDS:
                    break
            seconds = time.perf_counter() - started
            self.report.details["rest_batch"] = {
                "cpu_per_task": cpu_per_task(cpu_before, await self.cpu(), done)
            }
            self.report.add(
                "enqueue_bulk_rest_tasks_per_s",
                f"bulk enqueue, POST /api/tasks/batch ({ENQUEUE_CHUNK}/request)",
                done / seconds,
                "tasks/s",
                f"{done} tasks in {seconds:.2f} s",
            )
        for concurrency in REST_CONCURRENCY:
            await self._rest_one_at_a_time(headers, concurrency)

    async def _rest_one_at_a_time(self, headers: dict[str, str], concurrency: int) -> None:
        total = self.options.rest_requests
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        issued = 0
        url = urlsplit(self.api_url)
        assert url.hostname is not None
        assert url.port is not None
        # One kept-alive connection per concurrent client, as a pool would hold.
        connections = [
            KeepAliveConnection(url.hostname, url.port, headers) for _ in range(concurrency)
        ]

        async def one(connection: KeepAliveConnection, seq: int) -> float:
            body = orjson.dumps({"type": TASK_TYPE, "payload": {"seq": seq}})
            begun = time.perf_counter()
            status, _ = await connection.post("/api/tasks", body)
            elapsed = time.perf_counter() - begun
            if status != 201:
                errors[str(status)] += 1
            return elapsed

        async def loop(connection: KeepAliveConnection, deadline: float) -> None:
            nonlocal issued
            while issued < total and time.perf_counter() < deadline:
                issued += 1
                try:
                    latencies.append(await one(connection, self.seqs(1)[0]))
                except HttpError as exc:
                    errors[type(exc).__name__] += 1

        try:
            # Warm-up, untimed: open the connections and the API's code paths.
            for _ in range(2):
                await asyncio.gather(*(one(c, self.seqs(1)[0]) for c in connections))
            cpu_before = await self.cpu()
            started = time.perf_counter()
            deadline = started + PHASE_TIMEOUT_SECONDS
            await asyncio.gather(*(loop(c, deadline) for c in connections))
            seconds = time.perf_counter() - started
        finally:
            await asyncio.gather(*(c.close() for c in connections))
        # Per request: the client (the "bench" group) is on the same two cores.
        self.report.details[f"rest_c{concurrency}"] = {
            "cpu_per_task": cpu_per_task(cpu_before, await self.cpu(), len(latencies))
        }
        latencies.sort()
        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        key = f"rest_create_c{concurrency}"
        detail = f"{len(latencies)} requests in {seconds:.2f} s, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        if errors:
            detail += f", errors {dict(errors)}"
            self.report.failures.append(f"POST /api/tasks c={concurrency}: errors {dict(errors)}")
        self.report.add(
            f"{key}_req_per_s",
            f"POST /api/tasks one at a time, concurrency {concurrency}",
            len(latencies) / seconds,
            "req/s",
            detail,
        )
        self.report.metrics[f"{key}_p50_ms"] = round(p50, 3)
        self.report.metrics[f"{key}_p99_ms"] = round(p99, 3)

    async def run_drain(self) -> None:
        options = self.options
        assert self.enqueuer is not None
        print(f"# drain of {options.drain} queued tasks", flush=True)
        stats_before = await self.pg_stats()
        seqs = self.seqs(options.drain)
        block = self.collector.expect(seqs.start, len(seqs))
        started = time.perf_counter()
        done = 0
        for lo in range(0, len(seqs), ENQUEUE_CHUNK):
            requests = [
                TaskCreate(type=TASK_TYPE, payload={"seq": s})
                for s in seqs[lo : lo + ENQUEUE_CHUNK]
            ]
            await self.enqueuer.create_many(self.user_id, requests)
            done += len(requests)
            if time.perf_counter() - started > PHASE_TIMEOUT_SECONDS:
                break
        seconds = time.perf_counter() - started
        if done < len(seqs):
            block.size = done  # the rest were never enqueued
        self.report.add(
            "enqueue_bulk_python_tasks_per_s",
            f"bulk enqueue, Enqueuer.create_many ({ENQUEUE_CHUNK}/call)",
            done / seconds,
            "tasks/s",
            f"{done} tasks in {seconds:.2f} s",
        )
        await self.sql("ANALYZE")
        drain = await self.measure_drain("drain", block)
        self.report.details["drain"] = drain
        self.report.add(
            "drain_tasks_per_s",
            f"drain of {block.size} queued tasks",
            drain["tasks"] / max(drain["seconds"], 1e-9),
            "tasks/s",
            f"{drain['tasks']} in {drain['seconds']:.2f} s, "
            f"spawn->first start {drain['spawn_to_first_start_ms']} ms",
        )
        latency_count = await self.run_latency()
        await self.stop_workers()
        await self._reopen_pool()
        await asyncio.sleep(0.7)  # exiting backends flush their statistics
        stats = await self.pg_stats_delta(
            stats_before, await self.pg_stats(), drain["tasks"] + latency_count
        )
        self.report.details["pg_writes"] = stats
        per_table = ", ".join(
            f"{table} +{v['inserted']}/~{v['updated']}/-{v['deleted']}"
            for table, v in stats["per_table"].items()
            if v["inserted"] or v["updated"] or v["deleted"]
        )
        self.report.add(
            "pg_row_writes_per_task",
            "Postgres row writes per task (ins+upd+del)",
            stats["row_writes_per_task"],
            "rows",
            per_table,
        )
        self.report.add(
            "pg_commits_per_task", "Postgres commits per task", stats["commits_per_task"], "commits"
        )
        self.report.add(
            "pg_wal_bytes_per_task",
            "Postgres WAL per task",
            stats["wal_bytes_per_task"],
            "bytes",
            "server-wide WAL: other databases' writes count too",
        )

    async def run_latency(self) -> int:
        """One ``Enqueuer.create`` every 5 ms on the idle system; the time from
        just before the call to the handler's start."""
        assert self.enqueuer is not None
        await asyncio.sleep(IDLE_BEFORE_LATENCY_SECONDS)
        seqs = self.seqs(self.options.latency_samples)
        block = self.collector.expect(seqs.start, len(seqs))
        enqueued = array("q", bytes(8 * len(seqs)))
        started = time.monotonic()
        sent = 0
        for index, seq in enumerate(seqs):
            begun = time.monotonic()
            enqueued[index] = time.monotonic_ns()
            await self.enqueuer.create(
                self.user_id, TaskCreate(type=TASK_TYPE, payload={"seq": seq})
            )
            sent += 1
            if time.monotonic() - started > PHASE_TIMEOUT_SECONDS:
                break
            await asyncio.sleep(max(0.0005, LATENCY_GAP_SECONDS - (time.monotonic() - begun)))
        block.size = sent
        if block.count >= sent:
            block.done.set()
        await self.wait_block(block, LATENCY_TIMEOUT_SECONDS)
        latencies = sorted(
            (block.starts[i] - enqueued[i]) / 1e6 for i in range(sent) if block.starts[i]
        )
        if len(latencies) < sent:
            self.report.failures.append(f"latency: {sent - len(latencies)} of {sent} never started")
        if not latencies:
            return 0
        p50, p95, p99 = (percentile(latencies, p) for p in (50, 95, 99))
        self.report.details["latency"] = {
            "samples": len(latencies),
            "max_ms": round(latencies[-1], 3),
            "gap_ms": LATENCY_GAP_SECONDS * 1000,
        }
        for name, value in (("p50", p50), ("p95", p95)):
            self.report.metrics[f"latency_{name}_ms"] = round(value, 3)
        self.report.add(
            "latency_p99_ms",
            "enqueue->start latency, idle (Enqueuer.create every 5 ms)",
            round(p99, 3),
            "ms p99",
            f"p50 {p50:.2f} / p95 {p95:.2f} / p99 {p99:.2f} / max {latencies[-1]:.2f} ms, "
            f"n={len(latencies)}",
        )
        return len(latencies)

    async def run_backlog(self) -> None:
        options = self.options
        assert self.store is not None
        assert self.broker is not None
        count = options.backlog
        print(f"# backlog of {count} queued tasks (filling: insert_tasks + publish)", flush=True)
        seqs = self.seqs(count)
        block = self.collector.expect(seqs.start, count)
        started = time.perf_counter()
        publishing: asyncio.Task[None] | None = None
        try:
            for lo in range(0, count, BACKLOG_INSERT_CHUNK):
                tasks = [
                    NewTask(
                        id=new_task_id(),
                        type=TASK_TYPE,
                        payload={"seq": s},
                        priority=0,
                        max_retries=3,
                        run_at=None,
                    )
                    for s in seqs[lo : lo + BACKLOG_INSERT_CHUNK]
                ]
                await self.store.insert_tasks(self.user_id, tasks)
                # Publishing this chunk overlaps the next insert; ids only after commit.
                if publishing is not None:
                    await publishing
                publishing = asyncio.create_task(self._publish_all([t.id for t in tasks]))
            if publishing is not None:
                await publishing
        finally:
            if publishing is not None and not publishing.done():
                publishing.cancel()
        fill_seconds = time.perf_counter() - started
        print(f"  filled in {fill_seconds:.1f} s ({count / fill_seconds:,.0f} tasks/s)", flush=True)
        await self.sql("ANALYZE")
        drain = await self.measure_drain("backlog", block)
        drain["fill_seconds"] = round(fill_seconds, 1)
        await self.stop_workers()
        self.report.details["backlog"] = drain
        rate = drain["tasks"] / max(drain["seconds"], 1e-9)
        self.report.add(
            "backlog_drain_tasks_per_s",
            f"drain of a {count:,}-task backlog",
            rate,
            "tasks/s",
            f"{drain['tasks']} in {drain['seconds']:.1f} s (filled in {fill_seconds:.0f} s)",
        )
        small = self.report.metrics.get("drain_tasks_per_s")
        if small:
            self.report.add(
                "backlog_to_drain_ratio",
                f"backlog drain / {options.drain:,}-task drain",
                round(rate / small, 3),
                "x",
                "target >= 0.8",
            )

    async def _publish_all(self, ids: list[Any]) -> None:
        assert self.broker is not None
        for lo in range(0, len(ids), BACKLOG_PUBLISH_CHUNK):
            part = ids[lo : lo + BACKLOG_PUBLISH_CHUNK]
            # A repeat after a failed confirm is harmless: a duplicate id claims nothing.
            for _attempt in range(3):
                if await self.broker.publish_ids(part):
                    break
            else:
                raise RuntimeError("publishing the backlog failed three times")

    async def run(self) -> Report:
        try:
            await self.open()
            await self.run_drain()
            if self.options.backlog > 0:
                await self.run_backlog()
                # The drained backlog's dead row versions, cleaned now rather than by an
                # autovacuum that would compete with the REST phase for the CPUs.
                await self.sql("VACUUM ANALYZE")
            if not self.options.skip_rest:
                await self.run_rest()
        finally:
            await self.close()
        return self.report


# ----- output


def render_table(report: Report, options: BenchOptions) -> str:
    header = ("metric", "value", "unit", "detail")
    lines = [
        f"TaskFlow bench: {options.procs} worker processes x {options.slots} slots, "
        f"{options.api_processes} API processes, bench_noop tasks",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---:|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in report.rows]
    titles = {
        "drain": "the drain (first to last start)",
        "backlog": "the backlog drain",
        "rest_batch": "POST /api/tasks/batch",
        "rest_c1": "POST /api/tasks, concurrency 1",
        "rest_c32": "POST /api/tasks, concurrency 32",
    }
    cpu_lines = []
    for phase, title in titles.items():
        info = report.details.get(phase)
        if info:
            cpu = dict(info["cpu_per_task"])
            busy = cpu.pop("machine_busy_pct")
            cpu_lines.append(
                f"- {title}: "
                + ", ".join(f"{name.removesuffix('_us')} {value}" for name, value in cpu.items())
                + f"; machine busy {busy}%"
            )
    if cpu_lines:
        lines += ["", "CPU µs per task (per request for REST), by process group:", *cpu_lines]
    if report.failures:
        lines += ["", "FAILURES:", *(f"- {failure}" for failure in report.failures)]
    return "\n".join(lines)


def _run_loop(main: Callable[[], Awaitable[Report]]) -> Report:
    async def guarded() -> Report:
        # SIGTERM cancels the bench like Ctrl-C does, so its cleanup still runs.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(guarded())
    return uvloop.run(guarded())


def render_summary(reports: list[Report], options: BenchOptions) -> str:
    """Every metric's median over the runs, with the range: one run is one
    sample of a machine whose neighbours and disks are never quite idle."""
    lines = [
        f"TaskFlow bench, median of {len(reports)} runs: {options.procs} worker processes x "
        f"{options.slots} slots, {options.api_processes} API processes, bench_noop tasks",
        "",
        "| metric | median | unit | min - max |",
        "|---|---:|---|---|",
    ]
    labels: dict[str, tuple[str, str]] = {}
    for report in reports:
        labels.update(report.labels)

    def shown(value: float) -> str:
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"

    for key in dict.fromkeys(key for report in reports for key in report.metrics):
        values = sorted(r.metrics[key] for r in reports if key in r.metrics)
        label, unit = labels.get(key, (key, "ms" if key.endswith("_ms") else ""))
        lines.append(
            f"| {label} | {shown(statistics.median(values))} | {unit} "
            f"| {shown(values[0])} - {shown(values[-1])} |"
        )
    failures = [failure for report in reports for failure in report.failures]
    if failures:
        lines += ["", "FAILURES:", *(f"- {failure}" for failure in failures)]
    return "\n".join(lines)


def main(settings: Settings, args: argparse.Namespace) -> int:
    options = BenchOptions.from_args(args)
    # The bench's own broker and pool log their routine events at INFO; the
    # results table should not be interleaved with them.
    logging.getLogger("taskflow").setLevel(logging.WARNING)
    reports: list[Report] = []
    for run in range(1, options.repeat + 1):
        if options.repeat > 1:
            print(f"# run {run} of {options.repeat}", flush=True)
        code, report = _run_once(settings, options)
        if code != 0:
            return code
        reports.append(report)
    if options.repeat > 1:
        print()
        print(render_summary(reports, options), flush=True)
        if options.json_path is not None:
            document = {"runs": [asdict(report) for report in reports]}
            options.json_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    return 0


def _run_once(settings: Settings, options: BenchOptions) -> tuple[int, Report]:
    bench = Bench(settings, options)
    failed = False
    try:
        report = _run_loop(bench.run)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("taskflow bench: interrupted; the stack was cleaned up", file=sys.stderr)
        return 130, bench.report
    except Exception as exc:
        print(f"taskflow bench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"taskflow bench: logs kept in {bench.logs}", file=sys.stderr)
        report = bench.report
        report.failures.append(f"{type(exc).__name__}: {exc}")
        failed = True
    print()
    print(render_table(report, options), flush=True)
    if options.json_path is not None and options.repeat == 1:
        document = {
            "metrics": report.metrics,
            "details": report.details,
            "failures": report.failures,
            "database": bench.database,
            "queue": bench.queue,
            "options": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()
            },
        }
        options.json_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    keep = failed or bool(report.failures) or options.keep_logs or options.pyspy_seconds > 0
    if keep:
        print(f"# logs: {bench.logs}", flush=True)
    else:
        shutil.rmtree(bench.logs, ignore_errors=True)
    return (1 if failed or report.failures else 0), report
