"""Accounts: users, for registration and login."""

from __future__ import annotations

import asyncpg

from taskflow.errors import EmailTaken
from taskflow.store.pool import Queries, Record

INSERT_USER = """
INSERT INTO users (email, password_hash) VALUES ($1, $2) RETURNING id
"""
SELECT_USER_BY_EMAIL = """
SELECT id, email, password_hash, is_admin FROM users WHERE lower(email) = lower($1)
"""
SELECT_USER_BY_ID = "SELECT id, email, is_admin FROM users WHERE id = $1"


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
