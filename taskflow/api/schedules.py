"""/api/schedules: periodic tasks (SPEC §9) — create, list, get, patch,
delete, pause, resume.

A schedule is checked as a task is at creation (its type and payload, by the
same rules), and its slots then create ordinary tasks of its owner (the
scheduler, taskflow/scheduler.py). Another user's schedule is
indistinguishable from a missing one: always 404.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from quart import Blueprint, Response, request

from taskflow.api import config, services
from taskflow.api.responses import json_response, read_model
from taskflow.api.route_docs import documented
from taskflow.api.schemas import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    SCHEDULE_JSON,
    PageQuery,
    Schedule,
)
from taskflow.api.security import current_user_id, require_user
from taskflow.errors import Conflict, NotFound, ValidationFailed
from taskflow.models import ScheduleCreate, SchedulePatch
from taskflow.schedules import next_slot
from taskflow.store.pool import Record
from taskflow.store.schedules import NewSchedule, ScheduleChange, ScheduleStore

blueprint = Blueprint("schedules", __name__)


def _store() -> ScheduleStore:
    return services().schedules


class ScheduleNotFound(NotFound):
    """Schedule not found."""


def _parse_schedule_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise ValidationFailed(
            "malformed schedule id", details=[{"field": "id", "message": "must be a UUID"}]
        ) from None


def _checked_payload(task_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as a task of this type would store it, or a 400 naming the field."""
    registry = config().registry
    if registry.get(task_type) is None:
        raise ValidationFailed(
            f"unknown task type {task_type!r}",
            details=[
                {"field": "type", "message": "must be one of: " + ", ".join(registry.names())}
            ],
        )
    return services().enqueuer.validate_payload(task_type, payload)


def _next_run_at(cron: str, timezone: str) -> datetime | None:
    return next_slot(cron, timezone, datetime.now(UTC))


async def _own_schedule(schedule_id: UUID) -> Record:
    row = await _store().select_own_schedule(schedule_id, current_user_id())
    if row is None:
        raise ScheduleNotFound()
    return row


@blueprint.post("/api/schedules")
@documented(
    request=ScheduleCreate,
    response=Schedule,
    status=201,
    description="created; Location is its URL",
    errors={
        400: "invalid cron, timezone, type or payload (details name the field)",
        429: "user_max_schedules reached",
    },
)
@require_user
async def create_schedule() -> Response:
    """Create a schedule: each slot of its cron creates one task."""
    body = await read_model(ScheduleCreate)
    payload = _checked_payload(body.type, body.payload)
    row = await _store().insert_schedule(
        current_user_id(),
        NewSchedule(
            name=body.name,
            cron=body.cron,
            timezone=body.timezone,
            type=body.type,
            payload=payload,
            max_retries=body.max_retries,
            priority=body.priority,
            next_run_at=_next_run_at(body.cron, body.timezone),
        ),
        default_max_schedules=config().settings.user_max_schedules,
    )
    return json_response(
        SCHEDULE_JSON.of_row(row), 201, {"Location": f"/api/schedules/{row['id']}"}
    )


def _encode_cursor(row: Record) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, schedule_id = raw.split("|")
        parsed = datetime.fromisoformat(created_at)
        if parsed.tzinfo is None:
            raise ValueError("naive time")
        # A forged cursor may name an instant with no UTC form (a 500 at asyncpg).
        return parsed.astimezone(UTC), UUID(schedule_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            "invalid cursor", details=[{"field": "cursor", "message": "use the Link header"}]
        ) from None


def _query_limit() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_PAGE_LIMIT
    # isascii: str.isdigit() is also true for "²", which int() then refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_LIMIT:
        raise ValidationFailed(
            "invalid limit",
            details=[
                {"field": "limit", "message": f"must be an integer from 1 to {MAX_PAGE_LIMIT}"}
            ],
        )
    return int(raw)


@blueprint.get("/api/schedules")
@documented(
    response=list[Schedule],
    description='a page; Link: <...>; rel="next" when there is more',
    query=PageQuery,
    errors={400: "bad limit or cursor, or an unknown query parameter"},
)
@require_user
async def list_schedules() -> Response:
    """List your schedules, oldest first."""
    unknown = set(request.args) - set(PageQuery.model_fields)
    if unknown:
        raise ValidationFailed(
            "unknown query parameter",
            details=[
                {"field": name, "message": "unknown query parameter"} for name in sorted(unknown)
            ],
        )
    limit = _query_limit()
    cursor = request.args.get("cursor")
    rows = await _store().select_own_schedules(
        current_user_id(), after=_decode_cursor(cursor) if cursor else None, limit=limit
    )
    headers = {}
    if len(rows) == limit:
        query = urlencode({"limit": str(limit), "cursor": _encode_cursor(rows[-1])})
        headers["Link"] = f'</api/schedules?{query}>; rel="next"'
    return json_response(SCHEDULE_JSON.of_rows(rows), 200, headers)


@blueprint.get("/api/schedules/<schedule_id>")
@documented(response=Schedule)
@require_user
async def get_schedule(schedule_id: str) -> Response:
    """Get a schedule."""
    return json_response(SCHEDULE_JSON.of_row(await _own_schedule(_parse_schedule_id(schedule_id))))


@blueprint.patch("/api/schedules/<schedule_id>")
@documented(
    request=SchedulePatch,
    response=Schedule,
    errors={
        400: "invalid field (details name it)",
        409: "changed by another request at the same time",
    },
)
@require_user
async def patch_schedule(schedule_id: str) -> Response:
    """Change a schedule; a new cron or timezone plans the next slot anew."""
    parsed_id = _parse_schedule_id(schedule_id)
    body = await read_model(SchedulePatch)
    current = await _own_schedule(parsed_id)
    payload = None
    if body.payload is not None or body.type is not None:
        # A new type is checked with the payload it will run with.
        payload = _checked_payload(
            body.type or current["type"],
            current["payload"] if body.payload is None else body.payload,
        )
    cron = body.cron or current["cron"]
    timezone = body.timezone or current["timezone"]
    replan = (cron, timezone) != (current["cron"], current["timezone"])
    row = await _store().update_own_schedule(
        parsed_id,
        current_user_id(),
        ScheduleChange(
            type=current["type"],
            cron=current["cron"],
            timezone=current["timezone"],
            new_name=body.name,
            new_cron=body.cron,
            new_timezone=body.timezone,
            new_type=body.type,
            new_payload=payload,
            new_max_retries=body.max_retries,
            new_priority=body.priority,
            replan=replan,
            next_run_at=_next_run_at(cron, timezone) if replan else None,
        ),
    )
    if row is None:
        await _own_schedule(parsed_id)  # deleted meanwhile: 404
        raise Conflict("the schedule was changed at the same time; read it and try again")
    return json_response(SCHEDULE_JSON.of_row(row))


@blueprint.delete("/api/schedules/<schedule_id>")
@documented(response=None, status=204)
@require_user
async def delete_schedule(schedule_id: str) -> Response:
    """Delete a schedule; the tasks it created stay."""
    if not await _store().delete_own_schedule(_parse_schedule_id(schedule_id), current_user_id()):
        raise ScheduleNotFound()
    return Response(status=204)


@blueprint.post("/api/schedules/<schedule_id>/pause")
@documented(response=Schedule)
@require_user
async def pause_schedule(schedule_id: str) -> Response:
    """Pause a schedule: no new slot creates a task."""
    parsed_id = _parse_schedule_id(schedule_id)
    row = await _store().pause_own_schedule(parsed_id, current_user_id())
    # Paused already: pausing again changes nothing.
    return json_response(SCHEDULE_JSON.of_row(row or await _own_schedule(parsed_id)))


@blueprint.post("/api/schedules/<schedule_id>/resume")
@documented(response=Schedule, errors={409: "changed by another request at the same time"})
@require_user
async def resume_schedule(schedule_id: str) -> Response:
    """Resume a schedule from its next future slot.

    The slots that passed while it was paused never run.
    """
    parsed_id = _parse_schedule_id(schedule_id)
    current = await _own_schedule(parsed_id)
    if not current["paused"]:
        return json_response(SCHEDULE_JSON.of_row(current))
    row = await _store().resume_own_schedule(
        parsed_id,
        current_user_id(),
        next_run_at=_next_run_at(current["cron"], current["timezone"]),
        cron=current["cron"],
        timezone=current["timezone"],
    )
    if row is None:
        latest = await _own_schedule(parsed_id)
        if not latest["paused"]:
            return json_response(SCHEDULE_JSON.of_row(latest))
        raise Conflict("the schedule was changed at the same time; try again")
    return json_response(SCHEDULE_JSON.of_row(row))
