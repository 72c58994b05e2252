"""The pages every user has besides tasks and files: their schedules
(create, pause, resume, delete), their limits and what they use of them,
and a task's dependencies and dependents as links on its page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.browser.actions import api_as, sign_up, token_of
from tests.browser.conftest import Stack, require_browser, screenshot, unique_email

require_browser()

from playwright.sync_api import expect  # noqa: E402  (after the check above)

pytestmark = pytest.mark.browser


def test_create_pause_resume_and_delete_a_schedule(page: Any, stack: Stack) -> None:
    email = unique_email("scheduler")
    sign_up(page, email)
    page.locator('#nav a[data-nav="schedules"]').click()
    form = page.locator("#new-schedule")
    # Its fields, and the payload fields of the type chosen, from the document.
    expect(form.locator('[name="timezone"]')).to_have_attribute("placeholder", "UTC")
    page.select_option("#new-schedule-type", "test_noop")
    form.locator('[name="name"]').fill("every morning")
    form.locator('[name="cron"]').fill("every morning")
    form.locator('[name="n"]').fill("5")
    form.locator('button[type="submit"]').click()
    cron = form.locator('[name="cron"]')
    expect(cron).to_have_attribute("aria-invalid", "true")
    expect(form.locator('[data-error-for="cron"]')).not_to_be_empty()
    expect(cron).to_be_focused()

    cron.fill("30 7 * * 1-5")
    form.locator('[name="timezone"]').fill("Europe/Berlin")
    with page.expect_response(
        lambda r: r.url.endswith("/api/schedules") and r.request.method == "POST"
    ) as created:
        form.locator('button[type="submit"]').click()
    assert created.value.status == 201, created.value.text()
    schedule = created.value.json()
    assert (schedule["type"], schedule["payload"], schedule["timezone"]) == (
        "test_noop",
        {"n": 5},
        "Europe/Berlin",
    )
    line = page.locator(f'#schedules-table tr[data-schedule-id="{schedule["id"]}"]')
    expect(line).to_have_attribute("data-state", "active")
    expect(line).to_contain_text("30 7 * * 1-5")
    expect(line.locator("time").first).not_to_be_empty()  # its next run
    screenshot(page, "10-schedules", for_readme=True)

    line.locator('[data-action="pause"]').click()
    expect(line).to_have_attribute("data-state", "paused")
    assert stack.sql("SELECT paused FROM schedules WHERE id = $1", schedule["id"]) == [(True,)]
    line.locator('[data-action="resume"]').click()
    expect(line).to_have_attribute("data-state", "active")
    line.locator('[data-action="delete"]').click()
    expect(line).to_have_count(0)
    expect(page.locator("#schedules-table tr.empty")).to_be_visible()
    assert stack.sql("SELECT id FROM schedules WHERE id = $1", schedule["id"]) == []


def test_my_limits_and_what_i_use(page: Any) -> None:
    sign_up(page, unique_email("limited"))
    token = token_of(page)
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for _ in range(2):
        body = {"type": "test_noop", "payload": {}, "run_at": later}
        assert api_as(page, token, "POST", "/api/tasks", data=body).status == 201
    limits = api_as(page, token, "GET", "/api/limits").json()
    page.locator('#nav a[data-nav="limits"]').click()
    rows = page.locator("#limits-table tbody tr")
    expect(rows).to_have_count(len(limits["limits"]))
    active = page.locator('#limits-table tr[data-limit="user_max_active_tasks"]')
    expect(active.locator(".used")).to_have_text("2")
    expect(active.locator(".allowed")).to_have_text(
        str(limits["limits"]["user_max_active_tasks"]["limit"])
    )
    # What each limit means is the document's description of it.
    document = page.request.get("/api/openapi.json").json()
    described = document["components"]["schemas"]["Limits"]["properties"]
    expect(active).to_contain_text(described["user_max_active_tasks"]["description"])
    files = page.locator('#limits-table tr[data-limit="user_files_max_bytes"]')
    expect(files.locator(".allowed")).to_have_text("1.0 GiB")
    expect(page.locator("#my-weight")).to_contain_text("weight is 1")
    screenshot(page, "16-limits", for_readme=True)


def test_a_task_page_links_its_dependencies_and_dependents(page: Any) -> None:
    sign_up(page, unique_email("graph"))
    token = token_of(page)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    batch = {
        "tasks": [
            {"type": "test_noop", "payload": {}, "run_at": later},
            {"type": "test_gather", "payload": {"n": 1}, "depends_on": ["#0"]},
        ]
    }
    first, second = api_as(page, token, "POST", "/api/tasks/batch", data=batch).json()
    page.goto(f"/#/tasks/{second['id']}")
    waits_for = page.locator("#task-dependencies li")
    expect(waits_for).to_have_count(1)
    expect(waits_for).to_have_attribute("data-status", "postponed")
    expect(page.locator("#task-dependents")).to_contain_text("Nothing waits for this task.")
    waits_for.locator("a").click()
    expect(page).to_have_url(f"{page.url.split('#')[0]}#/tasks/{first['id']}")
    waited_by = page.locator("#task-dependents li")
    expect(waited_by).to_have_attribute("data-task-id", second["id"])
    expect(waited_by.locator(".badge")).to_have_text("blocked")
    expect(page.locator("#task-dependencies")).to_contain_text("No dependencies.")
    # Cancelling the dependency cancels what waits for it; the page says so.
    page.locator('#task .head-right [data-action="cancel"]').click()
    expect(page.locator("#task .head-right .badge")).to_have_text("cancelled")
    expect(waited_by.locator(".badge")).to_have_text("cancelled")
