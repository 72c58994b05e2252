"""``taskflow status`` and ``taskflow tasks show``: the operator views, in a terminal.

The numbers come from the views and functions operators query in psql
(``ops/sql/*.sql``, installed by ``db/migrations/0002_operator_views.sql``),
through :class:`~taskflow.store.OperatorStore`, so both always agree. Output is
a plain aligned table for people, or one JSON document (``--json``) for scripts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from taskflow.config import Settings
from taskflow.store.operators import OperatorStore
from taskflow.store.pool import Record, create_pool

# A transaction open this long pins the vacuum horizon long enough to notice:
# tasks and task_history rows churn fast, so minutes of dead rows add up.
DEFAULT_LONG_TRANSACTION_SECONDS = 300.0
DEFAULT_FAILURES_SHOWN = 10
ERROR_WIDTH = 90


# ----- collecting


@dataclass
class StatusReport:
    database: str
    generated_at: datetime
    worker_alive_seconds: float
    long_transaction_seconds: float
    queues: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    stuck: int
    due_unclaimed: int
    failures: list[dict[str, Any]]
    failures_total: int
    throughput: list[dict[str, Any]]
    long_transactions: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


@dataclass
class TaskReport:
    task: dict[str, Any]
    history: list[dict[str, Any]]
    why: str


def _rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    return [dict(record) for record in records]


async def collect_status(
    store: OperatorStore,
    *,
    failures_shown: int = DEFAULT_FAILURES_SHOWN,
    long_transaction_seconds: float = DEFAULT_LONG_TRANSACTION_SECONDS,
) -> StatusReport:
    now, database = await store.select_database_clock()
    failures = _rows(await store.select_recent_failures(failures_shown))
    total = int(failures[0].pop("total")) if failures else 0
    for row in failures[1:]:
        row.pop("total")
    report = StatusReport(
        database=database,
        generated_at=now,
        worker_alive_seconds=store.worker_alive_seconds or 90.0,
        long_transaction_seconds=long_transaction_seconds,
        queues=_rows(await store.select_queue_overview()),
        workers=_rows(await store.select_workers()),
        stuck=await store.count_stuck_tasks(),
        due_unclaimed=await store.count_due_unclaimed_tasks(),
        failures=failures,
        failures_total=total,
        throughput=_rows(await store.select_throughput()),
        long_transactions=_rows(await store.select_long_transactions(long_transaction_seconds)),
    )
    report.warnings = _warnings(report)
    return report


def _warnings(report: StatusReport) -> list[str]:
    warnings = []
    for tx in report.long_transactions:
        warnings.append(
            f"transaction open for {format_duration(tx['xact_age'])} (pid {tx['pid']}, "
            f"user {tx['user_name']}, application {tx['application_name'] or '-'}, "
            f"{tx['state']}) holds back vacuum of tasks and task_history; "
            f"end it, or SELECT pg_terminate_backend({tx['pid']});"
        )
    if report.stuck:
        warnings.append(
            f"{report.stuck} task(s) processing past their lease: the scheduler rescues "
            "them every tick; is one running? (SELECT * FROM taskflow_stuck)"
        )
    alive = [w for w in report.workers if w["state"] == "alive"]
    if report.due_unclaimed and not alive:
        warnings.append(
            f"{report.due_unclaimed} task(s) due but no live worker: start `taskflow worker`"
        )
    return warnings


async def collect_task(store: OperatorStore, task_id: UUID) -> TaskReport | None:
    task = await store.select_any_task(task_id)
    if task is None:
        return None
    return TaskReport(
        task=dict(task),
        history=_rows(await store.select_any_task_history(task_id)),
        why=await store.select_task_why(task_id),
    )


# ----- formatting


def format_duration(value: timedelta | float | None) -> str:
    """Like taskflow_format_duration() in SQL: 850ms, 4.2s, 46s, 3m 12s, 2h 5m, 3d 4h."""
    if value is None:
        return "-"
    seconds = abs(value.total_seconds() if isinstance(value, timedelta) else value)
    whole = int(seconds)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    if seconds < 3600:
        return f"{whole // 60}m {whole % 60}s"
    if seconds < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def format_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _shorten(text: str | None, width: int = ERROR_WIDTH) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _json_summary(value: Any) -> str | None:
    return None if value is None else _shorten(json.dumps(value, default=str), 200)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    numeric = [
        bool(rows)
        and all(
            isinstance(row[i], int | float | Decimal) and not isinstance(row[i], bool)
            for row in rows
        )
        for i in range(len(headers))
    ]
    widths = [
        max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(widths[i]) if numeric[i] else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def render_status_text(report: StatusReport) -> str:
    out = [f"TaskFlow status: database {report.database} at {format_time(report.generated_at)}"]

    out += ["", "QUEUES"]
    if report.queues:
        out.append(
            format_table(
                ["STATUS", "TYPE", "TASKS", "OLDEST"],
                [[q["status"], q["type"], q["tasks"], q["oldest_age"]] for q in report.queues],
            )
        )
    else:
        out.append("(no tasks)")

    alive = sum(1 for w in report.workers if w["state"] == "alive")
    out += [
        "",
        f"WORKERS: {alive} alive (dead after {format_duration(report.worker_alive_seconds)} "
        "without a heartbeat)",
    ]
    if report.workers:
        out.append(
            format_table(
                ["ID", "HOST", "PID", "STATE", "RUNNING", "SLOTS", "LAST HEARTBEAT"],
                [
                    [
                        w["id"],
                        w["hostname"],
                        w["pid"],
                        w["state"],
                        w["running_tasks"],
                        w["concurrency"],
                        f"{format_duration(w['heartbeat_age'])} ago",
                    ]
                    for w in report.workers
                ],
            )
        )
    else:
        out.append("(no workers registered recently)")

    out += [
        "",
        f"STUCK: {report.stuck} task(s) processing past their lease",
        f"DUE, UNCLAIMED: {report.due_unclaimed} task(s)",
    ]

    out += [
        "",
        f"FAILURES: {report.failures_total} failed in the last 24h or retrying"
        + (f" (newest {len(report.failures)} shown)" if report.failures_total else ""),
    ]
    if report.failures:
        out.append(
            format_table(
                ["ID", "TYPE", "STATUS", "AT", "ATTEMPTS", "QUARANTINED", "LAST ERROR"],
                [
                    [
                        f["id"],
                        f["type"],
                        f["status"],
                        f["failed_at"],
                        f"{f['attempts']}/{f['max_retries'] + 1}",
                        f["quarantined"],
                        _shorten(f["last_error"]),
                    ]
                    for f in report.failures
                ],
            )
        )

    out += ["", "THROUGHPUT"]
    out.append(
        format_table(
            ["PERIOD", "COMPLETED", "FAILED", "RETRIED", "PER SECOND"],
            [
                [t["period"], t["completed"], t["failed"], t["retried"], t["completed_per_second"]]
                for t in report.throughput
            ],
        )
    )

    if report.warnings:
        out.append("")
        out += [f"WARNING: {warning}" for warning in report.warnings]
    return "\n".join(out) + "\n"


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
        ("payload", _json_summary(task["payload"])),
        ("result", _json_summary(task["result"])),
    ]
    width = max(len(name) for name, _ in fields)
    out = [f"TASK {task['id']}"]
    out += [f"  {name.ljust(width)}  {_cell(value)}" for name, value in fields]
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
                    _shorten(h["error"]),
                ]
                for h in report.history
            ],
        )
    )
    return "\n".join(out) + "\n"


def to_jsonable(value: Any) -> Any:
    """Durations as seconds, times as RFC 3339 UTC, ids and decimals as JSON scalars."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, UUID):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # inet addresses and the like


def render_status_json(report: StatusReport) -> str:
    return json.dumps(to_jsonable(vars(report)), indent=2) + "\n"


def render_task_json(report: TaskReport) -> str:
    return json.dumps(to_jsonable(vars(report)), indent=2) + "\n"


# ----- entry points for the CLI


async def _open(settings: Settings, worker_alive_seconds: float | None) -> OperatorStore:
    pool = await create_pool(
        settings.database_url.get_secret_value(),
        min_size=1,
        max_size=2,
        application_name="taskflow-status",
    )
    # Three leases, as the views' default assumes for lease_seconds = 30:
    # a worker heartbeats every lease / 3, so this is nine missed beats.
    alive = worker_alive_seconds if worker_alive_seconds else 3 * settings.lease_seconds
    return OperatorStore(pool, worker_alive_seconds=alive)


def show_status(
    settings: Settings,
    *,
    as_json: bool,
    failures_shown: int = DEFAULT_FAILURES_SHOWN,
    long_transaction_seconds: float = DEFAULT_LONG_TRANSACTION_SECONDS,
    worker_alive_seconds: float | None = None,
) -> str:
    async def main() -> str:
        store = await _open(settings, worker_alive_seconds)
        try:
            report = await collect_status(
                store,
                failures_shown=failures_shown,
                long_transaction_seconds=long_transaction_seconds,
            )
        finally:
            await store.pool.close()
        return render_status_json(report) if as_json else render_status_text(report)

    return asyncio.run(main())


def show_task(settings: Settings, task_id: UUID, *, as_json: bool) -> str | None:
    """The task, its history and why; None when there is no such task."""

    async def main() -> str | None:
        store = await _open(settings, None)
        try:
            report = await collect_task(store, task_id)
        finally:
            await store.pool.close()
        if report is None:
            return None
        return render_task_json(report) if as_json else render_task_text(report)

    return asyncio.run(main())
