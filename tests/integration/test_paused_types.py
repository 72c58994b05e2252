"""Pausing a task type (SPEC §9): its tasks stay queued and no worker claims
them, with the broker on and off; other types run; resuming runs them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from taskflow.config import Settings
from taskflow.enqueue import Enqueuer
from taskflow.handlers import build_registry
from taskflow.models import TaskCreate
from taskflow.store.dispatch import FairLimits
from tests.conftest import make_settings, new_user, running_scheduler, running_worker, wait_until
from tests.stores import Store


@pytest.fixture(params=["broker", "postgres only"])
def either(
    request: pytest.FixtureRequest, database: str, queue_name: str, tmp_path: Path
) -> Settings:
    queue = queue_name if request.param == "broker" else None
    return make_settings(database, queue=queue, files=tmp_path / "files")


async def _statuses(store: Store, ids: list[object]) -> list[str]:
    rows = await store.pool.fetch("SELECT status::text FROM tasks WHERE id = ANY($1)", ids)
    return sorted(row[0] for row in rows)


async def test_a_paused_type_waits_and_runs_once_resumed(store: Store, either: Settings) -> None:
    user = await new_user(store)
    enqueuer = Enqueuer(store, build_registry(either))
    assert await store.pool.fetchval("SELECT taskflow_pause_type('test_noop', 'incident')")
    async with running_scheduler(either), running_worker(either, concurrency=2):
        held = [
            (await enqueuer.create(user, TaskCreate(type="test_noop", payload={"n": n})))[0]["id"]
            for n in range(5)
        ]
        other = (
            await enqueuer.create(user, TaskCreate(type="test_sleep", payload={"seconds": 0}))
        )[0]["id"]

        async def other_done() -> bool:
            return await _statuses(store, [other]) == ["done"]

        await wait_until(other_done, what="the other type's task")
        await asyncio.sleep(1.0)
        assert await _statuses(store, held) == ["queued"] * 5
        why = await store.pool.fetchval("SELECT taskflow_why($1)", held[0])
        assert "its type test_noop is paused" in why
        assert "incident" in why
        assert await store.pool.fetchval("SELECT count(*) FROM dispatched_tasks") == 0

        assert await store.pool.fetchval("SELECT taskflow_resume_type('test_noop')")

        async def held_done() -> bool:
            return await _statuses(store, held) == ["done"] * 5

        await wait_until(held_done, what="the paused type's tasks after the resume")


async def test_ids_on_their_way_when_paused_are_refused_at_claim(store: Store) -> None:
    user = await new_user(store)
    rows = await store.pool.fetch(
        "INSERT INTO tasks (id, user_id, type, payload, status) "
        "SELECT gen_random_uuid(), $1, 'test_noop', '{}', 'queued' FROM generate_series(1, 3) "
        "RETURNING id",
        user,
    )
    ids = [row["id"] for row in rows]
    assert len(await store.dispatch(3, FairLimits())) == 3
    await store.pool.execute("SELECT taskflow_pause_type('test_noop')")
    # Out of the window, and a late message for them claims nothing.
    assert await store.count_dispatched() == 0
    await store.pool.execute(
        "INSERT INTO dispatched_tasks (task_id, user_id, type) "
        "SELECT id, user_id, type FROM tasks WHERE id = ANY($1)",
        ids,
    )
    assert await store.claim_queued_tasks(ids, "w", 30) == []
    assert await store.dispatch(3, FairLimits()) == []
    # Pausing twice, or resuming what is not paused, changes nothing and says so.
    assert await store.pool.fetchval("SELECT taskflow_pause_type('test_noop')") is False
    assert await store.pool.fetchval("SELECT taskflow_resume_type('test_noop')") is True
    assert await store.pool.fetchval("SELECT taskflow_resume_type('test_noop')") is False
