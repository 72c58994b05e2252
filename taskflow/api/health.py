"""/healthz (the process answers), /readyz (its dependencies answer)."""

from __future__ import annotations

import asyncio

from quart import Blueprint, Response

from taskflow.api import config, services
from taskflow.api.responses import json_response
from taskflow.metrics import OLDEST_AGE_SECONDS, QUEUE_DEPTH, render
from taskflow.store.pool import CONNECTION_ERRORS

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@blueprint.get("/metrics")
async def metrics() -> Response:
    for status in ("blocked", "queued", "postponed", "retrying", "processing"):
        QUEUE_DEPTH.labels(status).set(0)
        OLDEST_AGE_SECONDS.labels(status).set(0)
    for row in await services().operators.select_queue_depth():
        QUEUE_DEPTH.labels(row["status"]).set(row["tasks"])
        OLDEST_AGE_SECONDS.labels(row["status"]).set(float(row["oldest_seconds"]))
    body, content_type = render()
    return Response(body, content_type=content_type)


@blueprint.get("/readyz")
async def readyz() -> Response:
    api = services()
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(api.database.ready(), 2)
        checks["postgres"] = "ok"
    except CONNECTION_ERRORS as exc:
        checks["postgres"] = f"unavailable: {type(exc).__name__}"
    if config().settings.broker_enabled:
        connected = api.broker is not None and api.broker.connected.is_set()
        checks["rabbitmq"] = "ok" if connected else "unavailable"
    else:
        checks["rabbitmq"] = "not configured"
    ready = all(value in ("ok", "not configured") for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    if not ready:
        body["error"] = "a dependency is unavailable"
    return json_response(body, 200 if ready else 503)
