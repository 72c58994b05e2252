"""Task dependencies (SPEC §3, §9): a graph created in one request runs in
order, a step that fails for good cancels what waits for it, and what cannot
be a graph (cycles, other users' tasks) is refused with nothing created."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from quart.typing import TestClientProtocol as Client

from taskflow.config import Settings
from taskflow.enqueue import Enqueuer
from taskflow.handlers import Registry
from taskflow.models import TaskCreate
from tests.conftest import (
    auth_headers,
    new_user,
    running_scheduler,
    running_worker,
    wait_until,
)
from tests.stores import Store, claim


def _item(n: int, depends_on: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "test_gather", "payload": {"n": n}, **fields}
    if depends_on is not None:
        item["depends_on"] = depends_on
    return item


async def _statuses(store: Store, ids: list[Any]) -> list[str]:
    rows = await store.pool.fetch(
        "SELECT status::text FROM tasks WHERE id = ANY($1::uuid[]) "
        "ORDER BY array_position($1::uuid[], id)",
        ids,
    )
    return [row[0] for row in rows]


async def _first(store: Store, task_id: Any, event: str) -> Any:
    return await store.pool.fetchval(
        "SELECT min(at) FROM task_history WHERE task_id = $1 AND event = $2", task_id, event
    )


async def test_a_diamond_created_in_one_batch_runs_in_order(
    client: Client, settings: Settings, store: Store
) -> None:
    headers = await auth_headers(client)
    response = await client.post(
        "/api/tasks/batch",
        json={
            "tasks": [
                _item(0),
                _item(1, ["#0"]),
                _item(2, ["#0"]),
                _item(3, ["#1", "#2", "#1"]),
            ]
        },
        headers=headers,
    )
    assert response.status_code == 201, await response.get_data()
    tasks = await response.get_json()
    ids = [task["id"] for task in tasks]
    assert [task["status"] for task in tasks] == ["queued", "blocked", "blocked", "blocked"]
    links = await (
        await client.get(f"/api/tasks/{ids[3]}/dependencies", headers=headers)
    ).get_json()
    assert sorted(t["id"] for t in links["dependencies"]["tasks"]) == sorted(ids[1:3])
    assert links["dependents"] == {"tasks": [], "more": False}

    async with running_scheduler(settings), running_worker(settings, concurrency=4):

        async def all_done() -> bool:
            return await _statuses(store, ids) == ["done"] * 4

        await wait_until(all_done, what="the diamond")

    edges = [(0, 1), (0, 2), (1, 3), (2, 3)]
    for before, after in edges:
        completed = await _first(store, uuid.UUID(ids[before]), "completed")
        claimed = await _first(store, uuid.UUID(ids[after]), "claimed")
        assert completed <= claimed, (before, after)
    # Promotion is recorded in each dependent's history.
    history = await (await client.get(f"/api/tasks/{ids[3]}/history", headers=headers)).get_json()
    assert [e["event"] for e in history][:2] == ["created", "unblocked"]
    assert history[1]["from_status"] == "blocked"
    assert history[1]["to_status"] == "queued"
    # The last step saw both results of the steps before it, and only those.
    last = await (await client.get(f"/api/tasks/{ids[3]}", headers=headers)).get_json()
    assert last["result"]["seen"] == {
        ids[1]: {"n": 1, "seen": {ids[0]: {"n": 0, "seen": {}}}},
        ids[2]: {"n": 2, "seen": {ids[0]: {"n": 0, "seen": {}}}},
    }


async def test_a_step_that_fails_for_good_cancels_what_waits_for_it(
    client: Client, settings: Settings, store: Store
) -> None:
    headers = await auth_headers(client)
    done = await client.post("/api/tasks", json=_item(9), headers=headers)
    done_id = (await done.get_json())["id"]
    response = await client.post(
        "/api/tasks/batch",
        json={
            "tasks": [
                {"type": "test_fail", "payload": {"kind": "permanent"}, "max_retries": 0},
                _item(1, ["#0"]),
                _item(2, ["#1", done_id]),
                _item(3, [done_id]),
            ]
        },
        headers=headers,
    )
    assert response.status_code == 201, await response.get_data()
    ids = [task["id"] for task in await response.get_json()]
    async with running_scheduler(settings), running_worker(settings, concurrency=2):

        async def settled() -> bool:
            return await _statuses(store, ids) == ["failed", "cancelled", "cancelled", "done"]

        await wait_until(settled, what="the failure to reach the whole chain")

    step = await (await client.get(f"/api/tasks/{ids[1]}", headers=headers)).get_json()
    assert step["last_error"] == f"dependency {ids[0]} failed"
    assert step["started_at"] is None
    assert step["finished_at"] is not None
    after = await (await client.get(f"/api/tasks/{ids[2]}", headers=headers)).get_json()
    assert after["last_error"] == f"dependency {ids[1]} was cancelled"
    history = await (await client.get(f"/api/tasks/{ids[2]}/history", headers=headers)).get_json()
    assert history[-1]["event"] == "cancelled"
    assert history[-1]["from_status"] == "blocked"
    assert history[-1]["error"] == f"dependency {ids[1]} was cancelled"

    # Retrying the cancelled step waits for its dependency: refused while it
    # is not done, accepted once it is.
    refused = await client.post(f"/api/tasks/{ids[1]}/retry", headers=headers)
    assert refused.status_code == 409
    body = await refused.get_json()
    assert body["details"]["waits_for"] == [{"id": ids[0], "status": "failed"}]
    assert await store.pool.fetchval("SELECT taskflow_retry($1)", uuid.UUID(ids[1])) is False


async def test_cycles_foreign_and_unknown_ids_are_refused_with_nothing_created(
    client: Client, store: Store
) -> None:
    mine = await auth_headers(client, "mine@example.com")
    theirs = await auth_headers(client, "theirs@example.com")
    their_task = (
        await (await client.post("/api/tasks", json=_item(0), headers=theirs)).get_json()
    )["id"]
    before = await store.pool.fetchval("SELECT count(*) FROM tasks")

    async def refused(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await client.post(path, json=body, headers=mine)
        assert response.status_code == 400, await response.get_data()
        answer: dict[str, Any] = await response.get_json()
        return answer

    cycle = await refused(
        "/api/tasks/batch",
        {"tasks": [_item(0), _item(1, ["#0", "#3"]), _item(2, ["#1"]), _item(3, ["#2"])]},
    )
    assert "cycle" in cycle["error"]
    assert cycle["details"][0]["message"] in (
        "cycle #1 -> #3 -> #2 -> #1",
        "cycle #3 -> #2 -> #1 -> #3",
    )
    itself = await refused("/api/tasks/batch", {"tasks": [_item(0, ["#0"])]})
    assert itself["details"] == [
        {"field": "tasks[0].depends_on[0]", "message": "a task cannot wait for itself"}
    ]
    foreign = await refused("/api/tasks/batch", {"tasks": [_item(0), _item(1, ["#0", their_task])]})
    assert foreign["details"] == [
        {"field": "tasks[1].depends_on[1]", "message": f"no task {their_task} of yours"}
    ]
    unknown = str(uuid.uuid4())
    single = await refused("/api/tasks", _item(0, [unknown]))
    assert single["details"] == [
        {"field": "depends_on[0]", "message": f"no task {unknown} of yours"}
    ]
    outside = await refused("/api/tasks", _item(0, ["#0"]))
    assert "names an item of a batch" in outside["details"][0]["message"]
    beyond = await refused("/api/tasks/batch", {"tasks": [_item(0, ["#7"])]})
    assert beyond["details"][0]["message"] == "no item #7 in this batch of 1"
    malformed = await refused("/api/tasks", _item(0, ["task-1"]))
    assert malformed["details"][0]["field"] == "depends_on.0"
    too_many = await refused("/api/tasks", _item(0, [str(uuid.uuid4()) for _ in range(101)]))
    assert too_many["details"][0]["field"] == "depends_on"
    assert await store.pool.fetchval("SELECT count(*) FROM tasks") == before
    assert await store.pool.fetchval("SELECT count(*) FROM task_dependencies") == 0


async def test_a_dependency_that_can_never_be_done_is_refused(client: Client, store: Store) -> None:
    headers = await auth_headers(client)
    task_id = (await (await client.post("/api/tasks", json=_item(0), headers=headers)).get_json())[
        "id"
    ]
    cancel = await client.post(f"/api/tasks/{task_id}/cancel", headers=headers)
    assert cancel.status_code == 200
    response = await client.post("/api/tasks", json=_item(1, [task_id]), headers=headers)
    assert response.status_code == 400
    assert (await response.get_json())["details"] == [
        {"field": "depends_on[0]", "message": f"task {task_id} is cancelled: it will never be done"}
    ]


async def test_two_dependencies_finishing_together_promote_their_dependent(
    store: Store, registry: Registry, database: str
) -> None:
    """Each finishing transaction, reading before the other commits, would see
    the other dependency unfinished; the dependent must still be queued."""
    user = await new_user(store)
    enqueuer = Enqueuer(store, registry)
    first = (await enqueuer.create(user, TaskCreate(type="test_noop", payload={})))[0]["id"]
    second = (await enqueuer.create(user, TaskCreate(type="test_noop", payload={})))[0]["id"]
    dependent = (
        await enqueuer.create(
            user,
            TaskCreate(type="test_noop", payload={}, depends_on=[str(first), str(second)]),
        )
    )[0]
    assert dependent["status"] == "blocked"
    assert len(await claim(store, [first, second], "w", 60)) == 2
    one, two = await asyncpg.connect(database), await asyncpg.connect(database)
    try:
        finish = "UPDATE tasks SET status = 'done' WHERE id = $1"
        one_tx, two_tx = one.transaction(), two.transaction()
        await one_tx.start()
        await two_tx.start()
        await one.execute(finish, first)
        # Blocks on the dependent's row lock, held by the first transaction.
        second_finish = asyncio.create_task(two.execute(finish, second))
        await asyncio.sleep(0.3)
        assert not second_finish.done()
        await one_tx.commit()
        await asyncio.wait_for(second_finish, 10)
        await two_tx.commit()
    finally:
        await one.close()
        await two.close()
    assert await _statuses(store, [dependent["id"]]) == ["queued"]


async def test_deleting_a_dependency_cancels_its_blocked_dependents(
    store: Store, registry: Registry
) -> None:
    user = await new_user(store)
    enqueuer = Enqueuer(store, registry)
    rows = await enqueuer.create_many(
        user,
        [
            TaskCreate(type="test_noop", payload={}),
            TaskCreate(type="test_noop", payload={}, depends_on=["#0"]),
            TaskCreate(type="test_noop", payload={}, depends_on=["#1"]),
        ],
    )
    ids = [row["id"] for row in rows]
    await store.pool.execute("DELETE FROM tasks WHERE id = $1", ids[0])
    assert await _statuses(store, ids[1:]) == ["cancelled", "cancelled"]
    errors = await store.pool.fetch(
        "SELECT last_error FROM tasks WHERE id = ANY($1::uuid[]) "
        "ORDER BY array_position($1::uuid[], id)",
        ids[1:],
    )
    assert [row[0] for row in errors] == [
        f"dependency {ids[0]} was deleted",
        f"dependency {ids[1]} was cancelled",
    ]
    assert (
        await store.pool.fetchval(
            "SELECT count(*) FROM task_dependencies WHERE depends_on_id = $1", ids[0]
        )
        == 0
    )


async def test_a_long_chain_is_cancelled_in_one_step(store: Store, registry: Registry) -> None:
    """One statement cancels the whole chain: no trigger nested per step."""
    user = await new_user(store)
    enqueuer = Enqueuer(store, registry)
    chain = [TaskCreate(type="test_noop", payload={})] + [
        TaskCreate(type="test_noop", payload={}, depends_on=[f"#{n}"]) for n in range(999)
    ]
    ids = [row["id"] for row in await enqueuer.create_many(user, chain)]
    assert await store.pool.fetchval("SELECT taskflow_cancel($1, 'not needed')", ids[0])
    counts = await store.pool.fetch(
        "SELECT status::text, count(*) FROM tasks GROUP BY status ORDER BY status"
    )
    assert [tuple(row) for row in counts] == [("cancelled", 1000)]


async def test_a_blocked_task_with_a_future_run_at_is_postponed_when_unblocked(
    store: Store, registry: Registry
) -> None:
    user = await new_user(store)
    enqueuer = Enqueuer(store, registry)
    first = (await enqueuer.create(user, TaskCreate(type="test_noop", payload={})))[0]["id"]
    later = (
        await enqueuer.create(
            user,
            TaskCreate.model_validate(
                {
                    "type": "test_noop",
                    "payload": {},
                    "run_at": "2999-01-01T00:00:00Z",
                    "depends_on": [str(first)],
                }
            ),
        )
    )[0]
    assert later["status"] == "blocked"
    why = await store.pool.fetchval("SELECT taskflow_why($1)", later["id"])
    assert why.startswith("blocked: waits for 1 of its dependencies to be done: ")
    assert f"{first} (test_noop, queued)" in why
    view = await store.pool.fetch("SELECT id, waits_for FROM taskflow_blocked")
    assert [tuple(row) for row in view] == [(later["id"], first)]
    assert len(await claim(store, [first], "w", 60)) == 1
    await store.pool.execute("UPDATE tasks SET status = 'done' WHERE id = $1", first)
    assert await _statuses(store, [later["id"]]) == ["postponed"]
    assert await store.pool.fetchval("SELECT count(*) FROM taskflow_blocked") == 0


async def test_links_of_another_users_task_are_not_found(client: Client) -> None:
    mine = await auth_headers(client, "mine@example.com")
    theirs = await auth_headers(client, "theirs@example.com")
    task_id = (await (await client.post("/api/tasks", json=_item(0), headers=theirs)).get_json())[
        "id"
    ]
    response = await client.get(f"/api/tasks/{task_id}/dependencies", headers=mine)
    assert response.status_code == 404
