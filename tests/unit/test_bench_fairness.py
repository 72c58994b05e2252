"""The fairness phase of `taskflow bench` (ops/bench/fairness.py): how it sizes
A's backlog and turns handler starts into B's latencies and A's throughput."""

from __future__ import annotations

from array import array

from ops.bench.fairness import (
    BACKLOG_MARGIN,
    MAX_BACKLOG,
    WARMUP_SECONDS,
    backlog_size,
    count_starts_between,
    latencies_ms,
)


def test_backlog_lasts_the_run_at_the_drain_rate() -> None:
    # 10,000 tasks/s over the warm-up and 10 s, with the margin.
    expected = round(10_000 * (WARMUP_SECONDS + 10) * BACKLOG_MARGIN)
    assert backlog_size(10_000, 10, 20_000) == expected
    assert backlog_size(100, 10, 20_000) == 20_000  # never below the minimum
    assert backlog_size(0, 10, 2000) == 2000  # no drain rate known
    assert backlog_size(1e9, 10, 20_000) == MAX_BACKLOG


def test_throughput_counts_only_starts_in_the_window() -> None:
    ms = 1_000_000
    # Two of B's seqs first, then A's: 0 = never started.
    starts = array("q", [5 * ms, 6 * ms, 0, 9 * ms, 10 * ms, 15 * ms, 20 * ms, 25 * ms])
    assert count_starts_between(starts, 2, len(starts), 10 * ms, 20 * ms) == 2
    assert count_starts_between(starts, 2, len(starts), 0, 30 * ms) == 5  # not the unstarted
    assert count_starts_between(starts, 0, 2, 0, 30 * ms) == 2


def test_latencies_pair_each_create_with_its_start_and_skip_the_unstarted() -> None:
    ms = 1_000_000
    created = array("q", [100 * ms, 200 * ms, 300 * ms])
    starts = array("q", [350 * ms, 0, 302 * ms, 999 * ms])  # the last is not B's
    assert latencies_ms(starts, created) == [2.0, 250.0]
