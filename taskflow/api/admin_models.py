"""What the operator routes (:mod:`taskflow.api.admin`) read and answer, as
pydantic models: the routes validate through them and the OpenAPI document
is generated from them, as for every other route."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from taskflow.api.schemas import HistoryEvent, ResponseModel, Task, TaskLinks
from taskflow.models import TASK_TYPE_PATTERN, RequestModel, TaskStatus

# A bulk action takes at most this many tasks per request, so one click
# holds no lock and no transaction for long; the answer says when more match.
BULK_MAX_TASKS = 10_000
# The counts of matching tasks stop here: enough to size any bulk action
# (several requests' worth), and a bounded scan whatever the filter.
COUNT_LIMIT = 100_000
LISTED_TASKS_DEFAULT, LISTED_TASKS_MAX = 50, 500
LISTED_ROWS_DEFAULT, LISTED_ROWS_MAX = 500, 1000

TaskTypeName = Annotated[str, Field(pattern=TASK_TYPE_PATTERN.pattern)]
OwnerEmail = Annotated[
    str, Field(min_length=1, max_length=254, description="the owner's email (any case)")
]
Reason = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1000,
        description="recorded on each task's history row (and, for a cancel, as its last_error)",
    ),
]


class OperatorTaskQuery(BaseModel):
    """Which tasks: every filter given must match."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: TaskStatus | None = None
    type: TaskTypeName | None = None
    email: OwnerEmail | None = None
    limit: Annotated[int, Field(ge=1, le=LISTED_TASKS_MAX)] = LISTED_TASKS_DEFAULT


class RowsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Annotated[int, Field(ge=1, le=LISTED_ROWS_MAX)] = LISTED_ROWS_DEFAULT


class BulkRequest(RequestModel):
    """A bulk retry or cancel of every task the filter matches, up to
    ``max_tasks`` (oldest first)."""

    status: TaskStatus | None = None
    type: TaskTypeName | None = None
    email: OwnerEmail | None = None
    reason: Reason | None = None
    max_tasks: Annotated[
        int,
        Field(
            ge=1,
            le=BULK_MAX_TASKS,
            strict=True,
            description="act on at most this many (the number an operator confirmed)",
        ),
    ] = BULK_MAX_TASKS


class PauseRequest(RequestModel):
    reason: Annotated[str, Field(min_length=1, max_length=1000)] | None = None


# ----- answers


class OperatorTaskRow(ResponseModel):
    id: UUID
    user_id: int
    email: str
    type: str
    status: TaskStatus
    attempts: int
    max_retries: int
    created_at: datetime
    updated_at: datetime
    last_error: str | None


class OperatorTaskList(ResponseModel):
    """How many tasks match, how many of them each bulk action would take,
    and the newest of them. Each count stops at count_limit."""

    matching: int
    retryable: Annotated[
        int, Field(description="failed or cancelled, every dependency done: a retry takes them")
    ]
    cancellable: Annotated[int, Field(description="not finished: a cancel takes them")]
    count_limit: Annotated[
        int, Field(description="counting stops here: a count this high means at least this many")
    ]
    bulk_max_tasks: Annotated[int, Field(description="the most one bulk request acts on")]
    tasks: Annotated[list[OperatorTaskRow], Field(description="the newest that match")]


class BulkResult(ResponseModel):
    action: Literal["retry", "cancel"]
    changed: int
    skipped: Annotated[
        int,
        Field(
            description="picked, but refused by the transition's guard: changed by someone "
            "else in between"
        ),
    ]
    max_tasks: Annotated[int, Field(description="the most this request acted on")]
    more: Annotated[bool, Field(description="more tasks match: run the action again")]


class OperatorTask(ResponseModel):
    """Any user's task, as an operator sees it."""

    task: Task
    email: Annotated[str, Field(description="its owner's")]
    worker_id: str | None
    lease_expires_at: datetime | None
    history: list[HistoryEvent]
    links: TaskLinks


class TaskTypeState(ResponseModel):
    name: str
    registered: Annotated[bool, Field(description="false: paused, but no longer registered")]
    paused: bool
    paused_at: datetime | None
    paused_by: str | None
    reason: str | None
    queued: Annotated[int, Field(description="tasks queued now (held back while paused)")]


class TaskTypes(ResponseModel):
    types: list[TaskTypeState]


class TaskTypeChange(ResponseModel):
    changed: Annotated[bool, Field(description="false: it was paused (or running) already")]
    type: TaskTypeState


class OperatorSchedule(ResponseModel):
    """A row of the taskflow_schedules view (ops/sql/15_schedules.sql)."""

    id: UUID
    user_id: int
    email: str
    name: str
    cron: str
    timezone: str
    type: str
    state: Literal["active", "planning", "paused"]
    paused: bool
    next_slot: datetime | None
    last_slot: datetime | None
    last_task_id: UUID | None
    last_task_status: TaskStatus | None
    last_skipped_slot: datetime | None
    last_skip_reason: str | None
    created_at: datetime
    updated_at: datetime


class OperatorSchedules(ResponseModel):
    total: int
    schedules: list[OperatorSchedule]


class UserShare(ResponseModel):
    """A row of the taskflow_user_shares view (ops/sql/18_user_shares.sql)."""

    user_id: int
    email: str
    weight: int
    running: int
    dispatched: int
    queued: int
    unfinished: int
    running_share: Annotated[float | None, Field(description="of all running tasks, 0..1")]
    max_running: Annotated[int | None, Field(description="null: no cap")]
    email_per_minute: Annotated[int | None, Field(description="null: no cap")]
    emails_last_minute: int
    held_by: Annotated[str | None, Field(description="the cap holding its queued tasks back")]


class UserShares(ResponseModel):
    total: Annotated[int, Field(description="users with unfinished tasks")]
    users: list[UserShare]
