"""``taskflow bench``: measure throughput and latency on a private stack. The
bench is not in the package: it is ``ops/bench`` of the source checkout this
``taskflow`` was imported from, and it is found there or nowhere."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from taskflow.cli.exits import ExitCode
from taskflow.cli.parsing import Commands
from taskflow.cli.startup import start
from taskflow.config import REPO_ROOT, Settings


def add_bench(commands: Commands) -> None:
    parser = commands.add(
        "bench",
        summary="measure throughput and latency on a private stack (source checkout only)",
        description=(
            "Start a private stack (its own database and queue, API, scheduler, workers),\n"
            "measure draining, latency, a large backlog and the REST API, print the\n"
            "numbers, and remove the stack. Long phases print a progress line every few\n"
            "seconds. Needs the source checkout: see ops/bench/README.md."
        ),
        examples=[
            ("taskflow bench --quick", "a smoke run: small sizes, no backlog"),
            ("taskflow bench --procs 4 --slots 16", "four worker processes of 16 slots"),
            ("taskflow bench --repeat 3 --json bench.json", "medians of three runs, also as JSON"),
        ],
    )
    add = parser.add_argument
    add("--procs", type=int, default=None, metavar="N", help="worker processes (default: 2)")
    add("--api-processes", type=int, default=None, metavar="N", help="API processes (default: 1)")
    add("--repeat", type=int, default=None, metavar="N", help="run N times, print medians")
    add("--slots", type=int, default=None, metavar="N", help="slots per worker (default: 8)")
    add("--drain", type=int, default=None, metavar="N", help="tasks to drain (default: 20000)")
    add(
        "--backlog",
        type=int,
        default=None,
        metavar="N",
        help="tasks in the backlog phase (default: 1000000; 0 skips it)",
    )
    add(
        "--finished",
        type=int,
        default=None,
        metavar="N",
        help="finished tasks (with their history) present before the first phase, "
        "as after weeks of use (default: 0)",
    )
    add(
        "--held-snapshot",
        type=float,
        default=None,
        metavar="S",
        help="drain again and again while a transaction holds a snapshot for S seconds "
        "(default: 0, skipped)",
    )
    add(
        "--latency-samples",
        type=int,
        default=None,
        metavar="N",
        help="tasks timed one by one (default: 500)",
    )
    add(
        "--rest-requests",
        type=int,
        default=None,
        metavar="N",
        help="requests in the REST API phase (default: 2000)",
    )
    add(
        "--drain-timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up draining after S seconds (default: 600)",
    )
    add("--skip-rest", action="store_true", help="skip the REST API phase")
    add("--skip-fairness", action="store_true", help="skip the fairness phase (SPEC §8)")
    add("--quick", action="store_true", help="smoke run: small sizes, no backlog")
    add("--pyspy", type=float, default=None, metavar="S", help="profile workers for S seconds")
    add("--keep-logs", action="store_true", help="keep the processes' logs")
    add("--json", metavar="PATH", help="also write the numbers to PATH")
    parser.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    if not (REPO_ROOT / "ops" / "bench" / "main.py").is_file():
        print(
            "taskflow bench: the bench ships with the source checkout: "
            "run it from there, see ops/bench/README.md",
            file=sys.stderr,
        )
        return ExitCode.USAGE_ERROR
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    bench_main: Callable[[Settings, argparse.Namespace], int] = importlib.import_module(
        "ops.bench.main"
    ).main
    settings = start(args, "bench")
    return bench_main(settings, args)
