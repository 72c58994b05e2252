"""The chaos run's timeline, and the record of what it did when.

While the producer keeps the workers busy: a SIGKILL of a random ready
worker every ``kill_interval`` seconds, each followed at once by a
replacement worker (as a supervisor would start one); at a fifth of the
kills, a worker is frozen with SIGSTOP for longer than the lease while it runs
a probe task, then continued (the kills go on meanwhile); at 45 % RabbitMQ is
stopped and started, at 70 % Postgres is restarted (``-m fast``), each with
the kills paused until the stack has recovered. Then the producer stops and
the run waits for every task to finish.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from ops.bench.processes import Child
from ops.bench.stack import CLEANUP_DATABASE_ERRORS
from ops.chaos.load import Producer
from ops.chaos.report import TERMINAL, Freeze, all_connected_at, worker_pid
from ops.chaos.stack import ChaosStack

WARMUP_SECONDS = 3.0
# After a service restart, before the kills go on: the restart's own effects
# (rescues, reconnections) are over by then and are not mixed with a kill's.
RECOVERY_PAUSE_SECONDS = 5.0
RECOVERY_TIMEOUT_SECONDS = 90.0
# A worker just continued is not killed for this long, so the marks show
# what its handlers did on resuming.
RESUMED_PROTECTION_SECONDS = 10.0
PROBE_START_TIMEOUT_SECONDS = 30.0
SELECT_HOLDERS = "SELECT DISTINCT worker_id FROM tasks WHERE status = 'processing'"
COUNT_UNFINISHED = "SELECT count(*) FROM tasks WHERE status::text <> ALL($1::text[])"
COUNT_COMPLETED_AFTER = (
    "SELECT count(*) FROM task_history WHERE event = 'completed' AND at > to_timestamp($1)"
)


@dataclass
class Kill:
    pid: int
    at: float
    while_frozen: bool
    holding_tasks: bool


@dataclass
class ServiceRestart:
    service: str
    began: float
    up_at: float | None = None  # the restart (start_app) command returned
    down_at: float | None = None  # RabbitMQ: stop_app returned
    start_at: float | None = None  # RabbitMQ: start_app issued
    # RabbitMQ: the last of the stack's processes connected again (their logs'
    # time); Postgres: a task completed again (seen by polling).
    recovered_at: float | None = None
    error: str | None = None


@dataclass
class Timeline:
    started_at: float
    kills: list[Kill] = field(default_factory=list)
    freeze: Freeze | None = None
    probe: UUID | None = None
    rabbitmq: ServiceRestart | None = None
    postgres: ServiceRestart | None = None
    producing_until: float | None = None
    settled_at: float | None = None
    notes: list[str] = field(default_factory=list)
    # Processes that exited without the run's signal: any makes the run void.
    exits: list[str] = field(default_factory=list)

    @property
    def killed_at(self) -> dict[int, float]:
        return {kill.pid: kill.at for kill in self.kills}


def _run_command(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=180)  # noqa: S603


def _postgres_version() -> str:
    return sorted(path.name for path in Path("/etc/postgresql").iterdir())[0]


class Scenario:
    def __init__(self, stack: ChaosStack, producer: Producer, rng: random.Random) -> None:
        self.stack = stack
        self.producer = producer
        self.options = stack.chaos
        self.rng = rng
        self.timeline = Timeline(started_at=time.time())
        # Kills and the freeze take turns: the probe's worker must not die
        # between being chosen and being stopped.
        self.signals = asyncio.Lock()
        self.protected: set[int] = set()

    async def run(self) -> Timeline:
        stop_producing = asyncio.Event()
        producing = asyncio.create_task(self.producer.run(stop_producing), name="producer")
        freezing: asyncio.Task[None] | None = None
        kills = self.options.kills
        freeze_at, rabbitmq_at = round(kills * 0.2), round(kills * 0.45)
        postgres_at = round(kills * 0.7)
        try:
            await asyncio.sleep(WARMUP_SECONDS)
            for index in range(kills):
                if index == freeze_at:
                    freezing = asyncio.create_task(self._freeze(), name="freeze")
                if self.options.restarts and index in (rabbitmq_at, postgres_at):
                    if freezing is not None:
                        # One event at a time: a restart is not mixed with the freeze.
                        await freezing
                    await self._quiet()
                    if index == rabbitmq_at:
                        await self._restart_rabbitmq()
                    else:
                        await self._restart_postgres()
                await asyncio.sleep(self.rng.uniform(*self.options.kill_interval))
                await self._kill_one()
                if (index + 1) % 10 == 0 or index + 1 == kills:
                    await self._progress(index + 1)
            if freezing is not None:
                await freezing
        finally:
            if freezing is not None and not freezing.done():
                freezing.cancel()
                await asyncio.gather(freezing, return_exceptions=True)
            stop_producing.set()
            await asyncio.gather(producing, return_exceptions=True)
            self.timeline.producing_until = time.time()
        await self._settle()
        return self.timeline

    async def _progress(self, kills: int) -> None:
        elapsed = time.time() - self.timeline.started_at
        print(
            f"  {kills}/{self.options.kills} kills, {len(self.producer.created):,} tasks created, "
            f"{elapsed:.0f} s",
            flush=True,
        )

    # ----- kills

    def _exited(self, child: Child) -> None:
        self.timeline.exits.append(
            f"{child.name} (pid {child.pid}) exited without a signal from the run, status "
            f"{child.process.returncode}, seen at {time.time():.3f}:\n{child.tail(5)}"
        )

    def _replace_exited(self) -> None:
        """A process that exited without our signal (a crash, or a signal from
        outside the run) disturbs the figures: it is noted, the verdict says
        so, and it is started again, as a supervisor would."""
        for worker in [w for w in self.stack.workers if not w.alive()]:
            self._exited(worker)
            self.stack.workers.remove(worker)
            self.stack.start_worker()
        scheduler = self.stack.scheduler
        if scheduler is not None and not scheduler.alive():
            self._exited(scheduler)
            self.stack.scheduler = self.stack.spawn(
                f"scheduler-{len(self.timeline.exits)}", ["scheduler"]
            )

    def _candidates(self) -> list[Child]:
        return [
            worker
            for worker in self.stack.workers
            if worker.alive()
            and self.stack.ready(worker)
            and worker.pid not in self.stack.frozen
            and worker.pid not in self.protected
        ]

    async def _holding_tasks(self) -> set[int]:
        """Pids of the workers holding processing tasks right now."""
        try:
            rows = await self.stack.chaos_store.pool.fetch(SELECT_HOLDERS)
        except CLEANUP_DATABASE_ERRORS:
            return set()
        return {pid for row in rows if (pid := worker_pid(row["worker_id"])) is not None}

    async def _kill_one(self) -> None:
        """SIGKILL one ready worker, picked at random among those holding tasks
        (a kill of an idle worker tests nothing), or among all when none does."""
        deadline = time.monotonic() + 60
        while True:
            self._replace_exited()
            async with self.signals:
                candidates = self._candidates()
                holding = await self._holding_tasks()
                busy = [worker for worker in candidates if worker.pid in holding]
                if candidates:
                    victim = self.rng.choice(busy or candidates)
                    killed_at = self.stack.kill(victim)
                    self.stack.start_worker()
                    self.timeline.kills.append(
                        Kill(
                            victim.pid,
                            killed_at,
                            while_frozen=bool(self.stack.frozen),
                            holding_tasks=victim.pid in holding,
                        )
                    )
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("no worker was ready to be killed for 60 s")
            await asyncio.sleep(0.2)

    # ----- the freeze

    async def _wait_started(self, task_id: UUID) -> int | None:
        """The pid of the process that started the task's first attempt."""
        deadline = time.monotonic() + PROBE_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            for path in self.stack.marks.glob(f"{task_id}.1.*"):
                return int(path.name.rsplit(".", 1)[1])
            await asyncio.sleep(0.05)
        return None

    async def _freeze(self) -> None:
        seconds = self.options.freeze_seconds
        for _ in range(3):
            # Long enough to be running still when the worker is continued.
            probe = await self.producer.create_probe(seconds + 20, later_seconds=1.0)
            pid = await self._wait_started(probe)
            if pid is None:
                continue
            async with self.signals:
                worker = self.stack.by_pid(pid)
                if worker is None or worker not in self.stack.workers or not worker.alive():
                    continue  # killed meanwhile: another probe
                stopped_at = self.stack.freeze(worker)
            print(f"  froze worker {pid} (SIGSTOP) for {seconds:g} s", flush=True)
            continued_at = None
            try:
                await asyncio.sleep(seconds)
            finally:
                continued_at = self.stack.resume(worker)
                self.protected.add(pid)
                asyncio.get_running_loop().call_later(
                    RESUMED_PROTECTION_SECONDS, self.protected.discard, pid
                )
                self.timeline.freeze = Freeze(pid, stopped_at, continued_at)
                self.timeline.probe = probe
            print(f"  continued worker {pid} (SIGCONT)", flush=True)
            return
        self.timeline.notes.append("the freeze probe never started on a live worker: no freeze")

    # ----- service restarts

    async def _quiet(self) -> None:
        """Before a restart: the last kill's or freeze's rescues are over and
        every worker is up, so a restart's effects are its own."""
        await asyncio.sleep(RECOVERY_PAUSE_SECONDS)
        deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self._replace_exited()
            if all(self.stack.ready(worker) for worker in self.stack.workers):
                return
            await asyncio.sleep(0.2)

    async def _restart_rabbitmq(self) -> None:
        restart = ServiceRestart("rabbitmq", began=time.time())
        self.timeline.rabbitmq = restart
        print("  RabbitMQ: rabbitmqctl stop_app", flush=True)
        try:
            await asyncio.to_thread(_run_command, "rabbitmqctl", "stop_app")
        except (OSError, subprocess.SubprocessError) as exc:
            restart.error = f"stop_app failed: {exc}"
        restart.down_at = time.time()
        try:
            await asyncio.sleep(self.options.rabbitmq_outage_seconds)
        finally:
            restart.start_at = time.time()
            await self._start_rabbitmq(restart)
        restart.up_at = time.time()
        print("  RabbitMQ: start_app done; waiting for the stack to reconnect", flush=True)
        deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            # Since it went down: the processes may connect again before
            # start_app returns.
            restart.recovered_at = self._reconnected(restart.down_at)
            if restart.recovered_at is not None:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(RECOVERY_PAUSE_SECONDS)

    async def _start_rabbitmq(self, restart: ServiceRestart) -> None:
        # RabbitMQ is shared with everything else on the machine: try hard.
        for attempt in range(5):
            try:
                await asyncio.to_thread(_run_command, "rabbitmqctl", "start_app")
                return
            except (OSError, subprocess.SubprocessError) as exc:
                restart.error = f"start_app failed (attempt {attempt + 1}): {exc}"
                await asyncio.sleep(2)
        raise RuntimeError(f"RabbitMQ did not start again: {restart.error}")

    def _reconnected(self, since: float) -> float | None:
        """When every live worker and the scheduler had connected to RabbitMQ
        again after ``since`` (by their logs), or None while one has not."""
        live = [w for w in self.stack.workers if w.alive() and w.pid not in self.stack.frozen]
        if self.stack.scheduler is not None:
            live.append(self.stack.scheduler)
        return all_connected_at(
            {child.name: self.stack.log_times(child, "broker_connected") for child in live}, since
        )

    async def _restart_postgres(self) -> None:
        restart = ServiceRestart("postgres", began=time.time())
        self.timeline.postgres = restart
        version = _postgres_version()
        print(f"  Postgres: pg_ctlcluster {version} main restart -m fast", flush=True)
        try:
            await asyncio.to_thread(
                _run_command,
                *("pg_ctlcluster", "--skip-systemctl-redirect", version, "main"),
                *("restart", "-m", "fast"),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            restart.error = f"restart failed: {exc}"
        restart.up_at = time.time()
        deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                completed = await self.stack.chaos_store.pool.fetchval(
                    COUNT_COMPLETED_AFTER, restart.up_at
                )
            except CLEANUP_DATABASE_ERRORS:
                completed = 0
            if completed:
                restart.recovered_at = time.time()
                break
            await asyncio.sleep(0.2)
        print("  Postgres: back, tasks completing again", flush=True)
        await asyncio.sleep(RECOVERY_PAUSE_SECONDS)

    # ----- the end

    async def _settle(self) -> None:
        """Wait for every task to finish (done or failed for good), up to the
        settle time: a task still unfinished then counts as lost."""
        print("  no more tasks or kills; waiting for every task to finish", flush=True)
        deadline = time.monotonic() + self.options.settle_seconds
        while time.monotonic() < deadline:
            self._replace_exited()
            try:
                unfinished = await self.stack.chaos_store.pool.fetchval(
                    COUNT_UNFINISHED, sorted(TERMINAL)
                )
            except CLEANUP_DATABASE_ERRORS:
                unfinished = None
            if unfinished == 0:
                self.timeline.settled_at = time.time()
                break
            await asyncio.sleep(1)
        # A late writer (there should be none) gets its chance to show up.
        await asyncio.sleep(3)
