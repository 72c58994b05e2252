"""Retry delays: exponential from a base, capped, with jitter."""

from __future__ import annotations

import random


def backoff_seconds(
    attempt: int, base_ms: int, max_ms: int, rng: random.Random | None = None
) -> float:
    """Delay before the retry that follows ``attempt`` (1 = the first run failed).

    The ceiling doubles per attempt (base, 2*base, 4*base, ... up to max_ms); the
    delay is drawn from the upper half of it ("equal jitter"), so retries of
    tasks that failed together spread out but never come back sooner than half
    the ceiling.
    """
    exponent = max(attempt - 1, 0)
    ceiling_ms = float(max_ms) if exponent >= 62 else min(float(max_ms), base_ms * 2.0**exponent)
    draw = (rng or random).uniform(0.5, 1.0)
    return ceiling_ms * draw / 1000.0
