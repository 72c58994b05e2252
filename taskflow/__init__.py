"""TaskFlow: a Postgres-first task queue service."""

__version__ = "0.1.0"
