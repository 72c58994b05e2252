"""/healthz (the process answers), /readyz (its dependencies answer)."""

from __future__ import annotations

import asyncio

from quart import Blueprint, Response

from taskflow.api import config, services
from taskflow.api.responses import model_response
from taskflow.api.route_docs import Body, Reply, documented
from taskflow.api.schemas import Liveness, Readiness
from taskflow.metrics import OLDEST_AGE_SECONDS, QUEUE_DEPTH, VACUUM_HORIZON_XID_AGE, render
from taskflow.store.pool import CONNECTION_ERRORS

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@documented(response=Liveness)
async def healthz() -> Response:
    """Liveness: the process answers."""
    return model_response(Liveness(status="ok"))


@blueprint.get("/metrics")
@documented(response=Body("text/plain", {"type": "string"}), description="Prometheus text format")
async def metrics() -> Response:
    """Prometheus metrics."""
    for status in ("blocked", "queued", "postponed", "retrying", "processing"):
        QUEUE_DEPTH.labels(status).set(0)
        OLDEST_AGE_SECONDS.labels(status).set(0)
    for row in await services().operators.select_queue_depth():
        QUEUE_DEPTH.labels(row["status"]).set(row["tasks"])
        OLDEST_AGE_SECONDS.labels(row["status"]).set(float(row["oldest_seconds"]))
    for kind in ("transaction", "replication slot", "prepared transaction"):
        VACUUM_HORIZON_XID_AGE.labels(kind).set(0)
    for row in await services().operators.select_horizon_ages():
        VACUUM_HORIZON_XID_AGE.labels(row["kind"]).set(row["xid_age"] or 0)
    body, content_type = render()
    return Response(body, content_type=content_type)


@blueprint.get("/readyz")
@documented(response=Readiness, errors={503: Reply(Readiness, "a dependency is unavailable")})
async def readyz() -> Response:
    """Readiness: Postgres, and RabbitMQ when configured."""
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
    if all(value in ("ok", "not configured") for value in checks.values()):
        return model_response(Readiness(status="ready", checks=checks))
    return model_response(
        Readiness(status="not ready", checks=checks, error="a dependency is unavailable"), 503
    )
