"""The handler registry: task type name -> payload model + async handler.

Handlers never touch the database or the broker. They get a validated payload
and a :class:`TaskContext`, and return a JSON-able result or raise
``TransientError`` / ``PermanentError`` (any other exception counts as transient).

Extra types come from the ``taskflow.task_types`` entry point group or from the
``TASKFLOW_PLUGINS=module:object[,module:object]`` setting. The object may be a
:class:`TaskType`, an iterable of them, or a callable taking the registry.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import BaseModel

from taskflow.errors import ConfigError
from taskflow.models import TASK_TYPE_PATTERN

if TYPE_CHECKING:
    from taskflow.config import Settings
    from taskflow.files import UserFiles

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "taskflow.task_types"

JSONValue = Any
Handler = Callable[[Any, "TaskContext"], Awaitable[JSONValue]]


@dataclass(frozen=True)
class TaskContext:
    """What a handler may know and do beyond its payload."""

    task_id: UUID
    user_id: int
    task_type: str
    attempt: int
    max_retries: int
    settings: Settings
    files: UserFiles
    previous_result: JSONValue = None
    # Persists a partial result for this attempt, fenced by its claim, so a
    # later attempt can resume (e.g. "email already sent", "3 of 5 files saved").
    save_progress: Callable[[JSONValue], Awaitable[None]] = field(repr=False, default=None)  # type: ignore[assignment]
    # No retry follows a failure of this attempt: the retry rule's answer
    # (taskflow.retries), read from the claim rather than restated here.
    is_last_attempt: bool = False
    # The results of the tasks this one waited for (depends_on), by task id,
    # oldest first: every one of them is done.
    dependencies: Mapping[UUID, JSONValue] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskType:
    name: str
    payload_model: type[BaseModel]
    handler: Handler
    timeout_seconds: float | None = None  # overrides task_timeout_seconds from config
    description: str = ""


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, TaskType] = {}

    def register(self, task_type: TaskType) -> None:
        if not TASK_TYPE_PATTERN.fullmatch(task_type.name):
            raise ConfigError(f"task type {task_type.name!r}: names are [a-z][a-z0-9_]{{0,63}}")
        existing = self._types.get(task_type.name)
        if existing is not None and existing != task_type:
            raise ConfigError(f"task type {task_type.name!r} is registered twice")
        self._types[task_type.name] = task_type

    def get(self, name: str) -> TaskType | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[TaskType]:
        return iter(self._types[name] for name in self.names())

    def timeout_for(self, name: str, settings: Settings) -> float:
        task_type = self._types[name]
        if task_type.timeout_seconds is not None and name not in settings.task_timeout_seconds:
            return task_type.timeout_seconds
        return settings.timeout_for(name)

    def load_plugin(self, reference: str) -> None:
        module_name, _, attribute = reference.partition(":")
        try:
            module = importlib.import_module(module_name)
            target: Any = module
            for part in attribute.split(".") if attribute else ():
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"TASKFLOW_PLUGINS: cannot load {reference!r}: {exc}") from None
        self._add(target, reference)

    def _add(self, target: Any, source: str) -> None:
        if isinstance(target, TaskType):
            self.register(target)
        elif callable(target) and not isinstance(target, type):
            target(self)
        elif isinstance(target, Iterable):
            for item in target:
                self._add(item, source)
        else:
            raise ConfigError(f"{source}: expected a TaskType, an iterable of them or a callable")


def builtin_task_types() -> list[TaskType]:
    from taskflow.handlers import download_files, process_image, send_email

    return [send_email.TASK_TYPE, process_image.TASK_TYPE, download_files.TASK_TYPE]


def build_registry(settings: Settings) -> Registry:
    """Built-in types, then entry points, then TASKFLOW_PLUGINS."""
    registry = Registry()
    for task_type in builtin_task_types():
        registry.register(task_type)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            registry._add(entry_point.load(), f"entry point {entry_point.name}")
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"entry point {entry_point.name}: {exc}") from None
    for reference in settings.plugins:
        registry.load_plugin(reference)
    return registry
