"""Accounts that can be taken back, throttled logins and registrations, and
Argon2 in a bounded pool (taskflow/api/revocations.py, taskflow/api/users.py,
taskflow/auth.py, migration 0006 and db/functions/30_accounts.sql).

Everything goes through the real API (Quart's test client) on a real
Postgres; "every authenticated route" is found from the app's url_map, never
typed by hand."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

from taskflow.api import SERVICES_EXTENSION, create_app
from taskflow.config import Settings
from taskflow.handlers import build_registry
from taskflow.runtime import api_services
from tests.conftest import ADMIN_DSN, make_settings, wait_until
from tests.integration.api_helpers import create_task, json_error
from tests.stores import Store

PASSWORD = "secret-password"
NEW_PASSWORD = "another-secret"
ROUTE_ARGUMENT = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")
REVOKED_WITHIN_SECONDS = 10.0


# ----- serving the API ---------------------------------------------------------------


def account_settings(database: str, tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(database, queue=None, files=tmp_path / "files", **overrides)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Quart, Client]]:
    """One API process: its own pool, listeners, revocation state and hash pool."""
    app = create_app(settings, build_registry(settings), api_services)
    async with app.test_app() as test_app:
        yield test_app.app, test_app.test_client()  # type: ignore[misc]


def at(address: str) -> dict[str, Any]:
    """A request from this client address (what uvicorn puts in the ASGI scope)."""
    return {"scope_base": {"client": (address, 50000)}}


async def register(client: Client, email: str, password: str = PASSWORD, **extra: Any) -> int:
    response = await client.post(
        "/api/register", json={"email": email, "password": password}, **extra
    )
    assert response.status_code == 201, await response.get_data()
    return int((await response.get_json())["user_id"])


async def login(client: Client, email: str, password: str = PASSWORD, **extra: Any) -> Any:
    return await client.post("/api/login", json={"email": email, "password": password}, **extra)


async def bearer(client: Client, email: str, password: str = PASSWORD) -> dict[str, str]:
    response = await login(client, email, password)
    assert response.status_code == 200, await response.get_data()
    return {"Authorization": (await response.get_json())["token"]}


async def status_of(client: Client, method: str, path: str, headers: dict[str, str]) -> int:
    """The status of one request; works for event streams too (read the head,
    then hang up)."""
    async with client.request(path, method=method, headers=headers) as connection:
        await connection.send_complete()
        async with asyncio.timeout(10):
            await connection.receive()
        status = connection.status_code
        await connection.disconnect()
    assert status is not None
    return status


async def authenticated_routes(app: Quart, client: Client, task_id: str) -> list[tuple[str, str]]:
    """Every (method, path) of the app that wants a user: those that answer a
    request without a token with 401. Path arguments all get a real task id
    (a valid file name as well)."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = ROUTE_ARGUMENT.sub(task_id, rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if await status_of(client, method, path, {}) == 401:
                routes.append((method, path))
    paths = {path for _, path in routes}
    # The enumeration found the routes it must (a guard against it finding none).
    assert {"/api/tasks", "/api/events", "/api/logout", "/api/password"} <= paths, routes
    return routes


async def assert_refused_everywhere(
    client: Client, routes: list[tuple[str, str]], headers: dict[str, str]
) -> None:
    for method, path in routes:
        assert await status_of(client, method, path, headers) == 401, (method, path)


async def assert_served(
    client: Client, routes: list[tuple[str, str]], headers: dict[str, str]
) -> None:
    """Every GET route (streams included) accepts ``headers`` (the admin route
    then says 403: the user is known, and not an admin)."""
    for method, path in routes:
        if method == "GET":
            status = await status_of(client, method, path, headers)
            assert status not in (401, 500), (method, path, status)


async def refused(client: Client, headers: dict[str, str]) -> bool:
    return (await client.get("/api/tasks", headers=headers)).status_code == 401


# ----- event streams -----------------------------------------------------------------


class OpenStream:
    """An open GET /api/events, read until it ends."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.received = b""

    async def wait_ready(self) -> None:
        async with asyncio.timeout(10):
            while b"event: ready" not in self.received:
                self.received += await self.connection.receive()

    async def wait_for(self, text: bytes) -> None:
        async with asyncio.timeout(10):
            while text not in self.received:
                chunk = await self.connection.receive()
                assert chunk, "the stream ended"
                self.received += chunk

    async def wait_closed(self, timeout: float = REVOKED_WITHIN_SECONDS) -> None:
        """The server ended the response (its last, empty body chunk)."""
        async with asyncio.timeout(timeout):
            while chunk := await self.connection.receive():
                self.received += chunk


@asynccontextmanager
async def event_stream(client: Client, headers: dict[str, str]) -> AsyncIterator[OpenStream]:
    async with client.request("/api/events", headers=headers) as connection:
        await connection.send_complete()
        stream = OpenStream(connection)
        try:
            await stream.wait_ready()
            yield stream
        finally:
            await connection.disconnect()


# ----- logout ------------------------------------------------------------------------


async def test_logout_refuses_that_token_on_every_route_and_closes_its_streams(
    database: str, tmp_path: Path
) -> None:
    async with serving(account_settings(database, tmp_path)) as (app, client):
        await register(client, "leaving@example.com")
        leaving = await bearer(client, "leaving@example.com")
        staying = await bearer(client, "leaving@example.com")
        task = await create_task(client, leaving, run_at="2099-01-01T00:00:00Z")
        routes = await authenticated_routes(app, client, task["id"])
        await assert_served(client, routes, leaving)  # and so it is remembered as verified

        async with event_stream(client, leaving) as doomed, event_stream(client, staying) as kept:
            response = await client.post("/api/logout", headers=leaving)
            assert response.status_code == 204, await response.get_data()
            assert await response.get_data() == b""
            await doomed.wait_closed()
            # The other token's stream stays open: a new task of the user's arrives on it.
            created = await create_task(client, staying, run_at="2099-01-01T00:00:00Z")
            await kept.wait_for(created["id"].encode())

        await assert_refused_everywhere(client, routes, leaving)
        body = await json_error(await client.get("/api/tasks", headers=leaving), 401)
        assert "revoked" in body["error"]
        # The same user's other tokens are untouched.
        await assert_served(client, routes, staying)
        assert (await client.get(f"/api/tasks/{task['id']}", headers=staying)).status_code == 200


async def test_logout_needs_a_valid_token(database: str, tmp_path: Path) -> None:
    async with serving(account_settings(database, tmp_path)) as (_app, client):
        await json_error(await client.post("/api/logout"), 401)
        bogus = {"Authorization": "Bearer not.a.jwt"}
        await json_error(await client.post("/api/logout", headers=bogus), 401)
        await register(client, "twice@example.com")
        headers = await bearer(client, "twice@example.com")
        assert (await client.post("/api/logout", headers=headers)).status_code == 204
        await json_error(await client.post("/api/logout", headers=headers), 401)


# ----- password change ---------------------------------------------------------------


async def test_password_change_refuses_every_earlier_token_and_closes_streams(
    database: str, tmp_path: Path
) -> None:
    async with serving(account_settings(database, tmp_path)) as (app, client):
        await register(client, "changer@example.com")
        first = await bearer(client, "changer@example.com")
        second = await bearer(client, "changer@example.com")
        task = await create_task(client, first, run_at="2099-01-01T00:00:00Z")
        routes = await authenticated_routes(app, client, task["id"])
        await assert_served(client, routes, second)

        wrong = await client.post(
            "/api/password",
            headers=first,
            json={"current_password": "not-my-password", "new_password": NEW_PASSWORD},
        )
        await json_error(wrong, 401)
        for new_password in ("short", "", "x" * 129):
            invalid = await client.post(
                "/api/password",
                headers=first,
                json={"current_password": PASSWORD, "new_password": new_password},
            )
            body = await json_error(invalid, 400)
            assert [d["field"] for d in body["details"]] == ["new_password"]
        # Neither changed anything: both tokens and the old password still work.
        assert not await refused(client, first)
        assert not await refused(client, second)

        async with event_stream(client, second) as stream:
            response = await client.post(
                "/api/password",
                headers=first,
                json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            )
            assert response.status_code == 204, await response.get_data()
            await stream.wait_closed()

        # Every token from before the change, the caller's own included.
        await assert_refused_everywhere(client, routes, first)
        await assert_refused_everywhere(client, routes, second)
        await json_error(await login(client, "changer@example.com", PASSWORD), 401)
        fresh = await bearer(client, "changer@example.com", NEW_PASSWORD)
        await assert_served(client, routes, fresh)
        assert (await client.get(f"/api/tasks/{task['id']}", headers=fresh)).status_code == 200


# ----- a user deleted in psql --------------------------------------------------------


async def test_a_user_deleted_in_psql_is_refused_everywhere_and_streams_close(
    database: str, tmp_path: Path, store: Store
) -> None:
    async with serving(account_settings(database, tmp_path)) as (app, client):
        await register(client, "witness@example.com")
        witness = await bearer(client, "witness@example.com")
        user_id = await register(client, "deleted@example.com")
        headers = await bearer(client, "deleted@example.com")
        await create_task(client, headers, run_at="2099-01-01T00:00:00Z")
        witness_task = await create_task(client, witness, run_at="2099-01-01T00:00:00Z")
        routes = await authenticated_routes(app, client, witness_task["id"])
        await assert_served(client, routes, headers)

        async with event_stream(client, headers) as stream:
            await store.pool.execute("DELETE FROM users WHERE id = $1", user_id)
            await stream.wait_closed()

        await wait_until(lambda: refused(client, headers), timeout=REVOKED_WITHIN_SECONDS)
        await assert_refused_everywhere(client, routes, headers)
        await assert_served(client, routes, witness)


# ----- more than one API process -----------------------------------------------------


async def test_a_logout_through_one_process_is_refused_by_another(
    database: str, tmp_path: Path, store: Store
) -> None:
    settings = account_settings(database, tmp_path)
    async with serving(settings) as (_app_a, a), serving(settings) as (app_b, b):
        await register(a, "roamer@example.com")
        token = await bearer(a, "roamer@example.com")
        other = await bearer(b, "roamer@example.com")
        task = await create_task(b, token, run_at="2099-01-01T00:00:00Z")
        routes = await authenticated_routes(app_b, b, task["id"])
        await assert_served(b, routes, token)  # B knows this token as good

        async with event_stream(b, token) as stream:
            assert (await a.post("/api/logout", headers=token)).status_code == 204
            await wait_until(lambda: refused(b, token), timeout=REVOKED_WITHIN_SECONDS)
            await stream.wait_closed()
        await assert_refused_everywhere(b, routes, token)
        await assert_served(b, routes, other)

        # A password change through B reaches A the same way.
        assert not await refused(a, other)
        response = await b.post(
            "/api/password",
            headers=other,
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        )
        assert response.status_code == 204, await response.get_data()
        await wait_until(lambda: refused(a, other), timeout=REVOKED_WITHIN_SECONDS)


async def test_a_revocation_missed_while_the_listener_was_away_still_counts(
    database: str, tmp_path: Path, store: Store
) -> None:
    """The notification is lost (the listening connection is gone when it is
    sent); what the process reloads after reconnecting must refuse the token
    and close its stream."""
    async with serving(account_settings(database, tmp_path)) as (_app, client):
        user_id = await register(client, "missed@example.com")
        headers = await bearer(client, "missed@example.com")
        assert not await refused(client, headers)
        name = await store.pool.fetchval("SELECT current_database()")
        async with event_stream(client, headers) as stream:
            # No new connection can be made (the listener's reconnect included)
            # until the user is gone, so nobody listens when it is notified.
            await _allow_connections(name, False)
            try:
                terminated = await store.pool.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'taskflow-api-accounts'"
                    " AND datname = current_database()"
                )
                assert terminated == 1
                await wait_until(lambda: _listener_gone(store), timeout=10, what="listener gone")
                await store.pool.execute("DELETE FROM users WHERE id = $1", user_id)
            finally:
                await _allow_connections(name, True)
            # Sooner than the stream's own heartbeat check (15 s), which would
            # close it too: this is the reload after reconnecting.
            await stream.wait_closed(timeout=10)
        await wait_until(lambda: refused(client, headers), timeout=REVOKED_WITHIN_SECONDS)


async def _allow_connections(database: str, allow: bool) -> None:
    # Said from another database: Postgres refuses it for the current one.
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        quoted = database.replace('"', '""')
        await connection.execute(f'ALTER DATABASE "{quoted}" ALLOW_CONNECTIONS {allow}')
    finally:
        await connection.close()


async def _listener_gone(store: Store) -> bool:
    count = await store.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'taskflow-api-accounts'"
        " AND datname = current_database()"
    )
    return count == 0


# ----- login and registration throttles ----------------------------------------------


async def test_failed_logins_per_email_lock_the_email_until_the_window_ends(
    database: str, tmp_path: Path
) -> None:
    # Long enough for five Argon2 hashes on a busy machine, short enough to wait out.
    settings = account_settings(database, tmp_path, login_window_seconds=5)
    async with serving(settings) as (app, client):
        await register(client, "target@example.com")
        for _ in range(5):
            await json_error(await login(client, "target@example.com", "guess-guess"), 401)
        hashes = app.extensions[SERVICES_EXTENSION].password_hashing
        started = hashes.hashes_started
        # Over the limit: 429 even with the right password, and no Argon2 run for it.
        response = await login(client, "target@example.com", PASSWORD)
        body = await json_error(response, 429)
        assert body["limit"] == "login_max_failures"
        assert 1 <= int(response.headers["Retry-After"]) <= 5
        assert hashes.hashes_started == started
        # Another account from the same address is not affected.
        await register(client, "bystander@example.com")
        assert (await login(client, "bystander@example.com")).status_code == 200

        async def allowed() -> bool:
            return (await login(client, "target@example.com", PASSWORD)).status_code == 200

        await wait_until(allowed, timeout=10, what="the window to end")


async def test_a_success_does_not_erase_earlier_failures(database: str, tmp_path: Path) -> None:
    async with serving(account_settings(database, tmp_path)) as (_app, client):
        await register(client, "patient@example.com")
        for _ in range(4):
            await json_error(await login(client, "patient@example.com", "guess-guess"), 401)
        assert (await login(client, "patient@example.com")).status_code == 200
        await json_error(await login(client, "patient@example.com", "guess-guess"), 401)
        body = await json_error(await login(client, "patient@example.com"), 429)
        assert body["limit"] == "login_max_failures"


async def test_unknown_emails_are_throttled_like_known_ones(database: str, tmp_path: Path) -> None:
    async with serving(account_settings(database, tmp_path)) as (_app, client):
        await register(client, "known@example.com")
        answers: dict[str, list[tuple[int, Any, str | None]]] = {}
        for email in ("known@example.com", "unknown@example.com"):
            answers[email] = []
            for _ in range(6):
                response = await login(client, email, "guess-guess")
                answers[email].append(
                    (
                        response.status_code,
                        await response.get_json(),
                        response.headers.get("Retry-After"),
                    )
                )
        assert [a[0] for a in answers["known@example.com"]] == [401] * 5 + [429]
        known, unknown = answers["known@example.com"], answers["unknown@example.com"]
        assert [a[:2] for a in known] == [a[:2] for a in unknown]
        # Retry-After counts down in whole seconds while the two rounds run.
        for (_, _, after_known), (_, _, after_unknown) in zip(known, unknown, strict=True):
            assert (after_known is None) == (after_unknown is None)
            if after_known is not None and after_unknown is not None:
                assert abs(int(after_known) - int(after_unknown)) <= 2


async def test_failed_logins_per_address(database: str, tmp_path: Path) -> None:
    settings = account_settings(database, tmp_path, login_max_failures_per_address=4)
    async with serving(settings) as (_app, client):
        await register(client, "mine@example.com")
        for number in range(4):
            response = await login(client, f"spray{number}@example.com", "guess", **at("192.0.2.7"))
            await json_error(response, 401)
        response = await login(client, "mine@example.com", **at("192.0.2.7"))
        body = await json_error(response, 429)
        assert body["limit"] == "login_max_failures_per_address"
        assert int(response.headers["Retry-After"]) >= 1
        # Another address, same account: fine.
        assert (await login(client, "mine@example.com", **at("198.51.100.1"))).status_code == 200
        # IPv6 clients are counted by their /64: a new address in it does not help.
        for number in range(4):
            response = await login(
                client, f"v6-{number}@example.com", "guess", **at(f"2001:db8:1:2::{number + 1}")
            )
            await json_error(response, 401)
        response = await login(client, "mine@example.com", **at("2001:db8:1:2:ffff::9"))
        assert (await json_error(response, 429))["limit"] == "login_max_failures_per_address"
        assert (await login(client, "mine@example.com", **at("2001:db8:1:3::1"))).status_code == 200


async def test_registrations_per_address_per_hour(
    database: str, tmp_path: Path, store: Store
) -> None:
    settings = account_settings(database, tmp_path, register_per_address_per_hour=3)
    async with serving(settings) as (_app, client):
        for number in range(3):
            await register(client, f"new{number}@example.com", **at("203.0.113.5"))
        response = await client.post(
            "/api/register",
            json={"email": "one-more@example.com", "password": PASSWORD},
            **at("203.0.113.5"),
        )
        body = await json_error(response, 429)
        assert body["limit"] == "register_per_address_per_hour"
        assert 3000 < int(response.headers["Retry-After"]) <= 3600
        assert await store.pool.fetchval("SELECT count(*) FROM users") == 3
        await register(client, "elsewhere@example.com", **at("203.0.113.6"))
        # An hour later (the attempts aged by hand) the address may register again.
        await store.pool.execute("UPDATE registration_attempts SET at = at - interval '1 hour'")
        await register(client, "one-more@example.com", **at("203.0.113.5"))


async def test_old_attempts_and_expired_revocations_are_pruned(
    database: str, tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskflow.api import revocations

    monkeypatch.setattr(revocations, "UPKEEP_SECONDS", 0.2)
    async with serving(account_settings(database, tmp_path)) as (_app, client):
        user_id = await register(client, "pruned@example.com")
        await json_error(await login(client, "pruned@example.com", "guess-guess"), 401)
        await store.pool.execute(
            """
            INSERT INTO login_failures (email_digest, address, at)
            SELECT taskflow_email_digest('old@example.com'), 'old', now() - interval '1 day'
            FROM generate_series(1, 50);
            INSERT INTO registration_attempts (address, at)
            SELECT 'old', now() - interval '1 day' FROM generate_series(1, 50);
            """
        )
        await store.pool.execute(
            "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES"
            " ('expired', $1, now() - interval '1 second'),"
            " ('alive', $1, now() + interval '1 hour')",
            user_id,
        )

        async def pruned() -> bool:
            counts = await store.pool.fetchrow(
                "SELECT (SELECT count(*) FROM login_failures) AS failures,"
                " (SELECT count(*) FROM registration_attempts) AS registrations,"
                " (SELECT array_agg(jti) FROM revoked_tokens) AS revoked"
            )
            return (counts["failures"], counts["registrations"], counts["revoked"]) == (
                1,
                1,
                ["alive"],
            )

        await wait_until(pruned, timeout=10, what="old rows pruned, recent ones kept")


# ----- Argon2 in its own bounded pool ------------------------------------------------


async def test_a_burst_of_logins_is_answered_503_not_queued(database: str, tmp_path: Path) -> None:
    settings = account_settings(
        database, tmp_path, password_hash_concurrency=1, password_hash_wait_seconds=0.3
    )
    async with serving(settings) as (_app, client):
        await register(client, "busy@example.com")

        async def burst() -> list[Any]:
            return await asyncio.gather(*(login(client, "busy@example.com") for _ in range(24)))

        # Nothing hangs: every answer comes, well within the deadline.
        responses = await asyncio.wait_for(burst(), timeout=60)
        statuses = sorted(response.status_code for response in responses)
        assert set(statuses) == {200, 503}, statuses
        for response in responses:
            if response.status_code == 503:
                await json_error(response, 503)
                assert int(response.headers["Retry-After"]) >= 1


async def test_a_login_is_answered_while_others_saturate_the_pool(
    database: str, tmp_path: Path
) -> None:
    settings = account_settings(
        database, tmp_path, password_hash_concurrency=1, password_hash_wait_seconds=1
    )
    async with serving(settings) as (_app, client):
        await register(client, "hog@example.com")
        await register(client, "patient@example.com")
        stop = asyncio.Event()

        async def hog() -> None:
            while not stop.is_set():
                await login(client, "hog@example.com")

        hogs = [asyncio.create_task(hog()) for _ in range(12)]
        try:
            await asyncio.sleep(0.5)
            for _ in range(3):
                response = await asyncio.wait_for(login(client, "patient@example.com"), 10)
                assert response.status_code in (200, 503), await response.get_data()
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*hogs), 30)


# ----- logs --------------------------------------------------------------------------


async def test_logs_hold_no_password_or_token(
    database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(account_settings(database, tmp_path)) as (_app, client):
        await register(client, "quiet@example.com")
        headers = await bearer(client, "quiet@example.com")
        token = headers["Authorization"].removeprefix("Bearer ")
        await login(client, "quiet@example.com", "wrong-password-123")
        await client.post(
            "/api/password",
            headers=headers,
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        )
        await client.post("/api/logout", headers=headers)
        await client.get("/api/tasks", headers=headers)
    assert any(record.message == "request" for record in caplog.records)
    for record in caplog.records:
        text = repr(record.__dict__) + record.getMessage()
        for secret in (PASSWORD, NEW_PASSWORD, "wrong-password-123", token):
            assert secret not in text, record


# ----- the schema --------------------------------------------------------------------


async def test_token_versions_only_move_forward(store: Store) -> None:
    user_id = await store.insert_user("versions@example.com", "hash-1")
    version = await store.pool.fetchval("SELECT token_version FROM users WHERE id = $1", user_id)
    # A new password hash, set by hand in psql, signs the user out too.
    await store.pool.execute("UPDATE users SET password_hash = 'hash-2' WHERE id = $1", user_id)
    bumped = await store.pool.fetchval("SELECT token_version FROM users WHERE id = $1", user_id)
    assert bumped == version + 1
    with pytest.raises(asyncpg.CheckViolationError):
        await store.pool.execute("UPDATE users SET token_version = 0 WHERE id = $1", user_id)


async def test_version_claims_of_tokens_are_checked(database: str, tmp_path: Path) -> None:
    """A token carries its user's token version; issue_token's default (0) is
    what users start with, so a token from before a change is refused."""
    from taskflow.auth import issue_token
    from tests.conftest import TEST_SECRET

    async with serving(account_settings(database, tmp_path)) as (_app, client):
        user_id = await register(client, "claims@example.com")
        old = {"Authorization": f"Bearer {issue_token(user_id, TEST_SECRET.encode(), 600)}"}
        assert not await refused(client, old)
        headers = await bearer(client, "claims@example.com")
        await client.post(
            "/api/password",
            headers=headers,
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        )
        assert await refused(client, old)
        newer = issue_token(user_id, TEST_SECRET.encode(), 600, token_version=1)
        assert not await refused(client, {"Authorization": f"Bearer {newer}"})
