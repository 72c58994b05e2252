"""``python -m ops.chaos.run``: the long chaos run, from the repository root.

Starts the private stack (``stack``), runs the timeline (``scenario``) while
the producer (``load``) keeps the workers busy, stops every process, reads
what happened (``evidence``), prints the report (``summary``; ``--json PATH``
writes it whole) and removes the stack: database dropped, queue deleted,
processes stopped, also on Ctrl-C, SIGTERM or failure. Logs and marks are
kept when the run falls short of SPEC §7 (or with ``--keep-logs``).

Exit status: 0 when the guarantees held, 1 when not (or the run failed),
130 when interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ops.bench.stack import CHECKOUT_ROOT
from ops.chaos.evidence import Evidence
from ops.chaos.load import Producer
from ops.chaos.options import ChaosOptions, from_args, parser
from ops.chaos.scenario import Scenario
from ops.chaos.stack import ChaosStack
from ops.chaos.summary import failures, render
from taskflow.config import load_settings
from taskflow.errors import ConfigError
from taskflow.log import setup_logging


def _code_version() -> str:
    """The checkout's commit, and whether the working tree differs from it."""

    def git(*arguments: str) -> subprocess.CompletedProcess[str]:
        command = ["git", "--no-optional-locks", "-C", str(CHECKOUT_ROOT), *arguments]
        return subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603

    try:
        head = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
        dirty = git("diff", "--quiet", "HEAD", "--").returncode != 0
    except OSError:
        return "unknown"
    return f"{head} with uncommitted changes" if dirty else head


def _command(seed: int) -> str:
    arguments = sys.argv[1:]
    if "--seed" not in arguments:
        arguments += ["--seed", str(seed)]
    return shlex.join(["ops/chaos/run", *arguments])


async def run(stack: ChaosStack, options: ChaosOptions, seed: int) -> dict[str, Any]:
    # SIGTERM cancels the run like Ctrl-C does, so the clean-up below still runs.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await stack.open()
        producer = Producer(stack.chaos_store, stack.user_id, options, stack.marks, seed)
        scenario = Scenario(stack, producer, random.Random(seed + 1))
        timeline = await scenario.run()
        print("  stopping the processes; reading the evidence", flush=True)
        await stack.stop_processes()
        report = await Evidence(stack, timeline, producer).gather()
        report.update(
            duration_seconds=time.time() - timeline.started_at,
            command=_command(seed),
            seed=seed,
            code=_code_version(),
            database=stack.database,
            queue=stack.queue,
            logs=str(stack.logs),
            options={
                key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(options).items()
            },
        )
        return report
    finally:
        await stack.close()


def main(argv: list[str] | None = None) -> int:
    options = from_args(parser().parse_args(argv))
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"ops/chaos/run: {exc}", file=sys.stderr)
        return 2
    # The run's own pool and broker log routine reconnections at INFO: the
    # report should not be interleaved with them.
    setup_logging("chaos", level="WARNING", log_format="text")
    # Its own connections are dropped on purpose by the restarts: the workers'
    # logs, not the run's output, are where reconnections matter.
    for noisy in ("aiormq", "aio_pika", "asyncpg", "taskflow.broker"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    seed = options.seed if options.seed is not None else secrets.randbits(31)
    stack = ChaosStack(settings, options)
    try:
        report = asyncio.run(run(stack, options, seed))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            f"ops/chaos/run: interrupted; the stack was removed, logs in {stack.logs}",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:
        print(f"ops/chaos/run: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"ops/chaos/run: logs kept in {stack.logs}", file=sys.stderr)
        return 1
    print()
    print(render(report, options), flush=True)
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    problems = failures(report, options)
    if problems or options.keep_logs:
        print(f"# logs and marks: {stack.logs}", flush=True)
    else:
        shutil.rmtree(stack.logs, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
