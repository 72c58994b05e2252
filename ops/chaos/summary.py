"""The chaos run's report as text, and its verdict against SPEC §7."""

from __future__ import annotations

from typing import Any

from ops.chaos.evidence import RERUN_LIMIT_SECONDS
from ops.chaos.options import ChaosOptions

MIN_KILLS = 100  # the bar for the published figures


def _s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _dist(figures: dict[str, Any]) -> str:
    if not figures.get("count"):
        return "no samples"
    return (
        f"p50 {_s(figures['p50'])}, p99 {_s(figures['p99'])}, max {_s(figures['max'])} "
        f"(n={figures['count']})"
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "none"


def failures(report: dict[str, Any], options: ChaosOptions) -> list[str]:
    """What keeps the run from meeting the issue's bar, in words; empty when it does."""
    found = []
    tasks, kills, overlaps = report["tasks"], report["kills"], report["overlaps"]
    if tasks["lost"]:
        found.append(f"{len(tasks['lost'])} tasks lost")
    if tasks["completed_twice"]:
        found.append(f"{len(tasks['completed_twice'])} tasks completed twice")
    if overlaps["killed"]:
        found.append(f"{overlaps['killed']} overlapping runs after a kill")
    if overlaps["live"]:
        found.append(f"{overlaps['live']} overlapping live runs")
    if overlaps["unended_runs"]:
        found.append(f"{len(overlaps['unended_runs'])} runs never ended")
    p99 = kills["rerun"]["p99"]
    if p99 is None or p99 > RERUN_LIMIT_SECONDS:
        found.append(f"kill->rerun p99 {_s(p99)} > {RERUN_LIMIT_SECONDS:g} s")
    if kills["rerun"]["never_rerun"]:
        found.append(f"{len(kills['rerun']['never_rerun'])} interrupted tasks never ran again")
    freeze = report["freeze"]
    if freeze is None:
        found.append("no freeze")
    elif freeze["outcomes_written"]:
        found.append(f"the frozen worker wrote {len(freeze['outcomes_written'])} outcomes")
    if options.restarts and (report["rabbitmq"] is None or report["postgres"] is None):
        found.append("a service restart did not happen")
    for restart in (report["rabbitmq"], report["postgres"]):
        if restart is not None and restart["error"]:
            found.append(f"{restart['service']}: {restart['error']}")
    if report["exits"]:
        found.append(
            f"{len(report['exits'])} processes exited without the run's signal: "
            "the run was disturbed and its figures do not stand"
        )
    return found


def _freeze_lines(freeze: dict[str, Any] | None) -> list[str]:
    if freeze is None:
        return ["freeze: none"]
    rescued = freeze["rescued_after"]
    lines = [
        f"freeze: worker {freeze['pid']} SIGSTOPped for {_s(freeze['frozen_seconds'], 1)} "
        f"(lease 30 s) while running probe {freeze['probe']}",
        f"  its {freeze['rescued']} tasks rescued ({_counts(freeze['rescued_by_event'])}) "
        f"{_s(rescued['min'], 1)} to {_s(rescued['max'], 1)} "
        f"after the SIGSTOP",
    ]
    for held in freeze["held_runs"]:
        lines.append(
            f"  handler of {held['task_id']} (attempt {held['attempt']}): ran on "
            f"{_ms(held['ran_on_seconds'])} after SIGCONT, ended by its {held['ended_by']} mark"
        )
    written = len(freeze["outcomes_written"])
    lines.append(
        f"  outcomes it wrote for those attempts after the freeze: {written}; "
        f"its log after SIGCONT: {_counts(freeze['log_after_resume'])}"
    )
    return lines


def _restart_lines(restart: dict[str, Any] | None, name: str) -> list[str]:
    if restart is None:
        return [f"{name} restart: not done"]
    while_label = "while it was down" if restart["outage_seconds"] else "during the command"
    lines = [
        f"{name} restart: command {_s(restart['command_seconds'], 1)}"
        + (f", down {_s(restart['outage_seconds'], 1)}" if restart["outage_seconds"] else "")
        + f"; tasks started {while_label}: {restart['started_while_down']}",
        (
            f"  every worker and the scheduler connected again "
            f"{_s(restart['reconnected_after_start_seconds'])} after start_app was issued"
            if restart["service"] == "rabbitmq"
            else f"  a task completed again {_s(restart['recovered_after_up_seconds'])} "
            "after the restart command returned"
        )
        + f"; first handler start after it returned: "
        f"{_s(restart['first_start_after_up_seconds'])}; longest gap between handler starts "
        f"around it {_s(restart['longest_start_gap_seconds'])}",
        f"  handlers stopped: {restart['handlers_stopped']}; claims released: "
        f"{_counts(restart['releases_by_event'])}; their rerun after the restart began: "
        f"{_dist(restart['stopped_to_rerun_from_began'])}",
    ]
    if restart["error"]:
        lines.append(f"  ERROR: {restart['error']}")
    return lines


def render(report: dict[str, Any], options: ChaosOptions) -> str:
    tasks, kills, overlaps = report["tasks"], report["kills"], report["overlaps"]
    rerun = kills["rerun"]
    lines = [
        f"# TaskFlow chaos run: {kills['count']} worker SIGKILLs at default settings "
        f"(lease 30 s, tick 1 s), {options.workers} workers x {options.concurrency} slots, "
        f"{report['duration_seconds'] / 60:.1f} min",
        f"command: {report['command']} (code {report['code']})",
        f"tasks: {tasks['created']:,} created ({tasks['long']:,} long {options.long_seconds[0]:g}-"
        f"{options.long_seconds[1]:g} s, {tasks['short']:,} short {options.short_ms[0]:g}-"
        f"{options.short_ms[1]:g} ms), {tasks['done']:,} done, {tasks['runs']:,} handler runs",
        f"lost: {len(tasks['lost'])}   completed twice: {len(tasks['completed_twice'])}   "
        f"overlapping runs among killed workers' runs: {overlaps['killed']}",
        f"  quarantined (failed after 3 attempts lost their worker, max_lease_crashes "
        f"by design): {len(tasks['quarantined'])}; other overlaps: live {overlaps['live']}, "
        f"frozen worker {overlaps['by_kind'].get('frozen', 0)}; runs never ended: "
        f"{len(overlaps['unended_runs'])}",
        f"kills: {kills['count']} ({kills['of_workers_holding_tasks']} of workers holding tasks "
        f"at that instant, {kills['while_frozen']} while a worker was frozen); "
        f"{kills['interrupting']} of them interrupted {kills['interrupted_tasks']} tasks",
        f"kill -> rerun: {_dist(rerun)}; over {RERUN_LIMIT_SECONDS:g} s: {kills['over_limit']}; "
        f"never rerun: {len(rerun['never_rerun'])} (and {len(rerun['quarantined'])} quarantined "
        f"by that kill)",
        f"  while a worker was frozen: {_dist(kills['rerun_while_frozen'])}",
        f"kill -> rescue ({_counts(kills['rescued_by_event'])}): {_dist(kills['kill_to_rescue'])}",
        *_freeze_lines(report["freeze"]),
        *_restart_lines(report["rabbitmq"], "RabbitMQ"),
        *_restart_lines(report["postgres"], "Postgres"),
    ]
    for note in report["notes"]:
        lines.append(f"NOTE: {note}")
    for exit_note in report["exits"]:
        lines.append(f"EXIT: {exit_note}")
    for item in report["evidence"]:
        lines.append(f"EVIDENCE {item['task_id']}: runs {item['runs']}")
        lines.append(f"  kills of its workers: {item['kills_of_its_workers']}")
        for load in item["slots_in_use_after_release"]:
            lines.append(
                f"  released at {load['at']:.3f}; handlers running per live worker then "
                f"{load['then']}, a second later {load['a_second_later']}"
            )
        for row in item["history"]:
            lines.append(
                f"  {row['at']:.3f} {row['event']} {row['from_status']}->{row['to_status']} "
                f"attempt {row['attempt']} worker {row['worker_id']} {row['error'] or ''}"
            )
    problems = failures(report, options)
    if kills["count"] < MIN_KILLS:
        problems.append(f"only {kills['count']} kills (the published figures need {MIN_KILLS})")
    verdict = "PASS" if not problems else "NOT MET: " + "; ".join(problems)
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)
