"""GET /api/limits: the caller's limits (SPEC §8) and how much of each they
use now, so a client can slow down before it meets a 429 or a 413.

Each limit is the caller's own where an operator set one (``user_limits``),
else the default of the settings file; a limit of 0 in either means none, and is
shown as ``"limit": null`` (and ``"remaining": null``). The use is counted
as the limit counts it when it is enforced (taskflow.store.limits); the file
area's is measured on disk, on the file I/O threads.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response, current_app

from taskflow.api import config, services
from taskflow.api.files import FILE_IO_EXTENSION
from taskflow.api.responses import json_response
from taskflow.api.route_docs import documented
from taskflow.api.security import current_user_id, require_user
from taskflow.files import UserFiles
from taskflow.files.quota import effective_quota

blueprint = Blueprint("limits", __name__)

DEFAULT_WEIGHT = 1


class LimitUse(BaseModel):
    """One limit and the caller's use of it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int | None = Field(description="The most allowed; null: no limit.")
    used: int = Field(ge=0, description="How much of it is in use now.")
    remaining: int | None = Field(
        description="limit - used, never below 0; null: no limit. Use can exceed a limit "
        "that was lowered after it was reached."
    )

    @classmethod
    def of(cls, limit: int | None, used: int) -> LimitUse:
        return cls(
            limit=limit, used=used, remaining=None if limit is None else max(limit - used, 0)
        )


class Limits(BaseModel):
    """Each limit under its settings key, as a 429's ``limit`` names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_max_active_tasks: LimitUse = Field(
        description="Unfinished tasks (blocked, postponed, queued, processing, retrying); "
        "creating more answers 429."
    )
    user_max_running: LimitUse = Field(
        description="Tasks processing or on their way to a worker; more wait, queued."
    )
    email_per_user_per_minute: LimitUse = Field(
        description="send_email tasks started in the last minute; more wait, queued "
        "(they never fail for it)."
    )
    email_per_user_per_day: LimitUse = Field(
        description="send_email tasks created this UTC day, deleted ones included; "
        "creating more answers 429 until the day ends."
    )
    user_files_max_bytes: LimitUse = Field(
        description="Bytes in the caller's file area; an upload past it answers 413, a "
        "task's output past it fails the task."
    )
    user_max_schedules: LimitUse = Field(description="Schedules; creating more answers 429.")


class LimitsResponse(BaseModel):
    """The body of GET /api/limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: int = Field(
        ge=1,
        description="The caller's fair share: when users compete for free worker slots, "
        "each takes its weight in tasks at every turn (default 1).",
    )
    limits: Limits


def _limit(override: int | None, default: int) -> int | None:
    # The one rule of every limit, the file quota's among them: the user's
    # own (user_limits), else the default (the settings file); 0 in either: none.
    return effective_quota(override, default)


async def _file_bytes_used(files: UserFiles) -> int:
    # On the file I/O threads, as every other disk access of the API: a slow
    # disk then holds up file requests only, not the event loop.
    executor: Executor = current_app.extensions[FILE_IO_EXTENSION]
    return await asyncio.get_running_loop().run_in_executor(executor, files.used_bytes)


@blueprint.get("/api/limits")
@documented(response=LimitsResponse)
@require_user
async def get_limits() -> Response:
    settings = config().settings
    user_id = current_user_id()
    row = await services().limits.select_limits_and_use(user_id)
    file_bytes = await _file_bytes_used(UserFiles(settings.base_file_path, user_id))

    response = LimitsResponse(
        weight=row["weight"] or DEFAULT_WEIGHT,
        limits=Limits(
            user_max_active_tasks=LimitUse.of(
                _limit(row["max_active_tasks"], settings.user_max_active_tasks),
                row["active_tasks"],
            ),
            user_max_running=LimitUse.of(
                _limit(row["max_running"], settings.user_max_running), row["running_tasks"]
            ),
            email_per_user_per_minute=LimitUse.of(
                _limit(row["email_per_minute"], settings.email_per_user_per_minute),
                row["emails_last_minute"],
            ),
            email_per_user_per_day=LimitUse.of(
                _limit(row["email_per_day"], settings.email_per_user_per_day),
                row["emails_today"],
            ),
            user_files_max_bytes=LimitUse.of(
                _limit(row["files_max_bytes"], settings.user_files_max_bytes), file_bytes
            ),
            user_max_schedules=LimitUse.of(
                _limit(row["max_schedules"], settings.user_max_schedules), row["schedules"]
            ),
        ),
    )
    return json_response(response.model_dump(mode="json"))
