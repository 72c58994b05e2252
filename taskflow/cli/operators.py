"""The operator's commands: ``migrate`` prepares the database, ``status``
gives the overview, ``tasks show|retry|cancel`` looks at and repairs one task,
``pause|resume TYPE`` holds back and releases a task type. Their output is
the answer, so they log only warnings."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from taskflow.cli.exits import ExitCode
from taskflow.cli.parsing import Commands
from taskflow.cli.startup import (
    operator_actor,
    reporting_connection_errors,
    require_database,
    start,
)
from taskflow.config import Settings

# ----- migrate


def add_migrate(commands: Commands) -> None:
    parser = commands.add(
        "migrate",
        summary="apply the database migrations (db/migrations) not yet applied",
        description=(
            "Apply db/migrations/*.sql in order, each once, under an advisory lock, and\n"
            "re-apply the operator views and functions that changed. Safe to run again\n"
            "and from several hosts at once."
        ),
        examples=[
            ("taskflow migrate", "bring an existing database up to date"),
            ("taskflow migrate --create-database", "first create the database if it is missing"),
        ],
    )
    parser.add_argument(
        "--create-database",
        action="store_true",
        help="create the database named in POSTGRES_DB / DATABASE_URL if it does not exist",
    )
    parser.set_defaults(run=run_migrate)


def migrate_database(settings: Settings, *, create_database: bool) -> None:
    from taskflow.store.migrations import apply_migrations
    from taskflow.store.pool import create_database_if_missing

    dsn = settings.database_url.get_secret_value()
    if create_database:
        with reporting_connection_errors(dsn, doing="create the database on"):
            created = asyncio.run(create_database_if_missing(dsn))
        if created:
            print("created the database", flush=True)
    require_database(settings)
    applied = asyncio.run(apply_migrations(dsn))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))


def run_migrate(args: argparse.Namespace) -> int:
    settings = start(args, "migrate")
    migrate_database(settings, create_database=args.create_database)
    return ExitCode.OK


# ----- status


def add_status(commands: Commands) -> None:
    parser = commands.add(
        "status",
        summary="queues, workers, stuck and failed tasks, throughput, warnings",
        description=(
            "The overview operators get from the taskflow_* views in psql: tasks per\n"
            "status and type, live and dead workers, tasks stuck past their lease, due\n"
            "tasks nobody claims, recent failures, throughput, long transactions, paused\n"
            "task types, the users with the most running tasks, and a WARNING line for\n"
            "each thing to act on (a paused type is one)."
        ),
        examples=[
            ("taskflow status", "the overview as tables"),
            ("taskflow status --check", "exit 1 if there is any warning (cron, health checks)"),
            ("taskflow status --json | jq .queues", "the same numbers for scripts"),
            ("taskflow status --failures 50", "list the newest 50 failures"),
        ],
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document, for scripts")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when the report has a warning, 0 when it has none (with --json too)",
    )
    parser.add_argument(
        "--failures", type=int, default=10, metavar="N", help="failures to list (default: 10)"
    )
    parser.add_argument(
        "--users",
        type=int,
        default=5,
        metavar="N",
        help="users to list by their share of running tasks (default: 5)",
    )
    parser.add_argument(
        "--long-transaction-seconds",
        type=float,
        default=300,
        metavar="S",
        help="warn about transactions open longer than this (default: 300)",
    )
    parser.add_argument(
        "--worker-alive-seconds",
        type=float,
        default=None,
        metavar="S",
        help="call a worker dead after this long without a heartbeat (default: 3 x lease_seconds)",
    )
    parser.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    settings = start(args, "status", quiet=True)
    require_database(settings)
    from taskflow.status.report import read_status, render_status_json, render_status_text

    report = read_status(
        settings,
        failures_shown=args.failures,
        users_shown=args.users,
        long_transaction_seconds=args.long_transaction_seconds,
        worker_alive_seconds=args.worker_alive_seconds,
    )
    print(render_status_json(report) if args.json else render_status_text(report), end="")
    if args.check and report.warnings:
        return ExitCode.PROBLEM_FOUND
    return ExitCode.OK


# ----- tasks show|retry|cancel


def _task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a task id (a UUID): {text!r}") from None


def add_tasks(commands: Commands) -> None:
    tasks = commands.group(
        "tasks",
        summary="show, retry or cancel one task, whoever owns it",
        examples=[
            ("taskflow tasks show ID", "the task, its history, and why it is (not) running"),
            ("taskflow tasks retry ID --reason 'SMTP fixed'", "run a failed task again"),
            ("taskflow tasks cancel ID --reason 'duplicate'", "stop it, saying why"),
        ],
    )
    show = tasks.add(
        "show",
        summary="the task, its history, and why it is (not) running",
        examples=[("taskflow tasks show 0194f9f2-6d3c-7c1e-9a4b-2f0e8d7c6b5a --json", "as JSON")],
    )
    show.add_argument("task_id", type=_task_id, metavar="ID", help="the task's id (a UUID)")
    show.add_argument("--json", action="store_true", help="print one JSON document, for scripts")
    show.set_defaults(run=run_task_show)

    retry = tasks.add(
        "retry",
        summary="queue a failed or cancelled task again, with fresh attempts",
        description=(
            "Queue a failed or cancelled task again, with a fresh set of attempts; its\n"
            "history keeps the old ones and records the retry as cli:<your login>.\n"
            "Any other status is left as it is (exit 1)."
        ),
        examples=[
            ("taskflow tasks retry 0194f9f2-6d3c-7c1e-9a4b-2f0e8d7c6b5a", "run it again now"),
            (
                "taskflow tasks retry 0194f9f2-6d3c-7c1e-9a4b-2f0e8d7c6b5a --reason 'SMTP fixed'",
                "the reason is kept in the retry's history row",
            ),
        ],
    )
    retry.add_argument("task_id", type=_task_id, metavar="ID", help="the task's id (a UUID)")
    retry.add_argument(
        "--reason", metavar="TEXT", default=None, help="why; kept in the history row's error"
    )
    retry.add_argument("--json", action="store_true", help="print the task as JSON")
    retry.set_defaults(run=run_task_retry)

    cancel = tasks.add(
        "cancel",
        summary="cancel a task that has not finished (a running one is stopped)",
        description=(
            "Cancel a task that has not finished; if it is running, its worker stops the\n"
            "handler. History records it as cli:<your login>. A finished task is left as\n"
            "it is (exit 1)."
        ),
        examples=[
            (
                "taskflow tasks cancel 0194f9f2-6d3c-7c1e-9a4b-2f0e8d7c6b5a --reason 'sent twice'",
                "the reason becomes the task's last_error and its history row's error",
            )
        ],
    )
    cancel.add_argument("task_id", type=_task_id, metavar="ID", help="the task's id (a UUID)")
    cancel.add_argument(
        "--reason",
        metavar="TEXT",
        default=None,
        help="why; kept as the task's last_error and in the history row's error",
    )
    cancel.add_argument("--json", action="store_true", help="print the task as JSON")
    cancel.set_defaults(run=run_task_cancel)


def run_task_show(args: argparse.Namespace) -> int:
    settings = start(args, "tasks", quiet=True)
    require_database(settings)
    from taskflow.status.tasks import read_task, render_task_json, render_task_text

    report = read_task(settings, args.task_id)
    print(render_task_json(report) if args.json else render_task_text(report), end="")
    return ExitCode.OK


def run_task_retry(args: argparse.Namespace) -> int:
    settings = start(args, "tasks", quiet=True)
    require_database(settings)
    from taskflow.status.tasks import render_change_json, render_change_text, retry_task

    actor = operator_actor()
    task = retry_task(settings, args.task_id, reason=args.reason, actor=actor)
    print(render_change_json(task) if args.json else render_change_text(task, actor), end="")
    return ExitCode.OK


def run_task_cancel(args: argparse.Namespace) -> int:
    settings = start(args, "tasks", quiet=True)
    require_database(settings)
    from taskflow.status.tasks import cancel_task, render_change_json, render_change_text

    actor = operator_actor()
    task = cancel_task(settings, args.task_id, reason=args.reason, actor=actor)
    print(render_change_json(task) if args.json else render_change_text(task, actor), end="")
    return ExitCode.OK


# ----- pause|resume TYPE


def add_pause(commands: Commands) -> None:
    parser = commands.add(
        "pause",
        summary="stop claiming a task type's tasks until it is resumed",
        description=(
            "Pause a task type, e.g. while its mail provider is down: its queued tasks\n"
            "stay queued and no worker claims them, on any path; other types run as\n"
            "usual. Recorded as cli:<your login>, with the reason; `taskflow status`\n"
            "warns while it lasts. TYPE must be a type this installation knows. A type\n"
            "paused already is left as it is (exit 1). The same as\n"
            "SELECT taskflow_pause_type(TYPE, REASON) in psql."
        ),
        examples=[
            ("taskflow pause send_email --reason 'mail provider down'", "hold back all emails"),
            ("taskflow resume send_email", "and let them go again"),
        ],
    )
    parser.add_argument("task_type", metavar="TYPE", help="the task type, e.g. send_email")
    parser.add_argument("--reason", metavar="TEXT", default=None, help="why; shown by status")
    parser.set_defaults(run=run_pause)


def add_resume(commands: Commands) -> None:
    parser = commands.add(
        "resume",
        summary="let a paused task type's queued tasks run again",
        description=(
            "Resume a paused task type: its queued tasks are picked again, in their\n"
            "turn. A type that is not paused is left as it is (exit 1). The same as\n"
            "SELECT taskflow_resume_type(TYPE) in psql."
        ),
        examples=[("taskflow resume send_email", "emails go out again")],
    )
    parser.add_argument("task_type", metavar="TYPE", help="the paused task type")
    parser.set_defaults(run=run_resume)


def _refused(message: str, code: ExitCode = ExitCode.PROBLEM_FOUND) -> int:
    print(f"taskflow: {message}", file=sys.stderr)
    return code


def run_pause(args: argparse.Namespace) -> int:
    settings = start(args, "pause", quiet=True)
    from taskflow.handlers import build_registry

    # A misspelt type would be paused without complaint and hold back nothing.
    known = build_registry(settings).names()
    if args.task_type not in known:
        return _refused(
            f"unknown task type {args.task_type!r} (known: {', '.join(known)}); nothing changed",
            ExitCode.USAGE_ERROR,
        )
    require_database(settings)
    from taskflow.status.paused_types import pause_type

    actor = operator_actor()
    if not pause_type(settings, args.task_type, reason=args.reason, actor=actor):
        return _refused(f"task type {args.task_type} is already paused; nothing changed")
    print(
        f"task type {args.task_type} is now paused (by {actor}): its queued tasks wait "
        f"for `taskflow resume {args.task_type}`"
    )
    return ExitCode.OK


def run_resume(args: argparse.Namespace) -> int:
    settings = start(args, "resume", quiet=True)
    require_database(settings)
    from taskflow.status.paused_types import resume_type

    if not resume_type(settings, args.task_type):
        return _refused(f"task type {args.task_type} is not paused; nothing changed")
    print(f"task type {args.task_type} is resumed (by {operator_actor()}): its tasks run again")
    return ExitCode.OK
