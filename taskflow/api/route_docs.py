"""What each route reads and answers, recorded next to the route for the
OpenAPI document (:mod:`taskflow.api.openapi`).

A route says it with :func:`documented`, under its ``@blueprint.<method>``
line: its request model, its response model and status, the errors of its
own. The rest is read from the route: its path and methods, its summary (the
first line of its docstring), whether it wants a user (``require_user``) and
what its path variables mean (:data:`PATH_PARAMETERS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from taskflow.api.event_hub import TaskEvent
from taskflow.api.schemas import EventStreamHeaders, EventStreamQuery
from taskflow.api.security import require_user

ROUTE_DOC_ATTRIBUTE = "__openapi__"
UUID_SCHEMA: Mapping[str, Any] = {"type": "string", "format": "uuid"}

View = TypeVar("View", bound=Callable[..., Any])


@dataclass(frozen=True)
class Body:
    """A body that is not the JSON of a type: its media type, and its schema
    as a type (JSON Schema from pydantic) or as JSON Schema itself."""

    media_type: str
    schema: Any = field(default_factory=dict)
    # Server-Sent Events: the type of each event's data. OpenAPI 3.1 has no
    # place for it (3.2 adds itemSchema), so it goes in an x- extension.
    event_data: Any = None


@dataclass(frozen=True)
class Reply:
    """An answer other than the route's success: its body (a type whose JSON
    it is, or a Body) and what it means."""

    body: Any
    description: str


@dataclass(frozen=True)
class PathParameter:
    name: str  # as the document names it: a route may call it otherwise (<raw_id>)
    schema: Mapping[str, Any]
    errors: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteDoc:
    response: Any  # a type whose JSON the success is, a Body, or None (no body)
    status: int = 200
    description: str | None = None  # of the success; default: its status phrase
    request: Any = None  # a type whose JSON the body must be, or a Body
    query: type[BaseModel] | None = None
    headers: type[BaseModel] | None = None
    errors: Mapping[int, str | Reply] = field(default_factory=dict)  # str: an Error body
    path: Mapping[str, PathParameter] = field(default_factory=dict)
    secured: bool | None = None  # None: whether the view is wrapped by require_user
    summary: str | None = None  # None: the first line of the view's docstring


def documented(
    *,
    response: Any,
    status: int = 200,
    description: str | None = None,
    request: Any = None,
    query: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
    errors: Mapping[int, str | Reply] | None = None,
    path: Mapping[str, PathParameter] | None = None,
) -> Callable[[View], View]:
    """Record what a route answers and reads, for the document; put it under
    the ``@blueprint.<method>(...)`` line. ``errors`` are the route's own
    (401 and the path variables' 400 and 404 come with the route)."""
    route_doc = RouteDoc(
        response=response,
        status=status,
        description=description,
        request=request,
        query=query,
        headers=headers,
        errors=errors or {},
        path=path or {},
    )

    def attach(view: View) -> View:
        setattr(view, ROUTE_DOC_ATTRIBUTE, route_doc)
        return view

    return attach


# Path variables mean the same on every route that names them, as
# parse_task_id and the schedules' id parsing read them.
PATH_PARAMETERS: Mapping[str, PathParameter] = {
    "raw_id": PathParameter(
        "task_id", UUID_SCHEMA, {400: "malformed task id", 404: "no such task (or not yours)"}
    ),
    "schedule_id": PathParameter(
        "schedule_id",
        UUID_SCHEMA,
        {400: "malformed schedule id", 404: "no such schedule (or not yours)"},
    ),
}

_STREAM = (
    "An endless text/event-stream: `event: task` per change (its `id:` is the "
    "task_history id), `event: ready` once live, `event: resync` when too much was "
    "missed (reload, then carry on), and `: ping` comments every 15 s. Delivery is at "
    "least once: drop ids already seen."
)
_STREAM_ERRORS: Mapping[int, str] = {
    400: "malformed Last-Event-ID",
    429: "too many open event streams for this user",
}
_OVERVIEW_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "generated_at": {"type": "string", "format": "date-time"},
        "queue": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "tasks per status",
        },
        "throughput": {"type": "object", "description": "attempts ended per minute, last hour"},
        "workers": {"type": "object"},
        "stuck": {"type": "object"},
        "recent_failures": {"type": "object"},
    },
}

# Routes of modules that do not use documented() yet, by endpoint. Their
# owners can move each next to its route; documented() there wins over this.
ROUTES_DOCUMENTED_HERE: Mapping[str, RouteDoc] = {
    "events.user_events": RouteDoc(
        summary="Live status changes of all your tasks (Server-Sent Events)",
        response=Body("text/event-stream", {"type": "string"}, event_data=TaskEvent),
        description=_STREAM,
        query=EventStreamQuery,
        headers=EventStreamHeaders,
        errors=_STREAM_ERRORS,
        secured=True,
    ),
    "events.task_events": RouteDoc(
        summary="Live status changes of one task (Server-Sent Events)",
        response=Body("text/event-stream", {"type": "string"}, event_data=TaskEvent),
        description="As GET /api/events, for this task only.",
        query=EventStreamQuery,
        headers=EventStreamHeaders,
        errors=_STREAM_ERRORS,
        secured=True,
    ),
    "dashboard.index": RouteDoc(
        summary="The web dashboard", response=Body("text/html", {"type": "string"})
    ),
    "dashboard.asset": RouteDoc(
        summary="The dashboard's scripts, stylesheet and icon",
        response=None,
        description="a static file",
        path={"name": PathParameter("name", {"type": "string"}, {404: "no such file"})},
    ),
    "dashboard.operator_overview": RouteDoc(
        summary="Operator overview: queue depth, throughput, workers, stuck and failed tasks",
        response=Body("application/json", _OVERVIEW_SCHEMA),
        errors={403: "not an admin (users.is_admin)"},
    ),
}


async def _probe() -> None:
    """Only wrapped, never called: every view require_user wraps shares this code."""


_REQUIRE_USER_CODE = require_user(_probe).__code__


def wants_user(view: Callable[..., Any]) -> bool:
    current: Any = view
    while current is not None:
        if getattr(current, "__code__", None) is _REQUIRE_USER_CODE:
            return True
        current = getattr(current, "__wrapped__", None)
    return False


def route_doc(endpoint: str, view: Callable[..., Any]) -> RouteDoc:
    """The route's own, else the one kept here, else what the route alone tells."""
    doc = getattr(view, ROUTE_DOC_ATTRIBUTE, None)
    if isinstance(doc, RouteDoc):
        return doc
    return ROUTES_DOCUMENTED_HERE.get(endpoint, RouteDoc(response=None))
