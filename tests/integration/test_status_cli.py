"""`taskflow status` and `taskflow tasks show|retry|cancel`, run as
subprocesses against the test database after the real engine made the data."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from taskflow.config import Settings
from taskflow.enqueue import new_task_id
from taskflow.store.pool import connect
from taskflow.store.tasks import NewTask
from tests.conftest import new_user, running_scheduler, running_worker, wait_until
from tests.integration.ops_helpers import (
    PYTHON,
    all_in,
    create,
    expire_lease,
    fast_settings,
    subprocess_env,
    write_config,
)
from tests.stores import DROP_HISTORY_PARTITIONS, Store, claim


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def fast(database: str, tmp_path: Path) -> Settings:
    return fast_settings(database, tmp_path)


@pytest.fixture
async def user_id(store: Store) -> int:
    return await new_user(store)


@pytest.fixture
def cli(database: str, tmp_path: Path) -> Any:
    # lease_seconds 2: the CLI then calls a worker silent after 6 s without a heartbeat.
    config = write_config(tmp_path, lease_seconds=2)
    # The login a change by hand is recorded under (cli:<login>).
    env = {**subprocess_env(database, config, tmp_path / "files"), "LOGNAME": "ops-alice"}

    async def run(*args: str, dsn: str | None = None) -> Run:
        # Not subprocess.run: in-process workers must keep heartbeating meanwhile.
        process = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "taskflow",
            *args,
            env={**env, "DATABASE_URL": dsn or database},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return Run(process.returncode, stdout.decode(), stderr.decode())

    return run


def section(output: str, title: str) -> str:
    """The lines of one section of `taskflow status`, up to the next blank line."""
    match = re.search(rf"^{title}.*?(?=\n\n|\Z)", output, re.M | re.S)
    assert match, f"no {title} section in:\n{output}"
    return match.group(0)


async def test_status_shows_queues_workers_failures_and_throughput(
    store: Store, fast: Settings, user_id: int, cli: Any
) -> None:
    done = [await create(store, fast, user_id, "test_noop", {"n": i}) for i in range(3)]
    failed = await create(store, fast, user_id, "test_fail", {"kind": "permanent"})
    await create(
        store, fast, user_id, "test_noop", {}, run_at=datetime.now(UTC) + timedelta(days=1)
    )
    async with running_scheduler(fast), running_worker(fast, concurrency=2) as worker:
        await wait_until(all_in(store, done, "done"))
        await wait_until(all_in(store, [failed], "failed"))
        table = await cli("status")
        as_json = await cli("status", "--json")

    assert table.code == 0, table.stderr
    out = table.stdout
    assert out.startswith("TaskFlow status: database ")
    queues = section(out, "QUEUES")
    assert re.search(r"^STATUS\s+TYPE\s+TASKS\s+OLDEST$", queues, re.M)
    assert re.search(r"^postponed\s+test_noop\s+1\s", queues, re.M)
    assert re.search(r"^done\s+test_noop\s+3\s", queues, re.M)
    assert re.search(r"^failed\s+test_fail\s+1\s", queues, re.M)
    workers = section(out, "WORKERS")
    assert workers.startswith(
        "WORKERS: 1 alive (lost when their Postgres session ends; silent after 6s without a "
        "heartbeat)"
    )
    assert re.search(
        rf"^{re.escape(worker.worker_id)}\s+\S+\s+\d+\s+alive\s+0\s+2\s", workers, re.M
    )
    assert "STUCK: 0 task(s) processing past their lease" in out
    assert "DUE, UNCLAIMED: 0 task(s)" in out
    failures = section(out, "FAILURES")
    assert failures.startswith("FAILURES: 1 failed in the last 24h or retrying")
    assert re.search(
        rf"^{failed}\s+test_fail\s+failed\s+\S+Z\s+1/4\s+no\s+permanent failure on attempt 1$",
        failures,
        re.M,
    )
    throughput = section(out, "THROUGHPUT")
    assert re.search(r"^last minute\s+3\s+1\s+0\s+0\.050$", throughput, re.M)
    assert re.search(r"^last hour\s+3\s+1\s+0\s+0\.001$", throughput, re.M)
    assert "WARNING" not in out

    assert as_json.code == 0, as_json.stderr
    report = as_json.json()
    assert {(q["status"], q["type"]): q["tasks"] for q in report["queues"]} == {
        ("postponed", "test_noop"): 1,
        ("done", "test_noop"): 3,
        ("failed", "test_fail"): 1,
    }
    assert all(isinstance(q["oldest_age"], float) for q in report["queues"])
    [me] = [w for w in report["workers"] if w["id"] == worker.worker_id]
    assert (me["state"], me["concurrency"], me["running_tasks"]) == ("alive", 2, 0)
    assert report["worker_alive_seconds"] == 6.0
    assert (report["stuck"], report["due_unclaimed"], report["failures_total"]) == (0, 0, 1)
    assert report["failures"][0]["id"] == str(failed)
    assert report["failures"][0]["last_error"] == "permanent failure on attempt 1"
    assert report["failures"][0]["failed_at"].endswith("Z")
    assert [(t["period"], t["completed"], t["failed"]) for t in report["throughput"]] == [
        ("last minute", 3, 1),
        ("last hour", 3, 1),
    ]
    assert report["warnings"] == []
    assert report["long_transactions"] == []


async def test_status_warns_about_a_long_transaction(database: str, cli: Any) -> None:
    holder = await connect(database, application_name="forgotten-report")
    try:
        transaction = holder.transaction(isolation="repeatable_read")
        await transaction.start()
        await holder.fetchval("SELECT count(*) FROM tasks")
        pid = holder.get_server_pid()
        # Past a whole second: the view shows the age to the second, truncated.
        await asyncio.sleep(1.1)

        warned = await cli("status", "--long-transaction-seconds", "0.5")
        assert warned.code == 0, warned.stderr
        [line] = [
            line for line in warned.stdout.splitlines() if line.startswith("WARNING: transaction")
        ]
        assert f"(pid {pid}, user " in line
        assert "application forgotten-report, idle in transaction) holds back vacuum" in line
        assert f"SELECT pg_terminate_backend({pid});" in line

        report = (await cli("status", "--json", "--long-transaction-seconds", "0.5")).json()
        [open_transaction] = [t for t in report["long_transactions"] if t["pid"] == pid]
        assert open_transaction["holds_snapshot"] is True
        assert open_transaction["xact_age"] >= 1
        assert any(f"pid {pid}" in warning for warning in report["warnings"])

        # Under the threshold (the default is 5 minutes): no warning.
        calm = await cli("status")
        assert "WARNING" not in calm.stdout
        await transaction.rollback()
    finally:
        await holder.close()
    after = await cli("status", "--long-transaction-seconds", "0")
    assert f"pid {pid}" not in after.stdout


async def test_status_warns_about_stuck_tasks_and_no_live_worker(
    store: Store, user_id: int, cli: Any
) -> None:
    rows = await store.insert_tasks(
        user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None) for _ in range(3)]
    )
    stuck = rows[0]["id"]
    await claim(store, [stuck], "ghost-worker", 30)
    await expire_lease(store, stuck)

    result = await cli("status")
    assert "STUCK: 1 task(s) processing past their lease" in result.stdout
    assert "DUE, UNCLAIMED: 2 task(s)" in result.stdout
    assert "WARNING: 1 task(s) processing past their lease" in result.stdout
    assert "WARNING: 2 task(s) due but no live worker" in result.stdout
    report = (await cli("status", "--json")).json()
    assert (report["stuck"], report["due_unclaimed"]) == (1, 2)
    assert len(report["warnings"]) == 2


async def test_tasks_show_prints_the_task_its_history_and_why(
    store: Store, fast: Settings, user_id: int, cli: Any
) -> None:
    task_id = await create(
        store, fast, user_id, "test_fail", {"kind": "transient", "times": 1, "delay_seconds": 0}
    )
    async with running_scheduler(fast), running_worker(fast):
        await wait_until(all_in(store, [task_id], "done"))

    shown = await cli("tasks", "show", str(task_id))
    assert shown.code == 0, shown.stderr
    out = shown.stdout
    assert out.startswith(f"TASK {task_id}\n")
    assert re.search(r"^  status\s+done$", out, re.M)
    assert re.search(r"^  attempts\s+2 of 4$", out, re.M)
    assert re.search(r'^  result\s+\{"succeeded_on_attempt": 2\}$', out, re.M)
    assert re.search(r"^WHY\n  done at \S+Z after 2 attempt\(s\): nothing left to run$", out, re.M)
    history = section(out, "HISTORY").splitlines()[1:]  # below the title
    assert re.match(r"AT\s+EVENT\s+FROM\s+TO\s+ATTEMPT\s+WORKER\s+ACTOR\s+ERROR", history[0])
    assert [line.split()[1] for line in history[1:]] == [
        "created",
        "claimed",
        "attempt_failed",
        "due",
        "claimed",
        "completed",
    ]
    assert "transient failure on attempt 1" in history[3]

    report = (await cli("tasks", "show", str(task_id), "--json")).json()
    assert report["task"]["id"] == str(task_id)
    assert (report["task"]["status"], report["task"]["attempts"]) == ("done", 2)
    assert [h["event"] for h in report["history"]][-1] == "completed"
    assert report["history"][2]["error"] == "transient failure on attempt 1"
    assert report["why"].startswith("done at ")


async def test_tasks_show_refuses_unknown_and_malformed_ids(cli: Any) -> None:
    missing = uuid.uuid4()
    unknown = await cli("tasks", "show", str(missing))
    assert (unknown.code, unknown.stdout) == (1, "")
    assert f"no task {missing}" in unknown.stderr
    malformed = await cli("tasks", "show", "not-a-uuid")
    assert malformed.code == 2
    assert "not a task id" in malformed.stderr


async def test_status_without_postgres_says_so(cli: Any) -> None:
    result = await cli("status", dsn="postgresql://nobody@127.0.0.1:1/none")
    assert result.code == 4
    assert "cannot connect to Postgres" in result.stderr


async def test_status_check_exits_1_while_there_is_a_warning(store: Store, cli: Any) -> None:
    for args in (["status", "--check"], ["status", "--check", "--json"]):
        calm = await cli(*args)
        assert (calm.code, calm.stderr) == (0, ""), calm
    assert calm.json()["warnings"] == []

    user_id = await new_user(store)
    [row] = await store.insert_tasks(user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None)])
    await claim(store, [row["id"]], "ghost-worker", 30)
    await expire_lease(store, row["id"])

    warned = await cli("status", "--check")
    assert (warned.code, warned.stderr) == (1, "")
    assert "WARNING: 1 task(s) processing past their lease" in warned.stdout
    as_json = await cli("status", "--check", "--json")
    assert as_json.code == 1
    assert len(as_json.json()["warnings"]) == 1
    without_check = await cli("status")
    assert without_check.code == 0  # a report, not a check, unless asked


async def history_of(store: Store, task_id: uuid.UUID) -> list[tuple[str, str, str]]:
    rows = await store.pool.fetch(
        "SELECT event, to_status::text, actor FROM task_history WHERE task_id = $1 ORDER BY id",
        task_id,
    )
    return [(row["event"], row["to_status"], row["actor"]) for row in rows]


async def test_tasks_cancel_and_retry_by_hand_are_recorded_as_the_operator(
    store: Store, user_id: int, cli: Any
) -> None:
    [row] = await store.insert_tasks(user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None)])
    task_id = row["id"]

    cancelled = await cli("tasks", "cancel", str(task_id), "--reason", "sent twice")
    assert (cancelled.code, cancelled.stderr) == (0, ""), cancelled
    assert cancelled.stdout == f"task {task_id} is now cancelled (by cli:ops-alice)\n"
    task = await store.pool.fetchrow("SELECT status, last_error FROM tasks WHERE id = $1", task_id)
    assert (task["status"], task["last_error"]) == ("cancelled", "sent twice")

    retried = await cli("tasks", "retry", str(task_id), "--json")
    assert (retried.code, retried.stderr) == (0, ""), retried
    shown = retried.json()
    assert (shown["id"], shown["status"], shown["attempts"]) == (str(task_id), "queued", 0)

    assert (await history_of(store, task_id))[1:] == [
        ("cancelled", "cancelled", "cli:ops-alice"),
        ("retried", "queued", "cli:ops-alice"),
    ]
    report = (await cli("tasks", "show", str(task_id), "--json")).json()
    assert [h["actor"] for h in report["history"]][1:] == ["cli:ops-alice", "cli:ops-alice"]


async def test_tasks_retry_and_cancel_refuse_what_the_status_forbids(
    store: Store, user_id: int, cli: Any
) -> None:
    [row] = await store.insert_tasks(user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None)])
    task_id = row["id"]
    before = await history_of(store, task_id)

    not_finished = await cli("tasks", "retry", str(task_id))
    assert (not_finished.code, not_finished.stdout) == (1, "")
    assert not_finished.stderr == (
        f"taskflow: task {task_id} is queued: only cancelled or failed tasks can be retried; "
        "nothing changed\n"
    )

    assert (await cli("tasks", "cancel", str(task_id))).code == 0
    again = await cli("tasks", "cancel", str(task_id), "--reason", "twice")
    assert (again.code, again.stdout) == (1, "")
    assert again.stderr == f"taskflow: task {task_id} is already cancelled; nothing changed\n"
    task = await store.pool.fetchrow("SELECT status, last_error FROM tasks WHERE id = $1", task_id)
    assert (task["status"], task["last_error"]) == ("cancelled", None)
    assert len(await history_of(store, task_id)) == len(before) + 1

    missing = uuid.uuid4()
    for command in ("retry", "cancel", "show"):
        unknown = await cli("tasks", command, str(missing))
        assert (unknown.code, unknown.stdout) == (1, "")
        assert unknown.stderr == f"taskflow: no task {missing}\n"


async def test_tasks_retry_and_cancel_keep_the_reason_in_the_history_row(
    store: Store, user_id: int, cli: Any
) -> None:
    [row] = await store.insert_tasks(user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None)])
    task_id = row["id"]

    cancelled = await cli("tasks", "cancel", str(task_id), "--reason", "sent twice")
    assert (cancelled.code, cancelled.stderr) == (0, ""), cancelled
    retried = await cli("tasks", "retry", str(task_id), "--reason", "mail fixed")
    assert (retried.code, retried.stderr) == (0, ""), retried
    assert retried.stdout == f"task {task_id} is now queued (by cli:ops-alice)\n"
    # Without a reason, the history row's error stays empty.
    assert (await cli("tasks", "cancel", str(task_id))).code == 0

    rows = await store.pool.fetch(
        "SELECT event, actor, error FROM task_history WHERE task_id = $1 ORDER BY id", task_id
    )
    assert [(r["event"], r["actor"], r["error"]) for r in rows][1:] == [
        ("cancelled", "cli:ops-alice", "sent twice"),
        ("retried", "cli:ops-alice", "mail fixed"),
        ("cancelled", "cli:ops-alice", None),
    ]
    # The reason is kept where the operator wrote it; the task's last_error is
    # the cancel's, as the API leaves it.
    task = await store.pool.fetchrow("SELECT status, last_error FROM tasks WHERE id = $1", task_id)
    assert (task["status"], task["last_error"]) == ("cancelled", "sent twice")
    shown = (await cli("tasks", "show", str(task_id), "--json")).json()
    assert [h["error"] for h in shown["history"]][1:3] == ["sent twice", "mail fixed"]


async def test_status_lists_the_users_by_their_share_of_running_tasks(
    store: Store, cli: Any
) -> None:
    busy = await new_user(store, "busy@example.com")
    capped = await new_user(store, "capped@example.com")
    mailer = await new_user(store, "mailer@example.com")
    await new_user(store, "idle@example.com")  # nothing unfinished: not listed

    def noops(count: int) -> list[NewTask]:
        return [NewTask(new_task_id(), "test_noop", {}, 0, 3, None) for _ in range(count)]

    def emails(count: int) -> list[NewTask]:
        payload = {"to": "someone@example.com", "subject": "hi"}
        return [NewTask(new_task_id(), "send_email", payload, 0, 3, None) for _ in range(count)]

    busy_ids = [row["id"] for row in await store.insert_tasks(busy, noops(5))]
    await claim(store, busy_ids[:2], "w1", 60)
    await store.pool.execute(
        "INSERT INTO dispatched_tasks (task_id, user_id, type) VALUES ($1, $2, 'test_noop')",
        busy_ids[2],
        busy,
    )
    capped_ids = [row["id"] for row in await store.insert_tasks(capped, noops(3))]
    await claim(store, capped_ids[:1], "w1", 60)
    mail_ids = [row["id"] for row in await store.insert_tasks(mailer, emails(2))]
    await claim(store, mail_ids[:1], "w1", 60)
    await store.pool.execute(
        "INSERT INTO user_limits (user_id, weight, max_running) VALUES ($1, 2, 1)", capped
    )
    await store.pool.execute(
        "INSERT INTO user_limits (user_id, email_per_minute) VALUES ($1, 1)", mailer
    )
    # The defaults the schedulers run with; user_limits overrides them.
    await store.pool.execute("UPDATE dispatch_settings SET email_per_user_per_minute = 30")

    result = await cli("status")
    assert result.code == 0, result.stderr
    users = section(result.stdout, "USERS").splitlines()
    assert users[0] == "USERS: 3 with unfinished tasks (top 3 by running tasks shown)"
    assert re.match(
        r"USER\s+EMAIL\s+WEIGHT\s+RUNNING\s+ON THEIR WAY\s+QUEUED\s+SHARE\s+MAX RUNNING\s+"
        r"EMAILS/MIN\s+HELD BY$",
        users[1],
    )
    assert [line.split() for line in users[2:]] == [
        [str(busy), "busy@example.com", "1", "2", "1", "2", "50%", "-", "0/30", "-"],
        [str(capped), "capped@example.com", "2", "1", "0", "2", "25%", "1", "0/30", "max_running"],
        [
            str(mailer),
            "mailer@example.com",
            "1",
            "1",
            "0",
            "1",
            "25%",
            "-",
            "1/1",
            "email_per_user_per_minute",
        ],
    ]
    # A cap holding work back is the rule working, not something to act on.
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARNING")]
    assert warnings == ["WARNING: 6 task(s) due but no live worker: start `taskflow worker`"]

    report = (await cli("status", "--json", "--users", "2")).json()
    assert report["user_shares_total"] == 3
    assert [
        (u["user_id"], u["running"], u["dispatched"], u["queued"], u["running_share"])
        for u in report["user_shares"]
    ] == [(busy, 2, 1, 2, 0.5), (capped, 1, 0, 2, 0.25)]
    assert report["user_shares"][1]["weight"] == 2
    assert report["user_shares"][1]["max_running"] == 1
    assert report["user_shares"][1]["held_by"] == "max_running"
    assert report["user_shares"][0]["max_running"] is None


async def test_status_lists_paused_types_and_check_fails_while_one_is(
    store: Store, user_id: int, cli: Any
) -> None:
    await store.insert_tasks(
        user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None) for _ in range(2)]
    )
    # Paused in psql, by an operator's role: status shows what psql recorded.
    await store.pool.execute("SELECT taskflow_pause_type('test_noop', 'disk full')")
    await store.pool.execute("SELECT taskflow_pause_type('send_email')")
    role = await store.pool.fetchval("SELECT 'ops:' || current_user")

    checked = await cli("status", "--check")
    assert checked.code == 1, checked
    paused = section(checked.stdout, "PAUSED TYPES").splitlines()
    assert paused[0] == "PAUSED TYPES: 2"
    assert re.match(r"TYPE\s+SINCE\s+BY\s+QUEUED\s+REASON$", paused[1])
    rows = [line.split() for line in paused[2:]]
    assert [row[:1] + row[2:] for row in rows] == [
        ["test_noop", role, "2", "disk", "full"],
        ["send_email", role, "0", "-"],
    ]
    warnings = [line for line in checked.stdout.splitlines() if line.startswith("WARNING")]
    assert any(
        w.startswith("WARNING: task type test_noop is paused (since ")
        and f"by {role}: disk full); 2 queued task(s) of it wait: " in w
        for w in warnings
    ), warnings
    assert any(f"by {role}); 0 queued task(s)" in w for w in warnings), warnings

    report = (await cli("status", "--json", "--check")).json()
    assert [
        (p["type"], p["paused_by"], p["reason"], p["queued"]) for p in report["paused_types"]
    ] == [
        ("test_noop", role, "disk full", 2),
        ("send_email", role, None, 0),
    ]

    await store.pool.execute("SELECT taskflow_resume_type('test_noop')")
    await store.pool.execute("SELECT taskflow_resume_type('send_email')")
    resumed = (await cli("status", "--json")).json()
    assert resumed["paused_types"] == []
    assert not any("paused" in w for w in resumed["warnings"])


async def test_status_warns_while_history_retention_does_not_run(store: Store, cli: Any) -> None:
    """Retention keeps task_history partitions ahead of now; without a
    scheduler running it, rows land in the default partition."""
    user_id = await new_user(store)
    later = datetime.now(UTC) + timedelta(hours=1)  # postponed: no worker is missed
    task = NewTask(new_task_id(), "test_noop", {}, 0, 3, later)
    [row] = await store.insert_tasks(user_id, [task])
    await store.pool.execute(
        "UPDATE task_history SET at = now() - interval '2 days' WHERE task_id = $1", row["id"]
    )
    warned = await cli("status", "--check", "--json")
    assert warned.code == 1
    [warning] = warned.json()["warnings"]
    assert warning.startswith("1 history row(s) over a day old are in task_history_default")
    await store.pool.execute("DELETE FROM task_history WHERE task_id = $1", row["id"])

    # Partitions made three days ago, never since: they end before tomorrow.
    # (Migrating made today's and two ahead: gone first.)
    await store.pool.execute(DROP_HISTORY_PARTITIONS)
    upkeep = "SELECT taskflow_history_upkeep('30 days', '1 day', '2 days', 100, $1::timestamptz)"
    await store.pool.execute(upkeep, datetime.now(UTC) - timedelta(days=3))
    stale = await cli("status", "--check")
    assert stale.code == 1
    assert "WARNING: task_history partitions end at" in stale.stdout
    assert "is a scheduler running?" in stale.stdout

    # A round now, as the scheduler's: two days ahead again, nothing to say.
    await store.pool.execute(upkeep, datetime.now(UTC))
    calm = await cli("status", "--check", "--json")
    assert (calm.code, calm.json()["warnings"]) == (0, [])
