"""The drain phase, and how any drain is measured.

``Enqueuer.create_many`` in chunks of 1,000 (the bulk enqueue rate),
``ANALYZE``, start the workers; drain rate = N / (last handler start - first
handler start), as the shared harness computes it. Then the latency phase on
the idle system. Postgres row writes, commits and WAL per task are the change
over this whole phase (enqueue + drain + latency tasks, read after the workers
exit), the same window as the harness's ``pg_writes``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ops.bench.latency import run_latency
from ops.bench.latency_floor import run_latency_floor
from ops.bench.options import ENQUEUE_CHUNK, PHASE_TIMEOUT_SECONDS, TASK_TYPE
from ops.bench.pgstats import pg_stats, pg_stats_delta
from ops.bench.probes import StartBlock, cpu_per_task
from ops.bench.progress import Progress
from ops.bench.report import Report
from ops.bench.stack import Stack
from taskflow.models import TaskCreate
from taskflow.waiting import wait_event

# Worker processes have this long to start their first task.
FIRST_START_TIMEOUT_SECONDS = 120


async def measure_drain(
    stack: Stack, report: Report, phase: str, block: StartBlock, label: str
) -> dict[str, Any]:
    """Start the workers on a filled queue; the rate between the first and the
    last handler start, and the CPU split over that window."""
    spawned = time.monotonic_ns()
    stack.start_workers()
    async with Progress(label, block.size, lambda: block.count, unit="tasks started"):
        deadline = time.monotonic() + FIRST_START_TIMEOUT_SECONDS
        while not block.first.is_set() and time.monotonic() < deadline:
            if not all(w.alive() for w in stack.workers):
                break
            await wait_event(block.first, 0.2)
        if not block.first.is_set():
            raise RuntimeError(
                f"{phase}: no task started (workers alive: "
                f"{[w.alive() for w in stack.workers]})\n"
                + "\n".join(w.tail() for w in stack.workers)
            )
        cpu_before = await stack.cpu()
        stack.start_pyspy(phase)
        await stack.wait_block(block, stack.options.drain_timeout_seconds)
        cpu_after = await stack.cpu()
    if block.count < block.size:
        report.failures.append(f"{phase}: only {block.count} of {block.size} tasks ran")
    if block.duplicates:
        report.failures.append(f"{phase}: {block.duplicates} tasks started twice")
    return {
        "tasks": block.count,
        "of": block.size,
        "seconds": round(block.span_seconds, 3),
        "spawn_to_first_start_ms": round((block.first_ns - spawned) / 1e6),
        "duplicates": block.duplicates,
        "cpu_per_task": cpu_per_task(cpu_before, cpu_after, block.count),
    }


async def run_drain(stack: Stack, report: Report) -> None:
    options = stack.options
    assert stack.enqueuer is not None
    print(f"# drain of {options.drain} queued tasks", flush=True)
    stats_before = await pg_stats(stack.dsn)
    seqs = stack.seqs(options.drain)
    block = stack.collector.expect(seqs.start, len(seqs))
    done = 0
    async with Progress("enqueue", len(seqs), lambda: done):
        started = time.perf_counter()
        for lo in range(0, len(seqs), ENQUEUE_CHUNK):
            requests = [
                TaskCreate(type=TASK_TYPE, payload={"seq": s})
                for s in seqs[lo : lo + ENQUEUE_CHUNK]
            ]
            await stack.enqueuer.create_many(stack.user_id, requests)
            done += len(requests)
            if time.perf_counter() - started > PHASE_TIMEOUT_SECONDS:
                break
        seconds = time.perf_counter() - started
    if done < len(seqs):
        block.size = done  # the rest were never enqueued
    report.add(
        "enqueue_bulk_python_tasks_per_s",
        f"bulk enqueue, Enqueuer.create_many ({ENQUEUE_CHUNK}/call)",
        done / seconds,
        "tasks/s",
        f"{done} tasks in {seconds:.2f} s",
    )
    await stack.sql("ANALYZE")
    drain = await measure_drain(stack, report, "drain", block, "drain")
    report.details["drain"] = drain
    report.add(
        "drain_tasks_per_s",
        f"drain of {block.size} queued tasks",
        drain["tasks"] / max(drain["seconds"], 1e-9),
        "tasks/s",
        f"{drain['tasks']} in {drain['seconds']:.2f} s, "
        f"spawn->first start {drain['spawn_to_first_start_ms']} ms",
    )
    latency_count = await run_latency(stack, report)
    await stack.stop_workers()
    await stack.reopen_pool()
    await asyncio.sleep(0.7)  # exiting backends flush their statistics
    stats = await pg_stats_delta(
        stack.dsn, stats_before, await pg_stats(stack.dsn), drain["tasks"] + latency_count
    )
    report.details["pg_writes"] = stats
    per_table = ", ".join(
        f"{table} +{v['inserted']}/~{v['updated']}/-{v['deleted']}"
        for table, v in stats["per_table"].items()
        if v["inserted"] or v["updated"] or v["deleted"]
    )
    report.add(
        "pg_row_writes_per_task",
        "Postgres row writes per task (ins+upd+del)",
        stats["row_writes_per_task"],
        "rows",
        per_table,
    )
    report.add(
        "pg_commits_per_task", "Postgres commits per task", stats["commits_per_task"], "commits"
    )
    report.add(
        "pg_wal_bytes_per_task",
        "Postgres WAL per task",
        stats["wal_bytes_per_task"],
        "bytes",
        "server-wide WAL: other databases' writes count too",
    )
    if latency_count:
        await run_latency_floor(stack, report)
