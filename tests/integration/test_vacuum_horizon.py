"""What holds back vacuum (taskflow_vacuum_horizon): a transaction kept open
shows in the view, in /metrics and in taskflow status; replication slots and
prepared transactions get warnings that say how to end them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from quart.typing import TestClientProtocol as Client

from taskflow.status.report import StatusReport, _warnings
from tests.integration.test_observability import scraped
from tests.stores import Store


async def test_an_open_snapshot_is_seen_in_the_view_and_the_metrics(
    client: Client, database: str, store: Store
) -> None:
    holder = await asyncpg.connect(database, server_settings={"application_name": "forgotten"})
    try:
        transaction = holder.transaction(isolation="repeatable_read")
        await transaction.start()
        await holder.fetchval("SELECT count(*) FROM tasks")  # takes the snapshot
        for _ in range(5):  # transactions that begin after it
            await store.pool.execute("SELECT txid_current()")
        [row] = await store.pool.fetch(
            "SELECT * FROM taskflow_vacuum_horizon WHERE detail = 'forgotten'"
        )
        assert row["kind"] == "transaction"
        assert row["xid_age"] >= 5
        text = (await (await client.get("/metrics")).get_data()).decode()
        assert scraped(text, 'taskflow_vacuum_horizon_xid_age{kind="transaction"}') >= 5
        assert scraped(text, 'taskflow_vacuum_horizon_xid_age{kind="replication slot"}') == 0
        await transaction.rollback()
    finally:
        await holder.close()
    assert (
        await store.pool.fetchval(
            "SELECT count(*) FROM taskflow_vacuum_horizon WHERE detail = 'forgotten'"
        )
        == 0
    )


def test_slots_and_prepared_transactions_are_warned_about_with_the_fix() -> None:
    report = StatusReport(
        database="d",
        generated_at=datetime.now(UTC),
        worker_alive_seconds=90,
        long_transaction_seconds=300,
        queues=[],
        workers=[],
        stuck=0,
        due_unclaimed=0,
        failures=[],
        failures_total=0,
        throughput=[],
        long_transactions=[],
        horizon_holders=[
            {
                "kind": "replication slot",
                "holder": "standby_b",
                "detail": "physical, inactive",
                "age": None,
                "xid_age": 1_250_000,
            },
            {
                "kind": "prepared transaction",
                "holder": "order-42",
                "detail": "app",
                "age": timedelta(minutes=12),
                "xid_age": 900,
            },
        ],
    )
    warnings = _warnings(report)
    assert any(
        "replication slot standby_b (physical, inactive) holds back vacuum" in w
        and "1,250,000 transactions ago" in w
        and "pg_drop_replication_slot('standby_b')" in w
        for w in warnings
    ), warnings
    assert any(
        "prepared transaction order-42" in w and "ROLLBACK PREPARED 'order-42'" in w
        for w in warnings
    ), warnings
