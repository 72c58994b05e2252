"""Children: a labelled metric's children looked up once, the same ones
``labels()`` returns, so what is counted through them is what is exported."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from taskflow.metrics import Children


def test_children_are_the_metrics_own_and_are_exported() -> None:
    registry = CollectorRegistry()
    finished = Counter("probe_finished_total", "x", ["type", "outcome"], registry=registry)
    seconds = Histogram("probe_seconds", "x", ["type"], registry=registry)
    finished_of, seconds_of = Children(finished), Children(seconds)

    assert finished_of("send_email", "done") is finished.labels("send_email", "done")
    assert finished_of("send_email", "done") is finished_of("send_email", "done")
    assert finished_of("send_email", "failed") is not finished_of("send_email", "done")
    for _ in range(3):
        finished_of("send_email", "done").inc()
    seconds_of("send_email").observe(0.25)

    text = generate_latest(registry).decode()
    assert 'probe_finished_total{outcome="done",type="send_email"} 3.0' in text
    assert 'probe_seconds_count{type="send_email"} 1.0' in text


def test_a_label_value_the_metric_refuses_is_refused_every_time() -> None:
    finished_of = Children(Counter("probe_total", "x", ["type"], registry=CollectorRegistry()))
    for _ in range(2):
        with pytest.raises(ValueError, match="label count"):
            finished_of("a", "b")  # one label too many
