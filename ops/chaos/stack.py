"""The chaos run's private stack: the bench's (``ops.bench.stack.Stack``)
with its own database and queue names, no API, the ``chaos_sleep`` plugin,
and an empty config.json, so every tunable is at its default (lease 30 s,
tick 1 s). Workers are started, killed, frozen and resumed here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from ops.bench.options import BenchOptions
from ops.bench.processes import Child
from ops.bench.stack import Stack, Store, _server_label
from ops.chaos.options import ChaosOptions
from taskflow.config import Settings
from taskflow.store.accounts import AccountStore
from taskflow.store.migrations import apply_migrations
from taskflow.store.pool import create_database_if_missing

CHAOS_PLUGIN = "ops.chaos.plugin:TASK_TYPES"
READY_TIMEOUT_SECONDS = 60.0


def log_records(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of a process's log (anything else in it is skipped)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                yield json.loads(line)


def record_time(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(record["ts"])).timestamp()


class ChaosStore(Store, AccountStore):
    """The run's own pool: task inserts, its user, and the questions asked afterwards."""


class ChaosStack(Stack):
    def __init__(self, settings: Settings, options: ChaosOptions) -> None:
        super().__init__(
            settings, BenchOptions(procs=options.workers, slots=options.concurrency), kind="chaos"
        )
        self.chaos = options
        self.marks = self.logs / "marks"
        self.marks.mkdir()
        self.config_path = self.logs / "config.json"
        self.config_path.write_text("{}\n")  # every default
        self.scheduler: Child | None = None
        self.generation = 0
        self.frozen: set[int] = set()
        self._ready: set[int] = set()

    @property
    def chaos_store(self) -> ChaosStore:
        assert isinstance(self.store, ChaosStore)
        return self.store

    def child_env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in super().child_env().items()
            # The runner's own TASKFLOW_* (a config path, log level, plugins) are
            # not the defaults this run is about.
            if not key.startswith("TASKFLOW_") and key not in ("BENCH_REPORT_ADDR", "NUMOFWORKERS")
        }
        env.update(
            TASKFLOW_CONFIG=str(self.config_path),
            # No .env either: the children run in the checkout, where one may be.
            TASKFLOW_ENV_FILE=str(self.logs / "no.env"),
            TASKFLOW_PLUGINS=CHAOS_PLUGIN,
            TASKFLOW_LOG_FORMAT="json",
            BASE_FILE_PATH=str(self.logs / "files"),
        )
        return env

    async def _open_store(self) -> Store:
        return await ChaosStore.open(
            self.dsn, min_size=1, max_size=4, application_name="taskflow-chaos", actor="chaos"
        )

    async def open(self) -> None:
        print(
            f"# taskflow chaos: database {self.database} on {_server_label(self.dsn)}, "
            f"queue {self.queue}, {self.chaos.workers} workers x {self.chaos.concurrency} "
            f"slots, empty config.json (every default); logs and marks in {self.logs}",
            flush=True,
        )
        self.database_created = True  # set first: a half-created database is dropped too
        await create_database_if_missing(self.dsn)
        await apply_migrations(self.dsn)
        await self._open_producer()
        self.user_id = await self.chaos_store.insert_user(
            f"chaos-{secrets.token_hex(6)}@example.com", "not-a-password-hash"
        )
        self.scheduler = self.spawn("scheduler", ["scheduler"])
        for _ in range(self.chaos.workers):
            self.start_worker()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not all(self.ready(worker) for worker in self.workers):
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start within 60 s")
            if not self.scheduler.alive():
                raise RuntimeError(f"the scheduler exited at start:\n{self.scheduler.tail()}")
            await asyncio.sleep(0.2)
        print(f"  workers ready: pids {', '.join(str(w.pid) for w in self.workers)}", flush=True)

    # ----- workers

    def start_worker(self) -> Child:
        """A new worker process, as a supervisor starts one in place of a dead one."""
        self.generation += 1
        worker = self.spawn(
            f"worker-{self.generation}", ["worker", "--concurrency", str(self.chaos.concurrency)]
        )
        self.workers.append(worker)
        return worker

    def ready(self, worker: Child) -> bool:
        """The worker registered and is consuming (its log says so)."""
        if worker.pid in self._ready:
            return True
        try:
            started = "worker started" in worker.log_path.read_text(errors="replace")
        except OSError:
            return False
        if started:
            self._ready.add(worker.pid)
        return started

    def log_times(self, child: Child, event: str) -> list[float]:
        """When the process logged ``event`` (its JSON logs' ``event`` field)."""
        return [record_time(r) for r in log_records(child.log_path) if r.get("event") == event]

    def kill(self, worker: Child) -> float:
        """SIGKILL; returns the instant, taken just before the signal."""
        killed_at = time.time()
        os.kill(worker.pid, signal.SIGKILL)
        worker.process.wait()
        self.workers.remove(worker)
        return killed_at

    def freeze(self, worker: Child) -> float:
        stopped_at = time.time()
        os.kill(worker.pid, signal.SIGSTOP)
        self.frozen.add(worker.pid)
        return stopped_at

    def resume(self, worker: Child) -> float:
        continued_at = time.time()
        os.kill(worker.pid, signal.SIGCONT)
        self.frozen.discard(worker.pid)
        return continued_at

    def by_pid(self, pid: int) -> Child | None:
        return next((child for child in self.children if child.pid == pid), None)

    async def stop_processes(self) -> None:
        """Graceful stops, so every handler leaves its last mark before the reading."""
        await asyncio.gather(
            *(child.stop(timeout=30) for child in self.children), return_exceptions=True
        )

    async def close(self) -> None:
        # A stopped process acts on SIGTERM only once continued.
        for pid in list(self.frozen):
            child = self.by_pid(pid)
            if child is not None and child.alive():
                os.kill(pid, signal.SIGCONT)
        self.frozen.clear()
        await super().close()
