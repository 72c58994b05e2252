"""Password hashing (argon2id) and JWT access tokens (HS256, algorithm pinned)."""

from __future__ import annotations

import asyncio
import time
import uuid

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from taskflow.errors import InvalidCredentials, Unauthorized

_hasher = PasswordHasher()  # argon2id with the library's current recommended cost
# Verified against when the email is unknown, so both failures take the same time.
_DUMMY_HASH = _hasher.hash("taskflow-dummy-password")

ALGORITHM = "HS256"
ISSUER = "taskflow"


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password: str, password_hash: str | None) -> None:
    """Raise InvalidCredentials unless ``password`` matches; same cost either way."""

    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return False

    if not await asyncio.to_thread(check) or password_hash is None:
        raise InvalidCredentials()


def issue_token(user_id: int, secret: bytes, ttl_seconds: int) -> str:
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + ttl_seconds,
        "iss": ISSUER,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: bytes) -> int:
    """Return the user id of a valid token; raise Unauthorized otherwise."""
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
    return int(subject)


def token_from_header(value: str | None) -> str:
    """``Authorization: Bearer <jwt>``; the scheme is required."""
    if not value:
        raise Unauthorized("missing Authorization header")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    return token.strip()
