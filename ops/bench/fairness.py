"""The fairness phase (SPEC §8): user A floods, user B trickles.

SPEC §8 promises that with A's backlog queued, a task B creates starts within
1 s plus one handler's duration. This phase measures it: B's create->start
latency (p50/p99/max), and A's throughput meanwhile, compared with the
single-user drain of the same run, since fair share is not supposed to cost
throughput.

Two runs: ``bench_noop`` as it is ("short handlers"), then the same handler
sleeping ``fairness_sleep_ms`` for A and B alike, so "one handler's duration"
is visible. Each run:

1. With the workers stopped, A's backlog is enqueued in bulk
   (``Enqueuer.create_many``), at least ``fairness_backlog`` tasks and enough
   to last the run at the rate the workers reached in the drain: filled
   beforehand, the producer does not compete with the workers any more than
   in the single-user drain it is compared with. Should A's queue still run
   low, more is added (``a_topped_up`` in the details).
2. The workers start. Once A's flood is steady (``_Run.warm_up``), B creates
   one task every 100 ms with ``Enqueuer.create``, as a client would.
   B's latency: from just before its create call to its handler start, both
   ``time.monotonic_ns()`` (one clock for the host, as in ``latency.py``).
   A's throughput: A's handler starts between B's first and last create.
3. The workers stop and what is left of A's backlog is cancelled, so no later
   phase drains it.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ops.bench.drain import FIRST_START_TIMEOUT_SECONDS
from ops.bench.options import ENQUEUE_CHUNK, TASK_TYPE
from ops.bench.probes import percentile
from ops.bench.progress import Progress
from ops.bench.report import Report
from ops.bench.stack import Stack
from taskflow.models import TaskCreate
from taskflow.waiting import wait_event

B_GAP_SECONDS = 0.1
# A's tasks start at least this long before B's first create: the
# dispatcher's window adapts to the claim rate of workers that just started.
WARMUP_SECONDS = 1.0
MAX_WARMUP_SECONDS = 15.0
# A's backlog: the drain's rate over the warm-up and the run, with this margin.
BACKLOG_MARGIN = 1.5
MAX_BACKLOG = 500_000
# Below this many seconds of work waiting, A's queue is topped up.
LOW_WATER_SECONDS = 1.0
TOP_UP_CHECK_SECONDS = 0.05
# B's last tasks have this long to start after its last create: a generous
# functional deadline, so a B stuck behind A's whole backlog still shows.
B_WAIT_SECONDS = 30.0
TARGET_BASE_MS = 1000.0  # SPEC §8: 1 s plus one handler's duration

# The dispatch window (db/migrations/0009_fair_dispatch.sql): ids picked and
# published, not claimed yet.
COUNT_DISPATCHED = "SELECT count(*) FROM dispatched_tasks"
# The workers are stopped: only queued tasks remain, unless one was killed
# with a task in hand (the scheduler would give it back to the queue).
CANCEL_UNFINISHED = """
UPDATE tasks SET status = 'cancelled', finished_at = now(), updated_at = now(),
    lease_expires_at = NULL
WHERE user_id = ANY($1::bigint[])
  AND status = ANY('{postponed,queued,retrying,processing}'::task_status[])
"""


@dataclass(frozen=True)
class FairnessRun:
    key: str  # in metric names: fairness_<key>_...
    title: str
    sleep_ms: int


@dataclass
class Measured:
    """One run's raw numbers."""

    backlog: int
    fill_seconds: float
    warmup_seconds: float
    dispatched_at_first_start: int
    topped_up: int
    ran_dry: bool
    b_sent: int
    b_latencies_ms: list[float]
    # In creation order, None for one that never started: shows whether the
    # slow ones came together (a transient) or spread over the run.
    b_latencies_in_order_ms: list[float | None]
    a_starts: int
    window_seconds: float
    duplicates: int
    cancelled: int


def backlog_size(rate_per_second: float, seconds: float, minimum: int) -> int:
    """A's backlog: enough for the warm-up and the run at ``rate_per_second``."""
    needed = math.ceil(rate_per_second * (WARMUP_SECONDS + seconds) * BACKLOG_MARGIN)
    return max(minimum, min(MAX_BACKLOG, needed))


def count_starts_between(
    starts: Sequence[int], lo: int, hi: int, from_ns: int, until_ns: int
) -> int:
    """Handler starts at ``starts[lo:hi]`` within ``[from_ns, until_ns)``
    (0 is a task that never started)."""
    return sum(
        1 for index in range(lo, hi) if starts[index] and from_ns <= starts[index] < until_ns
    )


def latencies_ms(starts: Sequence[int], created_ns: Sequence[int]) -> list[float]:
    """Create->start of each task that started, sorted; ``starts[i]`` belongs
    to ``created_ns[i]`` and 0 means it never started."""
    return sorted(
        (starts[index] - created) / 1e6 for index, created in enumerate(created_ns) if starts[index]
    )


async def run_fairness(stack: Stack, report: Report) -> None:
    options = stack.options
    user_b, _ = await stack.register_user()
    print(
        f"# fairness: user A floods, user B creates one task every "
        f"{B_GAP_SECONDS * 1000:.0f} ms for {options.fairness_seconds:g} s",
        flush=True,
    )
    drain_rate = report.metrics.get("drain_tasks_per_s", 0.0)
    slots = options.procs * options.slots
    sleep_ms = options.fairness_sleep_ms
    for run, rate in (
        (FairnessRun("short", "short handlers", 0), drain_rate),
        (FairnessRun("sleep", f"{sleep_ms} ms handlers", sleep_ms), slots * 1000 / sleep_ms),
    ):
        measured = await _measure(stack, user_b, run, rate)
        _report(stack, report, run, measured, drain_rate)


def _tasks(seqs: Sequence[int], sleep_ms: int) -> list[TaskCreate]:
    extra = {"sleep_ms": sleep_ms} if sleep_ms else {}
    return [TaskCreate(type=TASK_TYPE, payload={"seq": seq, **extra}) for seq in seqs]


class _Run:
    """One run's state: the block of seqs (B's first, then A's, with room for
    A to be topped up to twice its backlog) and what was enqueued so far."""

    def __init__(self, stack: Stack, user_b: int, run: FairnessRun, rate: float) -> None:
        assert stack.enqueuer is not None
        self.stack = stack
        self.enqueuer = stack.enqueuer
        self.user_a, self.user_b = stack.user_id, user_b
        self.run = run
        self.phase = f"fairness, {run.title}"
        options = stack.options
        self.backlog = backlog_size(rate, options.fairness_seconds, options.fairness_backlog)
        self.low_water = max(ENQUEUE_CHUNK, math.ceil(rate * LOW_WATER_SECONDS))
        self.b_count = math.ceil(options.fairness_seconds / B_GAP_SECONDS)
        seqs = stack.seqs(self.b_count + 2 * self.backlog)
        self.block = stack.collector.expect(seqs.start, len(seqs))
        self.b_seqs, self.a_seqs = seqs[: self.b_count], seqs[self.b_count :]
        self.a_enqueued = 0
        self.topped_up = 0
        self.ran_dry = False
        self.created_ns = array("q", bytes(8 * self.b_count))
        self.b_sent = 0

    def b_started(self) -> int:
        return sum(1 for index in range(self.b_count) if self.block.starts[index])

    def a_started(self) -> int:
        return self.block.count - self.b_started()

    def workers_alive(self) -> bool:
        return any(w.alive() for w in self.stack.workers)

    async def enqueue_a(self, count: int) -> None:
        chunk = self.a_seqs[self.a_enqueued : self.a_enqueued + count]
        await self.enqueuer.create_many(self.user_a, _tasks(chunk, self.run.sleep_ms))
        self.a_enqueued += len(chunk)

    async def fill(self) -> float:
        async with Progress(f"{self.phase}: A's backlog", self.backlog, lambda: self.a_enqueued):
            started = time.perf_counter()
            while self.a_enqueued < self.backlog:
                await self.enqueue_a(min(ENQUEUE_CHUNK, self.backlog - self.a_enqueued))
            return time.perf_counter() - started

    async def wait_first_start(self) -> None:
        block = self.block
        deadline = time.monotonic() + FIRST_START_TIMEOUT_SECONDS
        while not block.first.is_set() and time.monotonic() < deadline:
            if not all(w.alive() for w in self.stack.workers):
                break
            await wait_event(block.first, 0.2)
        if not block.first.is_set():
            workers = self.stack.workers
            raise RuntimeError(
                f"{self.phase}: no task started (workers alive: {[w.alive() for w in workers]})\n"
                + "\n".join(w.tail() for w in workers)
            )

    async def keep_a_queued(self, progress: Progress, stop: asyncio.Event) -> None:
        """Tops A's queue up should it run low before ``stop``."""
        while not stop.is_set():
            waiting = self.a_enqueued - self.a_started()
            self.ran_dry = self.ran_dry or waiting <= 0
            if waiting >= self.low_water or self.a_enqueued >= len(self.a_seqs):
                await wait_event(stop, TOP_UP_CHECK_SECONDS)
                continue
            before = self.a_enqueued
            await self.enqueue_a(ENQUEUE_CHUNK)
            self.topped_up += self.a_enqueued - before
            progress.total = self.a_enqueued

    async def warm_up(self) -> tuple[float, int]:
        """Until A's flood is steady; returns how long it took, and how many
        ids were on their way to workers when the first task started.

        Those ids were picked while no worker ran, into a window the
        dispatcher sized from the claim rate it saw last (the previous run's,
        when handlers were faster): B's first tasks would queue behind all of
        them. This phase measures A's steady flood, so B starts once they are
        taken, and a second later."""
        assert self.stack.store is not None
        began = time.monotonic()
        dispatched = int(await self.stack.store.pool.fetchval(COUNT_DISPATCHED))
        deadline = began + MAX_WARMUP_SECONDS
        while self.a_started() < dispatched and time.monotonic() < deadline:
            if not self.workers_alive():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(WARMUP_SECONDS)
        return time.monotonic() - began, dispatched

    async def trickle(self) -> tuple[int, int]:
        """B's tasks, one every ``B_GAP_SECONDS``; returns the window of A's
        throughput: B's first create to just after its last."""
        began = time.monotonic()
        for index, seq in enumerate(self.b_seqs):
            await asyncio.sleep(max(0.0, began + index * B_GAP_SECONDS - time.monotonic()))
            self.created_ns[index] = time.monotonic_ns()
            await self.enqueuer.create(self.user_b, _tasks([seq], self.run.sleep_ms)[0])
            self.b_sent += 1
            if not self.workers_alive():
                break
        return self.created_ns[0], time.monotonic_ns()

    async def wait_b(self) -> None:
        deadline = time.monotonic() + B_WAIT_SECONDS + self.run.sleep_ms / 1000
        while self.b_started() < self.b_sent and time.monotonic() < deadline:
            if not self.workers_alive():
                break
            await asyncio.sleep(0.05)


async def _measure(stack: Stack, user_b: int, run: FairnessRun, rate: float) -> Measured:
    assert stack.store is not None
    state = _Run(stack, user_b, run, rate)
    print(f"## {state.phase}: A's backlog of {state.backlog:,} tasks", flush=True)
    fill_seconds = await state.fill()
    print(f"  enqueued in {fill_seconds:.1f} s", flush=True)
    await stack.sql("ANALYZE")

    stack.start_workers()
    stop_top_up = asyncio.Event()
    async with Progress(
        state.phase, state.a_enqueued, state.a_started, unit="A tasks started"
    ) as progress:
        top_up = asyncio.create_task(state.keep_a_queued(progress, stop_top_up))
        try:
            await state.wait_first_start()
            warmup_seconds, dispatched = await state.warm_up()
            print(
                f"  warmed up in {warmup_seconds:.1f} s ({dispatched:,} ids were on their "
                "way to workers at the first start); B starts now",
                flush=True,
            )
            from_ns, until_ns = await state.trickle()
        finally:
            stop_top_up.set()
            await top_up
        await state.wait_b()

    await stack.stop_workers()
    status = await stack.store.pool.execute(CANCEL_UNFINISHED, [state.user_a, state.user_b])
    cancelled = int(status.split()[-1])
    print(f"  workers stopped; {cancelled:,} of A's tasks left over, cancelled", flush=True)

    block, created_ns, sent = state.block, state.created_ns, state.b_sent
    return Measured(
        backlog=state.backlog,
        fill_seconds=fill_seconds,
        warmup_seconds=warmup_seconds,
        dispatched_at_first_start=dispatched,
        topped_up=state.topped_up,
        ran_dry=state.ran_dry,
        b_sent=sent,
        b_latencies_ms=latencies_ms(block.starts, created_ns[:sent]),
        b_latencies_in_order_ms=[
            round((block.starts[index] - created_ns[index]) / 1e6, 1)
            if block.starts[index]
            else None
            for index in range(sent)
        ],
        a_starts=count_starts_between(block.starts, state.b_count, block.size, from_ns, until_ns),
        window_seconds=(until_ns - from_ns) / 1e9,
        duplicates=block.duplicates,
        cancelled=cancelled,
    )


def _report(
    stack: Stack, report: Report, run: FairnessRun, measured: Measured, drain_rate: float
) -> None:
    options = stack.options
    phase = f"fairness, {run.title}"
    key = f"fairness_{run.key}"
    latencies = measured.b_latencies_ms
    target_ms = TARGET_BASE_MS + run.sleep_ms
    a_rate = measured.a_starts / max(measured.window_seconds, 1e-9)
    details: dict[str, Any] = {
        "sleep_ms": run.sleep_ms,
        "a_backlog": measured.backlog,
        "a_fill_seconds": round(measured.fill_seconds, 2),
        "warmup_seconds": round(measured.warmup_seconds, 2),
        "dispatched_at_first_start": measured.dispatched_at_first_start,
        "a_topped_up": measured.topped_up,
        "a_ran_dry": measured.ran_dry,
        "a_starts_in_window": measured.a_starts,
        "window_seconds": round(measured.window_seconds, 3),
        "a_cancelled_after": measured.cancelled,
        "b_gap_ms": B_GAP_SECONDS * 1000,
        "b_sent": measured.b_sent,
        "b_started": len(latencies),
        "duplicates": measured.duplicates,
        "target_b_p99_ms": target_ms,
        "b_latencies_in_order_ms": measured.b_latencies_in_order_ms,
    }
    report.details[key] = details
    if measured.duplicates:
        report.failures.append(f"{phase}: {measured.duplicates} tasks started twice")
    if len(latencies) < measured.b_sent:
        report.failures.append(
            f"{phase}: {measured.b_sent - len(latencies)} of B's {measured.b_sent} tasks "
            f"did not start within {B_WAIT_SECONDS:g} s of the last"
        )
    if not latencies:
        return
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    details["b_p99_met_target"] = p99 <= target_ms
    backlog = f"A backlog {measured.backlog:,}"
    if measured.topped_up:
        backlog += f" (+{measured.topped_up:,} added)"
    if measured.ran_dry:
        backlog += ", ran dry"
    report.metrics[f"{key}_b_p50_ms"] = round(p50, 3)
    report.add(
        f"{key}_b_p99_ms",
        f"B's create->start while A floods, {run.title}",
        round(p99, 3),
        "ms p99",
        f"p50 {p50:.1f} / p99 {p99:.1f} / max {latencies[-1]:.1f} ms, n={len(latencies)}; "
        f"{backlog}; B one task every {B_GAP_SECONDS * 1000:.0f} ms; "
        f"target: B p99 <= 1 s + one handler ({target_ms:,.0f} ms): "
        + ("met" if p99 <= target_ms else "MISSED"),
    )
    report.metrics[f"{key}_b_max_ms"] = round(latencies[-1], 3)
    a_detail = f"{measured.a_starts:,} starts in {measured.window_seconds:.1f} s"
    if run.sleep_ms:
        capacity = options.procs * options.slots * 1000 / run.sleep_ms
        a_detail += f"; the slots allow {capacity:,.0f}/s"
    report.add(
        f"{key}_a_tasks_per_s",
        f"A's throughput meanwhile, {run.title}",
        a_rate,
        "tasks/s",
        a_detail,
    )
    if not run.sleep_ms and drain_rate > 0:
        report.add(
            f"{key}_a_to_drain_ratio",
            f"A's throughput / {options.drain:,}-task single-user drain",
            round(a_rate / drain_rate, 3),
            "x",
            f"single-user drain {drain_rate:,.0f} tasks/s; fair share should not cost throughput",
        )
