"""POST /api/register and POST /api/login."""

from __future__ import annotations

from quart import Blueprint, Response

from taskflow.api import config, services
from taskflow.api.responses import json_response, read_model
from taskflow.auth import hash_password, issue_token, verify_password
from taskflow.models import Credentials, LoginRequest

blueprint = Blueprint("users", __name__)


@blueprint.post("/api/register")
async def register() -> Response:
    credentials = await read_model(Credentials)
    password_hash = await hash_password(credentials.password)
    user_id = await services().accounts.insert_user(credentials.email, password_hash)
    return json_response({"user_id": user_id}, 201)


@blueprint.post("/api/login")
async def login() -> Response:
    credentials = await read_model(LoginRequest)
    api = config()
    # Postgres text cannot hold NUL, so asking would be a 500; such an email
    # matches nobody, and gets the same work and the same 401 as any unknown one.
    user = None
    if "\x00" not in credentials.email:
        user = await services().accounts.select_user_by_email(credentials.email)
    # Unknown email and wrong password: the same work, the same answer.
    await verify_password(credentials.password, user["password_hash"] if user else None)
    assert user is not None
    ttl = api.settings.token_ttl_seconds
    token = issue_token(user["id"], api.secret, ttl)
    return json_response(
        {
            "token": f"Bearer {token}",
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
        }
    )
