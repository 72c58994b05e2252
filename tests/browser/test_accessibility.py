"""Accessibility of every page of the dashboard: an automated audit with
axe-core (tests/browser/axe.min.js, MPL-2.0, served from here: nothing comes
from a CDN) that must find nothing, plus what an audit cannot judge by
itself: where focus goes after an error, what a screen reader hears, which
nav link is the current page, and motion for people who asked for less."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.browser.actions import (
    api_as,
    create_task,
    fill_task_form,
    png,
    row,
    sign_in,
    sign_out,
    sign_up,
    token_of,
    upload,
    wait_for_status,
)
from tests.browser.audit import assert_accessible, settle
from tests.browser.conftest import Stack, require_browser, screenshot, unique_email

require_browser()

from playwright.sync_api import expect  # noqa: E402  (after the check above)

pytestmark = pytest.mark.browser


def test_the_sign_in_page_passes_an_audit(page: Any) -> None:
    page.goto("/#/login")
    expect(page.locator("#sign-in")).to_be_visible()
    assert_accessible(page)
    # With the API's errors shown on both forms.
    register = page.locator("#register")
    register.locator('input[name="email"]').fill("not-an-email")
    register.locator('input[name="password"]').fill("123")
    register.locator('button[type="submit"]').click()
    expect(register.locator('[data-error-for="password"]')).to_be_visible()
    sign_in(page, unique_email("nobody"), "wrong-password")
    expect(page.locator('#sign-in [data-error-for="(form)"]')).to_contain_text("Invalid")
    assert_accessible(page)


def test_the_tasks_page_passes_an_audit(page: Any, stack: Stack) -> None:
    sign_up(page, unique_email("audit-tasks"))
    token = token_of(page)
    # A row in each look the table has: done, failed, waiting and running.
    for body in (
        {"type": "send_email", "payload": {"to": "a@example.com", "subject": "done"}},
        {"type": "download_files", "payload": {"urls": [stack.http.url("/status/404")]}},
        {
            "type": "send_email",
            "payload": {"to": "b@example.com", "subject": "later"},
            "run_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        },
        {"type": "test_sleep", "payload": {"seconds": 60}},
    ):
        assert api_as(page, token, "POST", "/api/tasks", data=body).status == 201
    page.reload()
    statuses = page.locator("#tasks-table tbody tr")
    expect(statuses).to_have_count(4)
    for status in ("done", "failed", "postponed", "processing"):
        expect(page.locator(f'#tasks-table tr[data-status="{status}"]')).to_have_count(
            1, timeout=30_000
        )
    settle(page)
    assert_accessible(page)
    # The running task's slot back for the other tests.
    page.locator('#tasks-table tr[data-status="processing"] [data-action="cancel"]').click()
    expect(page.locator('#tasks-table tr[data-status="cancelled"]')).to_have_count(1)


def test_the_new_task_form_with_errors_passes_an_audit(page: Any) -> None:
    sign_up(page, unique_email("audit-form"))
    form = fill_task_form(page, "process_image", {"path": "", "contrast": "500", "blur": "-1"})
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-error-for="contrast"]')).to_be_visible()
    settle(page)
    assert_accessible(page)
    screenshot(page, "08-new-task-errors", for_readme=True)


def test_a_task_page_passes_an_audit(page: Any, tmp_path: Path) -> None:
    sign_up(page, unique_email("audit-task"))
    upload(page, png(tmp_path))
    task = create_task(page, "process_image", {"path": "photo.png", "grayscale": True})
    wait_for_status(page, task["id"], "done")
    row(page, task["id"]).locator("a.mono").click()
    expect(page.locator("#result-thumbnail")).to_have_attribute("src", re.compile(r"^blob:"))
    page.wait_for_function("document.querySelector('#result-thumbnail').naturalWidth === 240")
    expect(page.locator("#task-history li")).to_have_count(3)
    settle(page)
    assert_accessible(page)


def test_the_files_page_passes_an_audit(page: Any, tmp_path: Path) -> None:
    sign_up(page, unique_email("audit-files"))
    upload(page, png(tmp_path))
    settle(page, live=False)
    assert_accessible(page)


def test_the_operator_pages_pass_an_audit(page: Any, stack: Stack) -> None:
    email = unique_email("audit-operator")
    sign_up(page, email)
    page.goto("/#/admin")
    expect(page.locator("#forbidden")).to_be_visible()
    settle(page, live=False)
    assert_accessible(page)
    stack.sql("UPDATE users SET is_admin = true WHERE email = $1", email)
    sign_out(page)
    sign_in(page, email)
    page.locator("#nav-admin").click()
    expect(page.locator("#overview #queue-depth .tile")).not_to_have_count(0)
    expect(page.locator("#workers-alive")).to_have_text("1 alive")
    settle(page, live=False)
    assert_accessible(page)


# ----- what an audit cannot judge


def test_errors_are_announced_linked_to_their_fields_and_focused(page: Any) -> None:
    sign_up(page, unique_email("errors"))
    expect(page.locator("#new-task-type")).to_have_accessible_name("Type")
    form = fill_task_form(page, "send_email", {"to": "nobody", "subject": "hi"})
    form.locator('button[type="submit"]').click()
    to = form.locator('[name="to"]')
    slot = form.locator('[data-error-for="to"]')
    expect(slot).to_contain_text("email")
    # The field says it is wrong, and why; focus is on it.
    expect(to).to_have_attribute("aria-invalid", "true")
    expect(to).to_have_accessible_description(slot.inner_text())
    expect(to).to_be_focused()
    # The form's summary is a live region: read out as it appears.
    summary = form.locator('[data-error-for="(form)"]')
    expect(summary).to_have_attribute("role", "alert")
    expect(summary).not_to_be_empty()

    # Put right, the field is no longer marked.
    fill_task_form(page, "send_email", {"to": "someone@example.com", "subject": ""})
    form.locator('button[type="submit"]').click()
    expect(summary).to_contain_text("at least one of subject, body, attached_files")
    expect(to).not_to_have_attribute("aria-invalid", "true")
    expect(to).to_have_accessible_description("")
    # An error about no one field: focus goes to the summary itself.
    expect(summary).to_be_focused()

    # A field inside the closed options: they open, and it gets the focus.
    fill_task_form(page, "send_email", {"to": "someone@example.com", "subject": "hi"})
    form.locator('[name="max_retries"]').evaluate("(input) => { input.value = '99'; }")
    form.locator('button[type="submit"]').click()
    retries = form.locator('[name="max_retries"]')
    expect(retries).to_have_attribute("aria-invalid", "true")
    expect(retries).to_be_focused()

    # The sign-in forms do the same.
    sign_out(page)
    register = page.locator("#register")
    register.locator('input[name="email"]').fill("not-an-email")
    register.locator('input[name="password"]').fill("correct-horse")
    register.locator('button[type="submit"]').click()
    email = register.locator('input[name="email"]')
    expect(email).to_have_attribute("aria-invalid", "true")
    expect(email).to_be_focused()


def test_the_current_page_is_marked_in_the_nav(page: Any) -> None:
    sign_up(page, unique_email("nav"))
    tasks = page.locator('#nav a[data-nav="tasks"]')
    files = page.locator('#nav a[data-nav="files"]')
    expect(tasks).to_have_attribute("aria-current", "page")
    expect(files).not_to_have_attribute("aria-current", "page")
    files.click()
    expect(files).to_have_attribute("aria-current", "page")
    expect(tasks).not_to_have_attribute("aria-current", "page")


def test_the_processing_badge_holds_still_for_reduced_motion(page: Any) -> None:
    sign_up(page, unique_email("motion"))
    token = token_of(page)
    body = {"type": "test_sleep", "payload": {"seconds": 60}}
    task = api_as(page, token, "POST", "/api/tasks", data=body).json()
    badge = row(page, task["id"]).locator(".badge")
    expect(badge).to_have_text("processing", timeout=30_000)
    assert badge.evaluate("(b) => getComputedStyle(b).animationName") != "none"
    page.emulate_media(reduced_motion="reduce")
    assert badge.evaluate("(b) => getComputedStyle(b).animationName") == "none"
    # Held still or pulsing, its text keeps its contrast: the pulse is a ring
    # around the badge, not a fade of the badge.
    page.emulate_media(reduced_motion="no-preference")
    assert badge.evaluate("(b) => getComputedStyle(b).opacity") == "1"
    fades = """(badge) => badge.getAnimations().some(
        (animation) => animation.effect.getKeyframes().some((frame) => "opacity" in frame))"""
    assert badge.evaluate(fades) is False
    api_as(page, token, "POST", f"/api/tasks/{task['id']}/cancel")
