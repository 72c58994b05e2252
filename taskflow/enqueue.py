"""Creating tasks: validate against the registry, insert, then ring the broker.

Shared by the REST API, the batch endpoint and the Python API (``Enqueuer``),
so every way in applies the same rules. The row is committed (with its history
row and a NOTIFY, by trigger) before any message is published: a crash between
the two leaves a queued row that the scheduler republishes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError

from taskflow.broker import Broker
from taskflow.errors import ValidationFailed
from taskflow.handlers import Registry
from taskflow.models import TaskCreate, TaskStatus, describe_validation_error
from taskflow.store import NewTask, Record, Store

log = logging.getLogger(__name__)


def new_task_id() -> UUID:
    """A UUIDv7: time-ordered, so new rows land at the right edge of the
    primary key index instead of on random pages."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80
    value |= int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return UUID(int=value)


class Enqueuer:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        broker: Broker | None,
        *,
        reject_past_run_at: bool = False,
    ) -> None:
        self.store = store
        self.registry = registry
        self.broker = broker
        self.reject_past_run_at = reject_past_run_at

    def validate(self, request: TaskCreate, *, prefix: str = "") -> NewTask:
        """Check the type, payload and run_at; raise ValidationFailed with field paths."""
        dot = f"{prefix}." if prefix else ""
        task_type = self.registry.get(request.type)
        if task_type is None:
            raise ValidationFailed(
                f"unknown task type {request.type!r}",
                details=[
                    {
                        "field": f"{dot}type",
                        "message": "must be one of: " + ", ".join(self.registry.names()),
                    }
                ],
            )
        payload = self.validate_payload(request.type, request.payload, prefix=f"{dot}payload")
        if (
            self.reject_past_run_at
            and request.run_at is not None
            and request.run_at < datetime.now(UTC)
        ):
            raise ValidationFailed(
                "run_at is in the past",
                details=[{"field": f"{dot}run_at", "message": "must not be in the past"}],
            )
        return NewTask(
            id=new_task_id(),
            type=request.type,
            payload=payload,
            priority=request.priority,
            max_retries=request.max_retries,
            run_at=request.run_at,
        )

    def validate_payload(
        self, type_name: str, payload: dict[str, Any], *, prefix: str = "payload"
    ) -> dict[str, Any]:
        task_type = self.registry.get(type_name)
        if task_type is None:
            raise ValidationFailed(f"task type {type_name!r} is not registered here")
        try:
            model = task_type.payload_model.model_validate(payload)
        except ValidationError as exc:
            raise ValidationFailed(
                "invalid payload", details=describe_validation_error(exc, prefix)
            ) from None
        normalised: dict[str, Any] = model.model_dump(mode="json", exclude_unset=True)
        return normalised

    async def create(
        self, user_id: int, request: TaskCreate, *, idempotency_key: str | None = None
    ) -> tuple[Record, bool]:
        task = self.validate(request)
        request_hash = None
        if idempotency_key is not None:
            request_hash = hashlib.sha256(
                orjson.dumps(request.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
            ).hexdigest()
        row, created = await self.store.insert_task(
            user_id, task, idempotency_key=idempotency_key, request_hash=request_hash
        )
        if created and row["status"] == TaskStatus.QUEUED:
            await self.publish([row["id"]])
        return row, created

    async def create_many(self, user_id: int, requests: Sequence[TaskCreate]) -> list[Record]:
        """All or nothing: every item is validated before anything is written."""
        tasks = [self.validate(item, prefix=f"tasks[{i}]") for i, item in enumerate(requests)]
        rows = await self.store.insert_tasks(user_id, tasks)
        await self.publish([row["id"] for row in rows if row["status"] == TaskStatus.QUEUED])
        return rows

    async def publish(self, task_ids: Sequence[UUID]) -> bool:
        if self.broker is None or not task_ids:
            return True
        return await self.broker.publish_ids(task_ids)
