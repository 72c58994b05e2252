"""``taskflow``: the command line, and the composition root of every process.

Each command lives in the module of its audience: ``services`` (api,
scheduler, worker, up), ``operators`` (migrate, status, tasks, pause,
resume), ``bench``. A command is a pair: ``add_<command>(commands)``
declares its parser, help and examples, and sets ``run``;
``run_<command>(args)`` loads the settings (``startup``), does the work and
returns an exit code (``exits``).
``COMMANDS`` lists them in the order ``taskflow --help`` shows; a new command
is one more pair and one more entry there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from taskflow.cli import bench, operators, services
from taskflow.cli.exits import EXIT_CODES_HELP, REPORTED_ERRORS, ExitCode, report
from taskflow.cli.parsing import Commands, HelpFormatter, common_options, format_examples

COMMANDS: tuple[Callable[[Commands], None], ...] = (
    services.add_api,
    services.add_scheduler,
    services.add_worker,
    operators.add_migrate,
    services.add_up,
    operators.add_status,
    operators.add_tasks,
    operators.add_pause,
    operators.add_resume,
    bench.add_bench,
)

DESCRIPTION = """\
TaskFlow is a task queue on PostgreSQL: a REST API takes tasks, workers run
them (woken through RabbitMQ, or Postgres alone), a scheduler runs postponed
tasks and retries. These commands run those services, prepare the database,
and let an operator inspect and repair tasks.

Settings come from the JSON settings file at the repository's root (or the
one TASKFLOW_CONFIG names), the environment and .env:
DATABASE_URL or POSTGRES_USER/PASSWORD/HOST/PORT/DB; AMQP_URL or AMQP_* to use
RabbitMQ; SECRET_KEY for the API. `taskflow COMMAND --help` shows a command's
options."""

EXAMPLES = [
    ("taskflow up", "all of it on this machine: migrate, API on :8080, scheduler, worker"),
    ("taskflow migrate --create-database", "create the database if missing, then migrate it"),
    ("taskflow worker --concurrency 8", "a worker process running 8 tasks at once"),
    ("taskflow status --check", "the overview; exit 1 if something needs attention"),
    ("taskflow tasks show ID", "one task, its history, and why it is (not) running"),
    ("taskflow tasks retry ID", "run a failed or cancelled task again"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskflow",
        description=DESCRIPTION,
        epilog=format_examples(EXAMPLES) + "\n\nexit codes:\n" + EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    commands = Commands(subparsers, common_options())
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a usage error exits 2 here
    try:
        return int(args.run(args))
    except REPORTED_ERRORS as exc:
        code, line = report(exc)
        print(line, file=sys.stderr)
        return code
    except KeyboardInterrupt:
        # Ctrl-C (or a supervisor's SIGINT to the group) before a service
        # installed its own handler: stopping is what was asked, not a crash.
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
