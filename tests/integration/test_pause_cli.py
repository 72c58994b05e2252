"""`taskflow pause TYPE` and `taskflow resume TYPE` (SPEC §9), run as
subprocesses against the test database: the pause is recorded under the
operator's login, holds the type's tasks back from a real worker while other
types run, shows in `taskflow status` as a warning, and a resume lets them go."""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskflow.config import Settings
from tests.conftest import new_user, running_scheduler, running_worker, wait_until
from tests.integration.ops_helpers import (
    PYTHON,
    all_in,
    create,
    fast_settings,
    subprocess_env,
    write_config,
)
from tests.stores import Store


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(database: str, tmp_path: Path) -> Any:
    config = write_config(tmp_path)
    env = {**subprocess_env(database, config, tmp_path / "files"), "LOGNAME": "ops-alice"}

    async def run(*args: str) -> Run:
        # Not subprocess.run: an in-process worker must keep running meanwhile.
        process = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "taskflow",
            *args,
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return Run(process.returncode, stdout.decode(), stderr.decode())

    return run


async def paused_rows(store: Store) -> list[tuple[str, str, str | None]]:
    rows = await store.pool.fetch(
        "SELECT type, paused_by, reason FROM paused_task_types ORDER BY type"
    )
    return [(row["type"], row["paused_by"], row["reason"]) for row in rows]


async def test_pause_and_resume_are_recorded_and_shown_by_status(store: Store, cli: Any) -> None:
    paused = await cli("pause", "send_email", "--reason", "mail provider down")
    assert (paused.code, paused.stderr) == (0, ""), paused
    assert paused.stdout == (
        "task type send_email is now paused (by cli:ops-alice): its queued tasks wait "
        "for `taskflow resume send_email`\n"
    )
    assert await paused_rows(store) == [("send_email", "cli:ops-alice", "mail provider down")]

    status = await cli("status", "--check")
    assert status.code == 1, status
    out = status.stdout
    assert "PAUSED TYPES: 1\nTYPE        SINCE" in out
    [row] = [line for line in out.splitlines() if line.startswith("send_email ")]
    assert row.split()[2:] == ["cli:ops-alice", "0", "mail", "provider", "down"]
    [warning] = [line for line in out.splitlines() if line.startswith("WARNING: ")]
    assert warning.startswith("WARNING: task type send_email is paused (since ")
    assert warning.endswith(
        "by cli:ops-alice: mail provider down); 0 queued task(s) of it wait: "
        "`taskflow resume send_email` when it may run again"
    )
    report = json.loads((await cli("status", "--json")).stdout)
    [shown] = report["paused_types"]
    assert (shown["type"], shown["paused_by"], shown["reason"], shown["queued"]) == (
        "send_email",
        "cli:ops-alice",
        "mail provider down",
        0,
    )
    assert shown["paused_at"].endswith("Z")
    assert len(report["warnings"]) == 1

    resumed = await cli("resume", "send_email")
    assert (resumed.code, resumed.stderr) == (0, ""), resumed
    assert (
        resumed.stdout
        == "task type send_email is resumed (by cli:ops-alice): its tasks run again\n"
    )
    assert await paused_rows(store) == []
    calm = await cli("status", "--check")
    assert calm.code == 0, calm
    assert "PAUSED TYPES: none" in calm.stdout


async def test_pausing_twice_or_resuming_what_is_not_paused_changes_nothing(
    store: Store, cli: Any
) -> None:
    assert (await cli("pause", "test_noop", "--reason", "first")).code == 0
    again = await cli("pause", "test_noop", "--reason", "second")
    assert (again.code, again.stdout) == (1, "")
    assert again.stderr == "taskflow: task type test_noop is already paused; nothing changed\n"
    assert await paused_rows(store) == [("test_noop", "cli:ops-alice", "first")]

    not_paused = await cli("resume", "send_email")
    assert (not_paused.code, not_paused.stdout) == (1, "")
    assert not_paused.stderr == "taskflow: task type send_email is not paused; nothing changed\n"
    assert await paused_rows(store) == [("test_noop", "cli:ops-alice", "first")]

    # A misspelt type would pause nothing that exists: refused, naming the known ones.
    unknown = await cli("pause", "send_mail")
    assert (unknown.code, unknown.stdout) == (2, "")
    [line] = unknown.stderr.splitlines()
    assert line.startswith("taskflow: unknown task type 'send_mail' (known: ")
    assert "send_email" in line
    assert line.endswith("; nothing changed")
    assert await paused_rows(store) == [("test_noop", "cli:ops-alice", "first")]


async def test_a_type_paused_from_the_command_line_waits_until_resumed(
    store: Store, database: str, tmp_path: Path, cli: Any
) -> None:
    fast: Settings = fast_settings(database, tmp_path)
    user_id = await new_user(store)
    assert (await cli("pause", "test_noop")).code == 0
    async with running_scheduler(fast), running_worker(fast, concurrency=2):
        held = [await create(store, fast, user_id, "test_noop", {"n": n}) for n in range(3)]
        other = await create(store, fast, user_id, "test_sleep", {"seconds": 0})
        await wait_until(all_in(store, [other], "done"), what="the other type's task")
        # The worker is idle and polls every 100 ms: ten polls without a claim.
        await asyncio.sleep(1.0)
        assert await all_in(store, held, "queued")()
        status = await cli("status")
        assert "WARNING: task type test_noop is paused" in status.stdout
        assert "); 3 queued task(s) of it wait: " in status.stdout

        assert (await cli("resume", "test_noop")).code == 0
        await wait_until(all_in(store, held, "done"), what="the paused type's tasks")
