"""``taskflow tasks show|retry|cancel ID``: one task, any owner's.

``show`` prints the task, its history and why it is (not) running. ``retry``
and ``cancel`` make the same guarded changes as the API's, recorded in the
task's history under the operator's name (``cli:<login>``); a task whose
status does not allow the change is left exactly as it was.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from taskflow.config import Settings
from taskflow.errors import InvalidTransition, TaskNotFound
from taskflow.models import RETRYABLE
from taskflow.status.connection import opened_database, operator_store
from taskflow.status.formatting import cell, format_table, json_summary, render_json, shorten
from taskflow.store.operators import OperatorStore
from taskflow.store.pool import Database
from taskflow.store.tasks import TaskStore


@dataclass
class TaskReport:
    task: dict[str, Any]
    history: list[dict[str, Any]]
    why: str


async def collect_task(store: OperatorStore, task_id: UUID) -> TaskReport:
    task = await store.select_any_task(task_id)
    if task is None:
        raise TaskNotFound(f"no task {task_id}")
    return TaskReport(
        task=dict(task),
        history=[dict(row) for row in await store.select_any_task_history(task_id)],
        why=await store.select_task_why(task_id),
    )


def read_task(settings: Settings, task_id: UUID) -> TaskReport:
    async def main() -> TaskReport:
        async with opened_database(settings) as database:
            return await collect_task(operator_store(database, settings), task_id)

    return asyncio.run(main())


def retry_task(
    settings: Settings, task_id: UUID, *, reason: str | None = None, actor: str
) -> dict[str, Any]:
    """Queue a failed or cancelled task again, with fresh attempts; the task as it is now.
    The reason is kept in the error column of the retry's history row."""

    async def main() -> dict[str, Any]:
        async with opened_database(settings, application_name="taskflow-tasks") as database:
            row = await TaskStore(database.pool).retry_finished_task(
                task_id, None, reason=reason, actor=actor
            )
            if row is None:
                status = await _current_status(database, task_id)
                allowed = " or ".join(sorted(RETRYABLE))
                raise InvalidTransition(
                    f"task {task_id} is {status}: only {allowed} tasks can be retried; "
                    "nothing changed"
                )
            return dict(row)

    return asyncio.run(main())


def cancel_task(
    settings: Settings, task_id: UUID, *, reason: str | None, actor: str
) -> dict[str, Any]:
    """Cancel an unfinished task (its worker stops a running one); the task as it is now.
    The reason becomes its ``last_error`` and the error of the cancel's history row."""

    async def main() -> dict[str, Any]:
        async with opened_database(settings, application_name="taskflow-tasks") as database:
            row = await TaskStore(database.pool).cancel_task(
                task_id, None, reason=reason, actor=actor
            )
            if row is None:
                status = await _current_status(database, task_id)
                raise InvalidTransition(f"task {task_id} is already {status}; nothing changed")
            return dict(row)

    return asyncio.run(main())


async def _current_status(database: Database, task_id: UUID) -> str:
    """Why a guarded change matched no row: no such task, or the status it has."""
    task = await OperatorStore(database.pool).select_any_task(task_id)
    if task is None:
        raise TaskNotFound(f"no task {task_id}")
    return str(task["status"])


def render_change_text(task: dict[str, Any], actor: str) -> str:
    return f"task {task['id']} is now {task['status']} (by {actor})\n"


def render_change_json(task: dict[str, Any]) -> str:
    return render_json(task)


def render_task_text(report: TaskReport) -> str:
    task = report.task
    fields = [
        ("status", task["status"]),
        ("type", task["type"]),
        ("user", task["user_id"]),
        ("priority", task["priority"]),
        ("attempts", f"{task['attempts']} of {task['max_retries'] + 1}"),
        ("run_at", task["run_at"]),
        ("created_at", task["created_at"]),
        ("updated_at", task["updated_at"]),
        ("started_at", task["started_at"]),
        ("finished_at", task["finished_at"]),
        ("worker", task["worker_id"]),
        ("lease until", task["lease_expires_at"]),
        ("last_error", task["last_error"]),
        ("payload", json_summary(task["payload"])),
        ("result", json_summary(task["result"])),
    ]
    width = max(len(name) for name, _ in fields)
    out = [f"TASK {task['id']}"]
    out += [f"  {name.ljust(width)}  {cell(value)}" for name, value in fields]
    out += ["", "WHY", f"  {report.why}", "", "HISTORY"]
    out.append(
        format_table(
            ["AT", "EVENT", "FROM", "TO", "ATTEMPT", "WORKER", "ACTOR", "ERROR"],
            [
                [
                    h["at"],
                    h["event"],
                    h["from_status"],
                    h["to_status"],
                    h["attempt"],
                    h["worker_id"],
                    h["actor"],
                    shorten(h["error"]),
                ]
                for h in report.history
            ],
        )
    )
    return "\n".join(out) + "\n"


def render_task_json(report: TaskReport) -> str:
    return render_json(vars(report))
