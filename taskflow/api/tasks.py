"""/api/tasks: create, batch create, list, get, history, dependencies, patch,
cancel, retry, delete.

Another user's task is indistinguishable from a missing one: always 404.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from urllib.parse import urlencode
from uuid import UUID

from quart import Blueprint, Response, request

from taskflow.api import config, services
from taskflow.api.responses import (
    json_response,
    model_response,
    parse_model,
    read_json_body,
    read_model,
)
from taskflow.api.route_docs import documented
from taskflow.api.schemas import (
    DEFAULT_PAGE_LIMIT,
    HISTORY_EVENT_JSON,
    IDEMPOTENCY_KEY_MAX_CHARS,
    MAX_PAGE_LIMIT,
    TASK_JSON,
    HistoryEvent,
    IdempotencyHeaders,
    LinkedTask,
    LinkedTasks,
    Task,
    TaskLinks,
    TaskListQuery,
)
from taskflow.api.security import current_user_id, require_user
from taskflow.enqueue import Enqueuer, check_run_at
from taskflow.errors import InvalidTransition, TaskNotFound, ValidationFailed
from taskflow.models import (
    EDITABLE,
    RETRYABLE,
    TASK_TYPE_PATTERN,
    TERMINAL,
    TaskBatchCreate,
    TaskCreate,
    TaskPatch,
    TaskStatus,
)
from taskflow.store.dependencies import LINKS_LIMIT
from taskflow.store.pool import Record
from taskflow.store.tasks import TaskStore

blueprint = Blueprint("tasks", __name__)


def _store() -> TaskStore:
    return services().tasks


def _enqueuer() -> Enqueuer:
    return services().enqueuer


def parse_task_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise ValidationFailed(
            "malformed task id", details=[{"field": "id", "message": "must be a UUID"}]
        ) from None


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_CHARS or not key.isprintable():
        raise ValidationFailed(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_CHARS} printable characters"
        )
    return key


@blueprint.post("/api/tasks")
@documented(
    request=TaskCreate,
    response=Task,
    status=201,
    description="created (or replayed for a repeated Idempotency-Key); Location is its URL",
    headers=IdempotencyHeaders,
    errors={
        400: "invalid type, payload, run_at, max_retries, priority or depends_on",
        409: "Idempotency-Key reused with a different request",
        413: "body too large",
        429: "over a creation limit (limit names it; Retry-After)",
    },
)
@require_user
async def create_task() -> Response:
    """Create a task."""
    body = await read_model(TaskCreate)
    row, created = await _enqueuer().create(
        current_user_id(), body, idempotency_key=_idempotency_key()
    )
    headers = {"Location": f"/api/tasks/{row['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(TASK_JSON.of_row(row), 201, headers)


@blueprint.post("/api/tasks/batch")
@documented(
    request=TaskBatchCreate,
    response=list[Task],
    status=201,
    errors={
        400: "an invalid item (details name its index); nothing created",
        413: "body too large",
        429: "over a creation limit (limit names it; Retry-After); nothing created",
    },
)
@require_user
async def create_tasks() -> Response:
    """Create up to 1000 tasks, all or nothing."""
    body = await read_json_body()
    raw_items = body.get("tasks") if isinstance(body, dict) else None
    if isinstance(raw_items, list):
        # TaskBatchCreate alone would call a non-object item "tasks.3"; every
        # other error about an item names it "tasks[3]...", so this one does too.
        for index, item in enumerate(raw_items):
            if not isinstance(item, dict):
                parse_model(
                    TaskCreate, item, what=f"tasks[{index}]", field_prefix=f"tasks[{index}]"
                )
    batch = parse_model(TaskBatchCreate, body)
    items = [
        parse_model(TaskCreate, item, what=f"tasks[{index}]", field_prefix=f"tasks[{index}]")
        for index, item in enumerate(batch.tasks)
    ]
    rows = await _enqueuer().create_many(current_user_id(), items)
    return json_response(TASK_JSON.of_rows(rows), 201)


def _encode_cursor(row: Record) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, task_id = raw.split("|")
        parsed = datetime.fromisoformat(created_at)
        if parsed.tzinfo is None:
            raise ValueError("naive time")
        # A forged cursor may name an instant with no UTC form, which asyncpg
        # cannot send (OverflowError, a 500): normalise it here instead.
        return parsed.astimezone(UTC), UUID(task_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            "invalid cursor", details=[{"field": "cursor", "message": "use the Link header"}]
        ) from None


def _query_limit() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_PAGE_LIMIT
    # isascii: str.isdigit() is also true for "²", which int() then refuses (a 500).
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_LIMIT:
        raise ValidationFailed(
            "invalid limit",
            details=[
                {"field": "limit", "message": f"must be an integer from 1 to {MAX_PAGE_LIMIT}"}
            ],
        )
    return int(raw)


@blueprint.get("/api/tasks")
@documented(
    response=list[Task],
    description='a page; Link: <...>; rel="next" when there is more',
    query=TaskListQuery,
    errors={400: "bad filter, limit or cursor, or an unknown query parameter"},
)
@require_user
async def list_tasks() -> Response:
    """List your tasks, newest first."""
    unknown = set(request.args) - set(TaskListQuery.model_fields)
    if unknown:
        raise ValidationFailed(
            "unknown query parameter",
            details=[
                {"field": name, "message": "unknown query parameter"} for name in sorted(unknown)
            ],
        )
    status_raw = request.args.get("status")
    status = None
    if status_raw is not None:
        try:
            status = TaskStatus(status_raw)
        except ValueError:
            raise ValidationFailed(
                "invalid status",
                details=[
                    {"field": "status", "message": "must be one of: " + ", ".join(TaskStatus)}
                ],
            ) from None
    task_type = request.args.get("type")
    # The same rule as a registered type's name; it also keeps NUL (which
    # Postgres text cannot hold, a 500) and other junk away from the query.
    if task_type is not None and not TASK_TYPE_PATTERN.fullmatch(task_type):
        raise ValidationFailed(
            "invalid type",
            details=[{"field": "type", "message": "must match [a-z][a-z0-9_]{0,63}"}],
        )
    limit = _query_limit()
    cursor = request.args.get("cursor")
    before = _decode_cursor(cursor) if cursor else None
    # A page holds at most list_response_max_bytes of JSON, whatever the
    # limit: fewer rows, and the Link to the rest.
    page = await _store().select_own_tasks(
        current_user_id(),
        status=status,
        task_type=task_type,
        before=before,
        limit=limit,
        max_bytes=config().settings.list_response_max_bytes,
    )
    rows = page.rows
    headers = {}
    if page.cut or len(rows) == limit:
        query = {k: v for k, v in (("status", status_raw), ("type", task_type)) if v}
        query.update(limit=str(limit), cursor=_encode_cursor(rows[-1]))
        headers["Link"] = f'</api/tasks?{urlencode(query)}>; rel="next"'
    return json_response(TASK_JSON.of_rows(rows), 200, headers)


async def _own_task(task_id: UUID) -> Record:
    row = await _store().select_own_task(task_id, current_user_id())
    if row is None:
        raise TaskNotFound()
    return row


@blueprint.get("/api/tasks/<raw_id>")
@documented(response=Task)
@require_user
async def get_task(raw_id: str) -> Response:
    """Get a task."""
    return json_response(TASK_JSON.of_row(await _own_task(parse_task_id(raw_id))))


@blueprint.get("/api/tasks/<raw_id>/history")
@documented(response=list[HistoryEvent])
@require_user
async def get_task_history(raw_id: str) -> Response:
    """A task's history, oldest first."""
    task_id = parse_task_id(raw_id)
    rows = await _store().select_own_task_history(task_id, current_user_id())
    if not rows:
        raise TaskNotFound()
    return json_response(HISTORY_EVENT_JSON.of_rows(rows))


def _linked(rows: list[Record]) -> LinkedTasks:
    # Validated, unlike the task answers: a cold path, of a few rows as a rule.
    return LinkedTasks(
        tasks=[LinkedTask.model_validate(dict(row)) for row in rows[:LINKS_LIMIT]],
        more=len(rows) > LINKS_LIMIT,
    )


@blueprint.get("/api/tasks/<raw_id>/dependencies")
@documented(response=TaskLinks)
@require_user
async def get_task_dependencies(raw_id: str) -> Response:
    """What a task waits for, and what waits for it, each with its status."""
    task_id = parse_task_id(raw_id)
    await _own_task(task_id)
    links = await services().dependencies.links(task_id)
    return model_response(
        TaskLinks(dependencies=_linked(links.dependencies), dependents=_linked(links.dependents))
    )


def _not_in(row: Record, allowed: frozenset[TaskStatus], action: str) -> InvalidTransition:
    wanted = ", ".join(sorted(allowed))
    return InvalidTransition(
        f"cannot {action} a task that is {row['status']} (only when {wanted})",
        details={"status": row["status"]},
    )


@blueprint.patch("/api/tasks/<raw_id>")
@documented(
    request=TaskPatch,
    response=Task,
    errors={400: "invalid payload, max_retries, run_at or priority", 409: "not waiting"},
)
@require_user
async def patch_task(raw_id: str) -> Response:
    """Change a waiting task (postponed, queued or retrying)."""
    task_id = parse_task_id(raw_id)
    body = await read_model(TaskPatch)
    check_run_at(body.run_at)
    current = await _own_task(task_id)
    if current["status"] not in EDITABLE:
        raise _not_in(current, EDITABLE, "change")
    payload = None
    if body.payload is not None:
        payload = _enqueuer().validate_payload(current["type"], body.payload)
    row = await _store().update_waiting_task(
        task_id,
        current_user_id(),
        payload=payload,
        max_retries=body.max_retries,
        priority=body.priority,
        run_at=body.run_at,
    )
    if row is None:
        latest = await _own_task(task_id)
        if latest["status"] == TaskStatus.QUEUED and body.run_at is not None:
            raise InvalidTransition(
                "a queued task cannot be postponed; cancel it and create a new one",
                details={"status": latest["status"]},
            )
        raise _not_in(latest, EDITABLE, "change")
    return json_response(TASK_JSON.of_row(row))


@blueprint.post("/api/tasks/<raw_id>/cancel")
@documented(response=Task, errors={409: "already finished"})
@require_user
async def cancel_task(raw_id: str) -> Response:
    """Cancel a waiting or running task."""
    task_id = parse_task_id(raw_id)
    user_id = current_user_id()
    row = await _store().cancel_task(task_id, user_id, actor=f"api:user {user_id}")
    if row is None:
        latest = await _own_task(task_id)
        raise _not_in(latest, frozenset(TaskStatus) - TERMINAL, "cancel")
    return json_response(TASK_JSON.of_row(row))


@blueprint.post("/api/tasks/<raw_id>/retry")
@documented(
    response=Task, errors={409: "not failed or cancelled, or its dependencies are not all done"}
)
@require_user
async def retry_task(raw_id: str) -> Response:
    """Re-queue a failed or cancelled task."""
    task_id = parse_task_id(raw_id)
    user_id = current_user_id()
    row = await _store().retry_finished_task(task_id, user_id, actor=f"api:user {user_id}")
    if row is None:
        latest = await _own_task(task_id)
        if latest["status"] in RETRYABLE:
            waiting = await services().dependencies.unfinished(task_id)
            if waiting:
                raise InvalidTransition(
                    "cannot retry a task whose dependencies are not all done: "
                    "retry or wait for them first",
                    details={
                        "status": latest["status"],
                        "waits_for": [
                            {"id": str(w["id"]), "status": w["status"] or "deleted"}
                            for w in waiting
                        ],
                    },
                )
        raise _not_in(latest, RETRYABLE, "retry")
    return json_response(TASK_JSON.of_row(row))


@blueprint.delete("/api/tasks/<raw_id>")
@documented(response=None, status=204, errors={409: "not finished"})
@require_user
async def delete_task(raw_id: str) -> Response:
    """Delete a finished task and its history."""
    task_id = parse_task_id(raw_id)
    if not await _store().delete_finished_task(task_id, current_user_id()):
        latest = await _own_task(task_id)
        raise _not_in(latest, TERMINAL, "delete")
    return Response(status=204)
