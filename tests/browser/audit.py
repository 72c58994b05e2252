"""The accessibility audit of the browser tests: axe-core
(tests/browser/axe.min.js, MPL-2.0, served from here: nothing comes from a
CDN) run on a page as it is, with its default rules (WCAG 2.x A and AA, and
best practices)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import expect

AXE_SOURCE = (Path(__file__).with_name("axe.min.js")).read_text()
RUN_AXE = """async () => {
    const result = await axe.run(document, { resultTypes: ["violations"] });
    return result.violations.map((violation) => ({
        rule: violation.id,
        impact: violation.impact,
        help: violation.help,
        nodes: violation.nodes.map((node) => `${node.target.join(" ")}: ${node.failureSummary}`),
    }));
}"""


def audit(page: Any) -> list[str]:
    """axe-core's violations on the page as it is now, with its default rules
    (WCAG 2.x A and AA, and best practices), one line per element."""
    if not page.evaluate("typeof window.axe === 'object'"):
        # Evaluated through the DevTools protocol, which the page's CSP does
        # not govern: the page itself still loads nothing but its own files.
        page.evaluate(AXE_SOURCE)
    violations: list[dict[str, Any]] = page.evaluate(RUN_AXE)
    return [
        f"{violation['rule']} ({violation['impact']}): {violation['help']} -- {node}"
        for violation in violations
        for node in violation["nodes"]
    ]


def assert_accessible(page: Any) -> None:
    violations = audit(page)
    assert violations == [], "\n".join(violations)


def settle(page: Any, *, live: bool = True) -> None:
    """Wait for the live stream (on the pages that have one) and hide the
    last toast, so the audit sees the page at rest."""
    if live:
        expect(page.locator("#live")).to_have_attribute("data-state", "open")
    page.evaluate("document.getElementById('toast').hidden = true")
