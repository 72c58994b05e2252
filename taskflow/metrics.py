"""Prometheus metrics, one registry per process.

The API serves them at ``/metrics``; workers and the scheduler serve them on
``--metrics-port`` when given, on the loopback interface unless
``--metrics-host`` says otherwise: they answer anyone who can connect. Queue
depth and age are read from Postgres when scraped, so every process reports
the same truth.

An API run as several processes (``taskflow api --processes N``) shares one
set of numbers: the parent sets ``PROMETHEUS_MULTIPROC_DIR`` before the
children start, each child writes its values there, and whichever child
answers a scrape adds them all up.
"""

from __future__ import annotations

import os
from typing import Generic, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

Metric = TypeVar("Metric", Counter, Gauge, Histogram)


class Children(Generic[Metric]):
    """A labelled metric's children, each looked up once: ``labels()`` takes a
    lock and checks its arguments on every call (~0.9 µs), and a worker
    called it three times a task. The label values are task types and
    outcomes, which the metric keeps a child for anyway."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Metric) -> None:
        self._metric: Metric = metric
        self._children: dict[tuple[str, ...], Metric] = {}

    def __call__(self, *values: str) -> Metric:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


REGISTRY = CollectorRegistry(auto_describe=True)

# Handler runs span milliseconds (no-ops) to minutes (downloads).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)

TASKS_CREATED = Counter(
    "taskflow_tasks_created_total", "Tasks created, by type.", ["type"], registry=REGISTRY
)
TASKS_FINISHED = Counter(
    "taskflow_tasks_finished_total",
    "Attempts finished by this worker, by type and outcome (done, retrying, failed).",
    ["type", "outcome"],
    registry=REGISTRY,
)
HANDLER_SECONDS = Histogram(
    "taskflow_handler_duration_seconds",
    "Handler run time, by type.",
    ["type"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
START_LATENCY_SECONDS = Histogram(
    "taskflow_enqueue_to_start_seconds",
    "From the time a task was due (run_at) to its claim by a worker.",
    ["type"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "taskflow_queue_depth",
    "Tasks per status, read at scrape time.",
    ["status"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
VACUUM_HORIZON_XID_AGE = Gauge(
    "taskflow_vacuum_horizon_xid_age",
    "Transactions since the oldest holder of the vacuum horizon began, by kind "
    "(transaction, replication slot, prepared transaction), read at scrape time.",
    ["kind"],
    registry=REGISTRY,
)
OLDEST_AGE_SECONDS = Gauge(
    "taskflow_oldest_task_age_seconds",
    "Age of the oldest task per waiting status (by run_at), read at scrape time.",
    ["status"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
LEASES_RESCUED = Counter(
    "taskflow_leases_rescued_total",
    "Processing tasks whose worker was lost, by the outcome (retrying or failed).",
    ["outcome"],
    registry=REGISTRY,
)
TASKS_PROMOTED = Counter(
    "taskflow_tasks_promoted_total", "Due postponed/retrying tasks queued.", registry=REGISTRY
)
PUBLISH_FAILURES = Counter(
    "taskflow_broker_publish_failures_total",
    "Task ids that could not be published (they stay queued in Postgres).",
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "taskflow_http_requests_total",
    "API requests, by route, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "taskflow_http_request_duration_seconds",
    "API request time, by route and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)


def render() -> tuple[bytes, str]:
    directory = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    if directory:
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(combined), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose this process's metrics over HTTP from a background thread."""
    start_http_server(port, addr=host, registry=REGISTRY)
