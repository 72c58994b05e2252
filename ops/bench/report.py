"""The bench's numbers: each one printed as it is measured, then the table of
one run, or the medians and ranges of several (``--repeat N``)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from ops.bench.options import BenchOptions

# Each phase whose CPU split is shown, with its title in the table.
CPU_PHASE_TITLES = {
    "drain": "the drain (first to last start)",
    "backlog": "the backlog drain",
    "rest_batch": "POST /api/tasks/batch",
    "rest_c1": "POST /api/tasks, concurrency 1",
    "rest_c32": "POST /api/tasks, concurrency 32",
}


def shown(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


@dataclass
class Report:
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)  # key: (label, unit)

    def add(self, key: str, label: str, value: float, unit: str, detail: str = "") -> None:
        self.metrics[key] = value
        self.labels[key] = (label, unit)
        self.rows.append((label, shown(value), unit, detail))
        print(f"  {label}: {shown(value)} {unit}  {detail}", flush=True)


def render_table(report: Report, options: BenchOptions) -> str:
    header = ("metric", "value", "unit", "detail")
    lines = [
        f"TaskFlow bench: {options.procs} worker processes x {options.slots} slots, "
        f"{options.api_processes} API processes, bench_noop tasks"
        + (f", {options.finished:,} finished tasks present" if options.finished else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|---|---:|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in report.rows]
    cpu_lines = []
    for phase, title in CPU_PHASE_TITLES.items():
        info = report.details.get(phase)
        if info:
            cpu = dict(info["cpu_per_task"])
            busy = cpu.pop("machine_busy_pct")
            cpu_lines.append(
                f"- {title}: "
                + ", ".join(f"{name.removesuffix('_us')} {value}" for name, value in cpu.items())
                + f"; machine busy {busy}%"
            )
    if cpu_lines:
        lines += ["", "CPU µs per task (per request for REST), by process group:", *cpu_lines]
    if report.failures:
        lines += ["", "FAILURES:", *(f"- {failure}" for failure in report.failures)]
    return "\n".join(lines)


def render_summary(reports: list[Report], options: BenchOptions) -> str:
    """Every metric's median over the runs, with the range: one run is one
    sample of a machine whose neighbours and disks are never quite idle."""
    lines = [
        f"TaskFlow bench, median of {len(reports)} runs: {options.procs} worker processes x "
        f"{options.slots} slots, {options.api_processes} API processes, bench_noop tasks",
        "",
        "| metric | median | unit | min - max |",
        "|---|---:|---|---|",
    ]
    labels: dict[str, tuple[str, str]] = {}
    for report in reports:
        labels.update(report.labels)
    for key in dict.fromkeys(key for report in reports for key in report.metrics):
        values = sorted(r.metrics[key] for r in reports if key in r.metrics)
        label, unit = labels.get(key, (key, "ms" if key.endswith("_ms") else ""))
        lines.append(
            f"| {label} | {shown(statistics.median(values))} | {unit} "
            f"| {shown(values[0])} - {shown(values[-1])} |"
        )
    failures = [failure for report in reports for failure in report.failures]
    if failures:
        lines += ["", "FAILURES:", *(f"- {failure}" for failure in failures)]
    return "\n".join(lines)
