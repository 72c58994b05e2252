"""A real TaskFlow stack and a headless Chromium for the dashboard tests.

One stack per module: a fresh database cloned from the migrated template, the
API, a scheduler and a worker as subprocesses (``python -m taskflow ...``),
with an SMTP server and an HTTP server standing in for the outside world.
Tests share the stack and tell themselves apart by signing up their own users.

Chromium is the system's (Debian packages ``chromium`` and
``chromium-driver``; ``./ops/test`` installs them when missing), driven by
Playwright's Python package. ``playwright install`` is never needed: the
browser is launched from ``CHROMIUM`` with the flags below, and every request
to anything but the stack under test is refused, so a page that needed a CDN
or the internet would fail its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from playwright import sync_api

from tests.conftest import RUN_ID, _admin, dsn_for
from tests.processes import REPO, Component, component_env, free_port, wait_for_http
from tests.servers import HTTPTestServer, SMTPTestServer

CHROMIUM = os.environ.get("TASKFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
LOGS = REPO / "test-artifacts" / "browser-logs"
# The ones the README shows (for_readme=True); refreshed only when asked
# (TASKFLOW_UPDATE_SCREENSHOTS=1), so a test run leaves the work tree clean.
README_SCREENSHOTS = REPO / "ops" / "screenshots"
UPDATE_README_SCREENSHOTS = os.environ.get("TASKFLOW_UPDATE_SCREENSHOTS") == "1"
PASSWORD = "correct-horse-battery"
T = TypeVar("T")


def require_browser() -> None:
    """Fail loudly, not skip, when Chromium is missing: ./ops/test installs it."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver")


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from a sync test. In a thread of its own:
    Playwright's sync API keeps an event loop running in the test's thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


@dataclass
class Stack:
    base_url: str
    dsn: str
    smtp: SMTPTestServer
    http: HTTPTestServer
    files: Path
    components: list[Component] = field(default_factory=list)

    def sql(self, query: str, *args: Any) -> Any:
        """Run one statement as an operator would in psql; returns its rows."""

        async def run() -> Any:
            connection = await asyncpg.connect(self.dsn)
            try:
                return await connection.fetch(query, *args)
            finally:
                await connection.close()

        return run_async(run)


@pytest.fixture(scope="module")
def stack(template_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    name = f"taskflow_test_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    run_async(lambda: _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    directory = tmp_path_factory.mktemp("stack")
    port = free_port()
    smtp = SMTPTestServer().__enter__()
    http = HTTPTestServer().__enter__()
    env = component_env(
        directory,
        dsn_for(name),
        queue=None,  # no broker: workers are woken by LISTEN/NOTIFY
        tunables={
            "scheduler_interval_ms": 200,
            "worker_poll_interval_ms": 500,
            "download_allow_private": True,
            "lease_seconds": 10,
        },
        MAIL_HOST=smtp.host,
        MAIL_PORT=str(smtp.port),
        MAIL_FROM="dashboard@example.com",
    )
    logs = LOGS / name
    stack = Stack(
        base_url=f"http://127.0.0.1:{port}",
        dsn=dsn_for(name),
        smtp=smtp,
        http=http,
        files=directory / "files",
    )
    try:
        stack.components = [
            Component("api", ["api", "--host", "127.0.0.1", "--port", str(port)], env, logs),
            Component("scheduler", ["scheduler"], env, logs),
            Component("worker", ["worker", "--concurrency", "3"], env, logs),
        ]
        wait_for_http(f"{stack.base_url}/readyz", timeout=30)
        yield stack
    finally:
        for component in stack.components:
            if component.alive():
                # A component that will not stop is killed; its log says why.
                with contextlib.suppress(AssertionError):
                    component.terminate(20)
        http.stop()
        smtp.__exit__(None, None, None)
        run_async(lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert sync_api is not None
    playwright = sync_api.sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
    finally:
        playwright.stop()


@dataclass
class PageWatch:
    """What a page did that a test must not allow: script errors, requests
    leaving the stack."""

    errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)


@pytest.fixture
def watch() -> PageWatch:
    return PageWatch()


@pytest.fixture
def context(browser: Any, stack: Stack, watch: PageWatch) -> Iterator[Any]:
    created = browser.new_context(
        base_url=stack.base_url,
        viewport={"width": 1360, "height": 900},
        accept_downloads=True,
        timezone_id="UTC",
        locale="en-GB",
        service_workers="block",
    )
    created.set_default_timeout(15_000)

    def refuse(route: Any) -> None:
        watch.foreign_requests.append(route.request.url)
        route.abort()

    created.route(lambda url: not url.startswith(stack.base_url), refuse)
    yield created
    created.close()
    assert watch.foreign_requests == [], "the dashboard must not load anything from elsewhere"


def new_page(context: Any, watch: PageWatch) -> Any:
    page = context.new_page()
    page.on("pageerror", lambda error: watch.errors.append(f"page error: {error}"))

    def console(message: Any) -> None:
        # The browser reports every 4xx answer as a console error: those are
        # expected (a 403, a 404 for another user's task); script errors are not.
        if message.type == "error" and "Failed to load resource" not in message.text:
            watch.errors.append(f"console: {message.text}")

    page.on("console", console)
    page.on("dialog", lambda dialog: dialog.accept())
    return page


@pytest.fixture
def page(context: Any, watch: PageWatch) -> Iterator[Any]:
    opened = new_page(context, watch)
    yield opened
    assert watch.errors == []


def screenshot(page: Any, name: str, *, for_readme: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # The last action's toast would cover part of the page.
    page.evaluate("document.getElementById('toast').hidden = true")
    page.screenshot(path=str(path), full_page=True)
    if for_readme and UPDATE_README_SCREENSHOTS:
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SCREENSHOTS / path.name)
    return path


def unique_email(who: str) -> str:
    return f"{who}-{uuid.uuid4().hex[:6]}@example.com"
