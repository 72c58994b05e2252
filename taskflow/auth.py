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


# Tokens already verified, with their user and expiry: a client sends the same
# token on every request, and decoding and checking it again cost the API
# about a tenth of its time per request. Keyed by secret and token, so a
# token is only ever accepted under the key that signed it.
_VERIFIED_MAX = 4096
_verified: dict[tuple[bytes, str], tuple[int, float]] = {}


def verify_token(token: str, secret: bytes) -> int:
    """Return the user id of a valid token; raise Unauthorized otherwise."""
    known = _verified.get((secret, token))
    if known is not None:
        user_id, expires = known
        if time.time() < expires:
            return user_id
        del _verified[(secret, token)]
        raise Unauthorized("token expired")
    user_id, expires = _verify_token(token, secret)
    if len(_verified) >= _VERIFIED_MAX:
        del _verified[next(iter(_verified))]  # the oldest entry
    _verified[(secret, token)] = (user_id, expires)
    return user_id


def _verify_token(token: str, secret: bytes) -> tuple[int, float]:
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
    return int(subject), float(expires)


def token_from_header(value: str | None) -> str:
    """``Authorization: Bearer <jwt>``; the scheme is required."""
    if not value:
        raise Unauthorized("missing Authorization header")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    return token.strip()
