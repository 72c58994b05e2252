"""TaskFlow's bench: the product measured through its own code paths.

It is not part of the ``taskflow`` package (the wheel holds none of it): it
runs from a source checkout, as ``taskflow bench`` (which imports
``ops.bench.main`` from the checkout) or ``ops/bench/run``. README.md here
has the numbers, how to run it and what one task costs.

- ``main``: the command: the phases in order, the output, ``--repeat``;
- ``options``: ``BenchOptions`` from the command line, and fixed sizes;
- ``stack``: the private stack it starts and removes (database, queue, API,
  scheduler, workers; the bench's own producer);
- ``drain``, ``latency``, ``backlog``, ``rest``: one module per phase;
- ``pgstats``: Postgres row writes, commits and WAL per task;
- ``report``: the numbers and their tables;
- ``progress``: a line every few seconds while a long phase runs;
- ``probes``, ``processes``, ``loadgen``: handler starts and the CPU split,
  the subprocesses, the REST phase's HTTP client;
- ``plugin``: the ``bench_noop`` task type, loaded by the workers with
  ``TASKFLOW_PLUGINS=ops.bench.plugin:TASK_TYPES``;
- ``peers_adapter``: TaskFlow in the shared harness (``../shared/bench/peers.py``).

Nothing is imported here: the harness imports ``ops.bench.peers_adapter``
before that module puts this checkout's ``taskflow`` on its path.
"""
