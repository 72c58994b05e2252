"""Creating tasks: validate against the registry, resolve ``depends_on``,
then insert (with the creation limits checked in the inserting statement).

Shared by the REST API, the batch endpoint and the Python API (``Enqueuer``),
so every way in applies the same rules. Nothing is published here: the row is
committed with its history row and a NOTIFY (by trigger), and who runs next
is decided in Postgres (taskflow/dispatcher.py). A task that got its answer is
durable, whatever happens next.

With ``group_inserts`` (the API), single creates that arrive in the same
moment share one INSERT, one commit and one NOTIFY: each caller still returns
only after its row is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError

from taskflow.batching import Batcher
from taskflow.dependencies import resolve
from taskflow.errors import ValidationFailed
from taskflow.handlers import Registry, TaskType
from taskflow.metrics import TASKS_CREATED
from taskflow.models import TaskCreate, describe_validation_error
from taskflow.store.pool import DATABASE_ERRORS, JsonText, Record, uuid_of_bytes
from taskflow.store.tasks import UNLIMITED, Admission, NewTask, TaskStore

log = logging.getLogger(__name__)


_RANDOM_BITS = 74  # rand_a (12) and rand_b (62) of RFC 9562
_last_millis, _last_random = 0, 0


def new_task_ids(count: int) -> list[UUID]:
    """UUIDv7s: time-ordered, so new rows land at the right edge of the
    primary key index instead of on random pages. Within one process each id
    is greater than the one before, even in the same millisecond (RFC 9562's
    monotonic random), so the items of a batch sort in their order.

    One read of the random source for the whole batch, and UUIDs made by
    uuid_of_bytes: uuid.UUID(int=...) alone took 1.4 us of the 2.4 an id
    cost, in a bulk create's ~30 us a task.
    """
    global _last_millis, _last_random
    millis = time.time_ns() // 1_000_000
    entropy = os.urandom(10 * count)
    ids: list[UUID] = []
    for start in range(0, 10 * count, 10):
        random = int.from_bytes(entropy[start : start + 10], "big") >> (80 - _RANDOM_BITS)
        if millis <= _last_millis:
            millis = _last_millis
            if random <= _last_random:
                random = _last_random + 1
                if random >> _RANDOM_BITS:  # 2^74 ids in one millisecond: borrow the next
                    millis, random = millis + 1, 0
        _last_millis, _last_random = millis, random
        value = (
            (millis & ((1 << 48) - 1)) << 80
            | 0x7 << 76  # version 7
            | (random >> 62) << 64  # rand_a
            | 0x2 << 62  # RFC 4122 variant
            | (random & ((1 << 62) - 1))  # rand_b
        )
        ids.append(uuid_of_bytes(value.to_bytes(16, "big")))
    return ids


def new_task_id() -> UUID:
    """One UUIDv7 (see new_task_ids)."""
    return new_task_ids(1)[0]


def _path(prefix: str, field: str) -> str:
    return f"{prefix}.{field}" if prefix else field


def check_run_at(run_at: datetime | None, field: str = "run_at") -> None:
    """Refuse an instant with no UTC form (0001-01-01T00:00+01:00): asyncpg
    cannot send it, and it would otherwise be a 500 at the INSERT."""
    if run_at is None:
        return
    try:
        run_at.astimezone(UTC)
    except OverflowError:
        raise ValidationFailed(
            "run_at is out of range",
            details=[{"field": field, "message": "must fall within years 1 to 9999 in UTC"}],
        ) from None


def _find_nul(value: Any, path: str) -> str | None:
    """The path of the first string (or key) holding U+0000, if any.

    Iterative: a plugin's free-form payload may nest deeper than Python recurses.
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return where
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                child_path = f"{where}.{key}" if where else str(key)
                if "\x00" in str(key):
                    return child_path
                stack.append((child, child_path))
        elif isinstance(item, list):
            for index in range(len(item) - 1, -1, -1):
                stack.append((item[index], f"{where}.{index}" if where else str(index)))
    return None


# Tasks per statement of a large create_many. Smaller parts overlap more of
# the validation with Postgres's work, but each statement has its own fixed
# cost (a round trip, the statement trigger, the admission check).
INSERT_PART_SIZE = 250


class Enqueuer:
    def __init__(
        self,
        store: TaskStore,
        registry: Registry,
        *,
        reject_past_run_at: bool = False,
        group_inserts: bool = False,
        admission: Admission = UNLIMITED,
    ) -> None:
        self.store = store
        self.registry = registry
        self.reject_past_run_at = reject_past_run_at
        # The creation limits (SPEC §8), checked in the inserting statement.
        self.admission = admission
        self._inserter: Batcher[tuple[int, NewTask], Record] | None = None
        self._inserter_task: asyncio.Task[None] | None = None
        if group_inserts:
            self._inserter = Batcher(self._insert_together)

    async def _insert_together(self, items: list[tuple[int, NewTask]]) -> list[Record]:
        return await self.store.insert_tasks_of_users(items, admission=self.admission)

    def start(self) -> None:
        """Start grouping inserts (with ``group_inserts``); ``close`` stops it."""
        if self._inserter is not None and self._inserter_task is None:
            self._inserter_task = asyncio.create_task(self._inserter.run(), name="enqueue-inserts")

    async def close(self) -> None:
        task, self._inserter_task = self._inserter_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._inserter is not None:
            self._inserter.fail_pending(ConnectionError("the enqueuer was closed"))

    def validate(
        self, request: TaskCreate, *, prefix: str = "", task_id: UUID | None = None
    ) -> NewTask:
        """Check the type, payload and run_at; raise ValidationFailed with field
        paths (under ``prefix``, e.g. ``tasks[3]``)."""
        task_type = self.registry.get(request.type)
        if task_type is None:
            raise ValidationFailed(
                f"unknown task type {request.type!r}",
                details=[
                    {
                        "field": _path(prefix, "type"),
                        "message": "must be one of: " + ", ".join(self.registry.names()),
                    }
                ],
            )
        payload = self.payload_json(task_type, request.payload, prefix=_path(prefix, "payload"))
        run_at = request.run_at
        if run_at is not None:
            check_run_at(run_at, _path(prefix, "run_at"))
            if self.reject_past_run_at and run_at < datetime.now(UTC):
                raise ValidationFailed(
                    "run_at is in the past",
                    details=[
                        {"field": _path(prefix, "run_at"), "message": "must not be in the past"}
                    ],
                )
        return NewTask(
            id=new_task_id() if task_id is None else task_id,
            type=request.type,
            payload=payload,
            priority=request.priority,
            max_retries=request.max_retries,
            run_at=run_at,
        )

    def validate_payload(
        self, type_name: str, payload: dict[str, Any], *, prefix: str = "payload"
    ) -> dict[str, Any]:
        """The payload as its type's model normalises it (see payload_json)."""
        task_type = self.registry.get(type_name)
        if task_type is None:
            raise ValidationFailed(f"task type {type_name!r} is not registered here")
        # str(): orjson reads only exact str, not the JsonText subclass.
        normalised: dict[str, Any] = orjson.loads(
            str(self.payload_json(task_type, payload, prefix=prefix))
        )
        return normalised

    @staticmethod
    def payload_json(task_type: TaskType, payload: dict[str, Any], *, prefix: str) -> JsonText:
        """The payload checked by its type's model, as the JSON text stored."""
        try:
            # Strict, in JSON mode: payloads arrive and are stored as JSON, so
            # "1" is not a number and 1 is not true (the seed's typed decoding
            # refused them too), while strings still become dates or UUIDs.
            model = task_type.payload_model.model_validate_json(orjson.dumps(payload), strict=True)
        except orjson.JSONEncodeError as exc:
            raise ValidationFailed(
                "invalid payload", details=[{"field": prefix, "message": f"not JSON: {exc}"}]
            ) from None
        except ValidationError as exc:
            raise ValidationFailed(
                "invalid payload", details=describe_validation_error(exc, prefix)
            ) from None
        # Written once here and sent to Postgres as it is: the bulk create
        # used to build a dict and have the driver write it again.
        text = model.model_dump_json(exclude_unset=True)
        # JSON writes U+0000 as \u0000 only; the text may also hold an escaped
        # backslash before "u0000", which the exact look below tells apart.
        if "\\u0000" in text:
            nul_at = _find_nul(orjson.loads(text), prefix)
            if nul_at is not None:
                # jsonb cannot hold U+0000: refuse it here as a 400, not a 500 at INSERT.
                raise ValidationFailed(
                    "invalid payload",
                    details=[{"field": nul_at, "message": "must not contain NUL characters"}],
                )
        return JsonText(text)

    async def create(
        self, user_id: int, request: TaskCreate, *, idempotency_key: str | None = None
    ) -> tuple[Record, bool]:
        task = self.validate(request)
        if request.depends_on:
            (depends_on,) = resolve([request.depends_on], [task.id], batch=False)
            task = replace(task, depends_on=depends_on)
        request_hash = None
        if idempotency_key is not None:
            request_hash = hashlib.sha256(
                orjson.dumps(request.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
            ).hexdigest()
        if idempotency_key is None and self._inserter_task is not None and not task.depends_on:
            row, created = await self._insert_grouped(user_id, task), True
        else:
            row, created = await self.store.insert_task(
                user_id,
                task,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                admission=self.admission,
            )
        if created:
            TASKS_CREATED.labels(task.type).inc()
        return row, created

    async def _insert_grouped(self, user_id: int, task: NewTask) -> Record:
        assert self._inserter is not None
        try:
            row = await self._inserter.submit((user_id, task))
        except DATABASE_ERRORS:
            # One bad item (a user deleted meanwhile) fails the whole statement,
            # and an error here may be anybody's: each caller finds out alone.
            row = None
        if row is None:
            row, _ = await self.store.insert_task(user_id, task, admission=self.admission)
        return row

    async def create_many(self, user_id: int, requests: Sequence[TaskCreate]) -> list[Record]:
        """All or nothing: nothing is committed unless every item is valid.
        Rows in the order of ``requests``."""
        return await self._create_many(user_id, requests, ids_only=False)

    async def create_many_ids(self, user_id: int, requests: Sequence[TaskCreate]) -> list[UUID]:
        """create_many for a producer that needs only the new tasks' ids."""
        return [row["id"] for row in await self._create_many(user_id, requests, ids_only=True)]

    async def _create_many(
        self, user_id: int, requests: Sequence[TaskCreate], *, ids_only: bool
    ) -> list[Record]:
        ids = new_task_ids(len(requests))
        has_dependencies = any(item.depends_on for item in requests)
        if len(requests) > INSERT_PART_SIZE and not has_dependencies:
            rows = await self._create_in_parts(user_id, requests, ids, ids_only=ids_only)
        else:
            tasks = self._validate_items(requests, ids, range(len(requests)))
            if has_dependencies:
                resolved = resolve(
                    [item.depends_on for item in requests], [task.id for task in tasks], batch=True
                )
                tasks = [
                    replace(task, depends_on=deps)
                    for task, deps in zip(tasks, resolved, strict=True)
                ]
            rows = await self.store.insert_tasks(
                user_id, tasks, admission=self.admission, ids_only=ids_only
            )
        for type_name, count in Counter(item.type for item in requests).items():
            TASKS_CREATED.labels(type_name).inc(count)
        return rows

    async def _create_in_parts(
        self, user_id: int, requests: Sequence[TaskCreate], ids: Sequence[UUID], *, ids_only: bool
    ) -> list[Record]:
        """Each part is validated while Postgres inserts the one before it."""
        async with self.store.inserting_in_parts(
            user_id, admission=self.admission, ids_only=ids_only
        ) as parts:
            for start in range(0, len(requests), INSERT_PART_SIZE):
                end = min(start + INSERT_PART_SIZE, len(requests))
                await parts.send(self._validate_items(requests, ids, range(start, end)))
            return await parts.rows()

    def _validate_items(
        self, requests: Sequence[TaskCreate], ids: Sequence[UUID], indexes: range
    ) -> list[NewTask]:
        """Items of a batch, named tasks[i] in errors, with the ids made for them."""
        return [
            self.validate(requests[index], prefix=f"tasks[{index}]", task_id=ids[index])
            for index in indexes
        ]
