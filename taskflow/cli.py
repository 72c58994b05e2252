"""``taskflow api|scheduler|worker|migrate|up``: settings are loaded here, once."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from taskflow.config import REPO_ROOT, Settings, load_settings
from taskflow.errors import ConfigError, StoreUnavailable

log = logging.getLogger("taskflow.cli")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _run(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` with SIGTERM/SIGINT setting ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    _install_uvloop()
    asyncio.run(runner())


def _settings(args: argparse.Namespace, component: str) -> Settings:
    settings = load_settings()
    from taskflow.log import setup_logging

    setup_logging(
        component,
        level=settings.log_level,
        log_format=getattr(args, "log_format", None) or settings.log_format,
    )
    return settings


def _serve_metrics(args: argparse.Namespace) -> None:
    if getattr(args, "metrics_port", None):
        from taskflow.metrics import serve

        serve(args.metrics_port, args.metrics_host)


# ----- commands


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args, "migrate")
    from taskflow.store.migrations import apply_migrations
    from taskflow.store.pool import create_database_if_missing

    dsn = settings.database_url.get_secret_value()

    async def main() -> None:
        if args.create_database and await create_database_if_missing(dsn):
            print("created the database", flush=True)
        applied = await apply_migrations(dsn)
        print(
            f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
        )

    asyncio.run(main())
    return 0


def tune_gc() -> None:
    """A service allocates many short-lived objects per request or task, and
    CPython's default first-generation threshold (700 allocations) then runs
    a collection every few requests: collect young objects less often.
    (Freezing the start-up heap as well helped the API a little more in some
    runs but made forked bench workers start tasks ~5 ms later; not done.)"""
    import gc

    gc.set_threshold(50_000, 20, 20)


def _uvicorn_options(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from taskflow.api.http_protocol import http_protocol

    return {
        "host": args.host,
        "port": args.port,
        "loop": "uvloop",
        "http": http_protocol(settings.http_header_timeout_seconds),  # httptools, bounded
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "server_header": False,
        "backlog": 2048,
        "timeout_graceful_shutdown": 10,
    }


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings(args, "api")
    import uvicorn

    processes = args.processes or settings.api_processes
    log.info(
        "api listening",
        extra={
            "event": "api_started",
            "host": args.host,
            "port": args.port,
            "processes": processes,
        },
    )
    if processes > 1:
        return _serve_api_processes(args, settings, processes)

    server = uvicorn.Server(uvicorn.Config(_api_app(settings), **_uvicorn_options(args, settings)))
    server.run()
    return 0


def _serve_api_processes(args: argparse.Namespace, settings: Settings, processes: int) -> int:
    """Several API processes on one socket, kept by uvicorn's supervisor
    (it restarts a child that dies). They share their metrics through a
    directory that lives as long as this process."""
    import shutil
    import tempfile

    import uvicorn

    from taskflow.metrics import MULTIPROCESS_DIR_VARIABLE

    metrics_dir = tempfile.mkdtemp(prefix="taskflow-api-metrics-")
    # Read by the children, which load settings and metrics afresh.
    os.environ[MULTIPROCESS_DIR_VARIABLE] = metrics_dir
    if args.log_format:
        os.environ["TASKFLOW_LOG_FORMAT"] = args.log_format
    try:
        uvicorn.run(
            "taskflow.cli:api_app_from_environment",
            factory=True,
            workers=processes,
            **_uvicorn_options(args, settings),
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def api_app_from_environment() -> Any:
    """The app of one API child process (see ``_serve_api_processes``)."""
    from taskflow.log import setup_logging

    settings = load_settings()
    setup_logging("api", level=settings.log_level, log_format=settings.log_format)
    return _api_app(settings)


def _api_app(settings: Settings) -> Any:
    from taskflow.api import create_app
    from taskflow.handlers import build_registry
    from taskflow.runtime import api_services

    app = create_app(settings, build_registry(settings), api_services)
    tune_gc()
    return app


def cmd_scheduler(args: argparse.Namespace) -> int:
    settings = _settings(args, "scheduler")
    from taskflow.runtime import scheduler_runtime

    _serve_metrics(args)

    async def main(stop: asyncio.Event) -> None:
        async with scheduler_runtime(settings) as scheduler:
            await scheduler.run(stop)

    tune_gc()
    _run(main)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args, "worker")
    from taskflow.handlers import build_registry
    from taskflow.runtime import worker_runtime

    _serve_metrics(args)
    registry = build_registry(settings)

    async def main(stop: asyncio.Event) -> None:
        async with worker_runtime(
            settings,
            registry,
            concurrency=args.concurrency,
            burst=args.burst,
            use_broker=not args.no_broker,
        ) as worker:
            await worker.run(stop)

    tune_gc()
    _run(main)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Queues, workers, stuck and failed tasks, throughput, and warnings."""
    settings = _settings(args, "status")
    from taskflow.status import show_status

    print(
        show_status(
            settings,
            as_json=args.json,
            failures_shown=args.failures,
            long_transaction_seconds=args.long_transaction_seconds,
            worker_alive_seconds=args.worker_alive_seconds,
        ),
        end="",
    )
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """``tasks show ID``: the task, its history, and why it is (not) running."""
    settings = _settings(args, "tasks")
    from taskflow.status import show_task

    shown = show_task(settings, args.task_id, as_json=args.json)
    if shown is None:
        print(f"taskflow: no task {args.task_id}", file=sys.stderr)
        return 1
    print(shown, end="")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Start a private stack (database, queue, API, scheduler, workers) and measure it.

    The bench is not in the package: it is ``ops/bench`` of the source checkout
    this ``taskflow`` was imported from, and it is found there or nowhere."""
    import importlib

    if not (REPO_ROOT / "ops" / "bench" / "main.py").is_file():
        print(
            "taskflow bench: the bench ships with the source checkout: "
            "run it from there, see ops/bench/README.md",
            file=sys.stderr,
        )
        return 2
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    run_bench: Callable[[Settings, argparse.Namespace], int] = importlib.import_module(
        "ops.bench.main"
    ).main
    settings = _settings(args, "bench")
    return run_bench(settings, args)


def _task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a task id (a UUID): {text!r}") from None


def _local_secret_key(state_dir: Path) -> str:
    path = state_dir / "secret_key"
    if path.is_file():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    path.write_text(key + "\n")
    path.chmod(0o600)
    print(f"taskflow up: no SECRET_KEY set; generated a local one in {path}", flush=True)
    return key


def cmd_up(args: argparse.Namespace) -> int:
    """Migrate, then supervise API + scheduler + worker processes; restart one
    that dies; on Ctrl-C/SIGTERM stop them all gracefully."""
    settings = _settings(args, "up")
    env = dict(os.environ)
    if settings.secret_key is None:
        env["SECRET_KEY"] = _local_secret_key(
            Path(env.get("TASKFLOW_STATE_DIR", REPO_ROOT / ".state"))
        )
    if cmd_migrate(argparse.Namespace(create_database=True, log_format=args.log_format)) != 0:
        return 1
    base = [sys.executable, "-m", "taskflow"]
    log_args = ["--log-format", args.log_format] if args.log_format else []
    commands: dict[str, list[str]] = {
        "api": [*base, "api", "--host", args.host, "--port", str(args.port), *log_args],
        "scheduler": [*base, "scheduler", *log_args],
    }
    for index in range(args.worker_processes):
        commands[f"worker-{index + 1}"] = [*base, "worker", *log_args]
        if args.concurrency:
            commands[f"worker-{index + 1}"] += ["--concurrency", str(args.concurrency)]
    return supervise(commands, env)


def supervise(commands: dict[str, list[str]], env: dict[str, str]) -> int:
    stopping = False

    def request_stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    children: dict[str, subprocess.Popen[bytes]] = {}
    restarts: dict[str, float] = {}
    for name, command in commands.items():
        children[name] = subprocess.Popen(command, env=env)  # noqa: S603
    while not stopping:
        time.sleep(0.2)
        for name, child in list(children.items()):
            if child.poll() is not None and not stopping:
                # Crash-looping children back off instead of spinning.
                wait = restarts.get(name, 0.5)
                log.warning(
                    "component exited; restarting",
                    extra={"event": "restart", "component": name, "code": child.returncode},
                )
                time.sleep(wait)
                restarts[name] = min(wait * 2, 30)
                children[name] = subprocess.Popen(commands[name], env=env)  # noqa: S603
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for child in children.values():
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


# ----- argument parsing


def _add_metrics_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="default: loopback only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskflow", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format", choices=("json", "text"), default=None, help="default: json"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    api = sub.add_parser("api", help="serve the REST API")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument(
        "--processes", type=int, default=None, help="API processes (default: API_PROCESSES, 1)"
    )
    api.set_defaults(func=cmd_api)

    scheduler = sub.add_parser("scheduler", help="promote due tasks, rescue leases")
    _add_metrics_options(scheduler)
    scheduler.set_defaults(func=cmd_scheduler)

    worker = sub.add_parser("worker", help="run tasks")
    worker.add_argument("--concurrency", type=int, default=None, help="default: NUMOFWORKERS")
    worker.add_argument("--burst", action="store_true", help="exit once no task is left to claim")
    worker.add_argument("--no-broker", action="store_true", help="claim from Postgres only")
    _add_metrics_options(worker)
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="apply db/migrations")
    migrate.add_argument("--create-database", action="store_true")
    migrate.set_defaults(func=cmd_migrate)

    up = sub.add_parser("up", help="migrate, then run api + scheduler + worker")
    up.add_argument("--host", default="0.0.0.0")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--worker-processes", type=int, default=1)
    up.add_argument("--concurrency", type=int, default=None)
    up.set_defaults(func=cmd_up)

    status = sub.add_parser("status", help="queues, workers, stuck and failed tasks")
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    status.add_argument(
        "--failures", type=int, default=10, metavar="N", help="failures to list (default 10)"
    )
    status.add_argument(
        "--long-transaction-seconds",
        type=float,
        default=300,
        metavar="S",
        help="warn about transactions open longer than this (default 300)",
    )
    status.add_argument(
        "--worker-alive-seconds",
        type=float,
        default=None,
        metavar="S",
        help="a worker silent this long is dead (default: 3 x lease_seconds)",
    )
    status.set_defaults(func=cmd_status)

    tasks = sub.add_parser("tasks", help="inspect one task")
    tasks_sub = tasks.add_subparsers(dest="tasks_command", required=True)
    show = tasks_sub.add_parser(
        "show", parents=[common], help="a task, its history, and why it is not running"
    )
    show.add_argument("task_id", type=_task_id, metavar="ID")
    show.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    show.set_defaults(func=cmd_tasks)

    bench = sub.add_parser("bench", help="measure throughput and latency on a private stack")
    bench.add_argument("--procs", type=int, default=None, help="worker processes (default 2)")
    bench.add_argument("--api-processes", type=int, default=None, help="API processes (default 1)")
    bench.add_argument(
        "--repeat", type=int, default=None, metavar="N", help="run N times, print medians"
    )
    bench.add_argument("--slots", type=int, default=None, help="slots per worker (default 8)")
    bench.add_argument("--drain", type=int, default=None, metavar="N", help="default 20000")
    bench.add_argument("--backlog", type=int, default=None, metavar="N", help="1000000; 0 skips")
    bench.add_argument("--latency-samples", type=int, default=None, metavar="N", help="default 500")
    bench.add_argument("--rest-requests", type=int, default=None, metavar="N", help="default 2000")
    bench.add_argument("--drain-timeout", type=float, default=None, metavar="S", help="default 600")
    bench.add_argument("--skip-rest", action="store_true", help="skip the REST API phase")
    bench.add_argument("--quick", action="store_true", help="smoke run: small sizes, no backlog")
    bench.add_argument("--pyspy", type=float, default=None, metavar="S", help="profile workers")
    bench.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    bench.add_argument("--json", metavar="PATH", help="also write the numbers here")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"taskflow: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"taskflow: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
