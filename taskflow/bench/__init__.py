"""``taskflow bench``: TaskFlow measured through its own code paths.

``plugin`` holds the ``bench_noop`` task type (loaded through the handler
registry with ``TASKFLOW_PLUGINS=taskflow.bench.plugin:TASK_TYPES``, never one
of the built-in types); ``run`` starts a private stack and measures it, with
``processes`` (its subprocesses) and ``probes`` (handler starts, CPU split).
"""
