"""The latency floor: what the idle enqueue->start path costs in Postgres
alone, with no process in between.

The idle path is two durable commits: the task's INSERT (its trigger writes
the history row and sends the NOTIFY), then a worker's claim straight from
the fair pick (``taskflow_claim_fair``, as an idle worker that hears the
NOTIFY runs it). Here both run back to back on two connections of this
process, in a database of their own (the stack's workers would take the
tasks), so the difference between this and the latency phase is what the
processes add: the API's enqueue code, the NOTIFY's trip into a worker, its
event loop, and starting the handler.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from ops.bench.probes import percentile
from ops.bench.report import Report
from ops.bench.stack import Stack, with_database
from taskflow.store.migrations import apply_migrations
from taskflow.store.pool import connect, create_database_if_missing

# Measurement only: the product's runtime queries live in taskflow/store/.
INSERT_OWNER = """
INSERT INTO users (email, password_hash) VALUES ('floor@bench.invalid', 'not a hash')
RETURNING id
"""
INSERT_TASK = """
INSERT INTO tasks (id, user_id, type, payload, status)
VALUES ($1, $2, 'bench_noop', '{"seq": 0}', 'queued')
"""
CLAIM = "SELECT id FROM taskflow_claim_fair('bench-floor', 30, 8, 8, 1000, '{}'::jsonb, 1000)"
FINISH = "UPDATE tasks SET status = 'done' WHERE id = $1"
GAP_SECONDS = 0.005


async def run_latency_floor(stack: Stack, report: Report) -> None:
    samples = stack.options.latency_samples
    database = f"{stack.database}_floor"
    dsn = with_database(stack.dsn, database)
    await create_database_if_missing(dsn)
    try:
        await apply_migrations(dsn)
        insert_ms, claim_ms, total_ms = await _measure(dsn, samples)
    finally:
        await stack.drop_database(database)
    for values in (insert_ms, claim_ms, total_ms):
        values.sort()
    p50, p99 = percentile(total_ms, 50), percentile(total_ms, 99)
    report.details["latency_floor"] = {
        "samples": len(total_ms),
        **{
            name: {f"p{p}": round(percentile(values, p), 3) for p in (50, 99)}
            for name, values in (("insert_ms", insert_ms), ("claim_ms", claim_ms))
        },
    }
    report.metrics["latency_floor_p50_ms"] = round(p50, 3)
    report.add(
        "latency_floor_p99_ms",
        "latency floor: INSERT then claim, SQL only (two durable commits)",
        round(p99, 3),
        "ms p99",
        f"p50 {p50:.2f} / p99 {p99:.2f} ms; INSERT p50 {percentile(insert_ms, 50):.2f}, "
        f"NOTIFY heard + claim p50 {percentile(claim_ms, 50):.2f}, n={len(total_ms)}",
    )


async def _measure(dsn: str, samples: int) -> tuple[list[float], list[float], list[float]]:
    inserter = await connect(dsn, application_name="taskflow-bench-floor")
    claimer = await connect(dsn, application_name="taskflow-bench-floor")
    heard = asyncio.Event()
    insert_ms: list[float] = []
    claim_ms: list[float] = []
    total_ms: list[float] = []
    try:
        owner = await inserter.fetchval(INSERT_OWNER)
        await claimer.add_listener("taskflow_queued", lambda *_: heard.set())
        for _ in range(samples):
            heard.clear()
            begun = time.perf_counter()
            await inserter.execute(INSERT_TASK, uuid.uuid4(), owner)
            inserted = time.perf_counter()
            await heard.wait()
            claimed = await claimer.fetch(CLAIM)
            done = time.perf_counter()
            if len(claimed) != 1:
                raise RuntimeError(f"the floor's claim took {len(claimed)} tasks, not 1")
            insert_ms.append((inserted - begun) * 1000)
            claim_ms.append((done - inserted) * 1000)
            total_ms.append((done - begun) * 1000)
            await inserter.execute(FINISH, claimed[0]["id"])
            await asyncio.sleep(GAP_SECONDS)
    finally:
        await claimer.close()
        await inserter.close()
    return insert_ms, claim_ms, total_ms
