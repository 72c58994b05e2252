"""/api/tasks through the real app: create (and SPEC §5's payload rules), batch,
list, get, history, patch, cancel, retry, delete, Idempotency-Key, and the
RabbitMQ message each queued task gets."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID, uuid4

from quart.typing import TestClientProtocol as Client

from taskflow.api import create_app
from taskflow.config import Settings
from taskflow.enqueue import Enqueuer
from taskflow.errors import ValidationFailed
from taskflow.handlers import Registry
from taskflow.models import TaskCreate, TaskStatus
from taskflow.runtime import api_services
from taskflow.store.engine import Outcome
from tests.conftest import auth_headers, make_settings, new_user
from tests.integration.api_helpers import (
    EMAIL_TASK,
    FUTURE,
    HISTORY_FIELDS,
    SEED_RUN_AT,
    TASK_FIELDS,
    create_task,
    db_snapshot,
    detail_fields,
    json_error,
    picked,
    put_task_in,
    task_in,
    task_row,
    token_for,
)
from tests.stores import Store, claim, finish

S = TaskStatus
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
LINK_NEXT = re.compile(r'^<(/api/tasks\?[^>]+)>; rel="next"$')


def _when(text: str) -> datetime:
    assert RFC3339_UTC.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _count_tasks_sql() -> str:
    return "SELECT count(*) FROM tasks"


async def _expect_invalid(
    client: Client,
    headers: dict[str, str],
    cases: list[tuple[dict[str, Any], list[str]]],
    *,
    url: str = "/api/tasks",
    method: str = "post",
) -> None:
    """Each body is a 400 whose details name exactly these fields."""
    for body, fields in cases:
        response = await getattr(client, method)(url, headers=headers, json=body)
        error = await json_error(response, 400)
        assert sorted(detail_fields(error)) == sorted(fields), (body, error)


# ----- create ---------------------------------------------------------------------


async def test_create_returns_the_task_and_queues_it_for_the_pick(
    client: Client, store: Store, settings: Settings
) -> None:
    headers = await auth_headers(client)
    started = datetime.now(UTC)
    response = await client.post("/api/tasks", headers=headers, json=EMAIL_TASK)
    assert response.status_code == 201
    task = await response.get_json()
    assert set(task) == TASK_FIELDS
    assert UUID(task["id"]).version == 7
    assert response.headers["Location"] == f"/api/tasks/{task['id']}"
    assert "Idempotent-Replayed" not in response.headers
    assert task["type"] == "send_email"
    assert task["payload"] == EMAIL_TASK["payload"]
    assert task["status"] == "queued"
    assert (task["attempts"], task["retries"], task["max_retries"], task["priority"]) == (
        0,
        0,
        3,
        0,
    )
    assert task["started_at"] is task["finished_at"] is task["last_error"] is task["result"] is None
    for field in ("run_at", "created_at", "updated_at"):
        assert abs(_when(task[field]) - started) < timedelta(seconds=5)
    row = await task_row(store, task["id"])
    assert row["status"] == "queued"
    assert row["user_id"] == task["user_id"]
    assert row["payload"] == EMAIL_TASK["payload"]
    # The id is in the RabbitMQ queue, and it is the whole message.
    assert await picked(store) == [task["id"]]
    history = await (
        await client.get(f"/api/tasks/{task['id']}/history", headers=headers)
    ).get_json()
    assert [(h["event"], h["from_status"], h["to_status"]) for h in history] == [
        ("created", None, "queued")
    ]


async def test_create_each_type_with_the_seed_payloads(client: Client, store: Store) -> None:
    headers = await token_for(store)
    seed_payloads = {
        "send_email": {
            "to": "recipient@example.com",
            "subject": "subject",
            "body": "body",
            "attached_files": ["your files"],
        },
        "process_image": {
            "path": "file_name",
            "blur": 1,
            "sharpen": 1,
            "gamma": 1,
            "contrast": 1,
            "brightness": 1,
            "saturation": 1,
            "grayscale": True,
            "invert": True,
        },
        "download_files": {"urls": ["https://go.dev/"]},
    }
    for task_type, payload in seed_payloads.items():
        task = await create_task(client, headers, {"type": task_type, "payload": payload})
        assert task["type"] == task_type
        assert task["payload"] == payload
        assert (await task_row(store, task["id"]))["payload"] == payload


async def test_future_run_at_is_postponed_and_not_published(
    client: Client, store: Store, settings: Settings
) -> None:
    headers = await token_for(store)
    task = await create_task(client, headers, run_at=FUTURE)
    assert task["status"] == "postponed"
    assert task["run_at"] == FUTURE
    # An offset is understood and the answer is in UTC.
    shifted = await create_task(client, headers, run_at="2099-01-01T03:00:00+03:00")
    assert shifted["status"] == "postponed"
    assert shifted["run_at"] == FUTURE
    assert (await task_row(store, task["id"]))["status"] == "postponed"
    assert await picked(store) == []


async def test_past_run_at_is_accepted_and_queued_at_once(
    client: Client, store: Store, settings: Settings
) -> None:
    headers = await token_for(store)
    task = await create_task(client, headers, run_at=SEED_RUN_AT)
    assert task["status"] == "queued"
    assert task["run_at"] == SEED_RUN_AT
    assert (await task_row(store, task["id"]))["status"] == "queued"
    assert await picked(store) == [task["id"]]


async def test_past_run_at_is_refused_when_configured(
    database: str, queue_name: str, tmp_path: Path, registry: Registry, store: Store
) -> None:
    settings = make_settings(
        database, queue=queue_name, files=tmp_path / "strict", reject_past_run_at=True
    )
    async with create_app(settings, registry, api_services).test_app() as test_app:
        client = test_app.test_client()
        headers = await token_for(store)
        before = await db_snapshot(store)
        past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
        for run_at in (SEED_RUN_AT, past):
            response = await client.post(
                "/api/tasks", headers=headers, json={**EMAIL_TASK, "run_at": run_at}
            )
            error = await json_error(response, 400)
            assert detail_fields(error) == ["run_at"]
            assert "past" in error["error"]
        batch = await client.post(
            "/api/tasks/batch",
            headers=headers,
            json={"tasks": [EMAIL_TASK, {**EMAIL_TASK, "run_at": SEED_RUN_AT}]},
        )
        assert detail_fields(await json_error(batch, 400)) == ["tasks[1].run_at"]
        assert await db_snapshot(store) == before
        task = await create_task(client, headers, run_at=FUTURE)
        assert task["status"] == "postponed"
        # No run_at still means "now", which is not "in the past".
        assert (await create_task(client, headers))["status"] == "queued"


async def test_run_at_needs_a_time_zone_and_a_date_time(client: Client, store: Store) -> None:
    headers = await token_for(store)
    before = await db_snapshot(store)
    await _expect_invalid(
        client,
        headers,
        [
            ({**EMAIL_TASK, "run_at": "2099-01-01T00:00:00"}, ["run_at"]),
            ({**EMAIL_TASK, "run_at": "2099-01-01"}, ["run_at"]),
            ({**EMAIL_TASK, "run_at": "tomorrow"}, ["run_at"]),
            ({**EMAIL_TASK, "run_at": "2099-13-01T00:00:00Z"}, ["run_at"]),
            ({**EMAIL_TASK, "run_at": ""}, ["run_at"]),
            ({**EMAIL_TASK, "run_at": 4102444800}, ["run_at"]),
            ({**EMAIL_TASK, "run_at": True}, ["run_at"]),
            ({**EMAIL_TASK, "run_at": ["2099-01-01T00:00:00Z"]}, ["run_at"]),
        ],
    )
    naive = await client.post(
        "/api/tasks", headers=headers, json={**EMAIL_TASK, "run_at": "2099-01-01T00:00:00"}
    )
    assert "time zone" in (await naive.get_json())["details"][0]["message"]
    assert await db_snapshot(store) == before


async def test_max_retries_and_priority_bounds(client: Client, store: Store) -> None:
    headers = await token_for(store)
    for max_retries, priority in ((0, -100), (10, 100), (3, 0)):
        task = await create_task(client, headers, max_retries=max_retries, priority=priority)
        assert (task["max_retries"], task["priority"]) == (max_retries, priority)
        row = await task_row(store, task["id"])
        assert (row["max_retries"], row["priority"]) == (max_retries, priority)
    before = await db_snapshot(store)
    await _expect_invalid(
        client,
        headers,
        [
            ({**EMAIL_TASK, "max_retries": bad}, ["max_retries"])
            for bad in (-1, 11, 3.5, 3.0, "3", True, None, [3])
        ]
        + [
            ({**EMAIL_TASK, "priority": bad}, ["priority"])
            for bad in (-101, 101, 1.5, "1", False, None, {})
        ]
        + [({**EMAIL_TASK, "max_retries": 11, "priority": 101}, ["max_retries", "priority"])],
    )
    assert await db_snapshot(store) == before


async def test_type_must_be_registered(client: Client, store: Store) -> None:
    headers = await token_for(store)
    before = await db_snapshot(store)
    payload = EMAIL_TASK["payload"]
    await _expect_invalid(
        client,
        headers,
        [
            ({"type": name, "payload": payload}, ["type"])
            for name in ("resize_video", "SEND_EMAIL", "send-email", "x" * 65, "", 7, None)
        ]
        + [({"payload": payload}, ["type"]), ({"type": "send_email"}, ["payload"])],
    )
    response = await client.post(
        "/api/tasks", headers=headers, json={"type": "resize_video", "payload": {}}
    )
    message = (await response.get_json())["details"][0]["message"]
    assert all(name in message for name in ("send_email", "process_image", "download_files"))
    assert await db_snapshot(store) == before


async def test_unknown_top_level_fields_are_refused(client: Client, store: Store) -> None:
    headers = await token_for(store)
    before = await db_snapshot(store)
    for extra in ({"queue": "fast"}, {"status": "done"}, {"user_id": 1}, {"id": str(uuid4())}):
        response = await client.post("/api/tasks", headers=headers, json={**EMAIL_TASK, **extra})
        error = await json_error(response, 400)
        assert error["details"] == [{"field": next(iter(extra)), "message": "unknown field"}]
    assert await db_snapshot(store) == before


# ----- SPEC §5: payload rules per type ----------------------------------------------


async def test_send_email_payload_rules(client: Client, store: Store) -> None:
    headers = await token_for(store)
    to = {"to": "someone@example.com"}
    for payload in (
        {**to, "subject": "s"},
        {**to, "body": "<p>html</p>"},
        {**to, "attached_files": ["report.pdf"]},
        {**to, "subject": "s", "body": "b", "attached_files": ["a.txt", "b c.png"]},
        {**to, "subject": "Привет, мир ✉"},
        {**to, "subject": "x" * 998},
    ):
        task = await create_task(client, headers, {"type": "send_email", "payload": payload})
        assert task["payload"] == payload
    before = await db_snapshot(store)

    def email(**payload: Any) -> dict[str, Any]:
        return {"type": "send_email", "payload": payload}

    await _expect_invalid(
        client,
        headers,
        [
            (email(subject="s"), ["payload.to"]),
            (email(to="not-an-email", subject="s"), ["payload.to"]),
            (email(to="a@", subject="s"), ["payload.to"]),
            (email(to=123, subject="s"), ["payload.to"]),
            (email(to=["a@example.com"], subject="s"), ["payload.to"]),
            (email(to="a@example.com\r\nBcc: x@example.com", subject="s"), ["payload.to"]),
            (email(**to), ["payload"]),
            (email(**to, subject="", body=""), ["payload"]),
            (email(**to, attached_files=[]), ["payload"]),
            (email(**to, subject="hi\r\nBcc: victim@example.com"), ["payload.subject"]),
            (email(**to, subject="line\nbreak"), ["payload.subject"]),
            (email(**to, subject="x" * 999), ["payload.subject"]),
            (email(**to, subject=5), ["payload.subject"]),
            (email(**to, body=["b"]), ["payload.body"]),
            (email(**to, body="x" * 1_000_001), ["payload.body"]),
            (email(**to, attached_files="a.txt"), ["payload.attached_files"]),
            (email(**to, attached_files=["../etc/passwd"]), ["payload.attached_files.0"]),
            (email(**to, attached_files=["ok.txt", "a/b.txt"]), ["payload.attached_files.1"]),
            (email(**to, attached_files=["a\\b.txt"]), ["payload.attached_files.0"]),
            (email(**to, attached_files=[".env"]), ["payload.attached_files.0"]),
            (email(**to, attached_files=[" padded"]), ["payload.attached_files.0"]),
            (email(**to, attached_files=[""]), ["payload.attached_files.0"]),
            (email(**to, attached_files=[1]), ["payload.attached_files.0"]),
            (email(**to, attached_files=[f"f{i}" for i in range(21)]), ["payload.attached_files"]),
            (email(**to, subject="s", cc="x@example.com"), ["payload.cc"]),
            ({"type": "send_email", "payload": ["a@example.com"]}, ["payload"]),
            ({"type": "send_email", "payload": "a@example.com"}, ["payload"]),
            ({"type": "send_email", "payload": None}, ["payload"]),
        ],
    )
    response = await client.post("/api/tasks", headers=headers, json=email(**to))
    assert "subject, body, attached_files" in (await response.get_json())["details"][0]["message"]
    response = await client.post(
        "/api/tasks", headers=headers, json=email(**to, subject="s", cc="x")
    )
    assert (await response.get_json())["details"][0]["message"] == "unknown field"
    assert await db_snapshot(store) == before


async def test_send_email_subject_refuses_every_kind_of_line_break(
    client: Client, store: Store
) -> None:
    # Python's email package splits header values on every str.splitlines()
    # break and raises for them: a subject holding one must be a 400 now, not
    # a task that fails at send time (HeaderText once refused only \r, \n, NUL).
    headers = await token_for(store)
    before = await db_snapshot(store)
    for brk in ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"):
        body = {
            "type": "send_email",
            "payload": {"to": "a@example.com", "subject": f"hi{brk}Bcc: victim@example.com"},
        }
        response = await client.post("/api/tasks", headers=headers, json=body)
        assert detail_fields(await json_error(response, 400)) == ["payload.subject"], repr(brk)
    assert await db_snapshot(store) == before


async def test_process_image_payload_rules(client: Client, store: Store) -> None:
    headers = await token_for(store)
    for payload in (
        {"path": "photo.jpg"},
        {"path": "photo.jpg", "blur": 0.5, "sharpen": 2, "gamma": 1000},
        {"path": "photo.jpg", "contrast": -100, "brightness": 100, "saturation": 0},
        {"path": "photo.jpg", "contrast": 99.5, "grayscale": False, "invert": True},
    ):
        task = await create_task(client, headers, {"type": "process_image", "payload": payload})
        assert task["payload"] == payload
    before = await db_snapshot(store)

    def image(**payload: Any) -> dict[str, Any]:
        return {"type": "process_image", "payload": payload}

    path = {"path": "photo.jpg"}
    cases: list[tuple[dict[str, Any], list[str]]] = [
        (image(blur=1), ["payload.path"]),
        (image(path=""), ["payload.path"]),
        (image(path="../photo.jpg"), ["payload.path"]),
        (image(path="dir/photo.jpg"), ["payload.path"]),
        (image(path="/etc/passwd"), ["payload.path"]),
        (image(path=".hidden.jpg"), ["payload.path"]),
        (image(path=["photo.jpg"]), ["payload.path"]),
        (image(**path, rotate=90), ["payload.rotate"]),
    ]
    for field in ("blur", "sharpen", "gamma"):
        for bad in (0, -1, -0.001, "1", True, [1]):
            cases.append((image(**path, **{field: bad}), [f"payload.{field}"]))
    for field in ("contrast", "brightness", "saturation"):
        for bad in (-101, 100.01, 1000, "10", False):
            cases.append((image(**path, **{field: bad}), [f"payload.{field}"]))
    for field in ("grayscale", "invert"):
        for bad in (1, 0, "true", "yes"):
            cases.append((image(**path, **{field: bad}), [f"payload.{field}"]))
    cases.append((image(**path, blur=0, contrast=200), ["payload.blur", "payload.contrast"]))
    await _expect_invalid(client, headers, cases)
    assert await db_snapshot(store) == before


async def test_download_files_payload_rules(client: Client, store: Store) -> None:
    headers = await token_for(store)
    many = [f"https://example.com/{i}" for i in range(20)]
    for payload in (
        {"urls": ["https://go.dev/"]},
        {"urls": ["http://example.com/a.png?x=1#frag", "https://example.com:8443/b"]},
        {"urls": many},
    ):
        task = await create_task(client, headers, {"type": "download_files", "payload": payload})
        assert task["payload"] == payload
    before = await db_snapshot(store)

    def download(*urls: Any) -> dict[str, Any]:
        return {"type": "download_files", "payload": {"urls": list(urls)}}

    await _expect_invalid(
        client,
        headers,
        [
            ({"type": "download_files", "payload": {}}, ["payload.urls"]),
            (download(), ["payload.urls"]),
            (download(*many, "https://example.com/21"), ["payload.urls"]),
            ({"type": "download_files", "payload": {"urls": "https://go.dev/"}}, ["payload.urls"]),
            (download("ftp://example.com/f"), ["payload.urls.0"]),
            (download("file:///etc/passwd"), ["payload.urls.0"]),
            (download("javascript:alert(1)"), ["payload.urls.0"]),
            (download("http://"), ["payload.urls.0"]),
            (download("example.com/page"), ["payload.urls.0"]),
            (download("https://user:pw@example.com/"), ["payload.urls.0"]),
            (download("https://exa mple.com/"), ["payload.urls.0"]),
            (download("https://example.com/\r\nX-Injected: 1"), ["payload.urls.0"]),
            (download("https://example.com:99999/"), ["payload.urls.0"]),
            (download("https://example.com/" + "a" * 2048), ["payload.urls.0"]),
            (download(123), ["payload.urls.0"]),
            (download("https://go.dev/", "gopher://example.com/"), ["payload.urls.1"]),
            (
                {
                    "type": "download_files",
                    "payload": {"urls": ["https://go.dev/"], "dest": "/tmp"},
                },
                ["payload.dest"],
            ),
        ],
    )
    assert await db_snapshot(store) == before


# ----- Idempotency-Key -------------------------------------------------------------


async def test_idempotency_key_replays_the_same_task(
    client: Client, store: Store, settings: Settings
) -> None:
    headers = await token_for(store)
    keyed = {**headers, "Idempotency-Key": "order-42"}
    body = {**EMAIL_TASK, "max_retries": 5}
    first = await client.post("/api/tasks", headers=keyed, json=body)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    task = await first.get_json()
    # The same request again, keys in another order: the same task, not a new one.
    again = await client.post("/api/tasks", headers=keyed, json=dict(reversed(list(body.items()))))
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.get_json() == task
    assert await store.pool.fetchval(_count_tasks_sql()) == 1
    assert await picked(store) == [task["id"]]

    before = await db_snapshot(store)
    for different in ({**body, "max_retries": 4}, EMAIL_TASK, {**body, "run_at": FUTURE}):
        conflict = await client.post("/api/tasks", headers=keyed, json=different)
        await json_error(conflict, 409)
    for bad_key in ("k" * 256,):
        response = await client.post(
            "/api/tasks", headers={**headers, "Idempotency-Key": bad_key}, json=body
        )
        await json_error(response, 400)
    assert await db_snapshot(store) == before

    # Keys belong to a user: another user's identical key makes their own task.
    other = await token_for(store, "other@example.com")
    theirs = await client.post(
        "/api/tasks", headers={**other, "Idempotency-Key": "order-42"}, json=body
    )
    assert theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert (await theirs.get_json())["id"] != task["id"]
    longest = await client.post(
        "/api/tasks", headers={**headers, "Idempotency-Key": "k" * 255}, json=body
    )
    assert longest.status_code == 201


# ----- batch -------------------------------------------------------------------------


async def test_concurrent_creates_share_a_commit_and_each_gets_its_own_task(
    client: Client, store: Store, settings: Settings
) -> None:
    headers = await auth_headers(client)
    other = await auth_headers(client, "other@example.com")

    async def create(n: int) -> dict[str, Any]:
        response = await client.post(
            "/api/tasks",
            json={**EMAIL_TASK, "payload": {**EMAIL_TASK["payload"], "subject": f"s{n}"}},
            headers=other if n % 2 else headers,
        )
        assert response.status_code == 201, await response.get_data()
        return dict(await response.get_json())

    tasks = await asyncio.gather(*(create(n) for n in range(24)))
    rows = await store.pool.fetch(
        "SELECT id, user_id, payload->>'subject' AS subject, xmin::text AS tx FROM tasks"
    )
    assert len(rows) == 24
    by_id = {str(row["id"]): row for row in rows}
    for n, task in enumerate(tasks):
        assert by_id[task["id"]]["subject"] == f"s{n}"  # each answer is its own row
    assert len({row["user_id"] for row in rows}) == 2
    # Requests that arrived together were written by one transaction.
    assert len({row["tx"] for row in rows}) < 24
    created = await store.pool.fetchval("SELECT count(*) FROM task_history WHERE event = 'created'")
    assert created == 24
    assert sorted(await picked(store)) == sorted(by_id)


async def test_a_bad_item_in_a_shared_insert_fails_only_its_own_request(
    store: Store, settings: Settings, registry: Registry
) -> None:
    user_id = await new_user(store)
    queue = Enqueuer(store, registry, group_inserts=True)
    queue.start()
    try:
        request = TaskCreate(type="send_email", payload=EMAIL_TASK["payload"])
        good, gone = await asyncio.gather(
            queue.create(user_id, request),
            queue.create(user_id + 1000, request),  # no such user: a foreign key violation
            return_exceptions=True,
        )
    finally:
        await queue.close()
    assert isinstance(gone, ValidationFailed)
    assert not isinstance(good, BaseException)
    row, created = good
    assert created
    assert await store.pool.fetchval("SELECT array_agg(id) FROM tasks") == [row["id"]]


async def test_batch_creates_every_task_in_order(
    client: Client, store: Store, settings: Settings
) -> None:
    headers = await token_for(store)
    items = [
        EMAIL_TASK,
        {**EMAIL_TASK, "run_at": FUTURE, "priority": 7},
        {"type": "download_files", "payload": {"urls": ["https://go.dev/"]}, "max_retries": 0},
        {**EMAIL_TASK, "run_at": SEED_RUN_AT},
    ]
    response = await client.post("/api/tasks/batch", headers=headers, json={"tasks": items})
    assert response.status_code == 201, await response.get_data()
    tasks = await response.get_json()
    assert isinstance(tasks, list)
    assert len(tasks) == 4
    assert all(set(task) == TASK_FIELDS for task in tasks)
    assert [t["type"] for t in tasks] == [
        "send_email",
        "send_email",
        "download_files",
        "send_email",
    ]
    assert [t["status"] for t in tasks] == ["queued", "postponed", "queued", "queued"]
    assert (tasks[1]["priority"], tasks[2]["max_retries"]) == (7, 0)
    for task in tasks:
        assert (await task_row(store, task["id"]))["status"] == task["status"]
    queued = {t["id"] for t in tasks if t["status"] == "queued"}
    assert sorted(await picked(store)) == sorted(queued)


async def test_batch_is_all_or_nothing(client: Client, store: Store, settings: Settings) -> None:
    headers = await token_for(store)
    before = await db_snapshot(store)
    good = EMAIL_TASK
    bad_email = {"type": "send_email", "payload": {"to": "nope", "subject": "s"}}
    await _expect_invalid(
        client,
        headers,
        [
            ({"tasks": [good, good, bad_email]}, ["tasks[2].payload.to"]),
            ({"tasks": [good, {"type": "nope", "payload": {}}]}, ["tasks[1].type"]),
            ({"tasks": [{**good, "bogus": 1}, good]}, ["tasks[0].bogus"]),
            ({"tasks": [good, {**good, "max_retries": 11}]}, ["tasks[1].max_retries"]),
            ({"tasks": [good, {**good, "run_at": "2099-01-01T00:00:00"}]}, ["tasks[1].run_at"]),
            ({"tasks": [good, 5]}, ["tasks[1]"]),
            ({"tasks": [good, [good]]}, ["tasks[1]"]),
            ({"tasks": [{"payload": good["payload"]}]}, ["tasks[0].type"]),
            ({"tasks": []}, ["tasks"]),
            ({"tasks": {"0": good}}, ["tasks"]),
            ({"tasks": None}, ["tasks"]),
            ({}, ["tasks"]),
            ({"tasks": [good], "atomic": False}, ["atomic"]),
            ({"tasks": [good] * 1001}, ["tasks"]),
        ],
        url="/api/tasks/batch",
    )
    for raw in (b"[]", b"", b"{"):
        response = await client.post(
            "/api/tasks/batch", headers={**headers, "Content-Type": "application/json"}, data=raw
        )
        await json_error(response, 400)
    assert await db_snapshot(store) == before
    assert await picked(store) == []


async def test_batch_of_1000_and_list_limits(client: Client, store: Store) -> None:
    headers = await token_for(store)
    # Not send_email: a thousand emails is over email_per_user_per_day.
    items = [{"type": "test_noop", "payload": {"n": i}} for i in range(1000)]
    response = await client.post("/api/tasks/batch", headers=headers, json={"tasks": items})
    assert response.status_code == 201, await response.get_data()
    created = await response.get_json()
    assert [t["payload"]["n"] for t in created] == list(range(1000))
    assert await store.pool.fetchval(_count_tasks_sql()) == 1000

    default = await client.get("/api/tasks", headers=headers)
    assert len(await default.get_json()) == 100
    assert "limit=100" in default.headers["Link"]
    everything = await client.get("/api/tasks?limit=1000", headers=headers)
    listed = await everything.get_json()
    assert {t["id"] for t in listed} == {t["id"] for t in created}
    # A full page always offers the next one, which may be empty.
    rest = await client.get(LINK_NEXT.match(everything.headers["Link"]).group(1), headers=headers)
    assert rest.status_code == 200
    assert await rest.get_json() == []
    assert "Link" not in rest.headers
    one = await client.get("/api/tasks?limit=1", headers=headers)
    assert len(await one.get_json()) == 1
    assert "Link" in one.headers


# ----- list ----------------------------------------------------------------------------


async def test_list_is_newest_first_and_filters(client: Client, store: Store) -> None:
    headers = await token_for(store)
    email_now = await create_task(client, headers)
    image_later = await create_task(
        client, headers, {"type": "process_image", "payload": {"path": "a.png"}}, run_at=FUTURE
    )
    email_later = await create_task(client, headers, run_at=FUTURE)
    download_now = await create_task(
        client, headers, {"type": "download_files", "payload": {"urls": ["https://go.dev/"]}}
    )
    newest_first = [download_now, email_later, image_later, email_now]

    async def ids(query: str = "") -> list[str]:
        response = await client.get(f"/api/tasks{query}", headers=headers)
        assert response.status_code == 200, await response.get_data()
        assert "Link" not in response.headers
        return [task["id"] for task in await response.get_json()]

    assert await ids() == [t["id"] for t in newest_first]
    listed = await (await client.get("/api/tasks", headers=headers)).get_json()
    assert listed == newest_first
    assert await ids("?status=postponed") == [email_later["id"], image_later["id"]]
    assert await ids("?status=queued") == [download_now["id"], email_now["id"]]
    assert await ids("?type=send_email") == [email_later["id"], email_now["id"]]
    assert await ids("?status=queued&type=download_files") == [download_now["id"]]
    assert await ids("?status=queued&type=process_image") == []
    assert await ids("?type=no_such_type") == []
    assert await ids("?status=cancelled") == []
    await client.post(f"/api/tasks/{image_later['id']}/cancel", headers=headers)
    assert await ids("?status=cancelled") == [image_later["id"]]
    assert await ids("?status=postponed") == [email_later["id"]]


async def test_list_pages_follow_the_link_header(client: Client, store: Store) -> None:
    headers = await token_for(store)
    for _ in range(4):
        await create_task(client, headers)
    await create_task(
        client, headers, {"type": "download_files", "payload": {"urls": ["https://go.dev/"]}}
    )
    # Five tasks, pages of two: 2 + 2 + 1, the last one without a Link.
    seen: list[str] = []
    url: str | None = "/api/tasks?limit=2"
    pages = []
    while url is not None:
        response = await client.get(url, headers=headers)
        assert response.status_code == 200, await response.get_data()
        page = await response.get_json()
        pages.append(len(page))
        seen += [task["id"] for task in page]
        link = response.headers.get("Link")
        url = LINK_NEXT.match(link).group(1) if link else None
    assert pages == [2, 2, 1]
    everything = await (await client.get("/api/tasks", headers=headers)).get_json()
    assert seen == [task["id"] for task in everything]
    # Filters travel in the link: four send_email tasks, pages of two.
    response = await client.get("/api/tasks?type=send_email&limit=2", headers=headers)
    link = LINK_NEXT.match(response.headers["Link"]).group(1)
    query = parse_qs(urlsplit(link).query)
    assert query["type"] == ["send_email"]
    assert query["limit"] == ["2"]
    assert query["cursor"]
    second = await client.get(link, headers=headers)
    third = await client.get(LINK_NEXT.match(second.headers["Link"]).group(1), headers=headers)
    assert len(await second.get_json()) == 2
    assert await third.get_json() == []
    assert "Link" not in third.headers
    assert all(t["type"] == "send_email" for t in await second.get_json())


async def test_list_query_validation(client: Client, store: Store) -> None:
    headers = await token_for(store)
    cases = {
        "?limit=0": ["limit"],
        "?limit=1001": ["limit"],
        "?limit=-1": ["limit"],
        "?limit=abc": ["limit"],
        "?limit=1.5": ["limit"],
        "?limit=": ["limit"],
        "?status=bogus": ["status"],
        "?status=QUEUED": ["status"],
        "?status=": ["status"],
        "?type=Send-Email": ["type"],
        "?cursor=not-a-cursor": ["cursor"],
        "?page=2": ["page"],
        "?offset=10&sort=asc": ["offset", "sort"],
        "?user_id=1": ["user_id"],
    }
    for query, fields in cases.items():
        response = await client.get(f"/api/tasks{query}", headers=headers)
        error = await json_error(response, 400)
        assert sorted(detail_fields(error)) == fields, (query, error)
    for query in ("?limit=1", "?limit=1000", "?status=done", "?type=send_email"):
        assert (await client.get(f"/api/tasks{query}", headers=headers)).status_code == 200


# ----- get and history ------------------------------------------------------------------


async def test_get_task(client: Client, store: Store) -> None:
    headers = await token_for(store)
    task = await create_task(client, headers)
    response = await client.get(f"/api/tasks/{task['id']}", headers=headers)
    assert response.status_code == 200
    assert await response.get_json() == task
    upper = await client.get(f"/api/tasks/{task['id'].upper()}", headers=headers)
    assert (await upper.get_json())["id"] == task["id"]
    for malformed in ("abc", "123", task["id"][:-1] + "g", task["id"] + "0", "%27%20OR%201=1--"):
        for suffix in ("", "/history"):
            response = await client.get(f"/api/tasks/{malformed}{suffix}", headers=headers)
            assert detail_fields(await json_error(response, 400)) == ["id"]
    for suffix in ("", "/history"):
        response = await client.get(f"/api/tasks/{uuid4()}{suffix}", headers=headers)
        await json_error(response, 404)


async def test_history_is_oldest_first_with_every_field(client: Client, store: Store) -> None:
    headers = await token_for(store)
    task = await create_task(client, headers, max_retries=0)
    user_id = task["user_id"]
    await put_task_in(store, task["id"], S.FAILED)
    assert (await client.post(f"/api/tasks/{task['id']}/retry", headers=headers)).status_code == 200
    assert (
        await client.post(f"/api/tasks/{task['id']}/cancel", headers=headers)
    ).status_code == 200
    response = await client.get(f"/api/tasks/{task['id']}/history", headers=headers)
    assert response.status_code == 200
    history = await response.get_json()
    assert all(set(event) == HISTORY_FIELDS for event in history)
    assert [(h["event"], h["from_status"], h["to_status"], h["attempt"]) for h in history] == [
        ("created", None, "queued", 0),
        ("claimed", "queued", "processing", 1),
        ("failed", "processing", "failed", 1),
        ("retried", "failed", "queued", 0),
        ("cancelled", "queued", "cancelled", 0),
    ]
    times = [_when(h["at"]) for h in history]
    assert times == sorted(times)
    assert history[1]["worker_id"] == "test-worker"
    assert history[2]["error"] == "boom"
    assert history[0]["error"] is None
    assert history[3]["actor"] == history[4]["actor"] == f"api:user {user_id}"


# ----- patch ------------------------------------------------------------------------------


async def test_patch_a_queued_task(client: Client, store: Store, settings: Settings) -> None:
    # Without run_at in the body, UPDATE_WAITING_TASK's guard against
    # postponing a queued task once evaluated to NULL and refused every such
    # PATCH with 409 "cannot change a task that is queued".
    headers = await token_for(store)
    task = await create_task(client, headers)
    await picked(store)
    url = f"/api/tasks/{task['id']}"
    new_payload = {"to": "else@example.com", "body": "<b>hi</b>"}
    response = await client.patch(url, headers=headers, json={"payload": new_payload})
    assert response.status_code == 200, await response.get_data()
    patched = await response.get_json()
    assert patched["payload"] == new_payload
    assert patched["status"] == "queued"
    assert _when(patched["updated_at"]) > _when(task["updated_at"])
    response = await client.patch(url, headers=headers, json={"max_retries": 7, "priority": -5})
    assert response.status_code == 200, await response.get_data()
    patched = await response.get_json()
    assert (patched["max_retries"], patched["priority"], patched["payload"]) == (7, -5, new_payload)
    row = await task_row(store, task["id"])
    assert (row["max_retries"], row["priority"], row["payload"]) == (7, -5, new_payload)
    # Patching a queued task does not ring the bell again.
    assert await picked(store) == []


async def test_patch_validation_and_no_postponing_a_queued_task(
    client: Client, store: Store, settings: Settings
) -> None:
    headers = await token_for(store)
    task = await create_task(client, headers)
    await picked(store)
    url = f"/api/tasks/{task['id']}"
    # A run_at that has come is fine (it stays queued)...
    response = await client.patch(url, headers=headers, json={"run_at": SEED_RUN_AT})
    assert response.status_code == 200, await response.get_data()
    patched = await response.get_json()
    assert (patched["status"], patched["run_at"]) == ("queued", SEED_RUN_AT)
    before = await db_snapshot(store)
    # ...but a queued task cannot go back to waiting.
    await json_error(await client.patch(url, headers=headers, json={"run_at": FUTURE}), 409)
    await json_error(
        await client.patch(url, headers=headers, json={"run_at": FUTURE, "priority": 1}), 409
    )
    await _expect_invalid(
        client,
        headers,
        [
            ({}, ["(body)"]),
            ({"payload": {"to": "nope", "subject": "s"}}, ["payload.to"]),
            ({"payload": {"to": "a@example.com"}}, ["payload"]),
            ({"payload": {"urls": ["https://go.dev/"]}}, ["payload.to", "payload.urls"]),
            (
                {"payload": {"to": "a@example.com", "subject": "a\r\nBcc: x@y.z"}},
                ["payload.subject"],
            ),
            ({"payload": "x"}, ["payload"]),
            ({"max_retries": 11}, ["max_retries"]),
            ({"max_retries": -1}, ["max_retries"]),
            ({"max_retries": "3"}, ["max_retries"]),
            ({"priority": 101}, ["priority"]),
            ({"priority": 1.5}, ["priority"]),
            ({"run_at": "2099-01-01T00:00:00"}, ["run_at"]),
            ({"run_at": "soon"}, ["run_at"]),
            ({"status": "done"}, ["status"]),
            ({"type": "process_image"}, ["type"]),
            ({"attempts": 0}, ["attempts"]),
        ],
        url=url,
        method="patch",
    )
    for raw in (b"", b"{", b"[]", b"null"):
        response = await client.patch(
            url, headers={**headers, "Content-Type": "application/json"}, data=raw
        )
        await json_error(response, 400)
    assert await db_snapshot(store) == before
    assert await picked(store) == []


async def test_patch_a_postponed_task(client: Client, store: Store, settings: Settings) -> None:
    headers = await token_for(store)
    task = await create_task(client, headers, run_at=FUTURE)
    url = f"/api/tasks/{task['id']}"
    later = "2100-06-01T12:00:00Z"
    response = await client.patch(url, headers=headers, json={"run_at": later, "priority": 3})
    patched = await response.get_json()
    assert (patched["status"], patched["run_at"], patched["priority"]) == ("postponed", later, 3)
    assert await picked(store) == []
    # Its time has come: queued at once, and the workers are told.
    response = await client.patch(url, headers=headers, json={"run_at": SEED_RUN_AT})
    patched = await response.get_json()
    assert (patched["status"], patched["run_at"]) == ("queued", SEED_RUN_AT)
    assert (await task_row(store, task["id"]))["status"] == "queued"
    assert await picked(store) == [task["id"]]
    history = await (await client.get(f"{url}/history", headers=headers)).get_json()
    assert [(h["from_status"], h["to_status"]) for h in history] == [
        (None, "postponed"),
        ("postponed", "queued"),
    ]


async def test_patch_a_retrying_task(client: Client, store: Store) -> None:
    headers = await token_for(store)
    task = await task_in(client, headers, store, S.RETRYING)
    url = f"/api/tasks/{task['id']}"
    response = await client.patch(url, headers=headers, json={"priority": 9, "max_retries": 0})
    patched = await response.get_json()
    assert response.status_code == 200, patched
    assert (patched["status"], patched["priority"], patched["max_retries"]) == ("retrying", 9, 0)
    # Run it a second time, then try to allow fewer runs than already happened.
    await client.patch(url, headers=headers, json={"max_retries": 3, "run_at": SEED_RUN_AT})
    assert await store.promote_due_tasks(10) == [UUID(task["id"])]
    claimed = await claim(store, [UUID(task["id"])], "test-worker", 60)
    outcome = Outcome(
        UUID(task["id"]), claimed[0]["claim_token"], "transient", error="x", delay_seconds=3600
    )
    assert await finish(store, outcome) == {UUID(task["id"]): S.RETRYING}
    before = await db_snapshot(store)
    response = await client.patch(url, headers=headers, json={"max_retries": 0})
    assert detail_fields(await json_error(response, 400)) == ["max_retries"]
    assert await db_snapshot(store) == before
    response = await client.patch(url, headers=headers, json={"max_retries": 1})
    assert (await response.get_json())["max_retries"] == 1


async def test_patch_refused_unless_waiting(client: Client, store: Store) -> None:
    headers = await token_for(store)
    tasks = [
        await task_in(client, headers, store, s)
        for s in (S.PROCESSING, S.DONE, S.FAILED, S.CANCELLED)
    ]
    before = await db_snapshot(store)
    for task in tasks:
        for body in ({"priority": 1}, {"payload": {"to": "a@example.com", "subject": "x"}}):
            response = await client.patch(f"/api/tasks/{task['id']}", headers=headers, json=body)
            error = await json_error(response, 409)
            assert task["status"] in error["error"]
    await json_error(
        await client.patch(f"/api/tasks/{uuid4()}", headers=headers, json={"priority": 1}), 404
    )
    response = await client.patch("/api/tasks/nope", headers=headers, json={"priority": 1})
    assert detail_fields(await json_error(response, 400)) == ["id"]
    assert await db_snapshot(store) == before


# ----- cancel, retry, delete ------------------------------------------------------------


async def test_cancel(client: Client, store: Store) -> None:
    headers = await token_for(store)
    for status in (S.POSTPONED, S.QUEUED, S.RETRYING, S.PROCESSING):
        task = await task_in(client, headers, store, status)
        response = await client.post(f"/api/tasks/{task['id']}/cancel", headers=headers)
        assert response.status_code == 200, await response.get_data()
        cancelled = await response.get_json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["finished_at"] is not None
        row = await task_row(store, task["id"])
        assert row["status"] == "cancelled"
        assert row["lease_expires_at"] is None
    finished = [await task_in(client, headers, store, s) for s in (S.DONE, S.FAILED, S.CANCELLED)]
    before = await db_snapshot(store)
    for task in finished:
        response = await client.post(f"/api/tasks/{task['id']}/cancel", headers=headers)
        await json_error(response, 409)
    await json_error(await client.post(f"/api/tasks/{uuid4()}/cancel", headers=headers), 404)
    assert detail_fields(
        await json_error(await client.post("/api/tasks/1/cancel", headers=headers), 400)
    ) == ["id"]
    assert await db_snapshot(store) == before


async def test_retry(client: Client, store: Store, settings: Settings) -> None:
    headers = await token_for(store)
    for status in (S.FAILED, S.CANCELLED):
        task = await task_in(client, headers, store, status)
        await picked(store)
        response = await client.post(f"/api/tasks/{task['id']}/retry", headers=headers)
        assert response.status_code == 200, await response.get_data()
        retried = await response.get_json()
        assert (retried["status"], retried["attempts"], retried["retries"]) == ("queued", 0, 0)
        assert retried["finished_at"] is None
        assert retried["started_at"] is None
        assert (await task_row(store, task["id"]))["status"] == "queued"
        assert await picked(store) == [task["id"]]
    others = [
        await task_in(client, headers, store, s)
        for s in (S.POSTPONED, S.QUEUED, S.PROCESSING, S.RETRYING, S.DONE)
    ]
    await picked(store)
    before = await db_snapshot(store)
    for task in others:
        response = await client.post(f"/api/tasks/{task['id']}/retry", headers=headers)
        await json_error(response, 409)
    await json_error(await client.post(f"/api/tasks/{uuid4()}/retry", headers=headers), 404)
    assert detail_fields(
        await json_error(await client.post("/api/tasks/x/retry", headers=headers), 400)
    ) == ["id"]
    assert await db_snapshot(store) == before
    assert await picked(store) == []


async def test_delete(client: Client, store: Store) -> None:
    headers = await token_for(store)
    for status in (S.DONE, S.FAILED, S.CANCELLED):
        task = await task_in(client, headers, store, status)
        response = await client.delete(f"/api/tasks/{task['id']}", headers=headers)
        assert response.status_code == 204
        assert await response.get_data() == b""
        assert await task_row(store, task["id"]) is None
        history = await store.pool.fetchval(
            "SELECT count(*) FROM task_history WHERE task_id = $1", UUID(task["id"])
        )
        assert history == 0
        await json_error(await client.get(f"/api/tasks/{task['id']}", headers=headers), 404)
        await json_error(await client.delete(f"/api/tasks/{task['id']}", headers=headers), 404)
    waiting = [
        await task_in(client, headers, store, s)
        for s in (S.POSTPONED, S.QUEUED, S.PROCESSING, S.RETRYING)
    ]
    before = await db_snapshot(store)
    for task in waiting:
        await json_error(await client.delete(f"/api/tasks/{task['id']}", headers=headers), 409)
    await json_error(await client.delete(f"/api/tasks/{uuid4()}", headers=headers), 404)
    assert detail_fields(
        await json_error(await client.delete("/api/tasks/x", headers=headers), 400)
    ) == ["id"]
    assert await db_snapshot(store) == before


# ----- without RabbitMQ -------------------------------------------------------------------


async def test_create_works_with_rabbitmq_unreachable(
    database: str, tmp_path: Path, registry: Registry, store: Store
) -> None:
    settings = make_settings(
        database,
        queue="unreachable",
        files=tmp_path / "files",
        amqp_url="amqp://guest:guest@127.0.0.1:1/",
    )
    async with create_app(settings, registry, api_services).test_app() as test_app:
        client = test_app.test_client()
        headers = await token_for(store)
        task = await create_task(client, headers)
        assert task["status"] == "queued"
        assert (await task_row(store, task["id"]))["status"] == "queued"
        batch = await client.post(
            "/api/tasks/batch", headers=headers, json={"tasks": [EMAIL_TASK] * 2}
        )
        assert batch.status_code == 201
        assert await store.pool.fetchval("SELECT count(*) FROM tasks WHERE status = 'queued'") == 3
        # Cancel and retry (which publishes again) work too.
        url = f"/api/tasks/{task['id']}"
        assert (await client.post(f"{url}/cancel", headers=headers)).status_code == 200
        assert (await client.post(f"{url}/retry", headers=headers)).status_code == 200
        ready = await client.get("/readyz")
        body = await ready.get_json()
        assert ready.status_code == 503
        assert body["checks"] == {"postgres": "ok", "rabbitmq": "unavailable"}
