"""SPEC §7.5: bad input gets a clear 4xx JSON error and changes nothing.

Every case here compares a snapshot of users, tasks and task_history taken
before with one taken after; hostile strings that are valid input are stored
exactly as sent and do nothing else.
"""

from __future__ import annotations

import base64
from typing import Any

from quart.typing import TestClientProtocol as Client

from tests.integration.api_helpers import (
    EMAIL_TASK,
    FUTURE,
    create_task,
    db_snapshot,
    detail_fields,
    json_error,
    task_row,
    token_for,
)
from tests.stores import Store

JSON = {"Content-Type": "application/json"}
TWO_MIB = 2 * 1024 * 1024

# Every kind of JSON value, to send where another kind belongs.
KINDS: dict[str, Any] = {
    "string": "x",
    "integer": 1,
    "float": 1.5,
    "boolean": True,
    "null": None,
    "array": [],
    "object": {},
}


async def _json_endpoints(
    client: Client, store: Store
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The caller's headers and every (method, url) that takes a JSON body."""
    headers = await token_for(store)
    task = await create_task(client, headers, run_at=FUTURE)
    return headers, [
        ("post", "/api/register"),
        ("post", "/api/login"),
        ("post", "/api/tasks"),
        ("post", "/api/tasks/batch"),
        ("patch", f"/api/tasks/{task['id']}"),
    ]


async def test_malformed_json_and_non_objects(client: Client, store: Store) -> None:
    headers, endpoints = await _json_endpoints(client, store)
    before = await db_snapshot(store)
    bodies = [
        b"",
        b" ",
        b"{",
        b'{"type": }',
        b"{'type': 'send_email'}",
        b'{"type": "send_email",}',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1e400}',
        b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
        b'{"a": "\xff\xfe"}',  # not UTF-8
        b'{"a": "\\ud800"}',  # a lone surrogate
        b'{"a": "\x01"}',  # a raw control character inside a string
        b"type=send_email&payload=x",
        b"null",
        b"true",
        b"42",
        b'"a string"',
        b"[]",
        b'[{"type": "send_email"}]',
        b"{}{}",
        b"\x00",
    ]
    for method, url in endpoints:
        for raw in bodies:
            response = await getattr(client, method)(url, headers={**headers, **JSON}, data=raw)
            body = await json_error(response, 400)
            assert "Traceback" not in body["error"], (url, raw)
    # A body that is not JSON at all, whatever it says it is.
    response = await client.post(
        "/api/tasks",
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
        data=b"type=send_email&payload=%7B%7D",
    )
    await json_error(response, 400)
    assert await db_snapshot(store) == before


async def test_wrong_types_for_every_task_field(client: Client, store: Store) -> None:
    headers = await token_for(store)
    before = await db_snapshot(store)
    allowed = {
        "type": {"string"},
        "payload": {"object"},
        "max_retries": {"integer"},
        "run_at": {"string", "null"},
        "priority": {"integer"},
    }
    for field, kinds in allowed.items():
        for kind, value in KINDS.items():
            if kind in kinds:
                continue
            response = await client.post(
                "/api/tasks", headers=headers, json={**EMAIL_TASK, field: value}
            )
            error = await json_error(response, 400)
            assert detail_fields(error) == [field], (field, kind, error)
    assert await db_snapshot(store) == before


async def test_wrong_types_for_every_payload_field(client: Client, store: Store) -> None:
    headers = await token_for(store)
    before = await db_snapshot(store)
    number = {"integer", "float", "null"}
    schemas: dict[str, tuple[dict[str, Any], dict[str, set[str]]]] = {
        "send_email": (
            {"to": "a@example.com", "subject": "s"},
            {
                "to": {"string"},
                "subject": {"string", "null"},
                "body": {"string", "null"},
                "attached_files": {"array", "null"},
            },
        ),
        "process_image": (
            {"path": "a.png"},
            {
                "path": {"string"},
                "blur": number,
                "sharpen": number,
                "gamma": number,
                "contrast": number,
                "brightness": number,
                "saturation": number,
                "grayscale": {"boolean", "null"},
                "invert": {"boolean", "null"},
            },
        ),
        "download_files": ({"urls": ["https://go.dev/"]}, {"urls": {"array"}}),
    }
    for task_type, (valid, fields) in schemas.items():
        for field, kinds in fields.items():
            for kind, value in KINDS.items():
                if kind in kinds:
                    continue
                body = {"type": task_type, "payload": {**valid, field: value}}
                response = await client.post("/api/tasks", headers=headers, json=body)
                error = await json_error(response, 400)
                assert f"payload.{field}" in detail_fields(error), (body, error)
    assert await db_snapshot(store) == before


async def test_numbers_as_strings_and_booleans_as_numbers(client: Client, store: Store) -> None:
    headers = await token_for(store)
    before = await db_snapshot(store)
    image = {"type": "process_image", "payload": {"path": "a.png"}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**EMAIL_TASK, "max_retries": "3"}, "max_retries"),
        ({**EMAIL_TASK, "max_retries": " 3 "}, "max_retries"),
        ({**EMAIL_TASK, "priority": "0"}, "priority"),
        ({**EMAIL_TASK, "max_retries": True}, "max_retries"),
        ({**EMAIL_TASK, "priority": False}, "priority"),
        ({**EMAIL_TASK, "max_retries": 3.0}, "max_retries"),
        ({**EMAIL_TASK, "priority": 1e2}, "priority"),
        ({**EMAIL_TASK, "max_retries": 99999999999999999999}, "max_retries"),
        ({**EMAIL_TASK, "run_at": 4102444800}, "run_at"),
        ({**EMAIL_TASK, "run_at": 4102444800.5}, "run_at"),
        ({**image, "payload": {"path": "a.png", "blur": "1"}}, "payload.blur"),
        ({**image, "payload": {"path": "a.png", "contrast": "-10"}}, "payload.contrast"),
        ({**image, "payload": {"path": "a.png", "gamma": "1e0"}}, "payload.gamma"),
        ({**image, "payload": {"path": "a.png", "blur": True}}, "payload.blur"),
        ({**image, "payload": {"path": "a.png", "saturation": False}}, "payload.saturation"),
        ({**image, "payload": {"path": "a.png", "grayscale": 1}}, "payload.grayscale"),
        ({**image, "payload": {"path": "a.png", "invert": 0}}, "payload.invert"),
        ({**image, "payload": {"path": "a.png", "grayscale": "true"}}, "payload.grayscale"),
        ({**image, "payload": {"path": 1}}, "payload.path"),
        (
            {"type": "send_email", "payload": {"to": "a@example.com", "subject": 1}},
            "payload.subject",
        ),
    ]
    for body, field in cases:
        response = await client.post("/api/tasks", headers=headers, json=body)
        error = await json_error(response, 400)
        assert detail_fields(error) == [field], (body, error)
    # The same rules hold for PATCH and for batch items.
    task = await create_task(client, headers, run_at=FUTURE)
    before = await db_snapshot(store)
    url = f"/api/tasks/{task['id']}"
    for patch, field in (
        ({"max_retries": "3"}, "max_retries"),
        ({"priority": True}, "priority"),
        ({"run_at": 4102444800}, "run_at"),
        ({"payload": {"to": "a@example.com", "subject": 5}}, "payload.subject"),
    ):
        response = await client.patch(url, headers=headers, json=patch)
        assert detail_fields(await json_error(response, 400)) == [field]
    batch = {"tasks": [EMAIL_TASK, {**EMAIL_TASK, "priority": "1"}]}
    response = await client.post("/api/tasks/batch", headers=headers, json=batch)
    assert detail_fields(await json_error(response, 400)) == ["tasks[1].priority"]
    assert await db_snapshot(store) == before


async def test_huge_bodies_are_413(client: Client, store: Store) -> None:
    headers, endpoints = await _json_endpoints(client, store)
    before = await db_snapshot(store)
    huge_text = "x" * TWO_MIB
    for method, url in endpoints:
        for raw in (b" " * (TWO_MIB + 1), f'{{"subject": "{huge_text}"}}'.encode()):
            response = await getattr(client, method)(url, headers={**headers, **JSON}, data=raw)
            await json_error(response, 413)
    # Just under the limit, a body too long for its field is a 400 naming it.
    body = {"type": "send_email", "payload": {"to": "a@example.com", "body": "x" * 1_900_000}}
    response = await client.post("/api/tasks", headers=headers, json=body)
    assert detail_fields(await json_error(response, 400)) == ["payload.body"]
    assert await db_snapshot(store) == before


async def test_deeply_nested_json(client: Client, store: Store) -> None:
    headers, endpoints = await _json_endpoints(client, store)
    before = await db_snapshot(store)
    for depth in (50, 200, 250, 300, 1000, 1100, 100_000):
        nested: str = "[" * depth + "]" * depth
        deep_object = '{"a":' * depth + "1" + "}" * depth
        for method, url in endpoints:
            for deep in (nested, deep_object):
                raw = f'{{"deep": {deep}}}'.encode()
                response = await getattr(client, method)(url, headers={**headers, **JSON}, data=raw)
                await json_error(response, 400)
        # Deep inside otherwise valid places: a payload, a batch item.
        for url, raw in (
            (
                "/api/tasks",
                f'{{"type": "send_email", "payload": {{"to": "a@example.com", "subject": "s", '
                f'"deep": {deep_object}}}}}',
            ),
            (
                "/api/tasks/batch",
                f'{{"tasks": [{{"type": "send_email", "payload": {{"to": "a@example.com", '
                f'"subject": "s", "x": {nested}}}}}]}}',
            ),
        ):
            response = await client.post(url, headers={**headers, **JSON}, data=raw.encode())
            await json_error(response, 400)
    # Ten thousand unknown keys: one clean 400 naming each of them.
    many = {f"k{i}": i for i in range(10_000)}
    response = await client.post(
        "/api/tasks",
        headers=headers,
        json={"type": "send_email", "payload": {**EMAIL_TASK["payload"], **many}},
    )
    assert len(detail_fields(await json_error(response, 400))) == 10_000
    assert await db_snapshot(store) == before


async def test_sql_looking_strings_are_stored_verbatim(client: Client, store: Store) -> None:
    headers = await token_for(store)
    hostile = {
        "to": "o'reilly+x@example.com",
        "subject": "'); DROP TABLE tasks; --",
        "body": "Robert'); DROP TABLE users;-- <script>alert(1)</script> $1 $$ \\' %s {0}",
        "attached_files": ["x'; DELETE FROM tasks; --.txt", "' OR '1'='1"],
    }
    key = "'; DROP TABLE task_history; --"
    response = await client.post(
        "/api/tasks",
        headers={**headers, "Idempotency-Key": key},
        json={"type": "send_email", "payload": hostile},
    )
    assert response.status_code == 201, await response.get_data()
    task = await response.get_json()
    assert task["payload"] == hostile
    shown = await (await client.get(f"/api/tasks/{task['id']}", headers=headers)).get_json()
    assert shown["payload"] == hostile
    row = await task_row(store, task["id"])
    assert row["payload"] == hostile
    assert row["idempotency_key"] == key
    tables = await store.pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    assert {"tasks", "users", "task_history"} <= {r["tablename"] for r in tables}
    assert await store.pool.fetchval("SELECT count(*) FROM task_history") == 1

    # Register with an apostrophe in the email; log in with SQL in the password.
    response = await client.post(
        "/api/register", json={"email": "o'reilly@example.com", "password": "' OR 1=1 --"}
    )
    assert response.status_code == 201
    user_id = (await response.get_json())["user_id"]
    assert (
        await store.pool.fetchval("SELECT email FROM users WHERE id = $1", user_id)
        == "o'reilly@example.com"
    )
    before = await db_snapshot(store)
    for email, password in (
        ("o'reilly@example.com", "' OR '1'='1"),
        ("' OR '1'='1", "' OR '1'='1"),
        ("x@example.com' --", "anything"),
        ("%", "anything"),
        ("_@example.com", "anything"),
    ):
        response = await client.post("/api/login", json={"email": email, "password": password})
        await json_error(response, 401)
    response = await client.post(
        "/api/login", json={"email": "o'reilly@example.com", "password": "' OR 1=1 --"}
    )
    assert response.status_code == 200

    # Query strings and path ids that look like SQL.
    for url in (
        "/api/tasks?type=x%27%20OR%20%271%27=%271",
        "/api/tasks?status=queued%27%20OR%201=1--",
        "/api/tasks?limit=1;DROP%20TABLE%20tasks",
        "/api/tasks/1%27%20OR%20%271%27=%271",
        "/api/tasks/1%27%20OR%20%271%27=%271/history",
    ):
        await json_error(await client.get(url, headers=headers), 400)
    assert await db_snapshot(store) == before


async def test_hostile_unicode_is_stored_verbatim(client: Client, store: Store) -> None:
    headers = await token_for(store)
    strange = (
        "\u202egnp.exe"  # right-to-left override
        "\u200b\u200d\ufeff"  # zero-width space and joiner, BOM
        "e\u0301\u0338\u20dd"  # combining marks
        "\U0001d573\U0001d58a\U0001d591\U0001d591\U0001d594 "  # astral plane, and ZWJ sequences:
        "\U0001f469\u200d\U0001f469\u200d\U0001f467 \U0001f3f3\ufe0f\u200d\U0001f308"
        "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u4e2d\u6587 \uffff \U0010ffff"
    )
    payload = {"to": "a@example.com", "subject": strange, "body": strange * 3}
    task = await create_task(client, headers, {"type": "send_email", "payload": payload})
    assert task["payload"] == payload
    assert (await task_row(store, task["id"]))["payload"] == payload
    shown = await (await client.get(f"/api/tasks/{task['id']}", headers=headers)).get_json()
    assert shown["payload"] == payload
    before = await db_snapshot(store)
    # Look-alike type names are not the type.
    for name in (
        "\u0455end_email",
        "send_emai\u217c",
        "send_email\u200b",
        "\uff53\uff45\uff4e\uff44_email",
    ):
        response = await client.post(
            "/api/tasks", headers=headers, json={"type": name, "payload": payload}
        )
        assert detail_fields(await json_error(response, 400)) == ["type"]
    # Non-ASCII digits are not a limit ("²" once made int() raise: a 500).
    for limit in ("%C2%B2", "%EF%BC%91%EF%BC%90", "%D9%A3"):
        response = await client.get(f"/api/tasks?limit={limit}", headers=headers)
        assert detail_fields(await json_error(response, 400)) == ["limit"]
    assert await db_snapshot(store) == before


async def test_nul_bytes_are_refused(client: Client, store: Store) -> None:
    # Postgres text and jsonb cannot hold U+0000: each of these once reached
    # the database and came back as a 500.
    headers = await token_for(store)
    await client.post("/api/register", json={"email": "nul@example.com", "password": "secret1"})
    task = await create_task(client, headers, run_at=FUTURE)
    before = await db_snapshot(store)
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"type": "send_email", "payload": {"to": "a@example.com", "body": "a\x00b"}},
            "payload.body",
        ),
        (
            {"type": "send_email", "payload": {"to": "a@example.com", "subject": "a\x00"}},
            "payload.subject",
        ),
        (
            {"type": "send_email", "payload": {"to": "a\x00@example.com", "subject": "s"}},
            "payload.to",
        ),
        (
            {"type": "send_email", "payload": {"to": "a@example.com", "attached_files": ["a\x00"]}},
            "payload.attached_files.0",
        ),
        ({"type": "process_image", "payload": {"path": "a\x00.png"}}, "payload.path"),
        (
            {"type": "download_files", "payload": {"urls": ["https://a.example/\x00"]}},
            "payload.urls.0",
        ),
        ({"type": "send\x00email", "payload": {"to": "a@example.com", "subject": "s"}}, "type"),
        ({**EMAIL_TASK, "run_at": "2099-01-01T00:00:00\x00Z"}, "run_at"),
        ({**EMAIL_TASK, "payload": {**EMAIL_TASK["payload"], "x\x00": 1}}, "payload.x\x00"),
    ]
    for body, field in cases:
        response = await client.post("/api/tasks", headers=headers, json=body)
        assert detail_fields(await json_error(response, 400)) == [field], body
    response = await client.patch(
        f"/api/tasks/{task['id']}",
        headers=headers,
        json={"payload": {"to": "a@example.com", "body": "\x00"}},
    )
    assert detail_fields(await json_error(response, 400)) == ["payload.body"]
    response = await client.post(
        "/api/register", json={"email": "a\x00@example.com", "password": "secret1"}
    )
    assert detail_fields(await json_error(response, 400)) == ["email"]
    for email in ("nul@example.com\x00", "\x00"):
        response = await client.post("/api/login", json={"email": email, "password": "secret1"})
        await json_error(response, 401)
    for query, field in (("type=%00", "type"), ("status=%00", "status"), ("cursor=%00", "cursor")):
        response = await client.get(f"/api/tasks?{query}", headers=headers)
        assert detail_fields(await json_error(response, 400)) == [field]
    await json_error(await client.get("/api/tasks/%00", headers=headers), 400)
    response = await client.post(
        "/api/tasks", headers={**headers, "Idempotency-Key": "a\x00b"}, json=EMAIL_TASK
    )
    await json_error(response, 400)
    assert await db_snapshot(store) == before


async def test_text_that_only_spells_a_nul_escape_is_kept(client: Client, store: Store) -> None:
    # A backslash followed by "u0000" is six ordinary characters; its JSON
    # text holds "\\u0000", which a look for NUL's escape alone would refuse.
    headers = await token_for(store)
    spelled = {"to": "a@example.com", "subject": "\\u0000", "body": "a\\\\u0000b"}
    single = await client.post(
        "/api/tasks", headers=headers, json={"type": "send_email", "payload": spelled}
    )
    assert single.status_code == 201, await single.get_data()
    batch = await client.post(
        "/api/tasks/batch",
        headers=headers,
        json={"tasks": [{"type": "send_email", "payload": spelled, "run_at": FUTURE}]},
    )
    assert batch.status_code == 201, await batch.get_data()
    for created in ((await single.get_json())["payload"], (await batch.get_json())[0]["payload"]):
        assert created == spelled
    stored = await store.pool.fetch("SELECT payload FROM tasks ORDER BY created_at")
    assert [row["payload"] for row in stored] == [spelled, spelled]


async def test_out_of_range_values(client: Client, store: Store) -> None:
    headers = await token_for(store)
    task = await create_task(client, headers, run_at=FUTURE)
    before = await db_snapshot(store)
    # Instants with no UTC form once reached asyncpg and came back as a 500.
    for run_at in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        response = await client.post(
            "/api/tasks", headers=headers, json={**EMAIL_TASK, "run_at": run_at}
        )
        assert detail_fields(await json_error(response, 400)) == ["run_at"]
        response = await client.patch(
            f"/api/tasks/{task['id']}", headers=headers, json={"run_at": run_at}
        )
        assert detail_fields(await json_error(response, 400)) == ["run_at"]
    for forged in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "yesterday"):
        cursor = base64.urlsafe_b64encode(f"{forged}|{task['id']}".encode()).decode()
        response = await client.get(f"/api/tasks?cursor={cursor}", headers=headers)
        assert detail_fields(await json_error(response, 400)) == ["cursor"]
    assert await db_snapshot(store) == before
    # The extremes that do exist are accepted.
    edge = await create_task(client, headers, run_at="9999-12-31T23:59:59Z")
    assert edge["status"] == "postponed"
    assert edge["run_at"] == "9999-12-31T23:59:59Z"
