"""GET /api/openapi.json: the OpenAPI 3.1 document of the whole API.

Request schemas come from the same pydantic models that validate requests, and
one payload schema per registered task type, so the document cannot drift from
what the server accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from quart import Blueprint, Response

from taskflow import __version__
from taskflow.api import config
from taskflow.api.responses import json_response
from taskflow.handlers import Registry
from taskflow.models import (
    Credentials,
    LoginRequest,
    PasswordChange,
    ScheduleCreate,
    SchedulePatch,
    TaskPatch,
    TaskStatus,
)

blueprint = Blueprint("openapi", __name__)

REF_TEMPLATE = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    document = model.model_json_schema(ref_template=REF_TEMPLATE)
    schemas.update(document.pop("$defs", {}))
    schemas[model.__name__] = document
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def build_document(registry: Registry) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "details": {},
                "request_id": {"type": "string"},
                "limit": {"type": "string", "description": "on a 429: the limit's config key"},
            },
        },
        "TaskStatus": {"type": "string", "enum": [s.value for s in TaskStatus]},
        "Task": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "user_id": {"type": "integer"},
                "type": {"type": "string"},
                "payload": {"type": "object"},
                "status": {"$ref": "#/components/schemas/TaskStatus"},
                "priority": {"type": "integer", "minimum": -100, "maximum": 100},
                "attempts": {"type": "integer"},
                "retries": {"type": "integer"},
                "max_retries": {"type": "integer", "minimum": 0, "maximum": 10},
                "run_at": {"type": "string", "format": "date-time"},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "started_at": {"type": ["string", "null"], "format": "date-time"},
                "finished_at": {"type": ["string", "null"], "format": "date-time"},
                "last_error": {"type": ["string", "null"]},
                "result": {},
            },
        },
        "HistoryEvent": {
            "type": "object",
            "properties": {
                "at": {"type": "string", "format": "date-time"},
                "event": {"type": "string"},
                "from_status": {
                    "oneOf": [{"$ref": "#/components/schemas/TaskStatus"}, {"type": "null"}]
                },
                "to_status": {"$ref": "#/components/schemas/TaskStatus"},
                "attempt": {"type": "integer"},
                "worker_id": {"type": ["string", "null"]},
                "error": {"type": ["string", "null"]},
                "actor": {"type": ["string", "null"]},
            },
        },
    }
    payload_refs = []
    for task_type in registry:
        ref = _schema(task_type.payload_model, schemas)
        payload_refs.append(
            {
                "type": "object",
                "required": ["type", "payload"],
                "properties": {
                    "type": {"const": task_type.name},
                    "payload": ref,
                    "max_retries": {"type": "integer", "minimum": 0, "maximum": 10, "default": 3},
                    "run_at": {"type": "string", "format": "date-time"},
                    "priority": {"type": "integer", "minimum": -100, "maximum": 100, "default": 0},
                    "depends_on": {
                        "type": "array",
                        "maxItems": 100,
                        "description": 'task ids of the caller\'s, or "#n" for item n of '
                        "the same batch: the task is blocked until all are done",
                        "items": {"type": "string"},
                    },
                },
                "additionalProperties": False,
            }
        )
    schemas["TaskCreate"] = {"oneOf": payload_refs}
    credentials = _schema(Credentials, schemas)
    login = _schema(LoginRequest, schemas)
    password_change = _schema(PasswordChange, schemas)
    patch = _schema(TaskPatch, schemas)
    task = {"$ref": "#/components/schemas/Task"}
    task_id_param = {
        "name": "task_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    common = {"401": _error("missing, invalid or expired token")}
    not_found = {"400": _error("malformed id"), "404": _error("no such task (or not yours)")}

    file_info = {"$ref": "#/components/schemas/FileInfo"}
    linked = {
        "type": "object",
        "properties": {
            "tasks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "type": {"type": "string"},
                        "status": {"$ref": "#/components/schemas/TaskStatus"},
                    },
                },
            },
            "more": {"type": "boolean"},
        },
    }
    links = {
        "type": "object",
        "properties": {"dependencies": linked, "dependents": linked},
    }
    schemas["FileInfo"] = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "size": {"type": "integer", "description": "bytes"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    }
    file_name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "maxLength": 255},
    }
    file_not_found = {"400": _error("not a plain file name"), "404": _error("no such file")}

    def op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"summary": summary, "responses": responses, **extra}

    # ----- schedules (taskflow/api/schedules.py)
    schedule_create = _schema(ScheduleCreate, schemas)
    schedule_patch = _schema(SchedulePatch, schemas)
    schemas["Schedule"] = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "name": {"type": "string"},
            "cron": {"type": "string", "description": "5 fields, in `timezone`"},
            "timezone": {"type": "string", "description": "IANA time zone name"},
            "type": {"type": "string"},
            "payload": {"type": "object"},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": 10},
            "priority": {"type": "integer", "minimum": -100, "maximum": 100},
            "paused": {"type": "boolean"},
            "next_run_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "the next slot; null while paused (or until planned)",
            },
            "last_run_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "the latest slot that created a task",
            },
            "last_task_id": {"type": ["string", "null"], "format": "uuid"},
            "last_skipped_at": {"type": ["string", "null"], "format": "date-time"},
            "last_skip_reason": {
                "type": ["string", "null"],
                "description": "the creation limit that made the scheduler skip that slot",
            },
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    }
    schedule = {"$ref": "#/components/schemas/Schedule"}
    schedule_id_param = {
        "name": "schedule_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    schedule_not_found = {
        "400": _error("malformed id"),
        "404": _error("no such schedule (or not yours)"),
    }
    schedule_paths: dict[str, Any] = {
        "/api/schedules": {
            "post": op(
                "Create a schedule: each slot of its cron creates one task",
                {
                    "201": _json(schedule, "created; Location is its URL"),
                    "400": _error("invalid cron, timezone, type, payload (details name the field)"),
                    "429": _error("user_max_schedules reached"),
                    **common,
                },
                security=secured,
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": schedule_create}},
                },
            ),
            "get": op(
                "List your schedules, oldest first",
                {
                    "200": _json(
                        {"type": "array", "items": schedule}, "a page; Link rel=next for more"
                    ),
                    "400": _error("bad limit or cursor"),
                    **common,
                },
                security=secured,
                parameters=[
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
            ),
        },
        "/api/schedules/{schedule_id}": {
            "parameters": [schedule_id_param],
            "get": op(
                "Get a schedule",
                {"200": _json(schedule), **schedule_not_found, **common},
                security=secured,
            ),
            "patch": op(
                "Change a schedule; a new cron or timezone plans the next slot anew",
                {
                    "200": _json(schedule),
                    **schedule_not_found,
                    "409": _error("changed by another request at the same time"),
                    **common,
                },
                security=secured,
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": schedule_patch}},
                },
            ),
            "delete": op(
                "Delete a schedule; the tasks it created stay",
                {"204": {"description": "deleted"}, **schedule_not_found, **common},
                security=secured,
            ),
        },
        "/api/schedules/{schedule_id}/pause": {
            "parameters": [schedule_id_param],
            "post": op(
                "Pause a schedule: no new slot creates a task",
                {"200": _json(schedule), **schedule_not_found, **common},
                security=secured,
            ),
        },
        "/api/schedules/{schedule_id}/resume": {
            "parameters": [schedule_id_param],
            "post": op(
                "Resume a schedule from its next future slot (missed slots are skipped)",
                {
                    "200": _json(schedule),
                    **schedule_not_found,
                    "409": _error("changed by another request at the same time"),
                    **common,
                },
                security=secured,
            ),
        },
    }

    paths: dict[str, Any] = {
        "/api/register": {
            "post": op(
                "Register a user",
                {
                    "201": _json(
                        {"type": "object", "properties": {"user_id": {"type": "integer"}}}
                    ),
                    "400": _error("bad email or password"),
                    "409": _error("email taken"),
                    "429": _error("too many registrations from this address (Retry-After)"),
                    "503": _error("too many password hashes at once (Retry-After)"),
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": credentials}},
                },
            )
        },
        "/api/login": {
            "post": op(
                "Log in and get a token",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "token": {"type": "string", "description": "'Bearer <jwt>'"},
                                "access_token": {"type": "string"},
                                "token_type": {"const": "Bearer"},
                                "expires_in": {"type": "integer"},
                            },
                        }
                    ),
                    "400": _error("malformed request"),
                    "401": _error("invalid email or password"),
                    "429": _error("too many failed logins for the email or address (Retry-After)"),
                    "503": _error("too many password hashes at once (Retry-After)"),
                },
                requestBody={"required": True, "content": {"application/json": {"schema": login}}},
            )
        },
        "/api/logout": {
            "post": op(
                "Revoke the token of this request (the user's other tokens stay valid)",
                {"204": {"description": "revoked; its open event streams end"}, **common},
                security=secured,
            )
        },
        "/api/password": {
            "post": op(
                "Change the password; every token issued before is revoked, this one too",
                {
                    "204": {"description": "changed; log in again with the new password"},
                    "400": _error("invalid new password"),
                    "401": _error("missing, invalid or revoked token, or wrong current password"),
                    "429": _error("too many wrong passwords for the account (Retry-After)"),
                    "503": _error("too many password hashes at once (Retry-After)"),
                },
                security=secured,
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": password_change}},
                },
            )
        },
        "/api/tasks": {
            "post": op(
                "Create a task",
                {
                    "201": _json(task, "created (or replayed for a repeated Idempotency-Key)"),
                    "400": _error("invalid type, payload, run_at, max_retries or priority"),
                    "409": _error("Idempotency-Key reused with a different request"),
                    "413": _error("body too large"),
                    **common,
                },
                security=secured,
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 255},
                    }
                ],
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/TaskCreate"}}
                    },
                },
            ),
            "get": op(
                "List your tasks, newest first",
                {
                    "200": _json(
                        {"type": "array", "items": task}, "a page; Link rel=next for more"
                    ),
                    "400": _error("bad filter, limit or cursor"),
                    **common,
                },
                security=secured,
                parameters=[
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"$ref": "#/components/schemas/TaskStatus"},
                    },
                    {"name": "type", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
            ),
        },
        "/api/tasks/batch": {
            "post": op(
                "Create up to 1000 tasks, all or nothing",
                {
                    "201": _json({"type": "array", "items": task}),
                    "400": _error("an invalid item (details name its index); nothing created"),
                    **common,
                },
                security=secured,
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["tasks"],
                                "properties": {
                                    "tasks": {
                                        "type": "array",
                                        "minItems": 1,
                                        "maxItems": 1000,
                                        "items": {"$ref": "#/components/schemas/TaskCreate"},
                                    }
                                },
                            }
                        }
                    },
                },
            )
        },
        "/api/tasks/{task_id}": {
            "parameters": [task_id_param],
            "get": op("Get a task", {"200": _json(task), **not_found, **common}, security=secured),
            "patch": op(
                "Change a waiting task",
                {"200": _json(task), **not_found, "409": _error("not waiting"), **common},
                security=secured,
                requestBody={"required": True, "content": {"application/json": {"schema": patch}}},
            ),
            "delete": op(
                "Delete a finished task and its history",
                {
                    "204": {"description": "deleted"},
                    **not_found,
                    "409": _error("not finished"),
                    **common,
                },
                security=secured,
            ),
        },
        "/api/tasks/{task_id}/history": {
            "parameters": [task_id_param],
            "get": op(
                "A task's history, oldest first",
                {
                    "200": _json(
                        {"type": "array", "items": {"$ref": "#/components/schemas/HistoryEvent"}}
                    ),
                    **not_found,
                    **common,
                },
                security=secured,
            ),
        },
        "/api/tasks/{task_id}/dependencies": {
            "parameters": [task_id_param],
            "get": op(
                "What a task waits for, and what waits for it",
                {"200": _json(links), **not_found, **common},
                security=secured,
            ),
        },
        "/api/tasks/{task_id}/cancel": {
            "parameters": [task_id_param],
            "post": op(
                "Cancel a waiting or running task",
                {"200": _json(task), **not_found, "409": _error("already finished"), **common},
                security=secured,
            ),
        },
        "/api/tasks/{task_id}/retry": {
            "parameters": [task_id_param],
            "post": op(
                "Re-queue a failed or cancelled task",
                {
                    "200": _json(task),
                    **not_found,
                    "409": _error("not failed or cancelled"),
                    **common,
                },
                security=secured,
            ),
        },
        "/api/files": {
            "post": op(
                "Upload a file to your file area",
                {
                    "201": _json(file_info, "stored; Location is its download URL"),
                    "400": _error("bad file name, malformed form or missing 'file' field"),
                    "409": _error("the name is taken (see on_conflict)"),
                    "413": _error("the file is larger than upload_max_bytes"),
                    "415": _error("not multipart/form-data"),
                    **common,
                },
                security=secured,
                parameters=[
                    {
                        "name": "on_conflict",
                        "in": "query",
                        "description": "'error' (409 on a taken name) or 'rename' "
                        "(store as name-2.ext, name-3.ext, ...)",
                        "schema": {"enum": ["error", "rename"], "default": "error"},
                    }
                ],
                requestBody={
                    "required": True,
                    "description": "The file streams to disk, so an optional 'name' field "
                    "must come before the 'file' part, and nothing after it.",
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": {
                                    "name": {
                                        "type": "string",
                                        "description": "stored name, instead of the "
                                        "upload's filename; a plain file name",
                                    },
                                    "file": {"type": "string", "format": "binary"},
                                },
                            },
                            "encoding": {"file": {"contentType": "application/octet-stream"}},
                        }
                    },
                },
            ),
            "get": op(
                "List your files, by name",
                {"200": _json({"type": "array", "items": file_info}), **common},
                security=secured,
            ),
        },
        "/api/files/{name}": {
            "parameters": [file_name_param],
            "get": op(
                "Download a file (always as an attachment)",
                {
                    "200": {
                        "description": "the file's bytes",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    **file_not_found,
                    **common,
                },
                security=secured,
            ),
            "delete": op(
                "Delete a file",
                {"204": {"description": "deleted"}, **file_not_found, **common},
                security=secured,
            ),
        },
        **schedule_paths,
        "/healthz": {"get": op("Liveness", {"200": _json({"type": "object"})})},
        "/readyz": {
            "get": op(
                "Readiness: Postgres, and RabbitMQ when configured",
                {"200": _json({"type": "object"}), "503": _error("a dependency is down")},
            )
        },
        "/api/openapi.json": {"get": op("This document", {"200": _json({"type": "object"})})},
        "/metrics": {
            "get": op(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        # ----- live events and the dashboard (taskflow/api/events.py, dashboard.py)
        "/api/events": {
            "get": op(
                "Live status changes of all your tasks (Server-Sent Events)",
                {
                    "200": {
                        "description": "An endless text/event-stream: `event: task` per change "
                        "(its `id:` is the task_history id), `event: ready` once live, "
                        "`event: resync` when too much was missed (reload, then carry on), "
                        "and `: ping` comments every 15 s. Delivery is at least once: drop ids "
                        "already seen.",
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string"},
                                # OpenAPI 3.1 cannot describe the events (3.2 adds
                                # itemSchema): the data of an `event: task`.
                                "x-event-data": {
                                    "type": "object",
                                    "properties": {
                                        "id": {"type": "integer"},
                                        "task_id": {"type": "string", "format": "uuid"},
                                        "from_status": {"type": ["string", "null"]},
                                        "status": {"$ref": "#/components/schemas/TaskStatus"},
                                        "event": {"type": "string"},
                                        "attempt": {"type": "integer"},
                                        "at": {"type": "string", "format": "date-time"},
                                    },
                                },
                            }
                        },
                    },
                    "400": _error("malformed Last-Event-ID"),
                    "429": _error("too many open event streams for this user"),
                    **common,
                },
                security=secured,
                parameters=[
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "description": "resume after this event id (sent by EventSource "
                        "when it reconnects)",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    },
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "description": "as Last-Event-ID, for a first EventSource connection; "
                        "the header wins",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    {
                        "name": "access_token",
                        "in": "query",
                        "description": "the token, for EventSource, which cannot send "
                        "headers; only on the two event routes. A URL is logged in more "
                        "places than a header: send the header when you can.",
                        "schema": {"type": "string"},
                    },
                ],
            )
        },
        "/api/tasks/{task_id}/events": {
            "parameters": [task_id_param],
            "get": op(
                "Live status changes of one task (Server-Sent Events)",
                {
                    "200": {
                        "description": "As GET /api/events, for this task only.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": _error("malformed id or Last-Event-ID"),
                    "404": _error("no such task (or not yours)"),
                    "429": _error("too many open event streams for this user"),
                    **common,
                },
                security=secured,
                parameters=[
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    {"name": "last_event_id", "in": "query", "schema": {"type": "integer"}},
                    {"name": "access_token", "in": "query", "schema": {"type": "string"}},
                ],
            ),
        },
        "/api/admin/overview": {
            "get": op(
                "Operator overview: queue depth, throughput, workers, stuck and failed tasks",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "generated_at": {"type": "string", "format": "date-time"},
                                "queue": {
                                    "type": "object",
                                    "additionalProperties": {"type": "integer"},
                                    "description": "tasks per status",
                                },
                                "throughput": {
                                    "type": "object",
                                    "description": "attempts ended per minute, last hour",
                                },
                                "workers": {"type": "object"},
                                "stuck": {"type": "object"},
                                "recent_failures": {"type": "object"},
                            },
                        }
                    ),
                    "403": _error("not an admin (users.is_admin)"),
                    **common,
                },
                security=secured,
            )
        },
        "/": {
            "get": op(
                "The web dashboard",
                {"200": {"description": "HTML", "content": {"text/html": {}}}},
            )
        },
        "/dashboard/{name}": {
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": op(
                "The dashboard's scripts, stylesheet and icon",
                {"200": {"description": "a static file"}, "404": _error("no such file")},
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "TaskFlow", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


@blueprint.get("/api/openapi.json")
async def openapi_document() -> Response:
    api = config()
    return json_response(build_document(api.registry))
