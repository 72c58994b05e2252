"""POST /api/register, POST /api/login, and bearer tokens through the real API."""

from __future__ import annotations

import base64
import json
import time
import warnings

import jwt
from quart.typing import TestClientProtocol as Client

from taskflow.config import Settings
from tests.conftest import TEST_SECRET, auth_headers
from tests.integration.api_helpers import (
    FUTURE,
    create_task,
    db_snapshot,
    detail_fields,
    json_error,
)
from tests.stores import Store

PASSWORD = "secret-password"


async def _register(client: Client, email: str, password: str = PASSWORD) -> int:
    response = await client.post("/api/register", json={"email": email, "password": password})
    assert response.status_code == 201, await response.get_data()
    body = await response.get_json()
    assert set(body) == {"user_id"}
    assert isinstance(body["user_id"], int)
    return int(body["user_id"])


async def _login(client: Client, email: str, password: str = PASSWORD) -> dict:
    response = await client.post("/api/login", json={"email": email, "password": password})
    assert response.status_code == 200, await response.get_data()
    return await response.get_json()


async def test_register_creates_a_user(client: Client, store: Store) -> None:
    user_id = await _register(client, "alice@example.com")
    row = await store.pool.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    assert row["email"] == "alice@example.com"
    # Only a hash is stored, never the password.
    assert PASSWORD not in row["password_hash"]
    assert row["password_hash"].startswith("$argon2")
    assert await _register(client, "bob@example.com") != user_id


async def test_register_password_length_bounds(client: Client, store: Store) -> None:
    await _register(client, "six@example.com", "x" * 6)
    await _register(client, "max@example.com", "x" * 128)
    assert (await _login(client, "max@example.com", "x" * 128))["token"]
    before = await db_snapshot(store)
    for password in ("x" * 5, "", "x" * 129):
        response = await client.post(
            "/api/register", json={"email": "p@example.com", "password": password}
        )
        assert detail_fields(await json_error(response, 400)) == ["password"]
    assert await db_snapshot(store) == before


async def test_register_rejects_bad_bodies(client: Client, store: Store) -> None:
    before = await db_snapshot(store)
    cases: list[tuple[object, list[str]]] = [
        ({"email": "not-an-email", "password": PASSWORD}, ["email"]),
        ({"email": "", "password": PASSWORD}, ["email"]),
        ({"email": "a@", "password": PASSWORD}, ["email"]),
        ({"email": "@example.com", "password": PASSWORD}, ["email"]),
        ({"email": "two@@example.com", "password": PASSWORD}, ["email"]),
        ({"email": "x" * 250 + "@example.com", "password": PASSWORD}, ["email"]),
        ({"email": 123, "password": PASSWORD}, ["email"]),
        ({"email": None, "password": PASSWORD}, ["email"]),
        ({"email": ["a@example.com"], "password": PASSWORD}, ["email"]),
        ({"email": "a@example.com", "password": 123456789}, ["password"]),
        ({"email": "a@example.com", "password": None}, ["password"]),
        ({"password": PASSWORD}, ["email"]),
        ({"email": "a@example.com"}, ["password"]),
        ({}, ["email", "password"]),
        ({"email": "a@example.com", "password": PASSWORD, "is_admin": True}, ["is_admin"]),
    ]
    for body, fields in cases:
        response = await client.post("/api/register", json=body)
        error = await json_error(response, 400)
        assert sorted(detail_fields(error)) == fields, (body, error)
    extra = await client.post(
        "/api/register", json={"email": "a@example.com", "password": PASSWORD, "is_admin": True}
    )
    assert (await extra.get_json())["details"][0]["message"] == "unknown field"
    assert await db_snapshot(store) == before


async def test_register_email_taken_case_insensitively(client: Client, store: Store) -> None:
    await _register(client, "carol@example.com")
    before = await db_snapshot(store)
    for email in ("carol@example.com", "CAROL@example.com", "Carol@Example.COM"):
        response = await client.post("/api/register", json={"email": email, "password": "other1"})
        await json_error(response, 409)
    assert await db_snapshot(store) == before
    # The first password still works: the 409 did not overwrite anything.
    await _login(client, "carol@example.com")


async def test_login_returns_a_token_usable_verbatim(client: Client, settings: Settings) -> None:
    user_id = await _register(client, "dave@example.com")
    body = await _login(client, "dave@example.com")
    assert set(body) == {"token", "access_token", "token_type", "expires_in"}
    assert body["token"] == f"Bearer {body['access_token']}"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == settings.token_ttl_seconds
    claims = jwt.decode(body["access_token"], TEST_SECRET, algorithms=["HS256"], issuer="taskflow")
    assert claims["sub"] == str(user_id)
    assert 0 < claims["exp"] - time.time() <= settings.token_ttl_seconds + 5
    # The seed puts the token as is in the Authorization header.
    response = await client.get("/api/tasks", headers={"Authorization": body["token"]})
    assert response.status_code == 200
    assert await response.get_json() == []
    # Email matching ignores case, as registration does.
    assert (await _login(client, "DAVE@Example.com"))["token"]


async def test_login_failures_are_indistinguishable(client: Client) -> None:
    await _register(client, "erin@example.com")
    wrong_password = await client.post(
        "/api/login", json={"email": "erin@example.com", "password": "wrong-password"}
    )
    unknown_email = await client.post(
        "/api/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    short_password = await client.post(
        "/api/login", json={"email": "erin@example.com", "password": "x"}
    )
    bodies = [
        await json_error(response, 401)
        for response in (wrong_password, unknown_email, short_password)
    ]
    assert bodies[0] == bodies[1] == bodies[2]
    assert "details" not in bodies[0]
    assert wrong_password.headers["WWW-Authenticate"].startswith("Bearer")


async def test_login_rejects_malformed_bodies(client: Client) -> None:
    for body, fields in (
        ({"email": "a@example.com"}, ["password"]),
        ({"password": PASSWORD}, ["email"]),
        ({"email": 1, "password": PASSWORD}, ["email"]),
        ({"email": "a@example.com", "password": PASSWORD, "remember": True}, ["remember"]),
    ):
        response = await client.post("/api/login", json=body)
        assert detail_fields(await json_error(response, 400)) == fields
    for raw in (b"", b"{", b"[]", b'"x"'):
        response = await client.post(
            "/api/login", data=raw, headers={"Content-Type": "application/json"}
        )
        await json_error(response, 400)


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _claims(user_id: int, **changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + 600,
        "iss": "taskflow",
    }
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


async def test_forged_tokens_are_refused_and_change_nothing(client: Client, store: Store) -> None:
    victim = await auth_headers(client, "victim@example.com")
    attacker = await auth_headers(client, "attacker@example.com")
    victim_task = await create_task(client, victim, run_at=FUTURE)
    victim_id = (
        await store.pool.fetchrow("SELECT id FROM users WHERE email = $1", "victim@example.com")
    )["id"]
    attacker_jwt = attacker["Authorization"].removeprefix("Bearer ")
    header, payload, signature = attacker_jwt.split(".")
    tampered_payload = json.loads(base64.urlsafe_b64decode(payload + "==="))
    tampered_payload["sub"] = str(victim_id)
    secret = TEST_SECRET.encode()
    with warnings.catch_warnings():
        # The test key is shorter than HS512 likes; this token is refused anyway.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        hs512 = jwt.encode(_claims(victim_id), secret, algorithm="HS512")

    forged = {
        "alg none": f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(victim_id))}.",
        "alg none, no dot": f"Bearer {_b64({'alg': 'none'})}.{_b64(_claims(victim_id))}",
        "another key": "Bearer " + jwt.encode(_claims(victim_id), "k" * 40, algorithm="HS256"),
        "HS512 with the key": f"Bearer {hs512}",
        "expired": "Bearer " + jwt.encode(_claims(victim_id, exp=int(time.time()) - 5), secret),
        "no exp": "Bearer " + jwt.encode(_claims(victim_id, exp=None), secret),
        "wrong issuer": "Bearer " + jwt.encode(_claims(victim_id, iss="evil"), secret),
        "sub not a user id": "Bearer " + jwt.encode(_claims(victim_id, sub="admin"), secret),
        "sub a number": "Bearer " + jwt.encode(_claims(victim_id, sub=victim_id), secret),
        "tampered sub": f"Bearer {header}.{_b64(tampered_payload)}.{signature}",
        "signature stripped": f"Bearer {header}.{payload}.",
        "missing Bearer scheme": attacker_jwt,
        "Basic scheme": f"Basic {attacker_jwt}",
        "Bearer alone": "Bearer",
        "Bearer and spaces": "Bearer    ",
        "garbage": "Bearer not.a.jwt",
        "more garbage": "Bearer %%%%",
        "empty": "",
    }
    before = await db_snapshot(store)
    for name, value in forged.items():
        headers = {"Authorization": value}
        task_url = f"/api/tasks/{victim_task['id']}"
        attempts = [
            await client.get("/api/tasks", headers=headers),
            await client.get(task_url, headers=headers),
            await client.get(f"{task_url}/history", headers=headers),
            await client.post(
                "/api/tasks",
                headers=headers,
                json={"type": "send_email", "payload": {"to": "a@example.com", "subject": "x"}},
            ),
            await client.post(
                "/api/tasks/batch",
                headers=headers,
                json={
                    "tasks": [
                        {"type": "send_email", "payload": {"to": "a@example.com", "subject": "x"}}
                    ]
                },
            ),
            await client.patch(task_url, headers=headers, json={"priority": 5}),
            await client.post(f"{task_url}/cancel", headers=headers),
            await client.post(f"{task_url}/retry", headers=headers),
            await client.delete(task_url, headers=headers),
        ]
        for response in attempts:
            body = await json_error(response, 401)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
            assert "victim" not in json.dumps(body), name
    no_header = await client.get("/api/tasks")
    await json_error(no_header, 401)
    assert await db_snapshot(store) == before
    # The genuine tokens still work after all that.
    response = await client.get(f"/api/tasks/{victim_task['id']}", headers=victim)
    assert response.status_code == 200
