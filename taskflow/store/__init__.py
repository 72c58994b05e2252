"""Postgres, as TaskFlow uses it: the only package that imports asyncpg.

``pool`` opens connections and pools and knows the connection errors; the
other modules each hold the queries of one audience: ``accounts`` and
``tasks`` (the API), ``engine`` (workers and schedulers), ``operators``
(``taskflow status``, retention), ``events`` (live streams, the dashboard),
``migrations`` (``taskflow migrate``).
"""
