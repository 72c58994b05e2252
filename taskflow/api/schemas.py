"""What the API answers, and what it reads besides JSON bodies, as pydantic models.

Response models shape every JSON answer: the routes serialise through them
(:class:`RowJson` for database rows, :func:`taskflow.api.responses.model_response`
for the rest) and :mod:`taskflow.api.openapi` documents each route from them,
so a field added here reaches clients and the document together. The request
bodies' models live in :mod:`taskflow.models`, next to their validation rules;
the models of query strings, headers and the upload form are here because
only the document reads them (each route checks its own, with its own 400s).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from taskflow.models import (
    MAX_RETRIES_LIMIT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    TASK_TYPE_PATTERN,
    TaskStatus,
)
from taskflow.store.dependencies import LINKS_LIMIT

DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT = 100, 1000
IDEMPOTENCY_KEY_MAX_CHARS = 255

Priority = Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)]
MaxRetries = Annotated[int, Field(ge=0, le=MAX_RETRIES_LIMIT)]


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----- tasks


class Task(ResponseModel):
    """A task (SPEC §3). Times are RFC 3339 UTC ("Z")."""

    id: UUID
    user_id: int
    type: str
    payload: dict[str, Any]
    status: TaskStatus
    priority: Priority
    attempts: Annotated[int, Field(ge=0, description="attempts started")]
    retries: Annotated[int, Field(ge=0, description="retries performed: max(attempts - 1, 0)")]
    max_retries: MaxRetries
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    result: Annotated[Any, Field(description="what the handler returned, once done")]


class HistoryEvent(ResponseModel):
    """One transition of a task, written in the transaction that made it."""

    at: datetime
    event: str
    from_status: TaskStatus | None
    to_status: TaskStatus
    attempt: int
    worker_id: str | None
    error: str | None
    actor: Annotated[str | None, Field(description="who made the change")]


class LinkedTask(ResponseModel):
    id: UUID
    type: str
    status: TaskStatus


class LinkedTasks(ResponseModel):
    tasks: Annotated[list[LinkedTask], Field(max_length=LINKS_LIMIT)]
    more: Annotated[bool, Field(description="there are more than the tasks listed")]


class TaskLinks(ResponseModel):
    """What a task waits for, and what waits for it."""

    dependencies: LinkedTasks
    dependents: LinkedTasks


# ----- schedules


class Schedule(ResponseModel):
    """A periodic task: every slot of ``cron`` in ``timezone`` creates one task."""

    id: UUID
    name: str
    cron: Annotated[str, Field(description="5 fields, in `timezone`")]
    timezone: Annotated[str, Field(description="IANA time zone name")]
    type: str
    payload: dict[str, Any]
    max_retries: MaxRetries
    priority: Priority
    paused: bool
    next_run_at: Annotated[
        datetime | None,
        Field(description="the next slot; null while paused (or until planned)"),
    ]
    last_run_at: Annotated[
        datetime | None, Field(description="the latest slot that created a task")
    ]
    last_task_id: UUID | None
    last_skipped_at: datetime | None
    last_skip_reason: Annotated[
        str | None,
        Field(description="the creation limit that made the scheduler skip that slot"),
    ]
    created_at: datetime
    updated_at: datetime


# ----- files


class FileInfo(ResponseModel):
    name: str
    size: Annotated[int, Field(ge=0, description="bytes")]
    created_at: datetime


# ----- accounts


class Registered(ResponseModel):
    user_id: int


class LoggedIn(ResponseModel):
    token: Annotated[
        str, Field(description="'Bearer <jwt>': works verbatim as the Authorization header")
    ]
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: Annotated[int, Field(description="seconds")]


# ----- errors and health


class Error(ResponseModel):
    """Every error answer: a message for people, and what a program can act on."""

    error: str
    details: Annotated[Any, Field(description="what was wrong, e.g. per field")] = None
    limit: Annotated[str | None, Field(description="on a 429 or 413: the limit's config key")] = (
        None
    )
    request_id: Annotated[
        str | None, Field(description="on a 500: quote it when reporting the error")
    ] = None


class Liveness(ResponseModel):
    status: Literal["ok"]


class Readiness(ResponseModel):
    status: Literal["ready", "not ready"]
    checks: Annotated[dict[str, str], Field(description="each dependency: ok, or why not")]
    error: str | None = None


# ----- what the routes read besides JSON bodies (documented, not parsed, here)


class PageQuery(BaseModel):
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_LIMIT)] = DEFAULT_PAGE_LIMIT
    cursor: Annotated[
        str | None, Field(description='from the previous page\'s Link: <...>; rel="next"')
    ] = None


class TaskListQuery(PageQuery):
    status: TaskStatus | None = None
    type: Annotated[str | None, Field(pattern=TASK_TYPE_PATTERN.pattern)] = None


class IdempotencyHeaders(BaseModel):
    idempotency_key: Annotated[
        str | None,
        Field(
            alias="Idempotency-Key",
            min_length=1,
            max_length=IDEMPOTENCY_KEY_MAX_CHARS,
            description="a repeat with the same key returns the task the first created",
        ),
    ] = None


UploadConflictPolicy = Literal["error", "rename"]


class UploadQuery(BaseModel):
    on_conflict: Annotated[
        UploadConflictPolicy,
        Field(
            description="'error' (409 on a taken name) or 'rename' "
            "(store as name-2.ext, name-3.ext, ...)"
        ),
    ] = "error"


class UploadForm(BaseModel):
    """The file streams to disk, so an optional 'name' field must come before
    the 'file' part, and nothing after it."""

    name: Annotated[
        str | None,
        Field(description="stored name, instead of the upload's filename; a plain file name"),
    ] = None
    file: bytes


class EventStreamQuery(BaseModel):
    last_event_id: Annotated[
        int | None,
        Field(ge=0, description="as Last-Event-ID, for a first connection; the header wins"),
    ] = None
    access_token: Annotated[
        str | None,
        Field(
            description="the token, for EventSource, which cannot send headers; only on the "
            "event routes. A URL is logged in more places than a header: send the header "
            "when you can."
        ),
    ] = None


class EventStreamHeaders(BaseModel):
    last_event_id: Annotated[
        str | None,
        Field(
            alias="Last-Event-ID",
            pattern="^[0-9]+$",
            description="resume after this event id (EventSource sends it when it reconnects)",
        ),
    ] = None


# ----- rows to JSON


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


ModelT = TypeVar("ModelT", bound=BaseModel)


class RowJson(Generic[ModelT]):
    """A response model's JSON object, taken field by field from a database
    row (or an object's attributes), in the model's field order.

    Rows are not validated through the model: a list answer holds up to a
    thousand tasks and creating one is the API's hottest path, and pydantic
    would cost several times the copy; tests/integration/test_api_document.py
    holds every answer to the model's schema instead. orjson then writes the
    values as they are: timestamps RFC 3339 UTC with a "Z", UUIDs as strings.
    """

    def __init__(self, model: type[ModelT]) -> None:
        self.model = model
        self.fields = tuple(model.model_fields)

    # Comprehensions: faster here than dict(zip(fields, itemgetter(*fields)(row))).
    def of_row(self, row: Row) -> dict[str, Any]:
        return {field: row[field] for field in self.fields}

    def of_rows(self, rows: Iterable[Row]) -> list[dict[str, Any]]:
        fields = self.fields
        return [{field: row[field] for field in fields} for row in rows]

    def of_object(self, item: object) -> dict[str, Any]:
        return {field: getattr(item, field) for field in self.fields}

    def of_objects(self, objects: Iterable[object]) -> list[dict[str, Any]]:
        fields = self.fields
        return [{field: getattr(item, field) for field in fields} for item in objects]

    # Validated, for the operator's answers: a page of them, never a hot path.
    def model_of_row(self, row: Row) -> ModelT:
        return self.model.model_validate(self.of_row(row))

    def models_of_rows(self, rows: Iterable[Row]) -> list[ModelT]:
        return [self.model.model_validate(item) for item in self.of_rows(rows)]


TASK_JSON = RowJson(Task)
HISTORY_EVENT_JSON = RowJson(HistoryEvent)
SCHEDULE_JSON = RowJson(Schedule)
FILE_INFO_JSON = RowJson(FileInfo)
