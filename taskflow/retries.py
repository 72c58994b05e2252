"""The one retry rule, and where it lives.

The rule is decided in Postgres, by SQL functions in ``db/functions/10_retry_rule.sql``,
because the rescue of a lapsed lease already decides there and there must be
only one copy of the rule:

- ``taskflow_attempt_status(attempts, max_retries, permanent)``: an attempt
  that ended in error leaves its task ``failed`` when the error is permanent or
  when ``attempts > max_retries`` (a task runs at most ``1 + max_retries``
  times), else ``retrying``.
- ``taskflow_backoff_seconds(attempt, base_ms, max_ms)``: the delay before the
  retry that follows ``attempt`` (1 = the first run failed). The ceiling
  doubles per attempt (base, 2*base, 4*base, ... up to max_ms); the delay is
  drawn from the upper half of it ("equal jitter"), so retries of tasks that
  failed together spread out but never come back sooner than half the ceiling.

Who applies it: the worker's fenced finish (``taskflow.store.engine``), given
how the attempt ended (:class:`taskflow.worker.attempt.Ending`), and the
rescue of lapsed leases (``taskflow_rescue_expired_leases``), shared by the
scheduler and the operators' ``taskflow_requeue_stuck()``. Python reads the
rule's answer back (``last_attempt`` in a claim) rather than restating it.
"""

from __future__ import annotations

RULE_FILE = "db/functions/10_retry_rule.sql"
