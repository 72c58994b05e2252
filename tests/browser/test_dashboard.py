"""The dashboard in headless Chromium against a real stack (API, scheduler and
worker processes, Postgres, a local SMTP and HTTP server): sign up and in,
every task type, live updates, cancel, files, isolation between users, and
the operator overview. Screenshots of the main pages go to
test-artifacts/screenshots/ (the tasks page and the overview also to
ops/screenshots/, for the README, when TASKFLOW_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.browser.actions import (
    LIVE_TIMEOUT_MS,
    api_as,
    assert_same_document,
    create_task,
    fill_task_form,
    mark_document,
    png,
    row,
    sign_in,
    sign_out,
    sign_up,
    token_of,
    upload,
    wait_for_status,
)
from tests.browser.conftest import (
    PageWatch,
    Stack,
    new_page,
    require_browser,
    screenshot,
    unique_email,
)
from tests.servers import CONTENT_KINDS

require_browser()

from playwright.sync_api import expect  # noqa: E402  (after the check above)

pytestmark = pytest.mark.browser


def test_sign_up_sign_out_and_sign_in(page: Any) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/#/login$"))
    screenshot(page, "01-sign-in")
    email = unique_email("alice")

    # The API's validation messages, next to the fields they are about.
    form = page.locator("#register")
    form.locator('input[name="email"]').fill("not-an-email")
    form.locator('input[name="password"]').fill("123")
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-error-for="email"]')).to_contain_text("email")
    expect(form.locator('[data-error-for="password"]')).to_contain_text("at least 6")

    sign_up(page, email)
    expect(page.locator("#nav-admin")).to_be_hidden()
    sign_out(page)
    # Signed out means signed out: the token is gone from the tab.
    assert page.evaluate("sessionStorage.getItem('taskflow.token')") is None
    page.goto("/#/tasks")
    expect(page.locator("#sign-in")).to_be_visible()

    sign_in(page, email, "wrong-password")
    expect(page.locator('#sign-in [data-error-for="(form)"]')).to_contain_text(
        "Invalid email or password"
    )
    sign_in(page, email)
    expect(page.locator("#tasks-table")).to_be_visible()
    expect(page.locator("#tasks-table tr.empty")).to_be_visible()


def test_create_every_task_type_and_see_the_results(
    page: Any, stack: Stack, tmp_path: Path
) -> None:
    sign_up(page, unique_email("maker"))
    upload(page, png(tmp_path))
    page.locator('#nav a[data-nav="tasks"]').click()
    mark_document(page)

    # Invalid input: the API's field-level messages show next to each field.
    form = fill_task_form(page, "send_email", {"to": "nobody", "subject": "hi"})
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-error-for="to"]')).to_contain_text("email")
    fill_task_form(page, "send_email", {"to": "someone@example.com", "subject": ""})
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-error-for="(form)"]')).to_contain_text(
        "at least one of subject, body, attached_files"
    )
    fill_task_form(page, "process_image", {"path": "photo.png", "contrast": "500"})
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-error-for="contrast"]')).to_contain_text("100")
    page.select_option("#new-task-type", "send_email")

    # send_email, to the local SMTP server.
    email = create_task(
        page,
        "send_email",
        {"to": "friend@example.com", "subject": "Hello from the dashboard", "body": "<p>Hi</p>"},
    )
    # process_image, from the uploaded PNG.
    image = create_task(
        page, "process_image", {"path": "photo.png", "grayscale": True, "contrast": "20"}
    )
    # download_files, from the local HTTP server.
    url = stack.http.url("/type/png")
    download = create_task(page, "download_files", {"urls": url})
    # And one that fails for good: the server answers 404.
    broken = create_task(page, "download_files", {"urls": stack.http.url("/status/404")})
    for task in (email, image, download):
        wait_for_status(page, task["id"], "done")
    wait_for_status(page, broken["id"], "failed")
    expect(row(page, broken["id"]).locator('[data-action="retry"]')).to_be_visible()
    assert_same_document(page)
    deadline = time.monotonic() + 10
    while not any(m.message["Subject"] == "Hello from the dashboard" for m in stack.smtp.messages):
        assert time.monotonic() < deadline, "the e-mail never reached the SMTP server"
        time.sleep(0.1)
    # One waiting task, for a tasks page with more than one colour.
    create_task(
        page,
        "send_email",
        {"to": "later@example.com", "subject": "Tomorrow"},
        run_at=datetime.now(UTC) + timedelta(days=1),
    )
    page.wait_for_timeout(500)  # let the last toast fade
    screenshot(page, "02-tasks", for_readme=True)

    # The image result: a thumbnail fetched with the token, shown from a blob.
    row(page, image["id"]).locator("a.mono").click()
    thumbnail = page.locator("#result-thumbnail")
    expect(thumbnail).to_have_attribute("src", re.compile(r"^blob:"))
    page.wait_for_function("document.querySelector('#result-thumbnail').naturalWidth === 240")
    expect(page.locator("#task-history li")).to_have_count(3)
    assert_same_document(page)
    screenshot(page, "03-task-image")

    # The download result: links that fetch the saved file with the token.
    page.go_back()
    row(page, download["id"]).locator("a.mono").click()
    link = page.locator("#result-files a.download")
    expect(link).to_have_count(1)
    with page.expect_download() as saved:
        link.click()
    assert Path(saved.value.path()).read_bytes() == CONTENT_KINDS["png"][1]
    screenshot(page, "04-task-download")


def test_watch_a_task_go_from_queued_to_done_live(page: Any) -> None:
    sign_up(page, unique_email("watcher"))
    # Due in a few seconds: the row shows up postponed, then the scheduler
    # queues it, a worker takes it and finishes it, all while we watch.
    task = create_task(
        page,
        "send_email",
        {"to": "watch@example.com", "subject": "Watch me"},
        run_at=datetime.now(UTC) + timedelta(seconds=5),
    )
    assert task["status"] == "postponed"
    mark_document(page)
    page.wait_for_timeout(700)  # the table's own reload after a create settles first
    page.evaluate(
        """(id) => {
            window.__statuses = [];
            const body = document.querySelector('#tasks-table tbody');
            new MutationObserver((records) => {
                for (const record of records) {
                    if (record.target.dataset && record.target.dataset.taskId === id) {
                        // oldValue is the status each change replaced; the
                        // current one is read at the end.
                        window.__statuses.push(record.oldValue);
                    }
                }
            }).observe(body, {subtree: true, attributes: true,
                              attributeFilter: ['data-status'], attributeOldValue: true});
        }""",
        task["id"],
    )
    wait_for_status(page, task["id"], "done")
    seen = [*page.evaluate("window.__statuses"), "done"]
    changes = [s for index, s in enumerate(seen) if not index or seen[index - 1] != s]
    assert changes == ["postponed", "queued", "processing", "done"], seen
    assert_same_document(page)

    # The task page tells the same story as a timeline.
    row(page, task["id"]).locator("a.mono").click()
    timeline = page.locator("#task-history li")
    expect(timeline).to_have_count(4)
    assert timeline.evaluate_all("items => items.map(i => i.dataset.to)") == [
        "postponed",
        "queued",
        "processing",
        "done",
    ]
    assert timeline.evaluate_all("items => items.map(i => i.dataset.event)") == [
        "created",
        "due",
        "claimed",
        "completed",
    ]
    expect(page.locator("#task .head-right .badge")).to_have_text("done")
    assert_same_document(page)


def test_a_task_page_updates_live(page: Any) -> None:
    sign_up(page, unique_email("pager"))
    task = create_task(
        page,
        "send_email",
        {"to": "page@example.com", "subject": "Live page"},
        run_at=datetime.now(UTC) + timedelta(seconds=4),
    )
    row(page, task["id"]).locator("a.mono").click()
    expect(page.locator("#task .head-right .badge")).to_have_text("postponed")
    mark_document(page)
    expect(page.locator("#task .head-right .badge")).to_have_text("done", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#task-history li")).to_have_count(4)
    assert_same_document(page)


def test_cancel_then_delete_a_postponed_task(page: Any, stack: Stack) -> None:
    sign_up(page, unique_email("canceller"))
    task = create_task(
        page,
        "download_files",
        {"urls": "https://example.com/never.png"},
        run_at=datetime.now(UTC) + timedelta(hours=1),
    )
    line = row(page, task["id"])
    expect(line).to_have_attribute("data-status", "postponed")
    expect(line.locator('[data-action="retry"]')).to_have_count(0)
    line.locator('[data-action="cancel"]').click()
    expect(line).to_have_attribute("data-status", "cancelled")
    expect(line.locator('[data-action="cancel"]')).to_have_count(0)
    rows = stack.sql("SELECT status FROM tasks WHERE id = $1", task["id"])
    assert rows[0]["status"] == "cancelled"
    line.locator('[data-action="delete"]').click()
    expect(line).to_have_count(0)
    assert stack.sql("SELECT id FROM tasks WHERE id = $1", task["id"]) == []


def test_filter_page_and_retry(page: Any) -> None:
    sign_up(page, unique_email("pager"))
    token = token_of(page)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    batch = {
        "tasks": [
            {
                "type": "send_email",
                "payload": {"to": "many@example.com", "subject": f"#{index}"},
                "run_at": later,
            }
            for index in range(23)
        ]
    }
    created = api_as(page, token, "POST", "/api/tasks/batch", data=batch).json()
    # One batch shares one created_at, so the list orders it by id (newest
    # first): the two highest ids are on the first page whatever the filter.
    first_page = sorted(created, key=lambda task: task["id"], reverse=True)
    for task in first_page[:2]:
        assert api_as(page, token, "POST", f"/api/tasks/{task['id']}/cancel").status == 200
    page.reload()  # the batch came in through the API; start from a fresh page
    body = page.locator("#tasks-table tbody tr")
    expect(body).to_have_count(20)
    expect(page.locator("#page-newer")).to_be_disabled()
    page.locator("#page-older").click()
    expect(body).to_have_count(3)
    expect(page.locator("#page-summary")).to_have_text("Page 2")
    expect(page.locator("#page-older")).to_be_disabled()
    page.locator("#page-newer").click()
    expect(body).to_have_count(20)

    page.select_option("#filter-status", "cancelled")
    expect(body).to_have_count(2)
    page.select_option("#filter-type", "process_image")
    expect(page.locator("#tasks-table tr.empty")).to_be_visible()
    page.select_option("#filter-type", "send_email")
    expect(body).to_have_count(2)

    # Retry a cancelled task: it runs at once, and the row follows it live.
    retried = first_page[0]["id"]
    mark_document(page)
    row(page, retried).locator('[data-action="retry"]').click()
    page.select_option("#filter-status", "")
    wait_for_status(page, retried, "done")
    assert_same_document(page)


def test_upload_download_and_delete_a_file(page: Any, tmp_path: Path) -> None:
    sign_up(page, unique_email("filer"))
    content = b"notes for the dashboard test\n" * 100
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    upload(page, path)
    upload(page, png(tmp_path, "picture.png"))
    listed = page.locator("#files-table tbody tr")
    expect(listed).to_have_count(2)
    line = page.locator('#files-table tr[data-file="notes.txt"]')
    expect(line).to_contain_text("2.8 KiB")
    screenshot(page, "05-files")
    with page.expect_download() as saved:
        line.locator('[data-action="download"]').click()
    assert saved.value.suggested_filename == "notes.txt"
    assert Path(saved.value.path()).read_bytes() == content
    line.locator('[data-action="delete"]').click()
    expect(line).to_have_count(0)
    expect(listed).to_have_count(1)


def test_a_second_user_sees_none_of_the_first_users_things(
    context: Any, watch: PageWatch, tmp_path: Path
) -> None:
    first = new_page(context, watch)
    sign_up(first, unique_email("owner"))
    upload(first, png(tmp_path, "private.png"))
    task = create_task(
        first,
        "send_email",
        {"to": "secret@example.com", "subject": "Private"},
        run_at=datetime.now(UTC) + timedelta(hours=1),
    )
    owner_token = token_of(first)

    # Another tab is another session (sessionStorage is per tab).
    second = new_page(context, watch)
    sign_up(second, unique_email("stranger"))
    expect(second.locator("#tasks-table tr.empty")).to_be_visible()
    # While the stranger watches, the owner's task changes: nothing shows.
    mark_document(second)
    response = api_as(second, owner_token, "POST", f"/api/tasks/{task['id']}/cancel")
    assert response.status == 200
    expect(row(first, task["id"])).to_have_attribute("data-status", "cancelled")
    second.wait_for_timeout(1500)
    expect(second.locator("#tasks-table tbody tr")).to_have_count(1)
    expect(second.locator("#tasks-table tr.empty")).to_be_visible()
    assert_same_document(second)

    second.locator('#nav a[data-nav="files"]').click()
    expect(second.locator("#files-table tr.empty")).to_be_visible()
    # The owner's task by its URL: as if it did not exist.
    second.goto(f"/#/tasks/{task['id']}")
    expect(second.locator("h1")).to_have_text("Task not found")
    stranger_token = token_of(second)
    assert api_as(second, stranger_token, "GET", f"/api/tasks/{task['id']}").status == 404
    assert api_as(second, stranger_token, "GET", "/api/files/private.png").status == 404
    events = api_as(second, stranger_token, "GET", f"/api/tasks/{task['id']}/events")
    assert events.status == 404
    assert api_as(second, stranger_token, "GET", "/api/tasks").json() == []
    first.close()
    second.close()
    assert watch.errors == []


def test_operator_overview_for_admins_only(page: Any, stack: Stack) -> None:
    email = unique_email("operator")
    sign_up(page, email)
    token = token_of(page)
    # Something to show: finished, failed and waiting tasks of this user.
    for index in range(6):
        body = {"type": "send_email", "payload": {"to": "ops@example.com", "subject": f"#{index}"}}
        assert api_as(page, token, "POST", "/api/tasks", data=body).status == 201
    failing = {"type": "download_files", "payload": {"urls": [stack.http.url("/status/404")]}}
    assert api_as(page, token, "POST", "/api/tasks", data=failing).status == 201

    # Not an admin yet: no link, and the page says why.
    expect(page.locator("#nav-admin")).to_be_hidden()
    page.goto("/#/admin")
    expect(page.locator("#forbidden")).to_contain_text("Operators only")
    # It points to the operators' runbook, a file that exists.
    expect(page.locator("#forbidden")).to_contain_text("ops/README.md")
    expect(page.locator("#forbidden")).not_to_contain_text("README-dashboard")
    assert api_as(page, token, "GET", "/api/admin/overview").status == 403
    screenshot(page, "07-operator-forbidden")

    # What ops/README.md tells an operator to run in psql.
    stack.sql("UPDATE users SET is_admin = true WHERE lower(email) = lower($1)", email.upper())
    sign_out(page)
    sign_in(page, email)
    expect(page.locator("#nav-admin")).to_be_visible()
    page.locator("#nav-admin").click()
    overview = page.locator("#overview")
    # A tile for every status the server counts.
    statuses = api_as(page, token, "GET", "/api/admin/overview").json()["queue"]
    expect(overview.locator("#queue-depth .tile")).to_have_count(len(statuses))
    expect(overview.locator('#queue-depth .tile[data-status="failed"] .number')).not_to_have_text(
        "0", timeout=LIVE_TIMEOUT_MS
    )
    expect(overview.locator("#workers-alive")).to_have_text("1 alive")
    expect(overview.locator("#sparkline circle")).to_have_count(60)
    expect(overview.locator("#failures tbody tr")).not_to_have_count(0)
    expect(overview.locator("#failures")).to_contain_text("404")
    answer = api_as(page, token, "GET", "/api/admin/overview")
    assert answer.status == 200
    data = answer.json()
    assert sum(bucket["completed"] for bucket in data["throughput"]["buckets"]) >= 6
    assert data["workers"]["alive"] == 1
    page.wait_for_timeout(300)
    screenshot(page, "06-operator-overview", for_readme=True)


def test_the_pages_need_nothing_from_elsewhere(page: Any, stack: Stack) -> None:
    """Every request stays on the stack's origin (the context refuses and
    records anything else) and the page declares a strict CSP."""
    response = page.goto("/")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    sign_up(page, unique_email("offline"))
    for target in ("files", "tasks"):
        page.locator(f'#nav a[data-nav="{target}"]').click()
    assert page.evaluate("[...document.scripts].every(s => s.src.startsWith(location.origin))")
    image = io.BytesIO(page.screenshot())
    assert Image.open(image).size == (1360, 900)
