"""The TaskFlow error hierarchy. No HTTP knowledge lives here: the API maps these
to status codes in one table (``taskflow.api.errors``)."""

from __future__ import annotations

from typing import Any


class TaskFlowError(Exception):
    """Something went wrong in TaskFlow."""

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.message = message or (self.__doc__ or "").strip()
        self.details = details


class ConfigError(TaskFlowError):
    """The configuration is invalid."""


class ValidationFailed(TaskFlowError):
    """The request is invalid."""


class NotFound(TaskFlowError):
    """Not found."""


class TaskNotFound(NotFound):
    """Task not found."""


class FileNotFound(NotFound):
    """File not found."""


class EmailTaken(TaskFlowError):
    """This email is already registered."""


class InvalidCredentials(TaskFlowError):
    """Invalid email or password."""


class Unauthorized(TaskFlowError):
    """Missing or invalid token."""


class Forbidden(TaskFlowError):
    """You are not allowed to do this."""


class InvalidTransition(TaskFlowError):
    """The task is not in a state that allows this."""


class Conflict(TaskFlowError):
    """The request conflicts with the current state."""


class IdempotencyKeyReused(Conflict):
    """This Idempotency-Key was already used with a different request."""


class PayloadTooLarge(TaskFlowError):
    """The request body is too large."""


class QuotaExceeded(PayloadTooLarge):
    """The file area is over its quota.

    ``limit`` names the quota (its config key); ``quota_bytes`` is its size
    and ``used_bytes`` what the area would hold (at least) with the write.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        quota_bytes: int,
        used_bytes: int,
        limit: str = "user_files_max_bytes",
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.quota_bytes = quota_bytes
        self.used_bytes = used_bytes


class LimitExceeded(TaskFlowError):
    """A limit was reached; try again later.

    ``limit`` names the limit (its config key, e.g. ``login_max_failures``);
    ``retry_after_seconds`` says when trying again can succeed.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        limit: str,
        retry_after_seconds: float | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message, details=details)
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds


class Overloaded(TaskFlowError):
    """The service is busy; try again shortly."""

    def __init__(self, message: str | None = None, *, retry_after_seconds: float = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class StoreUnavailable(TaskFlowError):
    """The database is not reachable."""


class HandlerError(TaskFlowError):
    """A task handler failed."""


class TransientError(HandlerError):
    """The attempt failed for a reason that may pass; the task is retried.

    ``delay_seconds`` overrides the configured backoff for the next attempt;
    ``partial_result`` is stored so the next attempt can resume.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        delay_seconds: float | None = None,
        partial_result: Any = None,
    ) -> None:
        super().__init__(message)
        self.delay_seconds = delay_seconds
        self.partial_result = partial_result


class PermanentError(HandlerError):
    """The attempt failed for a reason that retrying cannot fix; the task fails."""

    def __init__(self, message: str | None = None, *, partial_result: Any = None) -> None:
        super().__init__(message)
        self.partial_result = partial_result
