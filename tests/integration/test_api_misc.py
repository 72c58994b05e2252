"""Health, readiness, the OpenAPI document, and JSON errors for everything that
is not a task: unknown routes, wrong methods, unexpected exceptions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from quart import Quart
from quart.typing import TestClientProtocol as Client

from taskflow.api import create_app
from taskflow.config import Settings
from taskflow.handlers import Registry, build_registry
from taskflow.runtime import api_services
from tests.conftest import make_settings
from tests.integration.api_helpers import json_error, token_for
from tests.stores import Store

PATH_PARAMETER = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


async def test_healthz(client: Client) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert await response.get_json() == {"status": "ok"}
    # Every answer carries a request id, the client's own when it sent a sane one.
    assert len(response.headers["X-Request-ID"]) == 32
    echoed = await client.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["X-Request-ID"] == "trace-123"
    assert echoed.headers["X-Content-Type-Options"] == "nosniff"


async def test_readyz_checks_postgres_and_rabbitmq(client: Client) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert await response.get_json() == {
        "status": "ready",
        "checks": {"postgres": "ok", "rabbitmq": "ok"},
    }


async def test_readyz_without_a_broker_configured(
    database: str, tmp_path: Path, registry: Registry
) -> None:
    settings = make_settings(database, queue=None, files=tmp_path / "files")
    assert settings.amqp_url is None
    async with create_app(settings, registry, api_services).test_app() as test_app:
        response = await test_app.test_client().get("/readyz")
        assert response.status_code == 200
        body = await response.get_json()
        assert body["checks"] == {"postgres": "ok", "rabbitmq": "not configured"}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), ref
        assert part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


async def test_openapi_document_lists_every_route(database: str, tmp_path: Path) -> None:
    # Built-in types only: tests.plugins' own payload models are not the API's.
    settings = make_settings(database, queue=None, files=tmp_path / "files", plugins=())
    registry = build_registry(settings)
    async with create_app(settings, registry, api_services).test_app() as test_app:
        await _check_openapi_document(test_app.app, test_app.test_client(), registry)


async def _check_openapi_document(app: Quart, client: Client, registry: Registry) -> None:
    from openapi_spec_validator import validate

    response = await client.get("/api/openapi.json")
    assert response.status_code == 200
    document = await response.get_json()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "TaskFlow"
    assert document["info"]["version"]
    validate(document)

    # Every route the app serves is documented, with each of its methods.
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        path = PATH_PARAMETER.sub(r"{\1}", rule.rule).replace("{raw_id}", "{task_id}")
        served.setdefault(path, set()).update(methods)
    documented = {
        path: {m for m in item if m in {"get", "post", "put", "patch", "delete"}}
        for path, item in document["paths"].items()
    }
    assert documented == served

    for path, item in document["paths"].items():
        named = set(re.findall(r"{([a-z_]+)}", path))
        for method in documented[path]:
            operation = item[method]
            assert operation["responses"], (path, method)
            parameters = item.get("parameters", []) + operation.get("parameters", [])
            declared = {p["name"] for p in parameters if p["in"] == "path"}
            assert declared == named, (path, method)
            if path.startswith("/api/tasks"):
                assert operation["security"] == [{"bearer": []}], (path, method)
                assert "401" in operation["responses"], (path, method)
    for ref in _refs(document):
        _resolve(document, ref)

    # One request schema per registered task type, each with its payload model.
    variants = document["components"]["schemas"]["TaskCreate"]["oneOf"]
    assert sorted(v["properties"]["type"]["const"] for v in variants) == registry.names()
    payload = _resolve(document, variants[0]["properties"]["payload"]["$ref"])
    assert payload["type"] == "object"
    for name in ("SendEmailPayload", "ProcessImagePayload", "DownloadFilesPayload"):
        assert name in document["components"]["schemas"]


async def test_unknown_routes_are_404_json(client: Client, store: Store) -> None:
    headers = await token_for(store)
    for url in (
        "/api",
        "/api/",
        "/api/task",
        "/api/tasks/",
        "/api/tasks/00000000-0000-0000-0000-000000000000/nothing",
        "/api/tasks/00000000-0000-0000-0000-000000000000/history/extra",
        "/api/../etc/passwd",
        "/static/x.js",
        "/index.html",
        "/api/openapi.yaml",
    ):
        for request_headers in ({}, headers):
            response = await client.get(url, headers=request_headers)
            body = await json_error(response, 404)
            assert set(body) == {"error"}, (url, body)


async def test_wrong_methods_are_405_json(client: Client) -> None:
    task_url = "/api/tasks/00000000-0000-0000-0000-000000000000"
    cases = {
        ("delete", "/api/register"): {"POST"},
        ("get", "/api/login"): {"POST"},
        ("put", "/api/tasks"): {"GET", "POST"},
        ("delete", "/api/tasks"): {"GET", "POST"},
        ("post", task_url): {"GET", "PATCH", "DELETE"},
        ("put", task_url): {"GET", "PATCH", "DELETE"},
        ("get", f"{task_url}/cancel"): {"POST"},
        ("delete", f"{task_url}/retry"): {"POST"},
        ("post", f"{task_url}/history"): {"GET"},
        ("post", "/healthz"): {"GET"},
        ("delete", "/api/openapi.json"): {"GET"},
    }
    for (method, url), allowed in cases.items():
        response = await getattr(client, method)(url)
        body = await json_error(response, 405)
        assert set(body) == {"error"}
        allow = {m.strip() for m in response.headers["Allow"].split(",")}
        assert allowed <= allow, (method, url, allow)


async def test_unexpected_errors_are_500_json_without_details(
    settings: Settings, registry: Registry
) -> None:
    application = create_app(settings, registry, api_services)

    @application.get("/boom")
    async def boom() -> str:
        raise RuntimeError("secret detail: /work/main/taskflow password=hunter2")

    async with application.test_app() as test_app:
        response = await test_app.test_client().get("/boom", headers={"X-Request-ID": "req-1"})
        raw = await response.get_data()
        body = await json_error(response, 500)
        assert body == {"error": "internal error", "request_id": "req-1"}
        assert b"secret" not in raw
        assert b"hunter2" not in raw
