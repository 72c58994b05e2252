"""`taskflow bench --repeat N` (ops/bench): the summary of several runs."""

from __future__ import annotations

from ops.bench.options import BenchOptions
from ops.bench.report import Report, render_summary


def _report(drain: float, p99: float, failures: list[str] | None = None) -> Report:
    report = Report(failures=failures or [])
    report.add("drain_tasks_per_s", "drain of 20000 queued tasks", drain, "tasks/s")
    report.metrics["latency_p99_ms"] = p99  # a number without a row of its own
    return report


def test_medians_ranges_and_labels() -> None:
    reports = [_report(9000, 4.0), _report(6000, 9.5), _report(10000, 3.1, ["drain: 1 dup"])]
    text = render_summary(reports, BenchOptions())
    assert "median of 3 runs" in text
    assert "| drain of 20000 queued tasks | 9,000 | tasks/s | 6,000 - 10,000 |" in text
    assert "| latency_p99_ms | 4.00 | ms | 3.10 - 9.50 |" in text
    assert text.endswith("FAILURES:\n- drain: 1 dup")
