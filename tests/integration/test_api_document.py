"""The API answers as its OpenAPI document says: every documented JSON
operation is called for real (its success, and the errors 400, 401, 404,
409, 429 where it has them) and each answer is held to the schema the
document gives for its status, with a JSON Schema validator. Timestamps must
be RFC 3339 UTC with a "Z", ids canonical UUIDs.

The document is generated from the routes (taskflow.api.openapi), so a route
added later is called here too when it needs no path variable, and fails
here until it says what it answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import BaseModel
from quart import Quart
from quart.typing import TestClientProtocol as Client

from taskflow.api import create_app
from taskflow.api.dashboard import STATIC_DIRECTORY
from taskflow.api.route_docs import documented
from taskflow.api.security import require_user
from taskflow.handlers import build_registry
from taskflow.models import TaskStatus
from taskflow.runtime import api_services
from tests.conftest import make_settings
from tests.integration.api_helpers import put_task_in
from tests.stores import Store

METHODS = ("get", "post", "put", "patch", "delete")
UTC_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
PASSWORD = "a-good-password"
NOOP = {"type": "test_noop", "payload": {}}
EMAIL = {"type": "send_email", "payload": {"to": "someone@example.com", "subject": "hi"}}
BOUNDARY = "document-test-boundary"

# Only the formats the API promises, checked strictly (jsonschema's own
# date-time check needs an extra package and accepts any offset).
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time")
def _utc_timestamp(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return bool(UTC_TIMESTAMP.fullmatch(value)) and bool(datetime.fromisoformat(value))


@FORMATS.checks("uuid", raises=ValueError)
def _canonical_uuid(value: object) -> bool:
    return not isinstance(value, str) or str(UUID(value)) == value


class DocumentedApi:
    """A client that checks every answer against the document."""

    def __init__(self, client: Client, document: dict[str, Any]) -> None:
        self.client = client
        self.document = document
        self.answered: set[tuple[str, str, int]] = set()

    async def call(
        self, method: str, path: str, *, expect: int, url: str | None = None, **options: Any
    ) -> Any:
        """``path`` as the document names it; ``url`` the one to call, if it differs."""
        response = await getattr(self.client, method)(url or path, **options)
        raw = await response.get_data()
        assert response.status_code == expect, (method, url or path, raw[:500])
        self.check(method, path, response.status_code, response.mimetype, raw)
        return orjson.loads(raw) if response.mimetype == "application/json" else raw

    def check(self, method: str, path: str, status: int, media_type: str, raw: bytes) -> None:
        where = f"{method.upper()} {path} {status}"
        operation = self.document["paths"][path][method]
        documented_answer = operation["responses"].get(str(status))
        assert documented_answer is not None, f"{where}: the document does not list {status}"
        content = documented_answer.get("content", {})
        if status == 204:
            assert raw == b"", where
            assert not content, where
        elif media_type == "application/json":
            assert "application/json" in content, (
                f"{where} answers JSON but the document gives no schema for it: say what "
                "the route answers with @documented(response=...) (taskflow.api.route_docs)"
            )
            self.validate(where, orjson.loads(raw), content["application/json"]["schema"])
        elif content:
            assert media_type in content, (where, media_type, list(content))
        self.answered.add((path, method, status))

    def validate(self, where: str, body: Any, schema: dict[str, Any]) -> None:
        root = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.document["components"],
            **schema,
        }
        validator = Draft202012Validator(root, format_checker=FORMATS)
        problems = [
            f"{'/'.join(map(str, error.absolute_path)) or '(body)'}: {error.message}"
            for error in validator.iter_errors(body)
        ]
        assert not problems, f"{where}: {problems} in {body!r}"[:4000]


def _streams(operation: dict[str, Any]) -> bool:
    return "text/event-stream" in operation["responses"].get("200", {}).get("content", {})


def _multipart(name: str, content: bytes) -> tuple[bytes, dict[str, str]]:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture
async def api(database: str, tmp_path: Path) -> AsyncIterator[DocumentedApi]:
    # Small limits, so that a 429 is a few requests away.
    settings = make_settings(
        database,
        queue=None,
        files=tmp_path / "files",
        email_per_user_per_day=1,
        login_max_failures=2,
    )
    app = create_app(settings, build_registry(settings), api_services)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        document = await (await client.get("/api/openapi.json")).get_json()
        yield DocumentedApi(client, document)


async def _log_in(api: DocumentedApi, email: str) -> dict[str, str]:
    credentials = {"email": email, "password": PASSWORD}
    await api.call("post", "/api/register", json=credentials, expect=201)
    token = await api.call("post", "/api/login", json=credentials, expect=200)
    return {"Authorization": token["token"]}


async def _accounts(api: DocumentedApi) -> None:
    credentials = {"email": "accounts@example.com", "password": PASSWORD}
    await api.call("post", "/api/register", json=credentials, expect=201)
    await api.call("post", "/api/register", json=credentials, expect=409)
    await api.call("post", "/api/register", json={"email": "x", "password": "1"}, expect=400)
    await api.call("post", "/api/login", data=b"{", expect=400)
    wrong = {**credentials, "password": "not-the-password"}
    for _ in range(2):
        await api.call("post", "/api/login", json=wrong, expect=401)
    await api.call("post", "/api/login", json=wrong, expect=429)

    headers = await _log_in(api, "password@example.com")
    change = {"current_password": PASSWORD, "new_password": "another-good-password"}
    await api.call("post", "/api/password", headers=headers, json=change, expect=204)
    await api.call("post", "/api/password", headers=headers, json=change, expect=401)
    headers = await _log_in(api, "logout@example.com")
    await api.call("post", "/api/logout", headers=headers, expect=204)
    await api.call("post", "/api/logout", headers=headers, expect=401)


async def _tasks(api: DocumentedApi, store: Store, headers: dict[str, str]) -> None:
    call = api.call
    await call("post", "/api/tasks", json=NOOP, expect=401)
    email = await call("post", "/api/tasks", headers=headers, json=EMAIL, expect=201)
    await call("post", "/api/tasks", headers=headers, json=EMAIL, expect=429)
    await call("post", "/api/tasks", headers=headers, json={"type": "nope"}, expect=400)
    keyed = {**headers, "Idempotency-Key": "once"}
    for _ in range(2):
        await call("post", "/api/tasks", headers=keyed, json=NOOP, expect=201)
    later = {**NOOP, "run_at": "2099-01-01T00:00:00Z", "priority": 5, "max_retries": 0}
    await call("post", "/api/tasks", headers=keyed, json=later, expect=409)

    batch = {"tasks": [NOOP, {**NOOP, "depends_on": ["#0"]}, later, NOOP, NOOP]}
    first, blocked, postponed, done, failed = await call(
        "post", "/api/tasks/batch", headers=headers, json=batch, expect=201
    )
    await call("post", "/api/tasks/batch", headers=headers, json={"tasks": [{}]}, expect=400)
    await put_task_in(store, done["id"], TaskStatus.DONE)
    await put_task_in(store, failed["id"], TaskStatus.FAILED)

    await call("get", "/api/tasks", headers=headers, expect=200)
    await call(
        "get", "/api/tasks", url="/api/tasks?status=queued&limit=2", headers=headers, expect=200
    )
    await call("get", "/api/tasks", url="/api/tasks?limit=0", headers=headers, expect=400)

    one = "/api/tasks/{task_id}"

    def url(task: dict[str, Any], suffix: str = "") -> str:
        return f"/api/tasks/{task['id']}{suffix}"

    for task in (email, first, blocked, postponed, done, failed):
        await call("get", one, url=url(task), headers=headers, expect=200)
        await call("get", f"{one}/history", url=url(task, "/history"), headers=headers, expect=200)
        deps = url(task, "/dependencies")
        await call("get", f"{one}/dependencies", url=deps, headers=headers, expect=200)
    await call("get", one, url="/api/tasks/not-an-id", headers=headers, expect=400)
    await call("get", one, url=f"/api/tasks/{uuid4()}", headers=headers, expect=404)
    await call(
        "get", f"{one}/history", url=f"/api/tasks/{uuid4()}/history", headers=headers, expect=404
    )

    await call("patch", one, url=url(postponed), headers=headers, json={"priority": -3}, expect=200)
    await call("patch", one, url=url(done), headers=headers, json={"priority": 1}, expect=409)
    await call("patch", one, url=url(first), headers=headers, json={}, expect=400)

    await call("post", f"{one}/cancel", url=url(first, "/cancel"), headers=headers, expect=200)
    await call("post", f"{one}/cancel", url=url(done, "/cancel"), headers=headers, expect=409)
    await call("post", f"{one}/retry", url=url(failed, "/retry"), headers=headers, expect=200)
    await call("post", f"{one}/retry", url=url(failed, "/retry"), headers=headers, expect=409)
    await call("delete", one, url=url(postponed), headers=headers, expect=409)
    await call("delete", one, url=url(done), headers=headers, expect=204)


async def _schedules(api: DocumentedApi, headers: dict[str, str]) -> None:
    call = api.call
    new = {"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin", **NOOP}
    schedule = await call("post", "/api/schedules", headers=headers, json=new, expect=201)
    bad = {**new, "cron": "every night"}
    await call("post", "/api/schedules", headers=headers, json=bad, expect=400)
    await call("get", "/api/schedules", headers=headers, expect=200)
    one = "/api/schedules/{schedule_id}"
    url = f"/api/schedules/{schedule['id']}"
    await call("get", one, url=url, headers=headers, expect=200)
    await call("patch", one, url=url, headers=headers, json={"cron": "*/5 * * * *"}, expect=200)
    await call("post", f"{one}/pause", url=f"{url}/pause", headers=headers, expect=200)
    await call("post", f"{one}/resume", url=f"{url}/resume", headers=headers, expect=200)
    await call("delete", one, url=url, headers=headers, expect=204)
    await call("get", one, url=url, headers=headers, expect=404)
    await call("get", one, url="/api/schedules/nope", headers=headers, expect=400)


async def _files(api: DocumentedApi, headers: dict[str, str]) -> None:
    call = api.call
    body, content_type = _multipart("notes.bin", b"\x00\x01 some bytes")
    upload = {**headers, **content_type}
    await call("post", "/api/files", headers=upload, data=body, expect=201)
    await call("post", "/api/files", headers=upload, data=body, expect=409)
    await call("post", "/api/files", headers=headers, json={}, expect=415)
    await call("get", "/api/files", headers=headers, expect=200)
    one = "/api/files/{name}"
    await call("get", one, url="/api/files/notes.bin", headers=headers, expect=200)
    await call("get", one, url="/api/files/.hidden", headers=headers, expect=400)
    await call("delete", one, url="/api/files/notes.bin", headers=headers, expect=204)
    await call("delete", one, url="/api/files/notes.bin", headers=headers, expect=404)


async def _admin(api: DocumentedApi, headers: dict[str, str]) -> None:
    """The operator routes (the caller is an admin by now)."""
    call = api.call
    listed = await call("get", "/api/admin/tasks", headers=headers, expect=200)
    one = "/api/admin/tasks/{task_id}"
    for task in listed["tasks"]:
        await call("get", one, url=f"/api/admin/tasks/{task['id']}", headers=headers, expect=200)
    await call("get", one, url=f"/api/admin/tasks/{uuid4()}", headers=headers, expect=404)
    for action in ("bulk-retry", "bulk-cancel"):
        path = f"/api/admin/tasks/{action}"
        await call("post", path, headers=headers, json={"type": "test_noop"}, expect=200)
        await call("post", path, headers=headers, json={"max_tasks": 0}, expect=400)
    types = "/api/admin/task-types/{task_type}"
    for name, action, expect in (
        ("test_noop", "pause", 200),
        ("test_noop", "resume", 200),
        ("nope", "pause", 404),
    ):
        url = f"/api/admin/task-types/{name}/{action}"
        await call("post", f"{types}/{action}", url=url, headers=headers, json={}, expect=expect)


async def _everything_without_path_variables(api: DocumentedApi, headers: dict[str, str]) -> None:
    """Every documented GET without a path variable, routes added later included."""
    for path, item in api.document["paths"].items():
        operation = item.get("get")
        if operation is None or "{" in path or _streams(operation):
            continue
        await api.call("get", path, headers=headers, expect=200)
    asset = next(p for p in STATIC_DIRECTORY.iterdir() if p.suffix == ".js")
    await api.call("get", "/dashboard/{name}", url=f"/dashboard/{asset.name}", expect=200)


async def test_every_documented_answer_matches_its_schema(api: DocumentedApi, store: Store) -> None:
    await _accounts(api)
    headers = await _log_in(api, "user@example.com")
    await _tasks(api, store, headers)
    await _schedules(api, headers)
    await _files(api, headers)
    await api.call("get", "/api/admin/overview", headers=headers, expect=403)
    await store.pool.execute("UPDATE users SET is_admin = true WHERE email = 'user@example.com'")
    await _everything_without_path_variables(api, headers)
    await _admin(api, headers)

    operations = {
        (path, method)
        for path, item in api.document["paths"].items()
        for method, operation in item.items()
        if method in METHODS and not _streams(operation)
    }
    called = {(path, method) for path, method, _ in api.answered}
    assert operations - called == set(), "documented but never called here"
    statuses = {status for _, _, status in api.answered}
    assert {400, 401, 404, 409, 429} <= statuses


class Later(BaseModel):
    answer: int


async def test_a_route_added_later_is_documented(database: str, tmp_path: Path) -> None:
    settings = make_settings(database, queue=None, files=tmp_path / "files")
    app: Quart = create_app(settings, build_registry(settings), api_services)

    @app.get("/api/later/<raw_id>")
    @require_user
    async def later(raw_id: str) -> dict[str, int]:
        """Something new."""
        return {"answer": 42}

    @app.post("/api/undocumented")
    async def undocumented() -> str:
        return ""

    @app.get("/api/described")
    @documented(response=Later, errors={409: "busy"})
    @require_user
    async def described() -> dict[str, int]:
        return {"answer": 42}

    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/api/openapi.json")
        document = await response.get_json()
    paths = document["paths"]
    new = paths["/api/later/{task_id}"]["get"]
    assert new["summary"] == "Something new"
    assert new["security"] == [{"bearer": []}]
    assert set(new["responses"]) == {"200", "400", "401", "404"}
    assert [p["name"] for p in new["parameters"]] == ["task_id"]
    assert set(paths["/api/undocumented"]["post"]["responses"]) == {"200"}
    assert "security" not in paths["/api/undocumented"]["post"]
    described_answers = paths["/api/described"]["get"]["responses"]
    assert described_answers["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Later"
    }
    assert set(described_answers) == {"200", "401", "409"}
    assert document["components"]["schemas"]["Later"]["required"] == ["answer"]
