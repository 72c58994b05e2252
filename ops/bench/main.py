"""``taskflow bench``: start a private TaskFlow stack and measure it.

Every number comes from TaskFlow's own code paths (``Enqueuer``, the REST
API, ``Worker``), on the stack of ``stack.py``. Phases, in order (workers run
only during the drains and the fairness phase):

1. Drain (``drain.py``, then ``latency.py``): bulk enqueue, the drain of the
   queue, enqueue->start latency on the idle system, Postgres cost per task.
2. Backlog (``backlog.py``; ``--backlog N``, 0 skips): N tasks inserted and
   published, then drained the same way. Held snapshot (``held_snapshot.py``;
   ``--held-snapshot S``, 0 skips): drains while a transaction holds vacuum back.
3. Fairness (``fairness.py``; unless ``--skip-fairness``): a second user's
   tasks started while the first one's backlog drains, and the first one's
   throughput meanwhile.
4. REST (``rest.py``; unless ``--skip-rest``), workers stopped.

With ``--finished N`` (``finished.py``), N finished tasks and their history
are written first, so every phase runs beside them.

Handler starts arrive over TCP from the plugin (``$BENCH_REPORT_ADDR``), each
stamped with ``time.monotonic_ns()`` in the worker: one clock for the host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from ops.bench.backlog import run_backlog
from ops.bench.drain import run_drain
from ops.bench.fairness import run_fairness
from ops.bench.finished import fill_finished
from ops.bench.held_snapshot import run_held_snapshot
from ops.bench.options import BenchOptions
from ops.bench.report import Report, render_summary, render_table
from ops.bench.rest import run_rest
from ops.bench.stack import Stack
from taskflow.config import Settings


async def run_phases(stack: Stack, report: Report) -> Report:
    try:
        await stack.open()
        report.details["environment"] = await stack.environment()
        if stack.options.finished > 0:
            report.details["finished"] = {
                "tasks": stack.options.finished,
                "fill_seconds": round(await fill_finished(stack, stack.options.finished), 1),
            }
        await run_drain(stack, report)
        if stack.options.backlog > 0:
            await run_backlog(stack, report)
            await _vacuum(stack, "the drained backlog")
        if stack.options.held_snapshot_seconds > 0:
            await run_held_snapshot(stack, report)
            await _vacuum(stack, "what the held snapshot kept")
        if not stack.options.skip_fairness:
            await run_fairness(stack, report)
            if not stack.options.skip_rest:
                await _vacuum(stack, "the fairness phase's tasks")
        if not stack.options.skip_rest:
            await run_rest(stack, report)
    finally:
        await stack.close()
    return report


async def _vacuum(stack: Stack, what: str) -> None:
    # Dead row versions cleaned now rather than by an autovacuum that would
    # compete with the next phase for the CPUs.
    print(f"  VACUUM ANALYZE of {what}", flush=True)
    started = time.perf_counter()
    await stack.sql("VACUUM ANALYZE")
    print(f"  vacuumed in {time.perf_counter() - started:.1f} s", flush=True)


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
    stack = Stack(settings, options)
    report = Report()
    failed = False
    try:
        _run_loop(lambda: run_phases(stack, report))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("taskflow bench: interrupted; the stack was cleaned up", file=sys.stderr)
        return 130, report
    except Exception as exc:
        print(f"taskflow bench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"taskflow bench: logs kept in {stack.logs}", file=sys.stderr)
        report.failures.append(f"{type(exc).__name__}: {exc}")
        failed = True
    print()
    print(render_table(report, options), flush=True)
    if options.json_path is not None and options.repeat == 1:
        document = {
            "metrics": report.metrics,
            "details": report.details,
            "failures": report.failures,
            "database": stack.database,
            "queue": stack.queue,
            "options": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()
            },
        }
        options.json_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    keep = failed or bool(report.failures) or options.keep_logs or options.pyspy_seconds > 0
    if keep:
        print(f"# logs: {stack.logs}", flush=True)
    else:
        shutil.rmtree(stack.logs, ignore_errors=True)
    return (1 if failed or report.failures else 0), report
