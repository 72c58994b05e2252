"""Metrics that move as tasks run, and logs that are JSON lines without secrets."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from quart.typing import TestClientProtocol as Client

from taskflow.broker import Broker
from taskflow.config import Settings
from taskflow.enqueue import new_task_id
from taskflow.metrics import REGISTRY
from taskflow.store.tasks import NewTask
from tests.conftest import (
    AMQP_URL,
    auth_headers,
    new_user,
    running_scheduler,
    running_worker,
    wait_until,
)
from tests.processes import Component, component_env, free_port, wait_for_http
from tests.stores import Store


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{line_start} not in metrics")


async def test_api_metrics_show_requests_and_queue_depth(client: Client) -> None:
    headers = await auth_headers(client)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for _ in range(3):
        response = await client.post(
            "/api/tasks",
            headers=headers,
            json={"type": "test_noop", "payload": {}, "run_at": later},
        )
        assert response.status_code == 201
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = (await response.get_data()).decode()
    assert scraped(text, 'taskflow_queue_depth{status="postponed"}') == 3
    assert scraped(text, 'taskflow_queue_depth{status="queued"}') == 0
    assert (
        scraped(
            text,
            'taskflow_http_requests_total{method="POST",route="/api/tasks",status="201"}',
        )
        >= 3
    )
    # Ids never become labels.
    await client.get(f"/api/tasks/{new_task_id()}", headers=headers)
    text = (await (await client.get("/metrics")).get_data()).decode()
    assert 'route="/api/tasks/<raw_id>"' in text
    assert "taskflow_tasks_created_total" in text


async def test_worker_metrics_count_outcomes_and_latency(store: Store, settings: Settings) -> None:
    user_id = await new_user(store)
    done_before = sample("taskflow_tasks_finished_total", type="test_fail", outcome="done")
    retry_before = sample("taskflow_tasks_finished_total", type="test_fail", outcome="retrying")
    latency_before = sample("taskflow_enqueue_to_start_seconds_count", type="test_fail")
    rows = await store.insert_tasks(
        user_id,
        [
            NewTask(
                new_task_id(),
                "test_fail",
                {"kind": "transient", "times": 1, "delay_seconds": 0},
                0,
                3,
                None,
            )
        ],
    )
    broker = Broker(AMQP_URL, settings.amqp_queue)
    broker.start()
    assert await broker.wait_connected(5)
    await broker.publish_ids([rows[0]["id"]])
    await broker.close()
    fast = settings.model_copy(update={"scheduler_interval_ms": 50})
    async with running_scheduler(fast), running_worker(fast):

        async def finished() -> bool:
            status = await store.pool.fetchval("SELECT status FROM tasks")
            return bool(status == "done")

        await wait_until(finished)
    assert (
        sample("taskflow_tasks_finished_total", type="test_fail", outcome="done") == done_before + 1
    )
    assert (
        sample("taskflow_tasks_finished_total", type="test_fail", outcome="retrying")
        == retry_before + 1
    )
    assert sample("taskflow_enqueue_to_start_seconds_count", type="test_fail") == latency_before + 2
    assert sample("taskflow_handler_duration_seconds_count", type="test_fail") >= 2


async def test_worker_process_serves_metrics_and_logs_json(
    store: Store, database: str, queue_name: str, tmp_path: Path
) -> None:
    user_id = await new_user(store)
    port = free_port()
    env = component_env(tmp_path, database, queue=queue_name, TASKFLOW_LOG_FORMAT="json")
    worker = Component("worker", ["worker", "--metrics-port", str(port)], env, tmp_path / "logs")
    try:
        rows = await store.insert_tasks(
            user_id, [NewTask(new_task_id(), "test_noop", {}, 0, 3, None) for _ in range(5)]
        )
        broker = Broker(AMQP_URL, queue_name)
        broker.start()
        assert await broker.wait_connected(5)
        await broker.publish_ids([row["id"] for row in rows])
        await broker.close()

        async def all_done() -> bool:
            count = await store.pool.fetchval("SELECT count(*) FROM tasks WHERE status = 'done'")
            return bool(count == 5)

        await wait_until(all_done, timeout=20)

        def fetch() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return str(reply.read().decode())

        text = await asyncio.to_thread(fetch)
        assert scraped(text, 'taskflow_tasks_finished_total{outcome="done",type="test_noop"}') == 5
    finally:
        worker.terminate()
    lines = [line for line in worker.output().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "msg", "component"} <= set(r) for r in records)
    assert any(r.get("event") == "worker_started" and r.get("worker_id") for r in records)
    assert "SECRET" not in worker.output()
    assert "test-secret-key" not in worker.output()


async def test_request_logs_carry_request_id_and_no_token(client: Client, caplog) -> None:  # type: ignore[no-untyped-def]
    headers = await auth_headers(client)
    caplog.set_level("INFO", logger="taskflow.api")
    response = await client.get("/api/tasks", headers={**headers, "X-Request-ID": "req-123"})
    assert response.headers["X-Request-ID"] == "req-123"
    records = [r for r in caplog.records if getattr(r, "event", None) == "http_request"]
    assert any(getattr(r, "request_id", None) == "req-123" for r in records)
    token = headers["Authorization"].split()[1]
    assert token not in caplog.text
    assert "secret-password" not in caplog.text


async def test_an_api_of_several_processes_serves_one_set_of_metrics(
    database: str, queue_name: str, tmp_path: Path
) -> None:
    port = free_port()
    env = component_env(tmp_path, database, queue=queue_name, TASKFLOW_LOG_FORMAT="json")
    api = Component(
        "api",
        ["api", "--host", "127.0.0.1", "--port", str(port), "--processes", "2"],
        env,
        tmp_path / "logs",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_for_http, f"{base}/readyz", 30)
        children = Path(f"/proc/{api.pid}/task/{api.pid}/children").read_text().split()
        servers = [
            pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(servers) == 2
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=20) as http:
            user = {"email": "multi@example.com", "password": "correct horse battery"}
            assert (await http.post("/api/register", json=user)).status_code == 201
            token = (await http.post("/api/login", json=user)).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}

            async def create(n: int) -> int:
                body = {"type": "test_noop", "payload": {"n": n}}
                return (await http.post("/api/tasks", json=body, headers=headers)).status_code

            for _ in range(4):  # fresh connections, accepted by either process
                assert await asyncio.gather(*(create(n) for n in range(20))) == [201] * 20
            # Whichever process answers a scrape counts the requests of both.
            for _ in range(6):
                text = (await http.get("/metrics")).text
                line = 'taskflow_http_requests_total{method="POST",route="/api/tasks",status="201"}'
                assert scraped(text, line) == 80
                assert scraped(text, 'taskflow_queue_depth{status="queued"}') == 80
    finally:
        assert api.terminate() == 0
    served_by = {
        entry["pid"]
        for entry in map(json.loads, api.output().splitlines())
        if entry.get("event") == "http_request" and entry.get("route") == "/api/tasks"
    }
    assert served_by == {int(pid) for pid in servers}
