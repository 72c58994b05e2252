"""The task model: states, the one transition table, and the payload models.

The migration ``db/migrations/0001_initial.sql`` declares the same states
(``task_status``) and the same pairs (``task_transitions``); a test checks that
the database and this module agree.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from taskflow.schedules import (
    CRON_MAX_LENGTH,
    DEFAULT_TIMEZONE,
    check_timezone,
    normalise_cron,
)


class TaskStatus(StrEnum):
    BLOCKED = "blocked"
    """Waits for its dependencies (``depends_on``). Queued (or postponed, by
    ``run_at``) in the transaction that finishes the last of them; cancelled,
    naming it, when one fails for good, is cancelled or deleted."""

    POSTPONED = "postponed"
    """Waiting for ``run_at``. The scheduler moves it to ``queued`` once due."""

    QUEUED = "queued"
    """Ready to run. A worker moves it to ``processing`` with a guarded claim."""

    PROCESSING = "processing"
    """Claimed by one worker under a lease. That worker finishes it (``done``,
    ``retrying``, ``failed``) or hands it back (``queued``) at shutdown; the
    scheduler's rescuer moves it to ``retrying``/``failed`` once
    ``lease_expires_at`` has passed; a cancel moves it to ``cancelled``."""

    RETRYING = "retrying"
    """Failed an attempt and waits for its backoff (``run_at``). The scheduler
    moves it to ``queued`` once due."""

    DONE = "done"
    """Finished successfully. Terminal."""

    FAILED = "failed"
    """Out of retries or failed permanently. Terminal; a manual retry re-queues it."""

    CANCELLED = "cancelled"
    """Cancelled by its owner or an operator. Terminal; a manual retry re-queues it."""


S = TaskStatus

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.BLOCKED: frozenset({S.QUEUED, S.POSTPONED, S.CANCELLED}),
    S.POSTPONED: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.PROCESSING, S.CANCELLED}),
    S.PROCESSING: frozenset({S.DONE, S.RETRYING, S.FAILED, S.QUEUED, S.CANCELLED}),
    S.RETRYING: frozenset({S.QUEUED, S.CANCELLED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
}

TERMINAL: frozenset[TaskStatus] = frozenset({S.DONE, S.FAILED, S.CANCELLED})
CANCELLABLE: frozenset[TaskStatus] = frozenset(
    s for s, targets in TRANSITIONS.items() if S.CANCELLED in targets
)
EDITABLE: frozenset[TaskStatus] = frozenset({S.POSTPONED, S.QUEUED, S.RETRYING})
RETRYABLE: frozenset[TaskStatus] = frozenset(s for s in TERMINAL if S.QUEUED in TRANSITIONS[s])


def can_transition(source: TaskStatus, target: TaskStatus) -> bool:
    return target in TRANSITIONS[source]


MAX_RETRIES_LIMIT = 10
DEFAULT_MAX_RETRIES = 3
PRIORITY_MIN, PRIORITY_MAX = -100, 100
TASK_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

# A plain file name inside a user's area: no separators, no "..", nothing hidden,
# no control characters. taskflow.files enforces the same rule on every access;
# payloads check it early so a bad name is a 400, not a failed task.
_FILE_NAME_PATTERN = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,255}$")


# "invoice\u202egnp.exe" displays as "invoiceexe.png".
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _plain(name: str) -> bool:
    return (
        bool(_FILE_NAME_PATTERN.match(name)) and not name.startswith(".") and name == name.strip()
    )


def check_file_name(name: str) -> str:
    if not _plain(name):
        raise ValueError(
            "must be a plain file name: no path separators, no leading dot, "
            "no control characters, no surrounding spaces, at most 255 characters"
        )
    # Fullwidth "\uff0e\uff0e\uff0fx" is a plain name, but NFKC (which browsers,
    # archivers and other systems apply) turns it into "../x": a path in disguise.
    normalised = unicodedata.normalize("NFKC", name)
    if normalised != name and not _plain(normalised):
        raise ValueError(f"becomes {normalised!r} under Unicode normalisation")
    if not _BIDI_CONTROLS.isdisjoint(name):
        raise ValueError("must not contain bidirectional control characters")
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise ValueError("longer than 255 bytes in UTF-8")
    return name


FileName = Annotated[str, AfterValidator(check_file_name)]


# Every break str.splitlines() knows, not only CR and LF: the email package
# splits header values on all of them.
_LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00")


def _no_line_breaks(value: str) -> str:
    if not _LINE_BREAKS.isdisjoint(value):
        raise ValueError("must not contain line breaks or NUL characters")
    return value


HeaderText = Annotated[str, Field(max_length=998), AfterValidator(_no_line_breaks)]


class PayloadModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SendEmailPayload(PayloadModel):
    """``to`` is required; at least one of ``subject``, ``body``, ``attached_files``."""

    to: EmailStr
    subject: HeaderText | None = None
    body: Annotated[str, Field(max_length=1_000_000)] | None = None
    attached_files: Annotated[list[FileName], Field(max_length=20)] | None = None

    @model_validator(mode="after")
    def _needs_content(self) -> SendEmailPayload:
        if not (self.subject or self.body or self.attached_files):
            raise ValueError("at least one of subject, body, attached_files is required")
        return self


PositiveNumber = Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]


class ProcessImagePayload(PayloadModel):
    """Operations apply in this order: grayscale, invert, blur, sharpen, gamma,
    contrast, brightness, saturation. Omitted fields change nothing."""

    path: FileName
    blur: PositiveNumber | None = None
    sharpen: PositiveNumber | None = None
    gamma: PositiveNumber | None = None
    contrast: Percent | None = None
    brightness: Percent | None = None
    saturation: Percent | None = None
    grayscale: StrictBool | None = None
    invert: StrictBool | None = None


def _http_url(value: str) -> str:
    from urllib.parse import urlsplit

    if len(value) > 2048:
        raise ValueError("URL longer than 2048 characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("only http and https URLs are allowed")
    if not parts.hostname:
        raise ValueError("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("URLs with credentials are not allowed")
    del port
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class DownloadFilesPayload(PayloadModel):
    urls: Annotated[list[HttpUrl], Field(min_length=1, max_length=20)]


# ----- API request and response models -------------------------------------


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The rule for a password being set, at registration or by a change.
NewPassword = Annotated[str, Field(min_length=6, max_length=128)]


class Credentials(RequestModel):
    email: EmailStr = Field(max_length=254)
    password: NewPassword

    @field_validator("email")
    @classmethod
    def _normalise_email(cls, value: str) -> str:
        return value.strip()


class LoginRequest(RequestModel):
    # Login never explains which rule an email or password breaks: any
    # mismatch is the same 401, so lengths are only bounded, not checked.
    email: Annotated[str, Field(max_length=254)]
    password: Annotated[str, Field(max_length=1024)]


class PasswordChange(RequestModel):
    # Like login's, the current password is only bounded: a wrong one is a 401.
    current_password: Annotated[str, Field(max_length=1024)]
    new_password: NewPassword


_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:?\d{2})$"
)


def _rfc3339_text(value: Any) -> Any:
    # pydantic would read 1700000000 or "1700000000" as a Unix time; a task's
    # time is only ever given as an RFC 3339 string with its offset.
    if isinstance(value, datetime):
        return value
    message = "must be an RFC 3339 time with a time zone, e.g. 2030-01-01T12:00:00Z"
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError(message)
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(message) from None


RunAt = Annotated[datetime, BeforeValidator(_rfc3339_text)]


MAX_DEPENDENCIES = 100
_BATCH_REFERENCE = re.compile(r"^#(0|[1-9][0-9]{0,3})$")


def _dependency_reference(value: str) -> str:
    if _BATCH_REFERENCE.match(value):
        return value
    try:
        return str(UUID(value))
    except ValueError:
        raise ValueError('must be a task id, or "#n" for item n of the same batch') from None


DependencyReference = Annotated[
    str, Field(min_length=1, max_length=40), AfterValidator(_dependency_reference)
]


def batch_reference(value: str) -> int | None:
    """The batch item a "#n" reference names; None for a task id."""
    match = _BATCH_REFERENCE.match(value)
    return int(match.group(1)) if match else None


class TaskCreate(RequestModel):
    type: Annotated[str, Field(min_length=1, max_length=64)]
    payload: dict[str, Any]
    max_retries: Annotated[int, Field(ge=0, le=MAX_RETRIES_LIMIT, strict=True)] = (
        DEFAULT_MAX_RETRIES
    )
    run_at: RunAt | None = None
    priority: Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX, strict=True)] = 0
    depends_on: Annotated[list[DependencyReference], Field(max_length=MAX_DEPENDENCIES)] | None = (
        Field(
            None,
            description='task ids of the caller\'s, or "#n" for item n (from 0) of the same '
            "batch: the task is blocked until all are done",
        )
    )


class TaskBatchCreate(RequestModel):
    tasks: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=1000)]


class TaskPatch(RequestModel):
    payload: dict[str, Any] | None = None
    max_retries: Annotated[int, Field(ge=0, le=MAX_RETRIES_LIMIT, strict=True)] | None = None
    run_at: RunAt | None = None
    priority: Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX, strict=True)] | None = None

    @model_validator(mode="after")
    def _something(self) -> TaskPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of payload, max_retries, run_at, priority")
        return self


# ----- schedules (SPEC §9); taskflow.schedules checks cron expressions and time zones

ScheduleName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_line_breaks)]
CronExpression = Annotated[
    str, Field(min_length=1, max_length=CRON_MAX_LENGTH), AfterValidator(normalise_cron)
]
TimeZoneName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(check_timezone)]
MaxRetries = Annotated[int, Field(ge=0, le=MAX_RETRIES_LIMIT, strict=True)]
Priority = Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX, strict=True)]


class ScheduleCreate(RequestModel):
    """A periodic task: every slot of ``cron`` in ``timezone`` creates one task."""

    name: ScheduleName
    cron: CronExpression
    timezone: TimeZoneName = DEFAULT_TIMEZONE
    type: Annotated[str, Field(min_length=1, max_length=64)]
    payload: dict[str, Any]
    max_retries: MaxRetries = DEFAULT_MAX_RETRIES
    priority: Priority = 0


class SchedulePatch(RequestModel):
    name: ScheduleName | None = None
    cron: CronExpression | None = None
    timezone: TimeZoneName | None = None
    type: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    payload: dict[str, Any] | None = None
    max_retries: MaxRetries | None = None
    priority: Priority | None = None

    @model_validator(mode="after")
    def _something(self) -> SchedulePatch:
        if not self.model_fields_set:
            raise ValueError(
                "give at least one of name, cron, timezone, type, payload, max_retries, priority"
            )
        return self


def describe_validation_error(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Field-level ``details`` for a 400: ``[{"field": "payload.to", "message": ...}]``."""
    details = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        field = f"{prefix}.{location}" if prefix and location else (prefix or location)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        details.append({"field": field or "(body)", "message": message})
    return details
