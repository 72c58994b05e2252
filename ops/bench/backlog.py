"""The backlog phase (``--backlog N``, 0 skips): N tasks inserted with
``Store.insert_tasks`` (the dispatcher publishes a window at a time), then drained the same way as
the drain phase; its rate is compared with the drain's."""

from __future__ import annotations

import time

from ops.bench.drain import measure_drain
from ops.bench.options import TASK_TYPE
from ops.bench.progress import Progress
from ops.bench.report import Report
from ops.bench.stack import Stack
from taskflow.enqueue import new_task_id
from taskflow.store.tasks import NewTask

BACKLOG_INSERT_CHUNK = 50_000


async def run_backlog(stack: Stack, report: Report) -> None:
    options = stack.options
    assert stack.store is not None
    count = options.backlog
    print(f"# backlog of {count} queued tasks (filling: insert_tasks)", flush=True)
    seqs = stack.seqs(count)
    block = stack.collector.expect(seqs.start, count)
    inserted = 0
    # The backlog stays in Postgres: the scheduler's dispatcher publishes a
    # window of it at a time as the workers drain it.
    async with Progress("backlog fill", count, lambda: inserted, unit="tasks inserted"):
        started = time.perf_counter()
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
            await stack.store.insert_tasks(stack.user_id, tasks)
            inserted += len(tasks)
        fill_seconds = time.perf_counter() - started
    print(f"  filled in {fill_seconds:.1f} s ({count / fill_seconds:,.0f} tasks/s)", flush=True)
    await stack.sql("ANALYZE")
    drain = await measure_drain(stack, report, "backlog", block, "backlog drain")
    drain["fill_seconds"] = round(fill_seconds, 1)
    await stack.stop_workers()
    report.details["backlog"] = drain
    rate = drain["tasks"] / max(drain["seconds"], 1e-9)
    report.add(
        "backlog_drain_tasks_per_s",
        f"drain of a {count:,}-task backlog",
        rate,
        "tasks/s",
        f"{drain['tasks']} in {drain['seconds']:.1f} s (filled in {fill_seconds:.0f} s)",
    )
    small = report.metrics.get("drain_tasks_per_s")
    if small:
        report.add(
            "backlog_to_drain_ratio",
            f"backlog drain / {options.drain:,}-task drain",
            round(rate / small, 3),
            "x",
            "target >= 0.8",
        )
