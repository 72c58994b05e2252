"""Who is calling: the bearer token on every /api/tasks and /api/files route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from quart import g, request

from taskflow.api import config
from taskflow.auth import token_from_header, verify_token

P = ParamSpec("P")
R = TypeVar("R")


def current_user_id() -> int:
    user_id: int = g.user_id
    return user_id


def require_user(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        token = token_from_header(request.headers.get("Authorization"))
        g.user_id = verify_token(token, config().secret)
        return await view(*args, **kwargs)

    return wrapper
