"""The one table from errors to HTTP responses, and the handlers that use it."""

from __future__ import annotations

import logging
import math
from typing import Any

from quart import Quart, Response, g
from werkzeug.exceptions import HTTPException

from taskflow.api.responses import json_response
from taskflow.errors import (
    Conflict,
    EmailTaken,
    Forbidden,
    InvalidCredentials,
    InvalidTransition,
    LimitExceeded,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QuotaExceeded,
    StoreUnavailable,
    TaskFlowError,
    Unauthorized,
    ValidationFailed,
)
from taskflow.store.pool import CONNECTION_ERRORS

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[TaskFlowError], int] = {
    ValidationFailed: 400,
    Unauthorized: 401,
    InvalidCredentials: 401,
    Forbidden: 403,
    NotFound: 404,
    EmailTaken: 409,
    InvalidTransition: 409,
    Conflict: 409,
    PayloadTooLarge: 413,
    LimitExceeded: 429,
    Overloaded: 503,
    StoreUnavailable: 503,
}

HTTP_MESSAGES = {
    404: "no such endpoint",
    405: "method not allowed on this endpoint",
    413: "request body too large",
    415: "unsupported media type",
}


def status_for(error: TaskFlowError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_body(message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if details is not None:
        body["details"] = details
    return body


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(TaskFlowError)
    async def _taskflow_error(error: TaskFlowError) -> Response:
        status = status_for(error)
        if status >= 500:
            log.error("request failed", extra={"event": "request_error", "error": error.message})
        body = error_body(error.message, error.details)
        retry_after: float | None = None
        if isinstance(error, LimitExceeded):
            body["limit"] = error.limit
            retry_after = error.retry_after_seconds
        elif isinstance(error, QuotaExceeded):
            body["limit"] = error.limit  # no Retry-After: waiting frees no room
        elif isinstance(error, Overloaded):
            retry_after = error.retry_after_seconds
        response = json_response(body, status)
        if retry_after is not None:
            # Whole seconds, rounded up: a client that waits that long is past it.
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="taskflow"'
        return response

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        response = json_response(
            error_body(HTTP_MESSAGES.get(status, error.description or error.name)), status
        )
        if status == 405 and error.get_headers():
            for key, value in error.get_headers():
                if key.lower() == "allow":
                    response.headers["Allow"] = value
        return response

    async def _database_unreachable(error: Exception) -> Response:
        log.warning(
            "database unavailable",
            extra={"event": "store_unavailable", "error": repr(error)},
        )
        response = json_response(error_body("the database is unavailable; try again"), 503)
        response.headers["Retry-After"] = "1"
        return response

    for connection_error in CONNECTION_ERRORS:
        app.register_error_handler(connection_error, _database_unreachable)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        request_id = getattr(g, "request_id", None)
        log.error(
            "unhandled error",
            exc_info=error,
            extra={"event": "unhandled_error", "request_id": request_id},
        )
        return json_response({"error": "internal error", "request_id": request_id}, 500)
