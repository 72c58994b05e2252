"""The web dashboard, served by the Task-API itself, and its operator overview.

``GET /`` is the page; ``GET /dashboard/<file>`` its stylesheet and JavaScript
modules, from ``taskflow/api/static/``: plain files, no build step, nothing
fetched from elsewhere, so it works offline. The page talks to the same JSON
API as any client, with the token kept in the tab's sessionStorage.

The Content-Security-Policy admits scripts, styles and connections from this
origin only, and images from here or from ``blob:`` URLs (a result thumbnail
is fetched with the token, then shown from a blob), so a task payload or a
file name can never run as code even if it slipped into the page's markup.

``GET /api/meta`` tells the page what each task status allows, from the
one transition table (taskflow.models.TRANSITIONS); the task types, their
payload fields and the statuses it reads from ``GET /api/openapi.json``.
Neither is typed by hand in the page, so a plugin's task type gets a form.

``GET /api/admin/overview`` is for users marked ``users.is_admin`` (see
``ops/README.md``, the operators' psql runbook); anyone else gets a 403. The
other operator tools are in :mod:`taskflow.api.admin`.
"""

from __future__ import annotations

import asyncio
import mimetypes
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from quart import Blueprint, Response
from werkzeug.security import safe_join

from taskflow.api import config, services
from taskflow.api.admin import current_admin
from taskflow.api.responses import json_response
from taskflow.api.route_docs import documented
from taskflow.api.schemas import ResponseModel
from taskflow.api.security import require_user
from taskflow.errors import NotFound
from taskflow.models import CANCELLABLE, EDITABLE, RETRYABLE, TERMINAL, TRANSITIONS, TaskStatus
from taskflow.store.pool import Record

blueprint = Blueprint("dashboard", __name__)

STATIC_DIRECTORY = Path(__file__).resolve().parent / "static"
# Only what the page loads: a name outside this list is a 404, whatever the
# directory holds (the README next to the files, an editor's backup file).
ASSET_SUFFIXES = frozenset({".js", ".css", ".svg"})
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
OVERVIEW_MINUTES = 60
OVERVIEW_ROWS = 20


def _page_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    # Revalidate every time: a new release must never run next to old modules.
    response.headers["Cache-Control"] = "no-cache"
    return response


async def _static_file(name: str) -> Response:
    """The file's bytes, read whole: the files are a few KiB, and a streamed
    file whose response is never read (a client that hangs up) would hold an
    open file until the garbage collector finds it."""
    path = safe_join(str(STATIC_DIRECTORY), name)
    if path is None:
        raise NotFound("no such dashboard file")
    try:
        body = await asyncio.to_thread(Path(path).read_bytes)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFound("no such dashboard file") from None
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type.partition("/")[0] == "text" or content_type.endswith("javascript"):
        content_type += "; charset=utf-8"
    return Response(body, content_type=content_type)


@blueprint.get("/")
async def index() -> Response:
    return _page_headers(await _static_file("index.html"))


@blueprint.get("/dashboard/<path:name>")
async def asset(name: str) -> Response:
    path = Path(name)
    if path.suffix not in ASSET_SUFFIXES or any(part.startswith(".") for part in path.parts):
        raise NotFound("no such dashboard file")
    # safe_join refuses names that climb out of the directory.
    return _page_headers(await _static_file(name))


# ----- what the page reads of the task model


def _ordered(statuses: frozenset[TaskStatus]) -> list[TaskStatus]:
    return [status for status in TaskStatus if status in statuses]


class TaskStates(ResponseModel):
    """The task statuses, in the model's order, and what each allows."""

    statuses: list[TaskStatus]
    transitions: Annotated[
        dict[TaskStatus, list[TaskStatus]],
        Field(description="every status a task may move to from each (SPEC §3)"),
    ]
    cancellable: Annotated[list[TaskStatus], Field(description="POST .../cancel takes these")]
    retryable: Annotated[list[TaskStatus], Field(description="POST .../retry takes these")]
    editable: Annotated[list[TaskStatus], Field(description="PATCH takes these")]
    finished: Annotated[list[TaskStatus], Field(description="DELETE takes these; terminal")]


TASK_STATES = TaskStates(
    statuses=list(TaskStatus),
    transitions={status: _ordered(TRANSITIONS[status]) for status in TaskStatus},
    cancellable=_ordered(CANCELLABLE),
    retryable=_ordered(RETRYABLE),
    editable=_ordered(EDITABLE),
    finished=_ordered(TERMINAL),
)


@blueprint.get("/api/meta")
@documented(response=TaskStates)
async def task_states() -> Response:
    """The task statuses and what each allows, from the one transition table."""
    return json_response(TASK_STATES.model_dump(mode="json"))


# ----- operator overview ------------------------------------------------------------


def _rows(records: list[Record], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{field: record[field] for field in fields} for record in records]


def _total(records: list[Record]) -> int:
    return int(records[0]["total"]) if records else 0


@blueprint.get("/api/admin/overview")
@require_user
async def operator_overview() -> Response:
    await current_admin()
    overview = await services().events.select_operator_overview(
        # Three leases, as `taskflow status` counts: nine missed heartbeats.
        worker_alive_seconds=3 * config().settings.lease_seconds,
        minutes=OVERVIEW_MINUTES,
        limit=OVERVIEW_ROWS,
    )
    workers = _rows(
        overview.workers,
        (
            "id",
            "hostname",
            "pid",
            "state",
            "concurrency",
            "running_tasks",
            "last_heartbeat_at",
            "started_at",
        ),
    )
    return json_response(
        {
            "generated_at": overview.generated_at,
            "queue": {row["status"]: row["tasks"] for row in overview.status_counts},
            "throughput": {
                "bucket_seconds": 60,
                "buckets": _rows(overview.throughput, ("at", "completed", "failed", "retried")),
            },
            "workers": {
                "alive": sum(1 for worker in workers if worker["state"] == "alive"),
                "items": workers,
            },
            "stuck": {
                "total": _total(overview.stuck),
                "items": _rows(
                    overview.stuck,
                    (
                        "id",
                        "user_id",
                        "type",
                        "worker_id",
                        "attempts",
                        "max_retries",
                        "lease_expires_at",
                        "worker_alive",
                    ),
                ),
            },
            "recent_failures": {
                "total": _total(overview.failures),
                "items": _rows(
                    overview.failures,
                    (
                        "id",
                        "user_id",
                        "type",
                        "status",
                        "failed_at",
                        "attempts",
                        "max_retries",
                        "last_error",
                    ),
                ),
            },
        }
    )
