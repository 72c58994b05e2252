"""The Task-API: a Quart app factory. Served by uvicorn (``taskflow api``)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from quart import Quart, Response, current_app, g, request

from taskflow.api.revocations import Revocations
from taskflow.auth import PasswordHashing
from taskflow.broker import Broker
from taskflow.config import Settings
from taskflow.enqueue import Enqueuer
from taskflow.handlers import Registry
from taskflow.log import write_directly
from taskflow.metrics import HTTP_REQUESTS, HTTP_SECONDS
from taskflow.store.accounts import AccountStore
from taskflow.store.admin import AdminStore
from taskflow.store.dependencies import DependencyStore
from taskflow.store.events import LiveEventsStore
from taskflow.store.limits import LimitsStore
from taskflow.store.operators import OperatorStore
from taskflow.store.pool import Database, Listener
from taskflow.store.schedules import ScheduleStore
from taskflow.store.tasks import TaskStore

log = logging.getLogger(__name__)

CONFIG_EXTENSION = "taskflow"
SERVICES_EXTENSION = "taskflow.services"


@dataclass(frozen=True)
class ApiConfig:
    """What the app knows from its construction on."""

    settings: Settings
    registry: Registry
    secret: bytes


@dataclass(frozen=True)
class ApiServices:
    """What the app serves from while it serves, built by the composition
    root (``taskflow.runtime``) and closed by it when serving ends."""

    database: Database
    accounts: AccountStore
    tasks: TaskStore
    events: LiveEventsStore
    operators: OperatorStore
    # The dashboard's operator tools (taskflow.api.admin).
    admin: AdminStore
    schedules: ScheduleStore
    dependencies: DependencyStore
    limits: LimitsStore
    enqueuer: Enqueuer
    broker: Broker | None
    event_listener: Listener
    # Argon2, on threads of its own, admitted not queued (taskflow.auth).
    password_hashing: PasswordHashing
    # Which tokens are taken back, kept current by LISTEN (taskflow.api.revocations).
    revocations: Revocations


OpenServices = Callable[[Settings, Registry], AbstractAsyncContextManager[ApiServices]]


def config() -> ApiConfig:
    api_config: ApiConfig = current_app.extensions[CONFIG_EXTENSION]
    return api_config


def services() -> ApiServices:
    """Only while serving, which is when requests are handled."""
    api_services: ApiServices = current_app.extensions[SERVICES_EXTENSION]
    return api_services


def create_app(settings: Settings, registry: Registry, open_services: OpenServices) -> Quart:
    from taskflow.api import dashboard, events, files, health, openapi, schedules, tasks, users
    from taskflow.api.admin import blueprint as admin_blueprint
    from taskflow.api.errors import install_error_handlers
    from taskflow.api.limits import blueprint as limits_blueprint

    app = Quart("taskflow")
    app.config["MAX_CONTENT_LENGTH"] = settings.request_max_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions[CONFIG_EXTENSION] = ApiConfig(
        settings=settings, registry=registry, secret=settings.require_secret_key()
    )

    @app.while_serving
    async def _lifespan() -> AsyncGenerator[None, None]:
        # Pool, broker and listener open and close together with the server.
        async with open_services(settings, registry) as api_services:
            app.extensions[SERVICES_EXTENSION] = api_services
            event_hub = await events.start_hub(app, api_services)
            try:
                yield
            finally:
                await event_hub.stop()
                del app.extensions[SERVICES_EXTENSION]
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
    app.register_blueprint(schedules.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(files.blueprint)
    app.register_blueprint(limits_blueprint)
    app.register_blueprint(events.blueprint)
    app.register_blueprint(dashboard.blueprint)
    app.register_blueprint(admin_blueprint)
    return app
