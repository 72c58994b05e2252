"""The dashboard reads task types, their payload fields and the statuses
from the API's OpenAPI document, and what each status allows from
GET /api/meta: a plugin's task type (tests/plugins.py) is in the filter and
has a working form, every kind of field a payload model can have gets an
input, and the buttons follow what the server says, not a list of the page's."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.actions import api_as, create_task, row, sign_up, token_of, wait_for_status
from tests.browser.conftest import Stack, require_browser, screenshot, unique_email

require_browser()

from playwright.sync_api import expect  # noqa: E402  (after the check above)

pytestmark = pytest.mark.browser

# A payload model with one field of every kind, as pydantic would document it.
KINDS_PAYLOAD = {
    "type": "object",
    "additionalProperties": False,
    "description": "Every kind of field.",
    "required": ["title", "level"],
    "properties": {
        "title": {"type": "string", "title": "Title", "maxLength": 80},
        "level": {"enum": ["low", "high"], "type": "string", "title": "Level"},
        "count": {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": 9}, {"type": "null"}],
            "default": None,
            "title": "Count",
        },
        "loud": {"type": "boolean", "default": True, "title": "Loud"},
        "quiet": {"anyOf": [{"type": "boolean"}, {"type": "null"}], "default": None},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3, "title": "Tags"},
        "extra": {"type": "object", "title": "Extra", "description": "anything else"},
        "when": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
    },
}


def document_types(page: Any) -> tuple[list[str], list[str]]:
    document = page.request.get("/api/openapi.json").json()
    schemas = document["components"]["schemas"]
    types = [variant["properties"]["type"]["const"] for variant in schemas["TaskCreate"]["oneOf"]]
    return types, schemas["TaskStatus"]["enum"]


def options(page: Any, select: str) -> list[str]:
    values: list[str] = page.locator(f"{select} option").evaluate_all(
        "options => options.map(o => o.value).filter(Boolean)"
    )
    return values


def test_a_plugin_type_is_in_the_filter_and_its_form_creates_it(page: Any, stack: Stack) -> None:
    sign_up(page, unique_email("plugin"))
    types, statuses = document_types(page)
    assert {"test_sleep", "test_gather", "send_email"} <= set(types)
    # The filters and the form offer exactly what the document lists.
    assert options(page, "#filter-type") == types
    assert options(page, "#new-task-type") == types
    assert options(page, "#filter-status") == statuses

    page.select_option("#new-task-type", "test_sleep")
    form = page.locator("#new-task")
    seconds = form.locator('[name="seconds"]')
    expect(seconds).to_have_attribute("type", "number")
    expect(seconds).to_have_attribute("max", "600")
    expect(seconds).to_have_js_property("required", True)
    expect(seconds).to_have_accessible_name("Seconds")
    expect(seconds).to_have_accessible_description("0 … 600")
    expect(form.locator('[name="marks"]')).to_have_js_property("required", False)
    expect(form.locator('[name="to"]')).to_have_count(0)

    # Required and left empty: the API says so next to the field.
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-error-for="seconds"]')).to_contain_text("required")
    slept = create_task(page, "test_sleep", {"seconds": "0.2"})
    assert slept["payload"] == {"seconds": 0.2}
    expect(row(page, slept["id"]).locator(".what")).to_have_text("seconds 0.2")
    gathered = create_task(page, "test_gather", {"n": "7"})
    assert gathered["payload"] == {"n": 7}
    wait_for_status(page, slept["id"], "done")
    wait_for_status(page, gathered["id"], "done")
    result = stack.sql("SELECT result FROM tasks WHERE id = $1", gathered["id"])[0]["result"]
    assert json.loads(result)["n"] == 7

    page.select_option("#filter-type", "test_gather")
    expect(page.locator("#tasks-table tbody tr")).to_have_count(1)
    expect(row(page, gathered["id"])).to_be_visible()
    page.select_option("#new-task-type", "test_sleep")
    screenshot(page, "09-plugin-type-form", for_readme=True)


def test_every_kind_of_field_gets_an_input_and_is_sent_as_typed(page: Any) -> None:
    """A payload model with a field of each kind, added to the real document
    as a plugin's would be: the form's request carries each as its type."""

    def with_kinds(route: Any) -> None:
        document = route.fetch().json()
        schemas = document["components"]["schemas"]
        variant = json.loads(json.dumps(schemas["TaskCreate"]["oneOf"][0]))
        variant["properties"]["type"] = {"const": "test_kinds"}
        variant["properties"]["payload"] = {"$ref": "#/components/schemas/KindsPayload"}
        schemas["KindsPayload"] = KINDS_PAYLOAD
        schemas["TaskCreate"]["oneOf"].append(variant)
        route.fulfill(json=document)

    page.route("**/api/openapi.json", with_kinds)
    sign_up(page, unique_email("kinds"))
    page.select_option("#new-task-type", "test_kinds")
    form = page.locator("#new-task")
    expect(form.locator(".payload-about")).to_have_text("Every kind of field.")
    kinds = form.locator("fieldset.payload [data-kind]").evaluate_all(
        "inputs => inputs.map(i => [i.name, i.dataset.kind, i.tagName.toLowerCase(), i.type])"
    )
    assert kinds == [
        ["title", "string", "input", "text"],
        ["level", "enum", "select", "select-one"],
        ["count", "number", "input", "number"],
        ["tags", "list", "textarea", "textarea"],
        ["extra", "json", "textarea", "textarea"],
        ["when", "datetime", "input", "datetime-local"],
        ["loud", "boolean", "input", "checkbox"],
        ["quiet", "boolean", "input", "checkbox"],
    ]
    expect(form.locator('[name="level"] option')).to_have_text(["choose…", "low", "high"])
    expect(form.locator('[name="loud"]')).to_be_checked()
    expect(form.locator('[name="count"]')).to_have_accessible_description("a whole number; 1 … 9")

    # Nested JSON that does not parse is caught here, next to its field.
    form.locator('[name="title"]').fill("  Hello  ")
    page.select_option('#new-task [name="level"]', label="high")
    form.locator('[name="extra"]').fill("{nope")
    form.locator('button[type="submit"]').click()
    expect(form.locator('[data-error-for="extra"]')).to_have_text("not valid JSON")

    form.locator('[name="count"]').fill("3")
    form.locator('[name="tags"]').fill("a\n\n b \nc")
    form.locator('[name="extra"]').fill('{"deep": {"x": [1, 2]}}')
    form.locator('[name="loud"]').uncheck()
    form.locator('[name="quiet"]').check()
    form.locator('[name="when"]').fill("2031-02-03T04:05:06")
    with page.expect_request(lambda r: r.url.endswith("/api/tasks") and r.method == "POST") as sent:
        form.locator('button[type="submit"]').click()
    body = sent.value.post_data_json
    assert body["type"] == "test_kinds"
    assert body["payload"] == {
        "title": "Hello",
        "level": "high",
        "count": 3,
        "tags": ["a", "b", "c"],
        "extra": {"deep": {"x": [1, 2]}},
        "when": "2031-02-03T04:05:06.000Z",
        "loud": False,
        "quiet": True,
    }
    # The real server has no such type: its answer is shown, not swallowed.
    expect(form.locator('[data-error-for="(form)"]')).to_contain_text("test_kinds")


def test_the_buttons_follow_the_servers_transitions(page: Any, context: Any) -> None:
    sign_up(page, unique_email("meta"))
    token = token_of(page)
    body = {"type": "test_fail", "payload": {"kind": "permanent"}}
    task = api_as(page, token, "POST", "/api/tasks", data=body).json()
    wait_for_status(page, task["id"], "failed")
    expect(row(page, task["id"]).locator('[data-action="retry"]')).to_be_visible()
    expect(row(page, task["id"]).locator('[data-action="cancel"]')).to_have_count(0)

    # Were the server to say failed tasks can be cancelled and not retried,
    # the page would offer just that: it has no list of its own.
    def changed(route: Any) -> None:
        meta = route.fetch().json()
        meta["retryable"] = [s for s in meta["retryable"] if s != "failed"]
        meta["cancellable"] = [*meta["cancellable"], "failed"]
        route.fulfill(json=meta)

    other = context.new_page()
    other.route("**/api/meta", changed)
    other.goto("/")
    other.evaluate(
        "([token, email]) => { sessionStorage.setItem('taskflow.token', token);"
        " sessionStorage.setItem('taskflow.email', email); }",
        [token, "meta@example.com"],
    )
    other.goto(f"/#/tasks/{task['id']}")
    head = other.locator("#task .head-right")
    expect(head.locator(".badge")).to_have_text("failed")
    expect(head.locator('[data-action="cancel"]')).to_be_visible()
    expect(head.locator('[data-action="retry"]')).to_have_count(0)
    other.close()
