"""The operator tools in the dashboard, for admins only: bulk retry and
cancel of what a filter matches (the count shown, confirmed by name, then
acted on), any user's task from the overview's links, the throughput chart's
scale, pausing and resuming a task type, every user's schedules and shares.
Screenshots of each page go to test-artifacts/screenshots/ (and to
ops/screenshots/ with TASKFLOW_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.browser.actions import (
    LIVE_TIMEOUT_MS,
    api_as,
    register,
    sign_up,
    sign_up_as_admin,
    token_of,
    wait_for_sql,
)
from tests.browser.conftest import PageWatch, Stack, require_browser, screenshot, unique_email

require_browser()

from playwright.sync_api import expect  # noqa: E402  (after the check above)

pytestmark = pytest.mark.browser

FAIL = {"type": "test_fail", "payload": {"kind": "permanent"}, "max_retries": 0}
OPERATOR_PAGES = ("#/admin", "#/admin/tasks", "#/admin/types", "#/admin/schedules", "#/admin/users")


def statuses(stack: Stack, email: str, task_type: str) -> list[str]:
    rows = stack.sql(
        "SELECT t.status::text FROM tasks t JOIN users u ON u.id = t.user_id "
        "WHERE u.email = $1 AND t.type = $2 ORDER BY t.id",
        email,
        task_type,
    )
    return [row[0] for row in rows]


def test_non_admins_never_see_the_operator_tools(page: Any, stack: Stack) -> None:
    sign_up(page, unique_email("plain"))
    token = token_of(page)
    expect(page.locator("#nav-admin")).to_be_hidden()
    task = api_as(page, token, "POST", "/api/tasks", data=FAIL).json()
    for target in (*OPERATOR_PAGES, f"#/admin/tasks/{task['id']}", "#/admin/tasks?status=failed"):
        page.goto(f"/{target}")
        expect(page.locator("#forbidden")).to_contain_text("Operators only")
        expect(page.locator("#operator-nav")).to_be_hidden()
        expect(page.locator(".operator-body")).to_be_hidden()
        expect(page.locator("#bulk, #operator-filter, #task-types, #user-shares")).to_have_count(0)
    for method, path in (
        ("GET", "/api/admin/tasks"),
        ("POST", "/api/admin/tasks/bulk-retry"),
        ("POST", "/api/admin/tasks/bulk-cancel"),
        ("GET", f"/api/admin/tasks/{task['id']}"),
        ("POST", "/api/admin/task-types/test_fail/pause"),
        ("GET", "/api/admin/schedules"),
        ("GET", "/api/admin/user-shares"),
    ):
        assert api_as(page, token, method, path, data={}).status == 403, path


def test_bulk_retry_and_cancel_count_confirm_then_act(
    context: Any, watch: PageWatch, stack: Stack
) -> None:
    page = context.new_page()
    page.on("pageerror", lambda error: watch.errors.append(f"page error: {error}"))
    dialogs: list[str] = []
    answers: list[bool] = []

    def dialog(box: Any) -> None:
        dialogs.append(box.message)
        if answers.pop(0):
            box.accept()
        else:
            box.dismiss()

    page.on("dialog", dialog)
    admin = unique_email("bulk-admin")
    sign_up_as_admin(page, stack, admin)
    owner = unique_email("bulk-owner")
    token = register(page, owner)
    for _ in range(3):
        assert api_as(page, token, "POST", "/api/tasks", data=FAIL).status == 201
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for subject in ("one", "two"):
        email = {"type": "send_email", "payload": {"to": "x@example.com", "subject": subject}}
        assert api_as(page, token, "POST", "/api/tasks", data={**email, "run_at": later}).ok
    # The admin's own failure: another owner, so the filter leaves it out.
    assert api_as(page, token_of(page), "POST", "/api/tasks", data=FAIL).status == 201
    query = (
        "SELECT count(*) FROM tasks t JOIN users u ON u.id = t.user_id "
        "WHERE u.email = $1 AND t.type = 'test_fail' AND t.status = 'failed'"
    )
    wait_for_sql(stack, query, owner, expected=3)
    wait_for_sql(stack, query, admin, expected=1)

    page.goto(f"/#/admin/tasks?status=failed&type=test_fail&email={owner}")
    count = page.locator("#bulk-count")
    expect(count).to_contain_text("3 tasks match")
    expect(count).to_contain_text("3 can be retried")
    expect(page.locator("#operator-tasks-table tbody tr")).to_have_count(3)
    expect(page.locator("#operator-tasks-table tbody")).not_to_contain_text(admin)
    retry = page.locator("#bulk-retry")
    expect(retry).to_have_text("Retry 3…")

    # Asked first, naming the number; "no" changes nothing.
    answers.append(False)
    retry.click()
    expect(page.locator("#bulk-result")).to_be_empty()
    assert dialogs[-1].startswith("Retry 3 failed or cancelled tasks with status failed")
    assert owner in dialogs[-1]
    assert statuses(stack, owner, "test_fail") == ["failed"] * 3

    answers.append(True)
    page.locator("#bulk-reason").fill("handler fixed")
    retry.click()
    expect(page.locator("#bulk-result")).to_have_text("Retried 3 tasks.")
    rows = stack.sql(
        "SELECT h.actor, h.error FROM task_history h JOIN tasks t ON t.id = h.task_id "
        "JOIN users u ON u.id = t.user_id WHERE u.email = $1 AND h.event = 'retried'",
        owner,
    )
    assert [tuple(row) for row in rows] == [(f"dashboard:{admin}", "handler fixed")] * 3
    # They run again (and fail again, as they always do); the admin's own stays.
    wait_for_sql(stack, query, owner, expected=3)
    assert stack.sql(
        "SELECT count(*) FROM task_history h JOIN tasks t ON t.id = h.task_id "
        "JOIN users u ON u.id = t.user_id WHERE u.email = $1 AND h.event = 'retried'",
        admin,
    ) == [(0,)]
    screenshot(page, "11-operator-tasks", for_readme=True)

    # Now the waiting emails: a new filter, a new count, a cancel.
    page.select_option("#operator-status", "postponed")
    page.select_option("#operator-type", "send_email")
    page.locator('#operator-filter button[type="submit"]').click()
    expect(count).to_contain_text("2 tasks match")
    expect(count).to_contain_text("2 can be cancelled")
    expect(page.locator("#bulk-retry")).to_be_disabled()
    answers.append(True)
    page.locator("#bulk-cancel").click()
    expect(page.locator("#bulk-result")).to_have_text("Cancelled 2 tasks.")
    assert dialogs[-1].startswith("Cancel 2 unfinished tasks with status postponed")
    assert statuses(stack, owner, "send_email") == ["cancelled", "cancelled"]
    expect(count).to_contain_text("0 tasks match")
    assert re.search(r"status=postponed", page.url)
    page.close()
    assert watch.errors == []


def test_the_overview_links_to_any_users_task_and_its_chart_has_a_scale(
    page: Any, stack: Stack
) -> None:
    admin = unique_email("links-admin")
    sign_up_as_admin(page, stack, admin)
    owner = unique_email("links-owner")
    token = register(page, owner)
    noop = {"type": "test_noop", "payload": {"n": 1}}
    batch = {"tasks": [FAIL, {**noop, "depends_on": ["#0"]}]}
    failing, waiting = api_as(page, token, "POST", "/api/tasks/batch", data=batch).json()
    wait_for_sql(
        stack, "SELECT status::text FROM tasks WHERE id = $1", waiting["id"], expected="cancelled"
    )

    # A stuck task is rare on a live stack (the scheduler rescues it within a
    # tick): one is added to the overview's answer, to see its link.
    def with_stuck(route: Any) -> None:
        overview = route.fetch().json()
        overview["stuck"] = {
            "total": 1,
            "items": [
                {
                    "id": waiting["id"],
                    "user_id": waiting["user_id"],
                    "type": "test_noop",
                    "worker_id": "gone-worker",
                    "attempts": 1,
                    "max_retries": 3,
                    "lease_expires_at": waiting["created_at"],
                    "worker_alive": False,
                }
            ],
        }
        route.fulfill(json=overview)

    page.route("**/api/admin/overview", with_stuck)
    page.locator("#nav-admin").click()
    stuck = page.locator(f'#stuck a[href="#/admin/tasks/{waiting["id"]}"]')
    expect(stuck).to_be_visible()

    chart = page.locator("#throughput #sparkline")
    expect(chart.locator("circle")).to_have_count(60)
    text_of = "items => items.map(item => item.textContent)"  # SVG text has no innerText
    ticks = chart.locator(".y-axis .tick").evaluate_all(text_of)
    values = [int(text) for text in ticks]
    assert values[0] == 0
    assert values == sorted(values)
    assert len(set(values)) == len(values) >= 3
    times = chart.locator(".x-axis .tick").evaluate_all(text_of)
    assert len(times) == 4
    assert all(re.fullmatch(r"\d\d:\d\d", text) for text in times)
    expect(chart.locator(".axis-title")).to_have_text(
        ["tasks / minute", "time (UTC), one point a minute"]
    )
    expect(chart).to_have_attribute("aria-label", re.compile(r"^Tasks per minute from \d\d:\d\d"))

    link = page.locator(f'#failures a[href="#/admin/tasks/{failing["id"]}"]')
    expect(link).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    link.click()
    expect(page.locator("#operator-owner")).to_contain_text(owner)
    details = page.locator("#operator-task")
    expect(details).to_contain_text("permanent failure on attempt 1")
    expect(page.locator("#operator-payload")).to_contain_text('"kind": "permanent"')
    history = page.locator("#task-history li")
    expect(history).to_have_count(3)
    assert history.evaluate_all("items => items.map(i => i.dataset.event)") == [
        "created",
        "claimed",
        "failed",
    ]
    expect(page.locator('#operator-nav a[aria-current="true"]')).to_have_text("Tasks")
    page.wait_for_timeout(300)
    screenshot(page, "12-operator-task", for_readme=True)

    # Its dependent, a link to its own page, and back by its dependency.
    page.locator(f'#task-dependents a[href="#/admin/tasks/{waiting["id"]}"]').click()
    expect(page.locator("#operator-task .badge").first).to_have_text("cancelled")
    expect(page.locator("#operator-task")).to_contain_text(f"dependency {failing['id']} failed")
    page.locator(f'#task-dependencies a[href="#/admin/tasks/{failing["id"]}"]').click()
    expect(page.locator("#operator-payload")).to_contain_text("permanent")


def test_pause_and_resume_a_task_type(page: Any, stack: Stack) -> None:
    admin = unique_email("types-admin")
    sign_up_as_admin(page, stack, admin)
    token = register(page, unique_email("types-owner"))
    page.goto("/#/admin/types")
    line = page.locator('#task-types-table tr[data-type="test_noop"]')
    expect(line).to_have_attribute("data-paused", "false")
    page.locator("#pause-reason").fill("maintenance window")
    line.locator('[data-action="pause"]').click()
    try:
        expect(line).to_have_attribute("data-paused", "true")
        expect(line).to_contain_text("maintenance window")
        expect(line).to_contain_text(f"dashboard:{admin}")
        assert stack.sql("SELECT reason FROM paused_task_types WHERE type = 'test_noop'") == [
            ("maintenance window",)
        ]
        body = {"type": "test_noop", "payload": {}}
        task_id = api_as(page, token, "POST", "/api/tasks", data=body).json()["id"]
        page.wait_for_timeout(2000)  # many scheduler ticks and worker polls: still waiting
        assert stack.sql("SELECT status::text FROM tasks WHERE id = $1", task_id) == [("queued",)]
        page.locator("#task-types-refresh").click()
        expect(line.locator("td").nth(2)).to_have_text("1")
        screenshot(page, "13-task-types", for_readme=True)

        line.locator('[data-action="resume"]').click()
        expect(line).to_have_attribute("data-paused", "false")
        wait_for_sql(
            stack, "SELECT status::text FROM tasks WHERE id = $1", task_id, expected="done"
        )
    finally:
        # The other tests of this stack run test_noop tasks.
        stack.sql("SELECT taskflow_resume_type('test_noop')")


def test_every_users_schedules_and_shares(page: Any, stack: Stack) -> None:
    sign_up_as_admin(page, stack, unique_email("lists-admin"))
    owner = unique_email("lists-owner")
    token = register(page, owner)
    schedule = {"name": "nightly report", "cron": "0 3 * * *", "type": "test_noop", "payload": {}}
    assert api_as(page, token, "POST", "/api/schedules", data=schedule).status == 201
    page.goto("/#/admin/schedules")
    line = page.locator("#all-schedules tbody tr", has_text=owner)
    expect(line).to_contain_text("nightly report")
    expect(line).to_contain_text("0 3 * * *")
    expect(line).to_have_attribute("data-state", "active")
    screenshot(page, "14-all-schedules", for_readme=True)

    # Queued work held back by a paused type, and a weight set in psql.
    stack.sql("SELECT taskflow_pause_type('test_gather')")
    try:
        for _ in range(3):
            body = {"type": "test_gather", "payload": {}}
            assert api_as(page, token, "POST", "/api/tasks", data=body).status == 201
        stack.sql(
            "INSERT INTO user_limits (user_id, weight, max_running) "
            "SELECT id, 2, 5 FROM users WHERE email = $1",
            owner,
        )
        page.locator('#operator-nav a[href="#/admin/users"]').click()
        share = page.locator("#user-shares tbody tr", has_text=owner)
        cells = share.locator("td")
        expect(cells.nth(1)).to_have_text("2")  # weight
        expect(cells.nth(4)).to_have_text("3")  # queued
        expect(cells.nth(7)).to_have_text("5")  # max running
        screenshot(page, "15-user-shares", for_readme=True)
    finally:
        stack.sql("SELECT taskflow_resume_type('test_gather')")
