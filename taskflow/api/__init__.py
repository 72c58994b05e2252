"""The Task-API: a Quart app factory. Served by uvicorn (``taskflow api``)."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from quart import Quart, Response, current_app, g, request

from taskflow.broker import Broker
from taskflow.config import Settings
from taskflow.enqueue import Enqueuer
from taskflow.handlers import Registry
from taskflow.log import write_directly
from taskflow.metrics import HTTP_REQUESTS, HTTP_SECONDS
from taskflow.store import Store

log = logging.getLogger(__name__)


@dataclass
class ApiState:
    settings: Settings
    registry: Registry
    secret: bytes
    store: Store | None = None
    broker: Broker | None = None
    enqueuer: Enqueuer | None = None


def state() -> ApiState:
    api_state: ApiState = current_app.extensions["taskflow"]
    return api_state


def create_app(settings: Settings, registry: Registry) -> Quart:
    from taskflow.api import dashboard, events, files, health, openapi, tasks, users
    from taskflow.api.errors import install_error_handlers

    app = Quart("taskflow")
    app.config["MAX_CONTENT_LENGTH"] = settings.request_max_bytes
    app.config["JSON_SORT_KEYS"] = False
    api_state = ApiState(settings=settings, registry=registry, secret=settings.require_secret_key())
    app.extensions["taskflow"] = api_state

    @app.while_serving
    async def _lifespan():  # type: ignore[no-untyped-def]
        # Pool and broker open and close together with the server.
        api_state.store = await Store.open(
            settings.database_url.get_secret_value(),
            min_size=2,
            max_size=20,
            application_name="taskflow-api",
            actor="api",
            notify_queued=not settings.broker_enabled,
        )
        if settings.amqp_url is not None:
            api_state.broker = Broker(
                settings.amqp_url.get_secret_value(),
                settings.amqp_queue,
                ids_per_message=settings.ids_per_message,
                name="taskflow-api",
            )
            api_state.broker.start()
            await api_state.broker.wait_connected(timeout=3)
        api_state.enqueuer = Enqueuer(
            api_state.store,
            registry,
            api_state.broker,
            reject_past_run_at=settings.reject_past_run_at,
            group_inserts=True,
        )
        api_state.enqueuer.start()
        yield
        await api_state.enqueuer.close()
        if api_state.broker is not None:
            await api_state.broker.close()
        await api_state.store.close()
        write_directly()

    @app.before_request
    async def _start_request() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = (
            incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else (uuid.uuid4().hex)
        )
        g.started = time.perf_counter()

    @app.after_request
    async def _finish_request(response: Response) -> Response:
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        # The route's pattern, not its path: ids must not explode the label set.
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        HTTP_SECONDS.labels(route, request.method).observe(seconds)
        log.info(
            "request",
            extra={
                "event": "http_request",
                "request_id": g.get("request_id"),
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(seconds * 1000, 2),
                "user_id": g.get("user_id"),
            },
        )
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    install_error_handlers(app)
    app.register_blueprint(users.blueprint)
    app.register_blueprint(tasks.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(files.blueprint)
    app.register_blueprint(events.blueprint)
    app.register_blueprint(dashboard.blueprint)
    return app
