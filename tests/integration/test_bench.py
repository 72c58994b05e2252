"""`taskflow bench --quick` end to end: it runs the bench of the checkout
(ops/bench), reports every number, and leaves nothing behind. Correctness
only: no number is compared with a target (benchmark figures are never
assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from tests.conftest import ADMIN_DSN, AMQP_URL, dsn_for

REPO = Path(__file__).resolve().parents[2]

EXPECTED_METRICS = {
    "enqueue_bulk_rest_tasks_per_s",
    "rest_create_c1_req_per_s",
    "rest_create_c1_p50_ms",
    "rest_create_c1_p99_ms",
    "rest_create_c32_req_per_s",
    "rest_create_c32_p50_ms",
    "rest_create_c32_p99_ms",
    "enqueue_bulk_python_tasks_per_s",
    "drain_tasks_per_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_floor_p50_ms",
    "latency_floor_p99_ms",
    "pg_row_writes_per_task",
    "pg_commits_per_task",
    "pg_wal_bytes_per_task",
}
FAIRNESS_RUNS = ("short", "sleep")
FAIRNESS_METRICS = {
    *(
        f"fairness_{run}_{name}"
        for run in FAIRNESS_RUNS
        for name in ("b_p50_ms", "b_p99_ms", "b_max_ms", "a_tasks_per_s")
    ),
    "fairness_short_a_to_drain_ratio",
}


def bench_env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TASKFLOW_", "AMQP_", "POSTGRES_", "DATABASE_URL", "BENCH_"))
    }
    env.update(
        # The bench creates its own database on this server and drops it after.
        DATABASE_URL=dsn_for("postgres"),
        AMQP_URL=AMQP_URL,
        TASKFLOW_ENV_FILE="/nonexistent/.env",
        TASKFLOW_LOG_FORMAT="text",
        PYTHONPATH=str(REPO),
    )
    return env


async def database_exists(name: str) -> bool:
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await connection.close()


async def queue_exists(name: str) -> bool:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
        return True
    finally:
        await connection.close()


def run_bench(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``taskflow bench --quick OPTIONS --json``, run from ``tmp_path``: from
    another directory, the command finds ops/bench beside the taskflow package
    it imported, not in the working directory. Returns the run and its JSON."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "taskflow", "bench", "--quick", *options, "--json", str(out)],
        env=bench_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(out.read_text())


async def test_quick_bench_reports_every_metric_and_cleans_up(tmp_path: Path) -> None:
    result, document = run_bench(tmp_path, "--backlog", "0")
    metrics = document["metrics"]
    assert set(metrics) == EXPECTED_METRICS | FAIRNESS_METRICS
    for name, value in metrics.items():
        assert isinstance(value, int | float), (name, value)
        assert value > 0, (name, value)
    assert document["failures"] == []
    assert document["details"]["drain"]["tasks"] == document["details"]["drain"]["of"] == 2000
    assert document["details"]["drain"]["duplicates"] == 0
    # Every drained and latency task wrote its insert, claim and finish.
    assert document["details"]["pg_writes"]["per_table"]["tasks"]["inserted"] == pytest.approx(
        1.0, abs=0.01
    )
    assert "| drain of 2000 queued tasks |" in result.stdout
    # The latency floor timed every sample in a database of its own, then dropped it.
    floor = document["details"]["latency_floor"]
    assert floor["samples"] == document["details"]["latency"]["samples"]
    assert 0 < floor["insert_ms"]["p50"] < metrics["latency_floor_p50_ms"]
    assert metrics["latency_floor_p50_ms"] <= metrics["latency_floor_p99_ms"]
    assert not await database_exists(document["database"] + "_floor")

    # The fairness phase: every one of B's tasks started while A's backlog
    # was being drained, and each number is one (no speed is asserted).
    for run in FAIRNESS_RUNS:
        fairness = document["details"][f"fairness_{run}"]
        assert fairness["b_started"] == fairness["b_sent"] >= 10, fairness
        assert fairness["a_starts_in_window"] > 0, fairness
        assert fairness["duplicates"] == 0, fairness
        p50, p99, most = (metrics[f"fairness_{run}_b_{name}_ms"] for name in ("p50", "p99", "max"))
        assert all(math.isfinite(value) for value in (p50, p99, most)), (p50, p99, most)
        assert 0 < p50 <= p99 <= most
        assert metrics[f"fairness_{run}_a_tasks_per_s"] > 0
    assert document["details"]["fairness_sleep"]["sleep_ms"] == 50
    assert "| B's create->start while A floods, short handlers |" in result.stdout
    assert "target: B p99 <= 1 s + one handler" in result.stdout

    assert document["database"].startswith("taskflow_bench_")
    assert not await database_exists(document["database"])
    assert not await queue_exists(document["queue"])


async def test_skip_fairness_leaves_the_phase_out(tmp_path: Path) -> None:
    result, document = run_bench(tmp_path, "--backlog", "0", "--skip-rest", "--skip-fairness")
    assert "drain_tasks_per_s" in document["metrics"]
    assert not [name for name in document["metrics"] if name.startswith("fairness_")]
    assert "# fairness" not in result.stdout
    assert not await database_exists(document["database"])


async def test_the_held_snapshot_phase_drains_under_an_open_transaction(tmp_path: Path) -> None:
    result, document = run_bench(tmp_path, "--skip-rest", "--skip-fairness", "--held-snapshot", "1")
    assert document["failures"] == []
    held = document["details"]["held_snapshot"]
    assert held["seconds"] == 1
    assert len(held["rates"]) >= 1
    assert all(rate > 0 for rate in held["rates"])
    # The snapshot kept the old row versions the drains left (counted by the
    # statistics collector, which may lag behind a little).
    assert held["dead_rows"]["tasks"] > 0
    assert document["metrics"]["held_snapshot_drain_ratio"] > 0
    assert "# drains while one transaction holds a snapshot for 1 s" in result.stdout
    assert not await database_exists(document["database"])


async def test_finished_tasks_are_present_before_the_first_phase(tmp_path: Path) -> None:
    result, document = run_bench(tmp_path, "--skip-rest", "--skip-fairness", "--finished", "3000")
    assert document["failures"] == []
    assert document["details"]["finished"]["tasks"] == 3000
    # The drain ran beside them, whole.
    assert document["details"]["drain"]["tasks"] == document["details"]["drain"]["of"] == 2000
    assert document["details"]["drain"]["duplicates"] == 0
    assert "3,000 finished tasks present" in result.stdout
    assert not await database_exists(document["database"])
