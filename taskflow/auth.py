"""Password hashing (argon2id, on a bounded pool of its own) and JWT access
tokens (HS256, algorithm pinned) with what revoking them needs: a token id
(``jti``) and its user's token version (``ver``). Which tokens are revoked is
the API's to know (``taskflow.api.revocations``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from taskflow.errors import Overloaded, Unauthorized

T = TypeVar("T")

_hasher = PasswordHasher()  # argon2id with the library's current recommended cost
# Verified against when the email is unknown, so both failures take the same time.
_DUMMY_HASH = _hasher.hash("taskflow-dummy-password")

ALGORITHM = "HS256"
ISSUER = "taskflow"
# Callers that may wait for a hash, per hash that may run: beyond that, a
# caller would wait longer than its turn is worth, and is told so at once.
WAITING_PER_HASH = 4
OVERLOADED_RETRY_SECONDS = 1.0


# ----- passwords --------------------------------------------------------------------


class PasswordHashing:
    """Argon2 on threads of its own, ``concurrency`` hashes at a time.

    Each hash takes 64 MiB and a core for tens of milliseconds, and anyone
    can ask for one (login and registration are public), so they are
    admitted, not queued: at most ``concurrency`` run and
    ``WAITING_PER_HASH * concurrency`` wait; a caller that finds the waiting
    room full, or cannot start within ``wait_seconds``, gets
    :class:`Overloaded` (a 503 with Retry-After) instead of hanging. The
    executor is this pool's alone, so a flood of logins never takes the
    threads that other work runs on, nor the other way round.
    """

    def __init__(self, concurrency: int, wait_seconds: float) -> None:
        self.concurrency = concurrency
        self.wait_seconds = wait_seconds
        self.max_waiting = WAITING_PER_HASH * concurrency
        # Exactly one thread per slot: a hash never queues inside the executor.
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="taskflow-argon2")
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting = 0
        # Hashes started by this pool; tests read it to prove none was run.
        self.hashes_started = 0

    async def hash(self, password: str) -> str:
        return await self._run(_hasher.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Whether ``password`` matches; the same cost when there is no hash."""
        matches = await self._run(_check, password, password_hash or _DUMMY_HASH)
        return matches and password_hash is not None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, function: Callable[..., T], *args: str) -> T:
        await self._admit()
        loop = asyncio.get_running_loop()
        try:
            future: Future[T] = self._executor.submit(function, *args)
        except BaseException:
            self._slots.release()
            raise
        self.hashes_started += 1
        # The slot is free when the thread is, not when the caller stops
        # waiting: a caller cancelled mid-hash must not let another hash start.
        future.add_done_callback(lambda _done: _call_soon(loop, self._slots.release))
        return await asyncio.wrap_future(future)

    async def _admit(self) -> None:
        if self._slots.locked() and self._waiting >= self.max_waiting:
            raise Overloaded(
                "too many logins and registrations at once; try again shortly",
                retry_after_seconds=OVERLOADED_RETRY_SECONDS,
            )
        self._waiting += 1
        try:
            async with asyncio.timeout(self.wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise Overloaded(
                "too many logins and registrations at once; try again shortly",
                retry_after_seconds=OVERLOADED_RETRY_SECONDS,
            ) from None
        finally:
            self._waiting -= 1


def _check(password: str, password_hash: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    # A closed loop has nobody left to admit.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


# ----- tokens -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says. Verified means signed by us and not
    expired; whether it was revoked since is a separate question."""

    user_id: int
    token_id: str
    token_version: int
    expires: float


def issue_token(user_id: int, secret: bytes, ttl_seconds: int, *, token_version: int = 0) -> str:
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + ttl_seconds,
        "iss": ISSUER,
        "jti": uuid.uuid4().hex,
        "ver": token_version,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Tokens already verified, with their claims: a client sends the same token
# on every request, and decoding and checking it again cost the API about a
# tenth of its time per request. Keyed by secret and token, so a token is
# only ever accepted under the key that signed it. An entry proves the
# signature and nothing more: every use of a token, remembered here or not,
# is checked against the revocations as well (taskflow.api.security).
_VERIFIED_MAX = 4096
_verified: dict[tuple[bytes, str], TokenClaims] = {}


def read_token(token: str, secret: bytes) -> TokenClaims:
    """The claims of a token signed with ``secret`` and not expired; raise
    Unauthorized otherwise. Says nothing about revocation."""
    known = _verified.get((secret, token))
    if known is not None:
        if time.time() < known.expires:
            return known
        del _verified[(secret, token)]
        raise Unauthorized("token expired")
    claims = _decode(token, secret)
    if len(_verified) >= _VERIFIED_MAX:
        del _verified[next(iter(_verified))]  # the oldest entry
    _verified[(secret, token)] = claims
    return claims


def verify_token(token: str, secret: bytes) -> int:
    """The user id of a token signed with ``secret`` and not expired."""
    return read_token(token, secret).user_id


def _decode(token: str, secret: bytes) -> TokenClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("invalid token") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.isdigit() or len(subject) > 18:
        raise Unauthorized("invalid token")
    expires = claims["exp"]
    if not isinstance(expires, int | float):
        raise Unauthorized("invalid token")
    # Every token TaskFlow issues has a jti: without one it could not be
    # revoked on its own. Tokens from before token versions existed carry no
    # "ver", and are of version 0, what every user started with.
    token_id = claims.get("jti")
    if not isinstance(token_id, str) or not 0 < len(token_id) <= 64:
        raise Unauthorized("invalid token")
    token_version = claims.get("ver", 0)
    if type(token_version) is not int or not 0 <= token_version < 2**31:
        raise Unauthorized("invalid token")
    return TokenClaims(int(subject), token_id, token_version, float(expires))


def token_from_header(value: str | None) -> str:
    """``Authorization: Bearer <jwt>``; the scheme is required."""
    if not value:
        raise Unauthorized("missing Authorization header")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    return token.strip()
