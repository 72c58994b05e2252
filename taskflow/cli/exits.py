"""How ``taskflow`` exits: one meaning per code, the same for every command,
so a script or a supervisor can tell "fix the command line" from "fix the
configuration" from "the database is not there yet".

Exit codes (``taskflow --help`` prints this table, ``EXIT_CODES_HELP``)::

  0  ok
  1  problem found: `status --check` saw a warning; `tasks show|retry|cancel`
     found no such task, or the task's status does not allow the change;
     `pause` found the type paused already, `resume` found it not paused
  2  usage error: a bad command line (argparse's own code), `pause` of an
     unknown task type, or `bench` outside a source checkout
  3  configuration error: invalid settings file, environment or .env, or a
     database without TaskFlow's schema (run `taskflow migrate`)
  4  database unavailable: Postgres refused or did not answer (wrong host
     or port, unknown role, wrong password, missing database)
  130  interrupted (SIGINT) before the command could stop by itself, as in
     start-up; a running service stops gracefully on SIGINT and exits 0

RabbitMQ out of reach is not an error: the services fall back to Postgres
(LISTEN/NOTIFY) and reconnect by themselves, and the operator commands do
not use it.
"""

from __future__ import annotations

from enum import IntEnum

from taskflow.errors import (
    ConfigError,
    InvalidTransition,
    NotFound,
    StoreUnavailable,
    TaskFlowError,
)


class ExitCode(IntEnum):
    OK = 0
    PROBLEM_FOUND = 1
    USAGE_ERROR = 2
    CONFIGURATION_ERROR = 3
    DATABASE_UNAVAILABLE = 4
    INTERRUPTED = 130  # the shell's code for SIGINT


EXIT_CODES_HELP = """\
  0  ok
  1  problem found: `status --check` saw a warning; `tasks show|retry|cancel`
     found no such task, or the task's status does not allow the change;
     `pause` found the type paused already, `resume` found it not paused
  2  usage error: a bad command line (argparse's own code), `pause` of an
     unknown task type, or `bench` outside a source checkout
  3  configuration error: invalid settings file, environment or .env, or a
     database without TaskFlow's schema (run `taskflow migrate`)
  4  database unavailable: Postgres refused or did not answer (wrong host
     or port, unknown role, wrong password, missing database)
  130  interrupted (SIGINT) before the command could stop by itself, as in
     start-up; a running service stops gracefully on SIGINT and exits 0"""

# The errors a command reports in one line on stderr, with no traceback:
# each is about the world (settings, database, a task's state), not a bug.
# Anything else propagates with its traceback.
_REPORTED: tuple[tuple[type[TaskFlowError], ExitCode, str], ...] = (
    (ConfigError, ExitCode.CONFIGURATION_ERROR, "configuration error: "),
    (StoreUnavailable, ExitCode.DATABASE_UNAVAILABLE, ""),
    (NotFound, ExitCode.PROBLEM_FOUND, ""),
    (InvalidTransition, ExitCode.PROBLEM_FOUND, ""),
)
REPORTED_ERRORS: tuple[type[TaskFlowError], ...] = tuple(error for error, _, _ in _REPORTED)


def report(error: TaskFlowError) -> tuple[ExitCode, str]:
    """The exit code and the one line to print for an error in REPORTED_ERRORS."""
    for kind, code, prefix in _REPORTED:
        if isinstance(error, kind):
            # One line whatever the message holds: a server's DETAIL, a traceback-like text.
            return code, f"taskflow: {prefix}" + " ".join(str(error).split())
    raise error
