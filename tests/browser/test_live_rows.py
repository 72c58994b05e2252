"""A row of the tasks list never goes back to an older state.

The reported case: a task finishes, the user opens the list (from the task's
page, by signing in, or at the very moment it finishes) and the row that
said `done` turns back to `processing` until a reload. Here that moment is
met many times against the real stack, with every state each row takes
recorded as it happens; and the client's rule is checked on its own with a
list and an event stream the test writes itself."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.browser.actions import api_as, sign_in, sign_out, sign_up, token_of
from tests.browser.conftest import require_browser, unique_email

require_browser()

from playwright.sync_api import expect  # noqa: E402  (after the check above)

pytestmark = pytest.mark.browser

ITERATIONS = 30
# The order of one attempt's states: a row may only move up it.
RANK = {"postponed": 0, "queued": 0, "processing": 1, "done": 2}

# Every status each row of the list could be seen in, in order, from the
# first paint on: after each batch of changes to the page (a MutationObserver
# runs before the browser paints again), the status of each row the batch
# touched. Installed before the page's own scripts run.
RECORD_ROW_STATES = """
window.__rowStates = {};
new MutationObserver((records) => {
  const touched = new Set();
  for (const record of records) {
    if (record.type === "attributes" && record.target.dataset.taskId) {
      touched.add(record.target.dataset.taskId);
    }
    for (const node of record.addedNodes || []) {
      if (node.nodeType !== 1) continue;
      const rows = [node, ...node.querySelectorAll("tr[data-task-id]")];
      for (const row of rows) if (row.dataset.taskId) touched.add(row.dataset.taskId);
    }
  }
  for (const id of touched) {
    const row = document.querySelector(`tr[data-task-id="${CSS.escape(id)}"]`);
    if (row) (window.__rowStates[id] ||= []).push(row.dataset.status);
  }
}).observe(document, { subtree: true, childList: true, attributes: true,
                       attributeFilter: ["data-status"] });
"""


def states_of(page: Any, task_id: str) -> list[str]:
    raw: list[str] = page.evaluate(f"window.__rowStates[{json.dumps(task_id)}] || []")
    return [state for index, state in enumerate(raw) if not index or raw[index - 1] != state]


def assert_never_backwards(states: list[str], what: str) -> None:
    assert states, f"{what}: the row never showed"
    ranks = [RANK[state] for state in states]
    assert ranks == sorted(ranks), f"{what}: the row went back: {states}"
    assert states[-1] == "done", f"{what}: the row ended {states[-1]}: {states}"


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def list_settled(page: Any, task_id: str) -> None:
    """The list is open with its stream live, and has had the time for the
    stream's look back (a second after it opens) to arrive and be applied."""
    expect(page.locator("#tasks-table")).to_be_visible()
    expect(page.locator("#live")).to_have_attribute("data-state", "open")
    expect(page.locator(f'#tasks-table tr[data-task-id="{task_id}"]')).to_be_visible()
    page.wait_for_timeout(1600)


@pytest.mark.timeout(600)
def test_opening_the_list_as_a_task_finishes_never_shows_it_going_back(page: Any) -> None:
    page.add_init_script(RECORD_ROW_STATES)
    email = unique_email("finisher")
    sign_up(page, email)
    token = token_of(page)

    def create(body: dict[str, Any]) -> str:
        response = api_as(page, token, "POST", "/api/tasks", data=body)
        assert response.status == 201, response.text()
        task_id: str = response.json()["id"]
        return task_id

    def status_of(task_id: str) -> str:
        status: str = api_as(page, token, "GET", f"/api/tasks/{task_id}").json()["status"]
        return status

    for iteration in range(ITERATIONS):
        page.evaluate("window.__rowStates = {}")
        way = iteration % 3
        if way == 0:
            # The report's steps: watch it finish on its page, then "← All tasks".
            task_id = create({"type": "test_noop", "payload": {"n": iteration}})
            page.goto(f"/#/tasks/{task_id}")
            expect(page.locator("#task .head-right .badge")).to_have_text("done")
            page.get_by_role("link", name="← All tasks").click()
            what = f"iteration {iteration}, back from the task's page"
        elif way == 1:
            # Signing in just after it finished.
            task_id = create({"type": "test_noop", "payload": {"n": iteration}})
            sign_out(page)
            wait_until(lambda id=task_id: status_of(id) == "done", "the task to finish")
            sign_in(page, email)
            expect(page.locator("#tasks-table")).to_be_visible()
            token = token_of(page)
            what = f"iteration {iteration}, signed in after it finished"
        else:
            # The list opened as close to the finish as can be arranged: from
            # another page, a moment before, at, or after the handler ends.
            seconds = 1.0
            task_id = create({"type": "test_sleep", "payload": {"seconds": seconds}})
            page.goto("/#/files")
            wait_until(lambda id=task_id: status_of(id) == "processing", "the task to start")
            page.wait_for_timeout(int(seconds * 1000) - 150 + 50 * (iteration % 7))
            page.goto("/#/tasks")
            what = f"iteration {iteration}, opened at the finish"
        list_settled(page, task_id)
        assert_never_backwards(states_of(page, task_id), what)


# ----- the client's rule on its own: a list and a stream written here


def serve_list(page: Any, tasks: list[dict[str, Any]]) -> None:
    def answer(route: Any) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        route.fulfill(status=200, content_type="application/json", body=json.dumps(tasks))

    page.route("**/api/tasks?*", answer)


def serve_stream(page: Any) -> list[Any]:
    """Holds the list's event stream until the test answers it."""
    held: list[Any] = []
    page.route("**/api/events", lambda route: held.append(route))
    return held


def sse(*events: dict[str, Any]) -> str:
    # No reconnection while the test looks: the fulfilled body ends at once.
    frames = ["retry: 600000\n\n", "id: 1\nevent: ready\ndata: {}\n\n"]
    frames += [f"id: {e['id']}\nevent: task\ndata: {json.dumps(e)}\n\n" for e in events]
    return "".join(frames)


def a_task(task_id: str, status: str, updated_at: str, **more: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "user_id": 1,
        "type": "send_email",
        "payload": {"to": "x@example.com", "subject": "s"},
        "status": status,
        "priority": 0,
        "attempts": 1,
        "retries": 0,
        "max_retries": 3,
        "run_at": "2030-01-01T12:00:00Z",
        "created_at": "2030-01-01T12:00:00Z",
        "updated_at": updated_at,
        "started_at": None,
        "finished_at": None,
        "last_error": None,
        "result": None,
        **more,
    }


def an_event(
    event_id: int, task_id: str, event: str, status: str, at: str, attempt: int = 1
) -> dict[str, Any]:
    return {
        "id": event_id,
        "task_id": task_id,
        "from_status": None,
        "status": status,
        "event": event,
        "attempt": attempt,
        "at": at,
    }


def test_events_older_than_the_loaded_list_are_ignored(page: Any) -> None:
    sign_up(page, unique_email("rule"))
    page.add_init_script(RECORD_ROW_STATES)
    by_id = "00000000-0000-7000-8000-000000000001"
    by_time = "00000000-0000-7000-8000-000000000002"
    serve_list(
        page,
        [
            # With the history id the API may send: the exact order.
            a_task(by_id, "done", "2030-01-01T12:00:05.000001Z", history_id=12),
            # Without it: the time of the change, to the microsecond.
            a_task(by_time, "done", "2030-01-01T12:00:05.000001Z"),
        ],
    )
    held = serve_stream(page)
    page.reload()
    for task_id in (by_id, by_time):
        expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_have_attribute(
            "data-status", "done"
        )
    wait_until(lambda: bool(held), "the event stream to open")
    held.pop().fulfill(
        status=200,
        headers={"Content-Type": "text/event-stream"},
        body=sse(
            # Older than the list: the replay of the moments before.
            an_event(10, by_id, "created", "queued", "2030-01-01T12:00:00Z", 0),
            an_event(11, by_id, "claimed", "processing", "2030-01-01T12:00:09Z"),
            an_event(20, by_time, "created", "queued", "2030-01-01T12:00:00Z", 0),
            # The same millisecond as the list's time, a microsecond earlier.
            an_event(21, by_time, "claimed", "processing", "2030-01-01T12:00:05.000000Z"),
            # Newer: a retry that starts the attempts again from 0.
            an_event(13, by_id, "retried", "queued", "2030-01-01T12:00:01Z", 0),
            an_event(22, by_time, "retried", "queued", "2030-01-01T12:00:05.000002Z", 0),
        ),
    )
    for task_id in (by_id, by_time):
        line = page.locator(f'tr[data-task-id="{task_id}"]')
        expect(line).to_have_attribute("data-status", "queued")
        expect(line.locator(".attempts")).to_have_text("0 / 4")
        assert states_of(page, task_id) == ["done", "queued"], task_id


def test_the_freshness_rule(page: Any) -> None:
    page.goto("/#/login")
    verdicts = page.evaluate(
        """async () => {
        const f = await import("/dashboard/views/freshness.js");
        const task = (history_id, updated_at) => f.stampOfTask({ history_id, updated_at });
        const event = (id, at) => f.stampOfEvent({ id, at });
        return {
          olderId: f.isNewer(event(11, "2030-01-01T12:00:09Z"), task(12, "2030-01-01T12:00:05Z")),
          sameId: f.isNewer(event(12, "2030-01-01T12:00:05Z"), task(12, "2030-01-01T12:00:05Z")),
          newerId: f.isNewer(event(13, "2030-01-01T12:00:01Z"), task(12, "2030-01-01T12:00:05Z")),
          microsecondLater: f.isNewer(event(1, "2030-01-01T12:00:05.000002Z"),
                                      task(null, "2030-01-01T12:00:05.000001Z")),
          microsecondEarlier: f.isNewer(event(1, "2030-01-01T12:00:05.000000Z"),
                                        task(null, "2030-01-01T12:00:05.000001Z")),
          sameTime: f.isNewer(event(1, "2030-01-01T12:00:05Z"),
                              task(null, "2030-01-01T12:00:05.000Z")),
          offset: f.microseconds("2030-01-01T13:00:00.5+01:00")
                  === f.microseconds("2030-01-01T12:00:00.500000Z"),
          nothingShown: f.isNewer(event(1, "2030-01-01T12:00:05Z"), null),
        };
    }"""
    )
    assert verdicts == {
        "olderId": False,
        "sameId": False,
        "newerId": True,
        "microsecondLater": True,
        "microsecondEarlier": False,
        "sameTime": False,
        "offset": True,
        "nothingShown": True,
    }
