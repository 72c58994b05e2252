"""What a user does in the dashboard, for the browser tests: sign up and in,
fill in the forms, find a row, call the API with the page's token."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD

LIVE_TIMEOUT_MS = 30_000


def sign_up(page: Any, email: str) -> None:
    page.goto("/#/login")
    form = page.locator("#register")
    form.locator('input[name="email"]').fill(email)
    form.locator('input[name="password"]').fill(PASSWORD)
    form.locator('button[type="submit"]').click()
    expect(page.locator("#tasks-table")).to_be_visible()
    expect(page.locator("#session-email")).to_have_text(email)


def sign_in(page: Any, email: str, password: str = PASSWORD) -> None:
    page.goto("/#/login")
    form = page.locator("#sign-in")
    form.locator('input[name="email"]').fill(email)
    form.locator('input[name="password"]').fill(password)
    form.locator('button[type="submit"]').click()


def sign_out(page: Any) -> None:
    page.locator("#sign-out").click()
    expect(page.locator("#sign-in")).to_be_visible()


def fill_task_form(
    page: Any, task_type: str, fields: dict[str, str | bool], run_at: datetime | None = None
) -> Any:
    if not page.locator("#new-task").is_visible():
        page.locator('#nav a[data-nav="tasks"]').click()
    page.select_option("#new-task-type", task_type)
    form = page.locator("#new-task")
    for name, value in fields.items():
        element = form.locator(f'[name="{name}"]')
        if isinstance(value, bool):
            element.set_checked(value)
        else:
            element.fill(value)
    if run_at is not None:
        form.locator("details.options summary").click()
        # The browser runs in UTC (the context's timezone_id).
        form.locator('[name="run_at"]').fill(run_at.strftime("%Y-%m-%dT%H:%M:%S"))
    return form


def create_task(
    page: Any, task_type: str, fields: dict[str, str | bool], run_at: datetime | None = None
) -> dict[str, Any]:
    """Fill in and submit the create form; return the task the API created."""
    form = fill_task_form(page, task_type, fields, run_at)
    with page.expect_response(
        lambda r: r.url.endswith("/api/tasks") and r.request.method == "POST"
    ) as created:
        form.locator('button[type="submit"]').click()
    response = created.value
    assert response.status == 201, response.text()
    task: dict[str, Any] = response.json()
    expect(row(page, task["id"])).to_be_visible()
    return task


def row(page: Any, task_id: str) -> Any:
    return page.locator(f'#tasks-table tr[data-task-id="{task_id}"]')


def wait_for_status(page: Any, task_id: str, status: str) -> None:
    expect(row(page, task_id)).to_have_attribute("data-status", status, timeout=LIVE_TIMEOUT_MS)


def mark_document(page: Any) -> None:
    """A flag a reload would lose: proves that what follows happened live."""
    page.evaluate("window.__sameDocument = true")


def assert_same_document(page: Any) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"


def token_of(page: Any) -> str:
    token: str = page.evaluate("sessionStorage.getItem('taskflow.token')")
    assert token
    return token


def api_as(page: Any, token: str, method: str, path: str, **kwargs: Any) -> Any:
    return page.request.fetch(
        path, method=method, headers={"Authorization": f"Bearer {token}"}, **kwargs
    )


def png(tmp_path: Path, name: str = "photo.png") -> Path:
    """A small, colourful PNG: a processed copy must look different."""
    image = Image.new("RGB", (240, 160))
    image.putdata(
        [(x, y + 60, (x * y) % 256) for y in range(160) for x in range(240)]  # type: ignore[arg-type]
    )
    path = tmp_path / name
    image.save(path)
    return path


def upload(page: Any, path: Path) -> None:
    page.locator('#nav a[data-nav="files"]').click()
    page.set_input_files("#upload-input", str(path))
    with page.expect_response(
        lambda r: "/api/files" in r.url and r.request.method == "POST"
    ) as uploaded:
        page.locator('#upload button[type="submit"]').click()
    assert uploaded.value.status == 201, uploaded.value.text()
    expect(page.locator(f'#files-table tr[data-file="{path.name}"]')).to_be_visible()


def register(page: Any, email: str) -> str:
    """Another user, signed up through the API (not this page): their token."""
    credentials = {"email": email, "password": PASSWORD}
    assert page.request.post("/api/register", data=credentials).status == 201
    answer = page.request.post("/api/login", data=credentials)
    assert answer.status == 200, answer.text()
    token: str = answer.json()["access_token"]
    return token


def sign_up_as_admin(page: Any, stack: Any, email: str) -> None:
    """Sign up, be marked admin as an operator would in psql, sign in again."""
    sign_up(page, email)
    stack.sql("UPDATE users SET is_admin = true WHERE email = $1", email)
    sign_out(page)
    sign_in(page, email)
    expect(page.locator("#nav-admin")).to_be_visible()


def wait_for_sql(stack: Any, query: str, *args: Any, expected: Any, seconds: float = 30) -> None:
    """Poll a query until its first value is ``expected``."""
    deadline = time.monotonic() + seconds
    while True:
        rows = stack.sql(query, *args)
        value = rows[0][0] if rows else None
        if value == expected:
            return
        assert time.monotonic() < deadline, f"{query} is {value!r}, not {expected!r}"
        time.sleep(0.1)
