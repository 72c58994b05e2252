"""The latency phase: enqueue->start of single ``Enqueuer.create`` calls, one
every 5 ms, on the idle system (the workers of the drain still running)."""

from __future__ import annotations

import asyncio
import time
from array import array

from ops.bench.options import PHASE_TIMEOUT_SECONDS, TASK_TYPE
from ops.bench.probes import percentile
from ops.bench.report import Report
from ops.bench.stack import Stack
from taskflow.models import TaskCreate

LATENCY_GAP_SECONDS = 0.005
IDLE_BEFORE_LATENCY_SECONDS = 1.0
LATENCY_TIMEOUT_SECONDS = 30.0


async def run_latency(stack: Stack, report: Report) -> int:
    """One ``Enqueuer.create`` every 5 ms on the idle system; the time from
    just before the call to the handler's start. Returns the tasks that started."""
    assert stack.enqueuer is not None
    await asyncio.sleep(IDLE_BEFORE_LATENCY_SECONDS)
    seqs = stack.seqs(stack.options.latency_samples)
    block = stack.collector.expect(seqs.start, len(seqs))
    enqueued = array("q", bytes(8 * len(seqs)))
    started = time.monotonic()
    sent = 0
    for index, seq in enumerate(seqs):
        begun = time.monotonic()
        enqueued[index] = time.monotonic_ns()
        await stack.enqueuer.create(stack.user_id, TaskCreate(type=TASK_TYPE, payload={"seq": seq}))
        sent += 1
        if time.monotonic() - started > PHASE_TIMEOUT_SECONDS:
            break
        await asyncio.sleep(max(0.0005, LATENCY_GAP_SECONDS - (time.monotonic() - begun)))
    block.size = sent
    if block.count >= sent:
        block.done.set()
    await stack.wait_block(block, LATENCY_TIMEOUT_SECONDS)
    latencies = sorted(
        (block.starts[i] - enqueued[i]) / 1e6 for i in range(sent) if block.starts[i]
    )
    if len(latencies) < sent:
        report.failures.append(f"latency: {sent - len(latencies)} of {sent} never started")
    if not latencies:
        return 0
    p50, p95, p99 = (percentile(latencies, p) for p in (50, 95, 99))
    report.details["latency"] = {
        "samples": len(latencies),
        "max_ms": round(latencies[-1], 3),
        "gap_ms": LATENCY_GAP_SECONDS * 1000,
    }
    for name, value in (("p50", p50), ("p95", p95)):
        report.metrics[f"latency_{name}_ms"] = round(value, 3)
    report.add(
        "latency_p99_ms",
        "enqueue->start latency, idle (Enqueuer.create every 5 ms)",
        round(p99, 3),
        "ms p99",
        f"p50 {p50:.2f} / p95 {p95:.2f} / p99 {p99:.2f} / max {latencies[-1]:.2f} ms, "
        f"n={len(latencies)}",
    )
    return len(latencies)
