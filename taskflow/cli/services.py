"""The long-running commands: ``api``, ``scheduler``, ``worker``, and ``up``,
which supervises all three on one machine. Each builds its store and broker
(``taskflow.runtime``) and runs until SIGTERM or Ctrl-C."""

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
from pathlib import Path
from typing import Any

from taskflow.cli.exits import ExitCode
from taskflow.cli.operators import migrate_database
from taskflow.cli.parsing import Commands
from taskflow.cli.startup import (
    configured_log_format,
    require_database,
    run_until_stopped,
    start,
    tune_gc,
)
from taskflow.config import REPO_ROOT, Settings, load_settings

log = logging.getLogger("taskflow.cli")


def _add_metrics_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus /metrics on this port (default: not served)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address for --metrics-port (default: 127.0.0.1, loopback only)",
    )


def _serve_metrics(args: argparse.Namespace) -> None:
    if args.metrics_port:
        from taskflow.metrics import serve

        serve(args.metrics_port, args.metrics_host)


# ----- api


def add_api(commands: Commands) -> None:
    parser = commands.add(
        "api",
        summary="serve the REST API (needs SECRET_KEY)",
        description="Serve the REST API, the dashboard, /healthz, /readyz and /metrics.",
        examples=[
            ("taskflow api", "listen on 0.0.0.0:8080"),
            ("taskflow api --host 127.0.0.1 --port 9000", "this machine only, port 9000"),
            ("taskflow api --processes 4", "four processes sharing the port"),
        ],
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="N",
        help="API processes on the one port (default: API_PROCESSES, else 1)",
    )
    parser.set_defaults(run=run_api)


def run_api(args: argparse.Namespace) -> int:
    settings = start(args, "api")
    settings.require_secret_key()  # here, not in every child of --processes
    require_database(settings)
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
    return ExitCode.OK


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
            "taskflow.cli.services:api_app_from_environment",
            factory=True,
            workers=processes,
            **_uvicorn_options(args, settings),
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return ExitCode.OK


def api_app_from_environment() -> Any:
    """The app of one API child process (see ``_serve_api_processes``)."""
    from taskflow.log import setup_logging

    settings = load_settings()
    setup_logging("api", level=settings.log_level, log_format=configured_log_format(settings))
    return _api_app(settings)


def _api_app(settings: Settings) -> Any:
    from taskflow.api import create_app
    from taskflow.handlers import build_registry
    from taskflow.runtime import api_services

    app = create_app(settings, build_registry(settings), api_services)
    tune_gc()
    return app


# ----- scheduler and worker


def add_scheduler(commands: Commands) -> None:
    parser = commands.add(
        "scheduler",
        summary="promote due tasks, rescue expired leases, prune old history",
        description=(
            "Every scheduler_interval_ms: queue postponed and retrying tasks that are due,\n"
            "rescue tasks whose worker died, republish tasks nobody claimed, and prune\n"
            "history older than history_retention_days. Several may run at once."
        ),
        examples=[
            ("taskflow scheduler", "one scheduler; run a second one anywhere for redundancy"),
            ("taskflow scheduler --metrics-port 9101", "with Prometheus metrics on :9101"),
        ],
    )
    _add_metrics_options(parser)
    parser.set_defaults(run=run_scheduler)


def run_scheduler(args: argparse.Namespace) -> int:
    settings = start(args, "scheduler")
    require_database(settings)
    from taskflow.runtime import scheduler_runtime

    _serve_metrics(args)

    async def main(stop: asyncio.Event) -> None:
        async with scheduler_runtime(settings) as scheduler:
            await scheduler.run(stop)

    tune_gc()
    run_until_stopped(main)
    return ExitCode.OK


def add_worker(commands: Commands) -> None:
    parser = commands.add(
        "worker",
        summary="run tasks",
        description=(
            "Claim tasks (woken by RabbitMQ, or by Postgres when it is off or out of\n"
            "reach) and run their handlers, several at once. SIGTERM finishes the\n"
            "running tasks within shutdown_grace_seconds and hands back the rest."
        ),
        examples=[
            ("taskflow worker", "NUMOFWORKERS (default 3) tasks at once"),
            ("taskflow worker --concurrency 16", "16 tasks at once"),
            ("taskflow worker --burst --no-broker", "run what is due now, then exit"),
        ],
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="tasks run at once (default: NUMOFWORKERS, else 3)",
    )
    parser.add_argument("--burst", action="store_true", help="exit once no task is left to claim")
    parser.add_argument(
        "--no-broker",
        action="store_true",
        help="claim from Postgres only, even when RabbitMQ is configured",
    )
    _add_metrics_options(parser)
    parser.set_defaults(run=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    settings = start(args, "worker")
    require_database(settings)
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
    run_until_stopped(main)
    return ExitCode.OK


# ----- up


def add_up(commands: Commands) -> None:
    parser = commands.add(
        "up",
        summary="migrate, then run api + scheduler + worker together (local use)",
        description=(
            "Create the database if missing and migrate it, then run the API, a\n"
            "scheduler and worker processes, restarting any that dies. Ctrl-C stops\n"
            "them all gracefully. Without SECRET_KEY, a local key is generated once\n"
            "and kept in .state/secret_key (TASKFLOW_STATE_DIR)."
        ),
        examples=[
            ("taskflow up", "everything on http://localhost:8080"),
            ("taskflow up --port 9000 --worker-processes 2", "API on :9000, two worker processes"),
        ],
    )
    parser.add_argument("--host", default="0.0.0.0", help="API address (default: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="API port (default: 8080)")
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=1,
        metavar="N",
        help="worker processes to run (default: 1)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="tasks each worker runs at once (default: NUMOFWORKERS, else 3)",
    )
    parser.set_defaults(run=run_up)


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


def run_up(args: argparse.Namespace) -> int:
    """Migrate, then supervise API + scheduler + worker processes; restart one
    that dies; on Ctrl-C/SIGTERM stop them all gracefully."""
    settings = start(args, "up")
    env = dict(os.environ)
    if settings.secret_key is None:
        env["SECRET_KEY"] = _local_secret_key(
            Path(env.get("TASKFLOW_STATE_DIR", REPO_ROOT / ".state"))
        )
    migrate_database(settings, create_database=True)
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
    return ExitCode.OK
