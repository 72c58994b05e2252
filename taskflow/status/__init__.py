"""``taskflow status``, ``taskflow tasks show|retry|cancel`` and ``taskflow
pause|resume TYPE``: the operator's views and repairs, in a terminal.

The numbers come from the views and functions operators query in psql
(``ops/sql/*.sql``, installed by ``db/migrations/0002_operator_views.sql``),
through :class:`~taskflow.store.operators.OperatorStore`, so both always agree.
Output is a plain aligned table for people, or one JSON document (``--json``)
for scripts.

``report`` is the overview, ``tasks`` one task, ``paused_types`` the pauses,
``formatting`` the tables, durations and JSON they share, ``connection`` the
small pool they open.
"""
