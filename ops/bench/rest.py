"""The REST phase (unless ``--skip-rest``), workers stopped: ``POST
/api/tasks/batch`` in chunks of 1,000, then one-at-a-time ``POST /api/tasks``
at concurrency 1 and 32. It runs last, so its tasks (queued, never run) stay
out of the drains and its statistics out of the per-task Postgres counts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx
import orjson

from ops.bench.loadgen import HttpError, KeepAliveConnection
from ops.bench.options import ENQUEUE_CHUNK, PHASE_TIMEOUT_SECONDS, TASK_TYPE
from ops.bench.probes import cpu_per_task, percentile
from ops.bench.progress import Progress
from ops.bench.report import Report
from ops.bench.stack import Stack

REST_CONCURRENCY = (1, 32)


async def run_rest(stack: Stack, report: Report) -> None:
    options = stack.options
    headers = {"Authorization": stack.token, "Content-Type": "application/json"}
    print("# REST API (workers stopped)", flush=True)
    limits = httpx.Limits(max_connections=max(REST_CONCURRENCY), max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers=headers, timeout=60, limits=limits
    ) as client:
        # Bulk: POST /api/tasks/batch, 1,000 per request, as many as the drain.
        count = options.drain
        cpu_before = await stack.cpu()
        done = 0
        async with Progress("POST /api/tasks/batch", count, lambda: done):
            started = time.perf_counter()
            for lo in range(0, count, ENQUEUE_CHUNK):
                seqs = stack.seqs(min(ENQUEUE_CHUNK, count - lo))
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
        report.details["rest_batch"] = {
            "cpu_per_task": cpu_per_task(cpu_before, await stack.cpu(), done)
        }
        report.add(
            "enqueue_bulk_rest_tasks_per_s",
            f"bulk enqueue, POST /api/tasks/batch ({ENQUEUE_CHUNK}/request)",
            done / seconds,
            "tasks/s",
            f"{done} tasks in {seconds:.2f} s",
        )
    for concurrency in REST_CONCURRENCY:
        await rest_one_at_a_time(stack, report, headers, concurrency)


async def rest_one_at_a_time(
    stack: Stack, report: Report, headers: dict[str, str], concurrency: int
) -> None:
    total = stack.options.rest_requests
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0
    url = urlsplit(stack.api_url)
    assert url.hostname is not None
    assert url.port is not None
    # One kept-alive connection per concurrent client, as a pool would hold.
    connections = [KeepAliveConnection(url.hostname, url.port, headers) for _ in range(concurrency)]

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
                latencies.append(await one(connection, stack.seqs(1)[0]))
            except HttpError as exc:
                errors[type(exc).__name__] += 1

    label = f"POST /api/tasks, concurrency {concurrency}"
    try:
        # Warm-up, untimed: open the connections and the API's code paths.
        for _ in range(2):
            await asyncio.gather(*(one(c, stack.seqs(1)[0]) for c in connections))
        cpu_before = await stack.cpu()
        async with Progress(label, total, lambda: len(latencies), unit="requests"):
            started = time.perf_counter()
            deadline = started + PHASE_TIMEOUT_SECONDS
            await asyncio.gather(*(loop(c, deadline) for c in connections))
            seconds = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    # Per request: the client (the "bench" group) is on the same two cores.
    report.details[f"rest_c{concurrency}"] = {
        "cpu_per_task": cpu_per_task(cpu_before, await stack.cpu(), len(latencies))
    }
    latencies.sort()
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    key = f"rest_create_c{concurrency}"
    detail = f"{len(latencies)} requests in {seconds:.2f} s, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    if errors:
        detail += f", errors {dict(errors)}"
        report.failures.append(f"POST /api/tasks c={concurrency}: errors {dict(errors)}")
    report.add(
        f"{key}_req_per_s",
        f"POST /api/tasks one at a time, concurrency {concurrency}",
        len(latencies) / seconds,
        "req/s",
        detail,
    )
    report.metrics[f"{key}_p50_ms"] = round(p50, 3)
    report.metrics[f"{key}_p99_ms"] = round(p99, 3)
