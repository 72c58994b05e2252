"""Retention: finished tasks (with their history) and long-gone worker rows are
deleted once older than the retention period.

In small batches, so each DELETE holds its row locks and its WAL burst briefly,
and autovacuum (tuned for this in db/migrations/0002_operator_views.sql) keeps
pace. The scheduler runs :func:`prune_expired` under its prune duty lock, so
one scheduler at a time does it; the queries also SKIP LOCKED rows, so a task
being retried by hand at that moment is simply left for the next round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from taskflow.store.operators import OperatorStore

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_BATCHES = 50


@dataclass
class PruneReport:
    tasks: int = 0
    workers: int = 0
    behind: bool = False  # stopped at max_batches with more to delete


async def prune_expired(
    operator: OperatorStore,
    retention_days: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int = DEFAULT_MAX_BATCHES,
) -> PruneReport:
    """Delete what is past ``retention_days``, at most ``max_batches`` batches
    of each kind per call: a backlog drains over several ticks instead of one
    long one."""
    report = PruneReport(behind=True)
    for _ in range(max_batches):
        deleted = await operator.prune_finished_tasks(retention_days, batch_size)
        report.tasks += deleted
        if deleted < batch_size:
            report.behind = False
            break
    for _ in range(max_batches):
        deleted = await operator.prune_gone_workers(retention_days, batch_size)
        report.workers += deleted
        if deleted < batch_size:
            break
    if report.tasks or report.workers:
        log.info(
            "pruned expired rows",
            extra={"event": "retention", "tasks": report.tasks, "workers": report.workers},
        )
    return report
