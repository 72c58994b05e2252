"""/api/admin/*: the dashboard's operator tools, for users marked
``users.is_admin`` (anyone else gets a 403): any user's tasks found by a
filter and retried or cancelled in bulk, any user's task with its history,
task types paused and resumed, every user's schedules and share of the
workers. (The overview, ``GET /api/admin/overview``, is served by
:mod:`taskflow.api.dashboard`.)

A change made here is recorded in the tasks' history, and on a paused type,
as ``dashboard:<the admin's email>``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Literal, ParamSpec, TypeVar

from pydantic import BaseModel, ValidationError
from quart import Blueprint, Response, g, request

from taskflow.api import config, services
from taskflow.api.admin_models import (
    BULK_MAX_TASKS,
    COUNT_LIMIT,
    BulkRequest,
    BulkResult,
    OperatorSchedule,
    OperatorSchedules,
    OperatorTask,
    OperatorTaskList,
    OperatorTaskQuery,
    OperatorTaskRow,
    PauseRequest,
    RowsQuery,
    TaskTypeChange,
    TaskTypes,
    TaskTypeState,
    UserShare,
    UserShares,
)
from taskflow.api.responses import model_response, read_model
from taskflow.api.route_docs import UUID_SCHEMA, PathParameter, documented
from taskflow.api.schemas import (
    HISTORY_EVENT_JSON,
    TASK_JSON,
    LinkedTask,
    LinkedTasks,
    RowJson,
    TaskLinks,
)
from taskflow.api.security import current_user_id, require_user
from taskflow.api.tasks import parse_task_id
from taskflow.errors import Forbidden, NotFound, TaskNotFound, ValidationFailed
from taskflow.models import TASK_TYPE_PATTERN, describe_validation_error
from taskflow.store.admin import (
    CANCELLABLE_STATUSES,
    RETRYABLE_STATUSES,
    BulkOutcome,
    TaskFilter,
)
from taskflow.store.dependencies import LINKS_LIMIT
from taskflow.store.pool import Record

log = logging.getLogger(__name__)

blueprint = Blueprint("admin", __name__)
OPERATOR_SCHEDULE = RowJson(OperatorSchedule)
USER_SHARE = RowJson(UserShare)

P = ParamSpec("P")
R = TypeVar("R")
QueryT = TypeVar("QueryT", bound=BaseModel)

FORBIDDEN = "not an admin (users.is_admin)"
# Any user's task: "or not yours" does not apply here.
TASK_ID_PARAMETER = PathParameter(
    "task_id", UUID_SCHEMA, {400: "malformed task id", 404: "no such task"}
)
TASK_TYPE_PARAMETER = PathParameter(
    "task_type", {"type": "string", "pattern": TASK_TYPE_PATTERN.pattern}, {404: "no such type"}
)


class TaskTypeNotFound(NotFound):
    """No such task type."""


async def current_admin() -> Record:
    """The caller, who must be an admin; read on every request, so taking
    ``is_admin`` away takes effect at once."""
    user = await services().accounts.select_user_by_id(current_user_id())
    if user is None or not user["is_admin"]:
        raise Forbidden("the operator tools are for admins only")
    return user


def require_admin(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        g.admin_email = (await current_admin())["email"]
        return await view(*args, **kwargs)

    return require_user(wrapper)


def _actor() -> str:
    return f"dashboard:{g.admin_email}"


def _query(model: type[QueryT]) -> QueryT:
    """A query string read by its model, leniently: every value is text there."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise ValidationFailed("invalid query", details=describe_validation_error(exc)) from None


# ----- tasks


@blueprint.get("/api/admin/tasks")
@documented(
    response=OperatorTaskList,
    query=OperatorTaskQuery,
    errors={400: "bad filter or limit, or an unknown query parameter", 403: FORBIDDEN},
)
@require_admin
async def list_tasks() -> Response:
    """Any user's tasks that match a filter, and how many each bulk action would take."""
    query = _query(OperatorTaskQuery)
    task_filter = TaskFilter(query.status, query.type, query.email)
    counts = await services().admin.count_matching_tasks(task_filter, up_to=COUNT_LIMIT)
    rows = await services().admin.select_matching_tasks(task_filter, query.limit)
    return model_response(
        OperatorTaskList(
            matching=counts["matching"],
            retryable=counts["retryable"],
            cancellable=counts["cancellable"],
            count_limit=COUNT_LIMIT,
            bulk_max_tasks=BULK_MAX_TASKS,
            tasks=[OperatorTaskRow.model_validate(dict(row)) for row in rows],
        )
    )


def _bulk_filter(body: BulkRequest, action: Literal["retry", "cancel"]) -> TaskFilter:
    allowed = RETRYABLE_STATUSES if action == "retry" else CANCELLABLE_STATUSES
    if body.status is not None and body.status not in allowed:
        verb = "retried" if action == "retry" else "cancelled"
        raise ValidationFailed(
            f"a {body.status} task cannot be {verb}",
            details=[{"field": "status", "message": "must be one of: " + ", ".join(allowed)}],
        )
    return TaskFilter(body.status, body.type, body.email)


def _bulk_answer(
    action: Literal["retry", "cancel"], body: BulkRequest, outcome: BulkOutcome
) -> Response:
    log.info(
        "bulk action",
        extra={
            "event": f"bulk_{action}",
            "user_id": current_user_id(),
            "changed": outcome.changed,
            "skipped": outcome.skipped,
            "more": outcome.more,
        },
    )
    return model_response(
        BulkResult(
            action=action,
            changed=outcome.changed,
            skipped=outcome.skipped,
            max_tasks=body.max_tasks,
            more=outcome.more,
        )
    )


_BULK_ERRORS = {
    400: "bad filter (e.g. a status the action cannot take), reason or max_tasks",
    403: FORBIDDEN,
}


@blueprint.post("/api/admin/tasks/bulk-retry")
@documented(request=BulkRequest, response=BulkResult, errors=_BULK_ERRORS)
@require_admin
async def bulk_retry() -> Response:
    """Re-queue every failed or cancelled task that matches, up to max_tasks.

    As one task's retry: fresh attempts, and a task whose dependencies are
    not all done is not taken. Oldest first, a batch per transaction; `more`
    says that tasks past max_tasks still match.
    """
    body = await read_model(BulkRequest)
    task_filter = _bulk_filter(body, "retry")
    outcome = await services().admin.retry_matching_tasks(
        task_filter, max_tasks=body.max_tasks, actor=_actor(), reason=body.reason
    )
    return _bulk_answer("retry", body, outcome)


@blueprint.post("/api/admin/tasks/bulk-cancel")
@documented(request=BulkRequest, response=BulkResult, errors=_BULK_ERRORS)
@require_admin
async def bulk_cancel() -> Response:
    """Cancel every unfinished task that matches, up to max_tasks.

    As one task's cancel: a running task's worker stops it, and tasks blocked
    on a cancelled one are cancelled with it. Oldest first, a batch per
    transaction; `more` says that tasks past max_tasks still match.
    """
    body = await read_model(BulkRequest)
    task_filter = _bulk_filter(body, "cancel")
    outcome = await services().admin.cancel_matching_tasks(
        task_filter, max_tasks=body.max_tasks, actor=_actor(), reason=body.reason
    )
    return _bulk_answer("cancel", body, outcome)


def _linked(rows: list[Record]) -> LinkedTasks:
    return LinkedTasks(
        tasks=[LinkedTask.model_validate(dict(row)) for row in rows[:LINKS_LIMIT]],
        more=len(rows) > LINKS_LIMIT,
    )


@blueprint.get("/api/admin/tasks/<raw_id>")
@documented(response=OperatorTask, errors={403: FORBIDDEN}, path={"raw_id": TASK_ID_PARAMETER})
@require_admin
async def get_task(raw_id: str) -> Response:
    """Any user's task: its fields, owner, worker, history and dependencies."""
    task_id = parse_task_id(raw_id)
    row = await services().operators.select_any_task(task_id)
    if row is None:
        raise TaskNotFound()
    owner = await services().accounts.select_user_by_id(row["user_id"])
    history = await services().operators.select_any_task_history(task_id)
    links = await services().dependencies.links(task_id)
    return model_response(
        OperatorTask(
            task=TASK_JSON.model_of_row(row),
            email=owner["email"] if owner is not None else "",
            worker_id=row["worker_id"],
            lease_expires_at=row["lease_expires_at"],
            history=HISTORY_EVENT_JSON.models_of_rows(history),
            links=TaskLinks(
                dependencies=_linked(links.dependencies), dependents=_linked(links.dependents)
            ),
        )
    )


# ----- task types


async def _type_states(names: list[str]) -> list[TaskTypeState]:
    registered = set(config().registry.names())
    rows = await services().admin.select_task_types(names)
    return [
        TaskTypeState(
            name=row["type"],
            registered=row["type"] in registered,
            paused=row["paused"],
            paused_at=row["paused_at"],
            paused_by=row["paused_by"],
            reason=row["reason"],
            queued=row["queued"],
        )
        for row in rows
    ]


async def _type_state(task_type: str) -> TaskTypeState:
    for state in await _type_states([task_type]):
        if state.name == task_type:
            return state
    raise TaskTypeNotFound()


@blueprint.get("/api/admin/task-types")
@documented(response=TaskTypes, errors={403: FORBIDDEN})
@require_admin
async def list_task_types() -> Response:
    """Every task type: paused or not, and its queued tasks."""
    return model_response(TaskTypes(types=await _type_states(config().registry.names())))


@blueprint.post("/api/admin/task-types/<task_type>/pause")
@documented(
    request=PauseRequest,
    response=TaskTypeChange,
    errors={400: "bad reason", 403: FORBIDDEN},
    path={"task_type": TASK_TYPE_PARAMETER},
)
@require_admin
async def pause_task_type(task_type: str) -> Response:
    """Pause a task type: its queued tasks stay queued, no worker claims them."""
    body = await read_model(PauseRequest)
    # A misspelt type would be paused without complaint and hold back nothing.
    if task_type not in config().registry:
        raise TaskTypeNotFound()
    changed = await services().admin.pause_type(task_type, reason=body.reason, actor=_actor())
    return model_response(TaskTypeChange(changed=changed, type=await _type_state(task_type)))


@blueprint.post("/api/admin/task-types/<task_type>/resume")
@documented(
    response=TaskTypeChange, errors={403: FORBIDDEN}, path={"task_type": TASK_TYPE_PARAMETER}
)
@require_admin
async def resume_task_type(task_type: str) -> Response:
    """Resume a paused task type: its queued tasks are picked again."""
    changed = await services().admin.resume_type(task_type)
    if not changed and task_type not in config().registry:
        raise TaskTypeNotFound()
    return model_response(TaskTypeChange(changed=changed, type=await _type_state(task_type)))


# ----- every user's schedules and shares


@blueprint.get("/api/admin/schedules")
@documented(response=OperatorSchedules, query=RowsQuery, errors={400: "bad limit", 403: FORBIDDEN})
@require_admin
async def list_schedules() -> Response:
    """Every user's schedules (the taskflow_schedules view): paused last, next slot first."""
    query = _query(RowsQuery)
    rows = await services().admin.select_all_schedules(query.limit)
    return model_response(
        OperatorSchedules(
            total=rows[0]["total"] if rows else 0, schedules=OPERATOR_SCHEDULE.models_of_rows(rows)
        )
    )


@blueprint.get("/api/admin/user-shares")
@documented(response=UserShares, query=RowsQuery, errors={400: "bad limit", 403: FORBIDDEN})
@require_admin
async def list_user_shares() -> Response:
    """Each user with unfinished tasks: weight, running and queued tasks, share and caps."""
    query = _query(RowsQuery)
    rows = await services().limits.select_user_shares(query.limit)
    return model_response(
        UserShares(total=rows[0]["total"] if rows else 0, users=USER_SHARE.models_of_rows(rows))
    )
