"""The operator views and functions (ops/sql/*.sql, installed by migration 0002)
against data made by the real engine: in-process workers and schedulers, a
worker subprocess killed with SIGKILL, and a fake worker that claims and vanishes."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from taskflow.config import Settings
from taskflow.enqueue import new_task_id
from taskflow.retention import prune_expired
from taskflow.store.pool import connect
from taskflow.store.tasks import NewTask
from tests.conftest import new_user, running_scheduler, running_worker, wait_until
from tests.integration.ops_helpers import (
    PYTHON,
    REPO_ROOT,
    all_in,
    create,
    expire_lease,
    fast_settings,
    subprocess_env,
    write_config,
)
from tests.stores import Store, claim

OPS_SQL = REPO_ROOT / "ops" / "sql"
MIGRATIONS = REPO_ROOT / "db" / "migrations"


@pytest.fixture
def fast(database: str, tmp_path: Path) -> Settings:
    return fast_settings(database, tmp_path)


@pytest.fixture
async def user_id(store: Store) -> int:
    return await new_user(store)


@pytest.fixture
async def psql(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection like an operator's psql session: no TaskFlow actor set."""
    connection = await connect(database, application_name="psql")
    yield connection
    await connection.close()


async def ops_actor(connection: asyncpg.Connection) -> str:
    return "ops:" + await connection.fetchval("SELECT current_user")


async def history(store: Store, task_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await store.pool.fetch(
        "SELECT event, from_status, to_status, attempt, worker_id, error, actor "
        "FROM task_history WHERE task_id = $1 ORDER BY id",
        task_id,
    )
    return [dict(row) for row in rows]


async def task_row(store: Store, task_id: uuid.UUID) -> dict[str, Any]:
    row = await store.pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    assert row is not None
    return dict(row)


async def why(connection: asyncpg.Connection | asyncpg.Pool, task_id: uuid.UUID) -> str:
    answer: str = await connection.fetchval("SELECT taskflow_why($1)", task_id)
    return answer


# ----- the files


def test_every_ops_file_says_what_it_answers() -> None:
    files = sorted(OPS_SQL.glob("*.sql"))
    assert len(files) >= 14
    for path in files:
        text = path.read_text()
        header = []
        for line in text.splitlines():
            if not line.startswith("--"):
                break
            header.append(line)
        assert len(header) >= 3, f"{path.name}: open with a comment saying what it answers"
        assert re.search(r"safe on a live system", " ".join(header), re.I), (
            f"{path.name}: its opening comment must say whether it is safe on a live system"
        )


async def test_the_files_install_by_hand_with_psql_too(database: str) -> None:
    # psql ships with the Postgres this suite needs; its absence is a failure.
    assert shutil.which("psql") is not None, "psql is not installed"
    for path in sorted(OPS_SQL.glob("*.sql")):
        # Already installed by the migration: running the file again must work
        # (CREATE OR REPLACE), as the header promises.
        result = await asyncio.to_thread(
            subprocess.run,
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database, "-f", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


async def test_views_and_functions_are_discoverable(psql: asyncpg.Connection) -> None:
    views = {
        row["viewname"]
        for row in await psql.fetch(
            "SELECT viewname FROM pg_views WHERE schemaname = 'public' "
            "AND viewname LIKE 'taskflow\\_%'"
        )
    }
    assert views == {
        "taskflow_queue_overview",
        "taskflow_due_unclaimed",
        "taskflow_stuck",
        "taskflow_recent_failures",
        "taskflow_workers",
        "taskflow_throughput",
        "taskflow_user_backlog",
        "taskflow_open_transactions",
        "taskflow_table_health",
        "taskflow_schedules",
        "taskflow_blocked",
        "taskflow_vacuum_horizon",
        "taskflow_user_shares",
        "taskflow_history_partitions",
    }
    for view in views:
        assert await psql.fetchval("SELECT obj_description($1::regclass, 'pg_class')", view)
    for function in (
        "taskflow_why",
        "taskflow_retry",
        "taskflow_cancel",
        "taskflow_requeue_stuck",
        "taskflow_pause_type",
        "taskflow_resume_type",
        "taskflow_settle_dependents",
    ):
        described = await psql.fetchval(
            "SELECT obj_description(oid, 'pg_proc') FROM pg_proc WHERE proname = $1", function
        )
        assert described, function


# ----- the views, after a real engine run


async def test_views_describe_a_real_engine_run(
    store: Store, fast: Settings, psql: asyncpg.Connection, user_id: int
) -> None:
    other_user = await new_user(store, "other@example.com")
    later = datetime.now(UTC) + timedelta(hours=1)
    done = [await create(store, fast, user_id, "test_noop", {"n": i}) for i in range(5)]
    permanent = await create(store, fast, user_id, "test_fail", {"kind": "permanent"})
    exhausted = await create(
        store, fast, user_id, "test_fail", {"kind": "transient", "delay_seconds": 0}, max_retries=1
    )
    postponed = await create(store, fast, user_id, "test_noop", {}, run_at=later)
    others_postponed = [
        await create(store, fast, other_user, "test_noop", {}, run_at=later) for _ in range(2)
    ]

    async with running_scheduler(fast), running_worker(fast, concurrency=2) as worker:
        await wait_until(all_in(store, done, "done"), what="noops done")
        await wait_until(all_in(store, [permanent, exhausted], "failed"), what="failures")
        [me] = await psql.fetch("SELECT * FROM taskflow_workers WHERE id = $1", worker.worker_id)
        assert (me["state"], me["concurrency"], me["running_tasks"]) == ("alive", 2, 0)
        assert me["heartbeat_age"] < timedelta(seconds=5)

    # Nobody works now: new work stays due and unclaimed.
    queued = {
        p: await create(store, fast, other_user, "test_noop", {"n": p}, priority=p)
        for p in (0, 50, -5)
    }

    overview = {
        (row["status"], row["type"]): row["tasks"]
        for row in await psql.fetch("SELECT * FROM taskflow_queue_overview")
    }
    assert overview == {
        ("postponed", "test_noop"): 3,
        ("queued", "test_noop"): 3,
        ("done", "test_noop"): 5,
        ("failed", "test_fail"): 2,
    }

    due = await psql.fetch("SELECT * FROM taskflow_due_unclaimed")
    assert [row["id"] for row in due] == [queued[50], queued[0], queued[-5]]  # claim order

    failures = {
        row["id"]: row for row in await psql.fetch("SELECT * FROM taskflow_recent_failures")
    }
    assert set(failures) == {permanent, exhausted}
    assert failures[permanent]["attempts"] == 1
    assert failures[permanent]["last_error"] == "permanent failure on attempt 1"
    assert failures[exhausted]["attempts"] == 2
    assert failures[exhausted]["last_error"] == "transient failure on attempt 2"
    assert not any(row["quarantined"] for row in failures.values())

    throughput = await psql.fetch("SELECT * FROM taskflow_throughput")
    assert [row["period"] for row in throughput] == ["last minute", "last hour"]
    for row in throughput:
        # The transient task failed one attempt (retried), then for good.
        assert (row["completed"], row["failed"], row["retried"]) == (5, 2, 1)
    assert float(throughput[0]["completed_per_second"]) == pytest.approx(5 / 60, abs=0.001)

    backlog = {
        row["user_id"]: row for row in await psql.fetch("SELECT * FROM taskflow_user_backlog")
    }
    assert set(backlog) == {user_id, other_user}
    assert (backlog[other_user]["queued"], backlog[other_user]["postponed"]) == (3, 2)
    assert (backlog[other_user]["unfinished"], backlog[other_user]["due"]) == (5, 3)
    assert (backlog[user_id]["unfinished"], backlog[user_id]["due"]) == (1, 0)
    assert backlog[user_id]["oldest_due_age"] is None
    assert next(iter(backlog)) == other_user  # the biggest backlog first

    [me] = await psql.fetch("SELECT * FROM taskflow_workers WHERE id = $1", worker.worker_id)
    assert me["state"] == "stopped"

    assert re.fullmatch(
        r"done at \S+Z after 1 attempt\(s\): nothing left to run", await why(psql, done[0])
    )
    assert await why(psql, permanent) == (
        await psql.fetchval(
            "SELECT format('failed for good at %s after 1 attempt(s), with retries left "
            "(a permanent error, a quarantine or an operator): permanent failure on attempt 1. "
            "To run it again: SELECT taskflow_retry(%L);', "
            "taskflow_format_time(finished_at), id) FROM tasks WHERE id = $1",
            permanent,
        )
    )
    assert "out of retries" in await why(psql, exhausted)
    assert "after 2 attempt(s) (max_retries 1): transient failure on attempt 2" in await why(
        psql, exhausted
    )
    assert re.match(r"postponed: not due until \S+Z \(in 5\dm \d+s\)", await why(psql, postponed))
    assert "no live worker is registered" in await why(psql, others_postponed[0])
    assert "but no live worker is registered" in await why(psql, queued[0])
    assert "it never existed" in await why(psql, uuid.uuid4())


async def test_why_and_cancel_while_a_worker_runs(
    store: Store, fast: Settings, psql: asyncpg.Connection, user_id: int, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    long = await create(store, fast, user_id, "test_sleep", {"seconds": 60, "marks": str(marks)})
    async with running_worker(fast, concurrency=1) as worker:
        await wait_until(all_in(store, [long], "processing"), what="claimed")
        behind = [await create(store, fast, user_id, "test_noop", {"n": i}) for i in range(2)]

        [me] = await psql.fetch("SELECT * FROM taskflow_workers WHERE id = $1", worker.worker_id)
        assert (me["state"], me["running_tasks"], me["expired_leases"]) == ("alive", 1, 0)
        assert re.fullmatch(
            rf"processing: attempt 1 of 4, started \S+Z \(\S+ ago\); the lease is held by "
            rf"worker {re.escape(worker.worker_id)} until \S+Z",
            await why(psql, long),
        )
        assert "1 of its user's queued task(s) go first" in await why(psql, behind[1])
        assert "0 of its user's queued task(s) go first" in await why(psql, behind[0])
        assert "1 live worker(s) with 1 slot(s), 1 busy" in await why(psql, behind[1])

        assert await psql.fetchval("SELECT taskflow_cancel($1, 'operator: wrong input')", long)

        async def handler_stopped() -> bool:
            return any("cancelled" in p.read_text() for p in marks.iterdir())

        await wait_until(handler_stopped, timeout=5, what="the handler is stopped")
        await wait_until(all_in(store, behind, "done"), what="the freed slot takes new work")

    row = await task_row(store, long)
    assert (row["status"], row["last_error"]) == ("cancelled", "operator: wrong input")
    assert row["finished_at"] is not None
    last = (await history(store, long))[-1]
    assert last == {
        "event": "cancelled",
        "from_status": "processing",
        "to_status": "cancelled",
        "attempt": 1,
        "worker_id": worker.worker_id,
        "error": "operator: wrong input",
        "actor": await ops_actor(psql),
    }
    assert re.fullmatch(
        rf"cancelled at \S+Z by {re.escape(await ops_actor(psql))}: operator: wrong input\. "
        rf"To run it again: SELECT taskflow_retry\('{long}'\);",
        await why(psql, long),
    )


# ----- retry and cancel: guards and history


async def test_retry_and_cancel_change_only_what_they_may(
    store: Store, fast: Settings, psql: asyncpg.Connection, user_id: int
) -> None:
    done = await create(store, fast, user_id, "test_noop", {})
    failed = await create(store, fast, user_id, "test_fail", {"kind": "permanent"})
    async with running_worker(fast):
        await wait_until(all_in(store, [done], "done"))
        await wait_until(all_in(store, [failed], "failed"))
    queued = await create(store, fast, user_id, "test_noop", {})

    notices: list[str] = []
    psql.add_log_listener(lambda _c, message: notices.append(message.message))
    before = {task_id: await task_row(store, task_id) for task_id in (done, failed, queued)}
    history_before = await store.pool.fetchval("SELECT count(*) FROM task_history")

    assert await psql.fetchval("SELECT taskflow_retry($1)", done) is False
    assert await psql.fetchval("SELECT taskflow_cancel($1, 'no')", done) is False
    assert await psql.fetchval("SELECT taskflow_retry($1)", queued) is False
    assert await psql.fetchval("SELECT taskflow_cancel($1)", failed) is False
    assert await psql.fetchval("SELECT taskflow_retry($1)", uuid.uuid4()) is False
    for task_id, row in before.items():
        assert await task_row(store, task_id) == row, "a refused call changed the task"
    assert await store.pool.fetchval("SELECT count(*) FROM task_history") == history_before
    await wait_until(lambda: _has(notices, 5), timeout=2, what="notices")
    assert f"task {done} is done: only failed or cancelled tasks can be retried" in notices[0]
    assert f"task {done} is already done; nothing changed" in notices[1]
    assert "no task" in notices[4]

    # A failed task: a fresh set of attempts, recorded as the operator's.
    assert await psql.fetchval("SELECT taskflow_retry($1, 'bug fixed')", failed) is True
    row = await task_row(store, failed)
    assert row["status"] == "queued"
    assert (row["attempts"], row["lease_crashes"]) == (0, 0)
    assert row["finished_at"] is row["started_at"] is row["worker_id"] is None
    assert row["lease_expires_at"] is None
    assert (await history(store, failed))[-1] == {
        "event": "retried",
        "from_status": "failed",
        "to_status": "queued",
        "attempt": 0,
        "worker_id": before[failed]["worker_id"],  # the trigger names the last worker
        "error": "bug fixed",
        "actor": await ops_actor(psql),
    }
    # A cancelled task runs again, to the end.
    assert await psql.fetchval("SELECT taskflow_cancel($1)", queued) is True
    assert await psql.fetchval("SELECT taskflow_retry($1)", queued) is True
    async with running_worker(fast):
        await wait_until(all_in(store, [queued], "done"))
        await wait_until(all_in(store, [failed], "failed"))
    events = [h["event"] for h in await history(store, failed)]
    assert events == ["created", "claimed", "failed", "retried", "claimed", "failed"]
    assert (await task_row(store, failed))["attempts"] == 1
    assert [h["event"] for h in await history(store, queued)] == [
        "created",
        "cancelled",
        "retried",
        "claimed",
        "completed",
    ]


async def _has(items: list[str], count: int) -> bool:
    return len(items) >= count


async def test_functions_leave_the_callers_transaction_as_they_found_it(
    store: Store, fast: Settings, user_id: int
) -> None:
    """Within one transaction, a later hand-made change is not recorded under
    the function's actor or event name."""
    retried = await create(store, fast, user_id, "test_noop", {})
    other = await create(store, fast, user_id, "test_noop", {})
    await store.pool.execute(
        "UPDATE tasks SET status = 'cancelled', finished_at = now() WHERE id = $1", retried
    )
    async with store.pool.acquire() as connection, connection.transaction():
        # The pool's connections name their actor for the session.
        session_actor = await connection.fetchval("SELECT current_setting('taskflow.actor')")
        assert await connection.fetchval("SELECT taskflow_retry($1)", retried)
        await connection.execute(
            "UPDATE tasks SET status = 'cancelled', finished_at = now() WHERE id = $1", other
        )
    last = (await history(store, other))[-1]
    assert (last["event"], last["actor"]) == ("cancelled", session_actor)
    assert (await history(store, retried))[-1]["actor"].startswith("ops:")


# ----- stuck tasks and their rescue


@pytest.mark.parametrize(
    ("max_retries", "max_lease_crashes", "expected"),
    [(3, 3, "retrying"), (0, 3, "failed"), (3, 1, "failed")],
    ids=["retry", "out-of-retries", "quarantine"],
)
async def test_requeue_stuck_does_what_the_scheduler_rescue_does(
    store: Store,
    psql: asyncpg.Connection,
    user_id: int,
    max_retries: int,
    max_lease_crashes: int,
    expected: str,
) -> None:
    twins = await store.insert_tasks(
        user_id,
        [NewTask(new_task_id(), "test_noop", {}, 0, max_retries, None) for _ in range(3)],
    )
    by_scheduler, by_operator, still_leased = (row["id"] for row in twins)
    for task_id in (by_scheduler, by_operator, still_leased):
        await claim(store, [task_id], "ghost-worker", 30)

    await expire_lease(store, by_scheduler)
    assert len(await store.rescue_expired_leases(100, max_lease_crashes)) == 1

    await expire_lease(store, by_operator)
    stuck = await psql.fetch("SELECT * FROM taskflow_stuck")
    assert [row["id"] for row in stuck] == [by_operator]
    assert (stuck[0]["worker_id"], stuck[0]["worker_alive"]) == ("ghost-worker", False)
    assert stuck[0]["expired_for"] >= timedelta(0)
    assert re.match(
        r"stuck: the lease of worker ghost-worker expired at \S+Z \(\S+ ago\)",
        await why(psql, by_operator),
    )
    assert "that worker is not registered" in await why(psql, still_leased)

    moved = await psql.fetchval(
        "SELECT taskflow_requeue_stuck(max_lease_crashes => $1)", max_lease_crashes
    )
    assert moved == 1
    assert await psql.fetchval("SELECT taskflow_requeue_stuck()") == 0  # nothing left

    compared = ("status", "attempts", "lease_crashes", "lease_expires_at", "worker_id")
    mine, theirs = await task_row(store, by_operator), await task_row(store, by_scheduler)
    assert mine["status"] == expected
    assert {k: mine[k] for k in compared} == {k: theirs[k] for k in compared}
    assert (
        (mine["finished_at"] is None) == (theirs["finished_at"] is None) == (expected != "failed")
    )
    lease_time = re.compile(r"expired at \S+Z")
    assert lease_time.sub("", mine["last_error"]) == lease_time.sub("", theirs["last_error"])
    assert mine["last_error"].startswith("worker ghost-worker lost: lease expired at ")
    assert mine["run_at"] <= datetime.now(UTC)
    last = (await history(store, by_operator))[-1]
    assert (last["event"], last["actor"], last["worker_id"]) == (
        "lease_expired",
        await ops_actor(psql),
        "ghost-worker",
    )
    assert last["error"] == mine["last_error"]
    assert (await task_row(store, still_leased))["status"] == "processing"

    failures = {
        row["id"]: row for row in await psql.fetch("SELECT * FROM taskflow_recent_failures")
    }
    assert by_operator in failures  # retrying or failed: both are listed
    assert failures[by_operator]["quarantined"] is (max_lease_crashes == 1)


async def test_a_killed_worker_process_leaves_a_stuck_task_the_operator_requeues(
    store: Store, database: str, psql: asyncpg.Connection, user_id: int, tmp_path: Path
) -> None:
    config = write_config(tmp_path, lease_seconds=1, worker_poll_interval_ms=100)
    [row] = await store.insert_tasks(
        user_id, [NewTask(new_task_id(), "test_sleep", {"seconds": 60}, 0, 3, None)]
    )
    task_id = row["id"]
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [PYTHON, "-m", "taskflow", "worker", "--concurrency", "1"],
        env=subprocess_env(database, config, tmp_path / "files"),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_until(all_in(store, [task_id], "processing"), timeout=20, what="claimed")
        worker_id = (await task_row(store, task_id))["worker_id"]
        [registered] = await psql.fetch("SELECT * FROM taskflow_workers WHERE id = $1", worker_id)
        assert (registered["state"], registered["pid"]) == ("alive", process.pid)
        assert "lease is held by worker" in await why(psql, task_id)

        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)

        async def stuck() -> bool:
            return bool(
                await psql.fetchval("SELECT count(*) FROM taskflow_stuck WHERE id = $1", task_id)
            )

        await wait_until(stuck, timeout=10, what="the lease to lapse")
        assert f"stuck: the lease of worker {worker_id} expired" in await why(psql, task_id)

        # Its session went with it, and its lock: the view says so at once,
        # without waiting for heartbeats to go stale.
        async def lost() -> bool:
            row = await psql.fetchrow(
                "SELECT state, session FROM taskflow_workers WHERE id = $1", worker_id
            )
            return row is not None and (row["state"], row["session"]) == ("lost", False)

        await wait_until(lost, timeout=10, what="the worker to count as lost")
        # Three 1 s leases of silence: not alive either by its heartbeat.
        await psql.execute("SET taskflow.worker_alive_seconds = '3'")

        async def not_alive() -> bool:
            return await psql.fetchval("SELECT worker_alive FROM taskflow_stuck") is False

        await wait_until(not_alive, timeout=10, what="the heartbeat to go stale")

        assert await psql.fetchval("SELECT taskflow_requeue_stuck()") == 1
        row = await task_row(store, task_id)
        assert (row["status"], row["attempts"], row["lease_crashes"]) == ("retrying", 1, 1)
        assert row["last_error"].startswith(f"worker {worker_id} lost: lease expired at ")
        answer = await why(psql, task_id)
        assert "retrying and due since" in answer
        assert "check that a scheduler is running" in answer
        assert "no live worker is registered" in answer
        assert [h["actor"] for h in await history(store, task_id)][-1] == await ops_actor(psql)

        assert await psql.fetchval("SELECT taskflow_cancel($1, 'cleaning up')", task_id)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


# ----- what holds back vacuum


async def test_open_transactions_and_table_health(database: str, psql: asyncpg.Connection) -> None:
    holder = await connect(database, application_name="long-report")
    try:
        transaction = holder.transaction(isolation="repeatable_read")
        await transaction.start()
        await holder.fetchval("SELECT count(*) FROM tasks")
        pid = holder.get_server_pid()
        rows = await psql.fetch("SELECT * FROM taskflow_open_transactions")
        [mine] = [row for row in rows if row["pid"] == pid]
        assert mine["application_name"] == "long-report"
        assert mine["state"] == "idle in transaction"
        assert mine["holds_snapshot"] is True
        await transaction.rollback()
        rows = await psql.fetch("SELECT * FROM taskflow_open_transactions")
        assert pid not in [row["pid"] for row in rows]
    finally:
        await holder.close()

    health = {
        row["table_name"]: row for row in await psql.fetch("SELECT * FROM taskflow_table_health")
    }
    assert set(health) == {"tasks", "task_history", "workers"}
    assert "autovacuum_vacuum_scale_factor=0.05" in health["task_history"]["settings"]
    assert "autovacuum_vacuum_insert_scale_factor=0.05" in health["task_history"]["settings"]
    assert "fillfactor=80" in health["tasks"]["settings"]


# ----- retention


async def test_prune_expired_deletes_old_finished_tasks_in_batches(
    store: Store, fast: Settings, user_id: int
) -> None:
    ids = [await create(store, fast, user_id, "test_noop", {"n": i}) for i in range(9)]
    waiting = await create(
        store, fast, user_id, "test_noop", {}, run_at=datetime.now(UTC) + timedelta(days=1)
    )
    async with running_worker(fast):
        await wait_until(all_in(store, ids, "done"))
    old, recent = ids[:7], ids[7:]
    await store.pool.execute(
        "UPDATE tasks SET finished_at = now() - interval '31 days' WHERE id = ANY($1)", old
    )
    # A worker gone for long, one gone for long but (as far as the rows say)
    # still holding a task, and a live one.
    await store.pool.execute(
        """
        INSERT INTO workers (id, hostname, pid, concurrency, last_heartbeat_at) VALUES
            ('gone', 'h', 1, 1, now() - interval '40 days'),
            ('gone-holding', 'h', 2, 1, now() - interval '40 days'),
            ('live', 'h', 3, 1, now())
        """
    )
    holding = await create(store, fast, user_id, "test_noop", {})
    await claim(store, [holding], "gone-holding", 30)

    report = await prune_expired(store, 30, batch_size=3)
    assert (report.tasks, report.workers) == (7, 1)
    remaining = {row["id"] for row in await store.pool.fetch("SELECT id FROM tasks")}
    assert remaining == {*recent, waiting, holding}
    assert (
        await store.pool.fetchval("SELECT count(*) FROM task_history WHERE task_id = ANY($1)", old)
        == 0
    )
    workers = {row["id"] for row in await store.pool.fetch("SELECT id FROM workers")}
    assert {"gone-holding", "live"} <= workers
    assert "gone" not in workers
    again = await prune_expired(store, 30, batch_size=3)
    assert (again.tasks, again.workers) == (0, 0)
