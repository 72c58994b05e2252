"""Accounts: users, for registration, login and password changes; revoked
tokens; and the login and registration throttles (the rules themselves are
SQL functions in ``db/functions/30_accounts.sql``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from taskflow.errors import EmailTaken
from taskflow.files.quota import effective_quota
from taskflow.store.pool import Queries, Record

INSERT_USER = """
INSERT INTO users (email, password_hash) VALUES ($1, $2) RETURNING id
"""
SELECT_USER_BY_EMAIL = """
SELECT id, email, password_hash, is_admin, token_version FROM users WHERE lower(email) = lower($1)
"""
SELECT_USER_BY_ID = "SELECT id, email, is_admin FROM users WHERE id = $1"
# (The names below say "password" and "token": ruff takes them for secrets.)
SELECT_PASSWORD_OF_USER = "SELECT email, password_hash FROM users WHERE id = $1"  # noqa: S105
# Guarded by the hash that was verified: of two changes racing, the second
# finds its hash gone and changes nothing. The trigger bumps token_version.
UPDATE_PASSWORD = """
UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2 RETURNING token_version
"""  # noqa: S105
# One round trip for a login: is it refused, and if not, whose account is it.
# $6 is false for an email that cannot be asked about (it holds a NUL, which
# Postgres text cannot): it matches nobody.
SELECT_LOGIN = """
SELECT refusal.limit_name, refusal.retry_after_seconds,
       u.id, u.password_hash, u.token_version
FROM (SELECT 1) AS one
LEFT JOIN taskflow_login_refusal($1, $2, $3, $4, $5) AS refusal ON true
LEFT JOIN users u ON $6 AND lower(u.email) = lower($1)
"""
SELECT_LOGIN_REFUSAL = "SELECT * FROM taskflow_login_refusal($1, $2, $3, $4, $5)"
INSERT_LOGIN_FAILURE = """
INSERT INTO login_failures (email_digest, address) VALUES (taskflow_email_digest($1), $2)
"""
SELECT_REGISTRATION_REFUSAL = "SELECT * FROM taskflow_registration_refusal($1, $2)"
INSERT_REGISTRATION_ATTEMPT = "INSERT INTO registration_attempts (address) VALUES ($1)"
INSERT_REVOKED_TOKEN = """
INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3)
ON CONFLICT (jti) DO NOTHING
"""  # noqa: S105
# A user's version and the tokens of theirs revoked and not yet expired; a
# user with no row here does not exist (any more).
SELECT_TOKEN_STATES = """
SELECT u.id, u.token_version, r.jti, extract(epoch FROM r.expires_at)::float8 AS expires
FROM users u
LEFT JOIN revoked_tokens r ON r.user_id = u.id AND r.expires_at > now()
WHERE u.id = ANY($1::bigint[])
"""  # noqa: S105
PRUNE_ACCOUNTS = "SELECT taskflow_prune_accounts($1, $2)"
# An operator's override of user_files_max_bytes; no row or NULL: the default.
SELECT_FILES_QUOTA = "SELECT files_max_bytes FROM user_limits WHERE user_id = $1"


class AccountStore(Queries):
    async def insert_user(self, email: str, password_hash: str) -> int:
        try:
            user_id: int = await self.pool.fetchval(INSERT_USER, email, password_hash)
        except asyncpg.UniqueViolationError as exc:
            raise EmailTaken() from exc
        return user_id

    async def select_user_by_email(self, email: str) -> Record | None:
        return await self.pool.fetchrow(SELECT_USER_BY_EMAIL, email)

    async def select_user_by_id(self, user_id: int) -> Record | None:
        return await self.pool.fetchrow(SELECT_USER_BY_ID, user_id)

    async def select_password_of_user(self, user_id: int) -> Record | None:
        return await self.pool.fetchrow(SELECT_PASSWORD_OF_USER, user_id)

    async def update_password(self, user_id: int, old_hash: str, new_hash: str) -> int | None:
        """The user's new token version; None when the hash changed meanwhile."""
        version: int | None = await self.pool.fetchval(UPDATE_PASSWORD, user_id, old_hash, new_hash)
        return version

    async def select_files_quota(self, user_id: int, default: int) -> int | None:
        """The user's file area quota in bytes, None for no limit: their
        user_limits.files_max_bytes, else ``default`` (0 in either: none)."""
        override: int | None = await self.pool.fetchval(SELECT_FILES_QUOTA, user_id)
        return effective_quota(override, default)

    # ----- throttles

    async def select_login(
        self,
        email: str,
        address: str,
        *,
        window_seconds: float,
        max_failures: int,
        max_failures_per_address: int,
    ) -> Record:
        """``limit_name`` and ``retry_after_seconds`` when refused; the
        account (``id``, ``password_hash``, ``token_version``) when it exists."""
        askable = "\x00" not in email
        row = await self.pool.fetchrow(
            SELECT_LOGIN,
            _throttle_key(email),
            address,
            window_seconds,
            max_failures,
            max_failures_per_address,
            askable,
        )
        assert row is not None
        return row

    async def select_login_refusal(
        self,
        email: str,
        address: str,
        *,
        window_seconds: float,
        max_failures: int,
        max_failures_per_address: int,
    ) -> Record | None:
        return await self.pool.fetchrow(
            SELECT_LOGIN_REFUSAL,
            _throttle_key(email),
            address,
            window_seconds,
            max_failures,
            max_failures_per_address,
        )

    async def insert_login_failure(self, email: str, address: str) -> None:
        await self.pool.execute(INSERT_LOGIN_FAILURE, _throttle_key(email), address)

    async def select_registration_refusal(self, address: str, per_hour: int) -> Record | None:
        return await self.pool.fetchrow(SELECT_REGISTRATION_REFUSAL, address, per_hour)

    async def insert_registration_attempt(self, address: str) -> None:
        await self.pool.execute(INSERT_REGISTRATION_ATTEMPT, address)

    async def prune_accounts(self, login_window_seconds: float, batch_limit: int) -> int:
        pruned: int = await self.pool.fetchval(PRUNE_ACCOUNTS, login_window_seconds, batch_limit)
        return pruned

    # ----- revocation

    async def insert_revoked_token(self, token_id: str, user_id: int, expires: float) -> bool:
        """False when the user is gone: every token of theirs is refused anyway."""
        try:
            await self.pool.execute(
                INSERT_REVOKED_TOKEN, token_id, user_id, datetime.fromtimestamp(expires, UTC)
            )
        except asyncpg.ForeignKeyViolationError:
            return False
        return True

    async def select_token_states(self, user_ids: Sequence[int]) -> list[Record]:
        return await self.pool.fetch(SELECT_TOKEN_STATES, list(user_ids))


def _throttle_key(email: str) -> str:
    # Postgres text cannot hold NUL; such an email still has its own failures.
    return email.replace("\x00", "\ufffd")
