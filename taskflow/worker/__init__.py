"""Task-Worker, along its seams: ``intake`` (ids arrive and are claimed),
``slots`` (pure slot accounting), ``attempt`` (one handler run), ``recording``
(fenced outcomes and leases) and ``process`` (the :class:`Worker` that ties
them together)."""
