"""What the chaos run is asked to do: ``ChaosOptions`` from the command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

T = TypeVar("T")


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    try:
        pair = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    if not 0 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW <= HIGH, got {text!r}")
    return pair


@dataclass(frozen=True)
class ChaosOptions:
    kills: int = 100
    workers: int = 4
    concurrency: int = 4
    # Seconds between kills, drawn uniformly: 100 kills take about 8 minutes.
    kill_interval: tuple[float, float] = (2.5, 6.5)
    # Unfinished tasks the producer keeps, long and short: below the slots of
    # the workers left after a kill, so a rescued task finds a free slot, and
    # the figures measure recovery rather than a backlog.
    long_in_flight: int = 4
    short_in_flight: int = 4
    long_seconds: tuple[float, float] = (1.0, 3.0)
    short_ms: tuple[float, float] = (2.0, 40.0)
    # How long the frozen worker stays stopped: past the default lease (30 s)
    # wherever its last heartbeat fell, plus a tick and a margin.
    freeze_seconds: float = 40.0
    rabbitmq_outage_seconds: float = 5.0
    settle_seconds: float = 180.0
    restarts: bool = True
    seed: int | None = None
    json_path: Path | None = None
    keep_logs: bool = False


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ops/chaos/run",
        description=(
            "Long chaos run at default settings: SIGKILLed workers, a SIGSTOPped "
            "worker, a RabbitMQ and a Postgres restart; reports lost, twice-completed "
            "and overlapping tasks and kill->rerun times."
        ),
    )
    parser.add_argument("--kills", type=int, help="worker SIGKILLs (default 100; --quick 10)")
    parser.add_argument("--workers", type=int, help="worker processes (default 4)")
    parser.add_argument("--concurrency", type=int, help="slots per worker (default 4)")
    parser.add_argument(
        "--kill-interval", type=_range, metavar="LOW,HIGH", help="seconds (default 2.5,6.5)"
    )
    parser.add_argument("--long-in-flight", type=int, help="unfinished long tasks (default 4)")
    parser.add_argument("--short-in-flight", type=int, help="unfinished short tasks (default 4)")
    parser.add_argument("--long-seconds", type=_range, metavar="LOW,HIGH", help="default 1,3")
    parser.add_argument("--short-ms", type=_range, metavar="LOW,HIGH", help="default 2,40")
    parser.add_argument("--freeze-seconds", type=float, help="SIGSTOP length (default 40)")
    parser.add_argument("--settle-seconds", type=float, help="wait for the end (default 180)")
    parser.add_argument(
        "--no-restarts",
        action="store_true",
        help="skip the RabbitMQ and Postgres restarts (they are shared services)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 kills, faster pace")
    parser.add_argument("--seed", type=int, help="random seed (default: a fresh one)")
    parser.add_argument("--json", metavar="PATH", help="also write the report here")
    parser.add_argument("--keep-logs", action="store_true", help="keep logs and marks")
    return parser


def from_args(args: argparse.Namespace) -> ChaosOptions:
    defaults = ChaosOptions()
    quick = bool(args.quick)

    def pick(name: str, default: T, quick_value: T | None = None) -> T:
        value = getattr(args, name)
        if value is not None:
            return cast(T, value)
        return quick_value if quick and quick_value is not None else default

    options = ChaosOptions(
        kills=pick("kills", defaults.kills, 10),
        workers=pick("workers", defaults.workers),
        concurrency=pick("concurrency", defaults.concurrency),
        kill_interval=pick("kill_interval", defaults.kill_interval, (1.0, 2.5)),
        long_in_flight=pick("long_in_flight", defaults.long_in_flight),
        short_in_flight=pick("short_in_flight", defaults.short_in_flight),
        long_seconds=pick("long_seconds", defaults.long_seconds),
        short_ms=pick("short_ms", defaults.short_ms),
        freeze_seconds=pick("freeze_seconds", defaults.freeze_seconds),
        settle_seconds=pick("settle_seconds", defaults.settle_seconds),
        restarts=not args.no_restarts,
        seed=args.seed,
        json_path=Path(args.json) if args.json else None,
        keep_logs=bool(args.keep_logs),
    )
    if options.kills < 1 or options.workers < 2 or options.concurrency < 1:
        raise SystemExit("ops/chaos/run: needs --kills >= 1, --workers >= 2, --concurrency >= 1")
    if options.long_in_flight < 0 or options.short_in_flight < 0:
        raise SystemExit("ops/chaos/run: --long-in-flight and --short-in-flight must be >= 0")
    return options
