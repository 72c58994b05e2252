"""The web dashboard, served by the Task-API itself, and its operator overview.

``GET /`` is the page; ``GET /dashboard/<file>`` its stylesheet and JavaScript
modules, from ``taskflow/api/static/``: plain files, no build step, nothing
fetched from elsewhere, so it works offline. The page talks to the same JSON
API as any client, with the token kept in the tab's sessionStorage.

The Content-Security-Policy admits scripts, styles and connections from this
origin only, and images from here or from ``blob:`` URLs (a result thumbnail
is fetched with the token, then shown from a blob), so a task payload or a
file name can never run as code even if it slipped into the page's markup.

``GET /api/admin/overview`` is for users marked ``users.is_admin`` (see
``ops/README.md``, the operators' psql runbook); anyone else gets a 403.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quart import Blueprint, Response, send_from_directory

from taskflow.api import config, services
from taskflow.api.responses import json_response
from taskflow.api.security import current_user_id, require_user
from taskflow.errors import Forbidden, NotFound
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


@blueprint.get("/")
async def index() -> Response:
    response = await send_from_directory(STATIC_DIRECTORY, "index.html")
    return _page_headers(response)


@blueprint.get("/dashboard/<path:name>")
async def asset(name: str) -> Response:
    path = Path(name)
    if path.suffix not in ASSET_SUFFIXES or any(part.startswith(".") for part in path.parts):
        raise NotFound("no such dashboard file")
    # send_from_directory refuses names that climb out of the directory.
    response = await send_from_directory(STATIC_DIRECTORY, name)
    return _page_headers(response)


# ----- operator overview ------------------------------------------------------------


def _rows(records: list[Record], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{field: record[field] for field in fields} for record in records]


def _total(records: list[Record]) -> int:
    return int(records[0]["total"]) if records else 0


@blueprint.get("/api/admin/overview")
@require_user
async def operator_overview() -> Response:
    user = await services().accounts.select_user_by_id(current_user_id())
    if user is None or not user["is_admin"]:
        raise Forbidden("the operator overview is for admins only")
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
