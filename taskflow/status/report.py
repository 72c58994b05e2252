"""``taskflow status``: queues, workers, stuck and failed tasks, throughput,
paused task types, the users with the most running tasks, and the warnings
an operator should act on (``--check`` exits 1 on any)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from taskflow.config import Settings
from taskflow.status.connection import opened_database, operator_store
from taskflow.status.formatting import (
    format_duration,
    format_table,
    format_time,
    render_json,
    shorten,
)
from taskflow.store.limits import LimitsStore
from taskflow.store.operators import OperatorStore
from taskflow.store.paused_types import PausedTypeStore
from taskflow.store.pool import Record

# A transaction open this long pins the vacuum horizon long enough to notice:
# tasks and task_history rows churn fast, so minutes of dead rows add up.
DEFAULT_LONG_TRANSACTION_SECONDS = 300.0
DEFAULT_FAILURES_SHOWN = 10
DEFAULT_USERS_SHOWN = 5
# Retention creates history partitions two days ahead (at the default 30
# days of retention): less than a day left means it has not run for a day.
HISTORY_AHEAD_WARNING = timedelta(days=1)
# A row reaches the default partition only when no partition covered its
# time; a day-old one means no scheduler made them then.
HISTORY_DEFAULT_AGE_SECONDS = 86_400.0


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
    # Replication slots and prepared transactions holding back vacuum.
    horizon_holders: list[dict[str, Any]]
    paused_types: list[dict[str, Any]] = field(default_factory=list)
    # The busiest users first (taskflow_user_shares); the total have unfinished tasks.
    user_shares: list[dict[str, Any]] = field(default_factory=list)
    user_shares_total: int = 0
    # The end of the newest task_history partition (None: none yet), and the
    # day-old rows in its default partition.
    history_partitions_end: datetime | None = None
    history_default_rows: int = 0
    warnings: list[str] = field(default_factory=list)


def _rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    return [dict(record) for record in records]


def _counted_rows(records: Sequence[Record]) -> tuple[list[dict[str, Any]], int]:
    """Rows that each carry ``total`` (count(*) OVER ()), and that total once."""
    rows = _rows(records)
    total = int(rows[0]["total"]) if rows else 0
    for row in rows:
        del row["total"]
    return rows, total


async def collect_status(
    store: OperatorStore,
    *,
    failures_shown: int = DEFAULT_FAILURES_SHOWN,
    users_shown: int = DEFAULT_USERS_SHOWN,
    long_transaction_seconds: float = DEFAULT_LONG_TRANSACTION_SECONDS,
) -> StatusReport:
    now, database = await store.select_database_clock()
    failures, total = _counted_rows(await store.select_recent_failures(failures_shown))
    user_shares, users_total = _counted_rows(
        await LimitsStore(store.pool).select_user_shares(users_shown)
    )
    history = await store.select_history_partitions_state(HISTORY_DEFAULT_AGE_SECONDS)
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
        horizon_holders=_rows(await store.select_horizon_holders(long_transaction_seconds)),
        paused_types=_rows(await PausedTypeStore(store.pool).select_paused_types()),
        user_shares=user_shares,
        user_shares_total=users_total,
        history_partitions_end=history["partitions_end"],
        history_default_rows=history["default_rows"],
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
    for holder in report.horizon_holders:
        if holder["kind"] == "replication slot":
            fix = f"SELECT pg_drop_replication_slot('{holder['holder']}'); if nobody reads it"
            since = f"{holder['xid_age']:,} transactions ago"
        else:
            fix = f"COMMIT PREPARED or ROLLBACK PREPARED '{holder['holder']}'"
            since = f"for {format_duration(holder['age'])}"
        warnings.append(
            f"{holder['kind']} {holder['holder']} ({holder['detail']}) holds back vacuum "
            f"of tasks and task_history, {since}: {fix}"
        )
    if report.stuck:
        warnings.append(
            f"{report.stuck} task(s) processing past their lease: the scheduler rescues "
            "them every tick; is one running? (SELECT * FROM taskflow_stuck)"
        )
    end = report.history_partitions_end
    if end is not None and end < report.generated_at + HISTORY_AHEAD_WARNING:
        warnings.append(
            f"task_history partitions end at {format_time(end)}, less than a day ahead: "
            "history retention has not run lately; is a scheduler running? "
            "(SELECT * FROM taskflow_history_partitions)"
        )
    if report.history_default_rows:
        warnings.append(
            f"{report.history_default_rows} history row(s) over a day old are in "
            "task_history_default: no partition covered their time (no scheduler ran "
            "retention then); they are deleted once past history_retention_days"
        )
    alive = [w for w in report.workers if w["state"] == "alive"]
    if report.due_unclaimed and not alive:
        warnings.append(
            f"{report.due_unclaimed} task(s) due but no live worker: start `taskflow worker`"
        )
    # A pause is deliberate, yet it holds work back until someone lifts it:
    # a check should not stay green while it is forgotten.
    for paused in report.paused_types:
        warnings.append(
            f"task type {paused['type']} is paused (since {format_time(paused['paused_at'])}, "
            f"by {paused['paused_by']}"
            + (f": {shorten(paused['reason'])}" if paused["reason"] else "")
            + f"); {paused['queued']} queued task(s) of it wait: "
            f"`taskflow resume {paused['type']}` when it may run again"
        )
    return warnings


def _user_share_row(user: dict[str, Any]) -> list[Any]:
    share = user["running_share"]
    return [
        user["user_id"],
        user["email"],
        user["weight"],
        user["running"],
        user["dispatched"],
        user["queued"],
        "-" if share is None else f"{share:.0%}",
        user["max_running"],
        None
        if user["email_per_minute"] is None
        else f"{user['emails_last_minute']}/{user['email_per_minute']}",
        user["held_by"],
    ]


def read_status(
    settings: Settings,
    *,
    failures_shown: int = DEFAULT_FAILURES_SHOWN,
    users_shown: int = DEFAULT_USERS_SHOWN,
    long_transaction_seconds: float = DEFAULT_LONG_TRANSACTION_SECONDS,
    worker_alive_seconds: float | None = None,
) -> StatusReport:
    async def main() -> StatusReport:
        async with opened_database(settings) as database:
            return await collect_status(
                operator_store(database, settings, worker_alive_seconds),
                failures_shown=failures_shown,
                users_shown=users_shown,
                long_transaction_seconds=long_transaction_seconds,
            )

    return asyncio.run(main())


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
        f"WORKERS: {alive} alive (lost when their Postgres session ends; silent after "
        f"{format_duration(report.worker_alive_seconds)} without a heartbeat)",
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
                        shorten(f["last_error"]),
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

    out += ["", f"PAUSED TYPES: {len(report.paused_types) or 'none'}"]
    if report.paused_types:
        out.append(
            format_table(
                ["TYPE", "SINCE", "BY", "QUEUED", "REASON"],
                [
                    [p["type"], p["paused_at"], p["paused_by"], p["queued"], shorten(p["reason"])]
                    for p in report.paused_types
                ],
            )
        )

    out += [
        "",
        f"USERS: {report.user_shares_total} with unfinished tasks"
        + (
            f" (top {len(report.user_shares)} by running tasks shown)" if report.user_shares else ""
        ),
    ]
    if report.user_shares:
        out.append(
            format_table(
                [
                    "USER",
                    "EMAIL",
                    "WEIGHT",
                    "RUNNING",
                    "ON THEIR WAY",
                    "QUEUED",
                    "SHARE",
                    "MAX RUNNING",
                    "EMAILS/MIN",
                    "HELD BY",
                ],
                [_user_share_row(user) for user in report.user_shares],
            )
        )

    if report.warnings:
        out.append("")
        out += [f"WARNING: {warning}" for warning in report.warnings]
    return "\n".join(out) + "\n"


def render_status_json(report: StatusReport) -> str:
    return render_json(vars(report))
