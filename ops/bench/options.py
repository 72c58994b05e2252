"""What the bench is asked to measure: ``BenchOptions`` from the command line
(``taskflow bench``'s options, defined in ``taskflow/cli/bench.py``), and the fixed
choices every run shares."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TASK_TYPE = "bench_noop"
# Tasks per Enqueuer.create_many call and per POST /api/tasks/batch request.
ENQUEUE_CHUNK = 1000
PHASE_TIMEOUT_SECONDS = 300.0  # any enqueue phase


@dataclass(frozen=True)
class BenchOptions:
    procs: int = 2
    slots: int = 8
    api_processes: int = 1
    drain: int = 20_000
    backlog: int = 1_000_000
    held_snapshot_seconds: float = 0.0  # 0 skips the held-snapshot phase
    finished: int = 0  # finished tasks present before the first phase
    latency_samples: int = 500
    rest_requests: int = 2000
    skip_rest: bool = False
    skip_fairness: bool = False
    # The fairness phase (no flags of their own; --quick shrinks them): user A's
    # backlog at least this large, user B trickling for this long, and the
    # fixed handler time of its second run.
    fairness_backlog: int = 20_000
    fairness_seconds: float = 10.0
    fairness_sleep_ms: int = 50
    drain_timeout_seconds: float = 600.0
    pyspy_seconds: float = 0.0
    json_path: Path | None = None
    keep_logs: bool = False
    repeat: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchOptions:
        quick = bool(getattr(args, "quick", False))

        def pick(name: str, default: Any, quick_value: Any) -> Any:
            value = getattr(args, name, None)
            if value is not None:
                return value
            return quick_value if quick else default

        options = cls(
            procs=pick("procs", 2, 2),
            slots=pick("slots", 8, 8),
            api_processes=pick("api_processes", 1, 1),
            drain=pick("drain", 20_000, 2000),
            backlog=pick("backlog", 1_000_000, 0),
            held_snapshot_seconds=pick("held_snapshot", 0.0, 0.0),
            finished=pick("finished", 0, 0),
            latency_samples=pick("latency_samples", 500, 200),
            rest_requests=pick("rest_requests", 2000, 500),
            skip_rest=bool(getattr(args, "skip_rest", False)),
            skip_fairness=bool(getattr(args, "skip_fairness", False)),
            fairness_backlog=pick("fairness_backlog", 20_000, 2000),
            fairness_seconds=pick("fairness_seconds", 10.0, 2.0),
            fairness_sleep_ms=pick("fairness_sleep_ms", 50, 50),
            drain_timeout_seconds=pick("drain_timeout", 600.0, 120.0),
            pyspy_seconds=pick("pyspy", 0.0, 0.0),
            json_path=Path(args.json) if getattr(args, "json", None) else None,
            keep_logs=bool(getattr(args, "keep_logs", False)),
            repeat=pick("repeat", 1, 1),
        )
        for name in (
            "procs",
            "slots",
            "api_processes",
            "drain",
            "latency_samples",
            "rest_requests",
            "repeat",
        ):
            if getattr(options, name) < 1:
                raise SystemExit(f"taskflow bench: --{name.replace('_', '-')} must be >= 1")
        if options.backlog < 0:
            raise SystemExit("taskflow bench: --backlog must be >= 0")
        if options.finished < 0:
            raise SystemExit("taskflow bench: --finished must be >= 0")
        if options.held_snapshot_seconds < 0:
            raise SystemExit("taskflow bench: --held-snapshot must be >= 0")
        return options
