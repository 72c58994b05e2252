"""TaskFlow's long chaos run: recovery measured at default settings (SPEC §7).

A private stack (fresh database, own queue, a scheduler and workers as real
processes, an empty config.json) runs a mix of short and long tasks while
workers are killed with SIGKILL and replaced, one worker is frozen with
SIGSTOP past its lease, and RabbitMQ and Postgres are restarted; then it
reports tasks lost, completed twice, overlapping runs and kill->rerun times.
Run it from the repository root, ``ops/chaos/run [--kills N] [--quick]``
(or ``.venv/bin/python -m ops.chaos.run``); it is not part of ./ops/test.

- ``run``: the command: options, the run, the report, the clean-up;
- ``options``: ``ChaosOptions`` from the command line;
- ``stack``: the private stack (``ops.bench.stack.Stack`` with the chaos
  plugin and an empty config.json), and the workers' signals;
- ``load``: the producer keeping the workers busy with short and long tasks;
- ``scenario``: the timeline: kills, the freeze, the service restarts;
- ``evidence``: what the database, the marks and the logs say afterwards;
- ``report``: the figures, computed from the marks and history (pure code,
  unit-tested in tests/unit/test_chaos_report.py);
- ``summary``: the report as text, and its verdict;
- ``plugin``: the ``chaos_sleep`` task type, loaded by the workers with
  ``TASKFLOW_PLUGINS=ops.chaos.plugin:TASK_TYPES``.
"""
