"""The axe-core audit (tests/browser/audit.py) of the pages added with the
schedules, limits, dependencies and operator tools: each must have no
violation, in the states it is seen in (with rows, with errors shown, after
a bulk action, with a paused type), and the operator pages' own navigation
marks the page shown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.browser.actions import (
    api_as,
    register,
    sign_up,
    sign_up_as_admin,
    token_of,
    wait_for_sql,
)
from tests.browser.audit import assert_accessible, settle
from tests.browser.conftest import Stack, require_browser, unique_email

require_browser()

from playwright.sync_api import expect  # noqa: E402  (after the check above)

pytestmark = pytest.mark.browser

LATER = {"run_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}


def test_the_schedules_limits_and_task_pages_pass_an_audit(page: Any) -> None:
    sign_up(page, unique_email("audit-user-pages"))
    token = token_of(page)
    schedule = {"name": "hourly", "cron": "0 * * * *", "type": "test_noop", "payload": {}}
    assert api_as(page, token, "POST", "/api/schedules", data=schedule).status == 201
    page.locator('#nav a[data-nav="schedules"]').click()
    expect(page.locator("#schedules-table tbody tr[data-schedule-id]")).to_have_count(1)
    # With the API's errors shown next to the fields, and the options open.
    form = page.locator("#new-schedule")
    page.select_option("#new-schedule-type", "send_email")
    form.locator('[name="cron"]').fill("now and then")
    form.locator('[name="to"]').fill("nobody")
    form.locator("details.options summary").click()
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-error-for="cron"]')).not_to_be_empty()
    settle(page, live=False)
    assert_accessible(page)

    page.locator('#nav a[data-nav="limits"]').click()
    expect(page.locator("#limits-table tbody tr")).not_to_have_count(0)
    settle(page, live=False)
    assert_accessible(page)

    batch = {
        "tasks": [
            {"type": "test_noop", "payload": {}, **LATER},
            {"type": "test_gather", "payload": {}, "depends_on": ["#0"]},
        ]
    }
    _, second = api_as(page, token, "POST", "/api/tasks/batch", data=batch).json()
    page.goto(f"/#/tasks/{second['id']}")
    expect(page.locator("#task-dependencies li")).to_have_count(1)
    settle(page)
    assert_accessible(page)

    # The new task form of a plugin type, its options open.
    page.goto("/#/tasks")
    page.select_option("#new-task-type", "test_fail")
    page.locator("#new-task details.options summary").click()
    page.locator('#new-task button[type="submit"]').click()
    expect(page.locator('#new-task [data-error-for="kind"]')).not_to_be_empty()
    settle(page)
    assert_accessible(page)


def test_the_operator_tools_pass_an_audit(page: Any, stack: Stack) -> None:
    sign_up_as_admin(page, stack, unique_email("audit-operator-tools"))
    owner = unique_email("audit-owner")
    token = register(page, owner)
    failing = {"type": "test_fail", "payload": {"kind": "permanent"}, "max_retries": 0}
    batch = {"tasks": [failing, {"type": "test_noop", "payload": {}, "depends_on": ["#0"]}]}
    first, _ = api_as(page, token, "POST", "/api/tasks/batch", data=batch).json()
    schedule = {"name": "nightly", "cron": "0 3 * * *", "type": "test_noop", "payload": {}}
    assert api_as(page, token, "POST", "/api/schedules", data=schedule).status == 201
    later = {"type": "test_noop", "payload": {}, **LATER}
    assert api_as(page, token, "POST", "/api/tasks", data=later).status == 201
    wait_for_sql(
        stack, "SELECT status::text FROM tasks WHERE id = $1", first["id"], expected="failed"
    )

    page.goto(f"/#/admin/tasks?email={owner}")
    expect(page.locator("#bulk-count")).to_contain_text("3 tasks match")
    expect(page.locator('#operator-nav a[aria-current="page"]')).to_have_text("Tasks")
    page.locator("#bulk-cancel").click()  # the page fixture accepts the confirmation
    expect(page.locator("#bulk-result")).to_contain_text("Cancelled 1 task.")
    settle(page, live=False)
    assert_accessible(page)

    page.goto(f"/#/admin/tasks/{first['id']}")
    expect(page.locator("#task-history li")).to_have_count(3)
    expect(page.locator("#task-dependents li")).to_have_count(1)
    settle(page, live=False)
    assert_accessible(page)

    stack.sql("SELECT taskflow_pause_type('test_progress', 'audit')")
    try:
        page.goto("/#/admin/types")
        expect(page.locator('#task-types-table tr[data-paused="true"]')).to_have_count(1)
        settle(page, live=False)
        assert_accessible(page)
    finally:
        stack.sql("SELECT taskflow_resume_type('test_progress')")

    # Unfinished work again, for a row of the users' shares.
    assert api_as(page, token, "POST", "/api/tasks", data=later).status == 201
    for target, rows in (
        ("#/admin/schedules", "#all-schedules"),
        ("#/admin/users", "#user-shares"),
    ):
        page.goto(f"/{target}")
        expect(page.locator(f"{rows} tbody tr")).not_to_have_count(0)
        expect(page.locator('#operator-nav a[aria-current="page"]')).to_have_attribute(
            "href", target
        )
        settle(page, live=False)
        assert_accessible(page)
