"""One attempt: validate the payload, run the handler under its timeout, and say
how the attempt ended.

How an ending becomes the task's next status (done, retrying with backoff, or
failed) is not decided here but by the one retry rule (:mod:`taskflow.retries`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from taskflow.errors import PermanentError, TransientError
from taskflow.handlers import TaskContext, TaskType
from taskflow.metrics import HANDLER_SECONDS, Children

log = logging.getLogger(__name__)
_HANDLER_SECONDS = Children(HANDLER_SECONDS)


class Ending(StrEnum):
    DONE = "done"
    """The handler returned: the task is done."""

    PERMANENT = "permanent"
    """Retrying cannot help: the task fails whatever retries are left."""

    TRANSIENT = "transient"
    """It may pass: the task retries while retries are left."""


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    ending: Ending
    result: Any = None
    has_result: bool = False
    error: str | None = None
    # A handler's own delay for the next attempt (Retry-After), else None.
    delay_seconds: float | None = None


def _failed(
    ending: Ending, message: str, partial: Any = None, delay: float | None = None
) -> AttemptEnd:
    return AttemptEnd(
        ending, result=partial, has_result=partial is not None, error=message, delay_seconds=delay
    )


async def run_attempt(
    task_type: TaskType | None,
    type_name: str,
    payload: Any,
    make_context: Callable[[], TaskContext],
    *,
    timeout_seconds: float,
    observe_seconds: Callable[[float], None],
    log_fields: dict[str, Any],
) -> AttemptEnd:
    """Run the handler; every way it can end becomes an :class:`AttemptEnd`.
    Cancellation (a cancel, a lost lease, shutdown) propagates."""
    if task_type is None:
        return _failed(Ending.PERMANENT, f"no handler registered for task type {type_name!r}")
    try:
        validated = task_type.payload_model.model_validate(payload)
    except ValidationError as exc:
        return _failed(Ending.PERMANENT, f"invalid payload: {exc.errors(include_url=False)}")
    context = make_context()
    started = time.perf_counter()
    # Built only when wanted: two dicts a task are ~1 µs of a no-op task's ~60.
    debug = log.isEnabledFor(logging.DEBUG)
    if debug:
        log.debug("task started", extra={**log_fields, "event": "task_started"})
    deadline = asyncio.timeout(timeout_seconds)
    try:
        async with deadline:
            try:
                result = await task_type.handler(validated, context)
            finally:
                seconds = time.perf_counter() - started
                _HANDLER_SECONDS(type_name).observe(seconds)
                observe_seconds(seconds)
    except TimeoutError as exc:
        if deadline.expired():
            return _failed(Ending.TRANSIENT, f"timed out after {timeout_seconds:g}s")
        return _failed(Ending.TRANSIENT, f"TimeoutError: {exc}")
    except PermanentError as exc:
        return _failed(Ending.PERMANENT, exc.message, exc.partial_result)
    except TransientError as exc:
        return _failed(Ending.TRANSIENT, exc.message, exc.partial_result, exc.delay_seconds)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a handler bug: retried, and logged once here
        log.warning(
            "handler raised",
            exc_info=exc,
            extra={**log_fields, "event": "task_error", "error": repr(exc)},
        )
        return _failed(Ending.TRANSIENT, f"{type(exc).__name__}: {exc}")
    if debug:
        log.debug(
            "task finished",
            extra={**log_fields, "event": "task_done", "seconds": time.perf_counter() - started},
        )
    return AttemptEnd(Ending.DONE, result=result, has_result=True)
