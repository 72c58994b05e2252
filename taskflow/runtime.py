"""The composition root: what each TaskFlow process is built from.

Every process opens one pool, and a broker when RabbitMQ is configured, here;
the components (:class:`~taskflow.worker.process.Worker`,
:class:`~taskflow.scheduler.Scheduler`, the API's services) are given them and
never open or close them themselves. The CLI runs these for real processes;
tests and the bench build components the same way.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from taskflow.api import ApiServices
from taskflow.api.event_hub import CHANNEL as EVENTS_CHANNEL
from taskflow.api.revocations import CHANNEL as ACCOUNTS_CHANNEL
from taskflow.api.revocations import Revocations
from taskflow.auth import PasswordHashing
from taskflow.broker import Broker
from taskflow.config import Settings
from taskflow.dispatcher import LISTENER_NAME, QUEUED_CHANNEL, Dispatcher
from taskflow.enqueue import Enqueuer
from taskflow.handlers import Registry
from taskflow.scheduler import Scheduler
from taskflow.store.accounts import AccountStore
from taskflow.store.admin import AdminStore
from taskflow.store.dependencies import DependencyStore
from taskflow.store.dispatch import DispatchStore
from taskflow.store.engine import WORKERS_CHANNEL, EngineStore
from taskflow.store.events import LiveEventsStore
from taskflow.store.limits import LimitsStore
from taskflow.store.operators import OperatorStore
from taskflow.store.pool import Database, Listener
from taskflow.store.schedules import ScheduleStore
from taskflow.store.tasks import Admission, TaskStore
from taskflow.worker.process import LISTEN_CHANNELS, Worker, new_worker_id

# How long a starting process waits for RabbitMQ before it goes on without it
# (it keeps reconnecting in the background, and Postgres covers meanwhile).
BROKER_CONNECT_SECONDS = 3.0


def _dsn(settings: Settings) -> str:
    return settings.database_url.get_secret_value()


async def _started_broker(settings: Settings, name: str) -> Broker | None:
    if settings.amqp_url is None:
        return None
    broker = Broker(
        settings.amqp_url.get_secret_value(),
        settings.amqp_queue,
        ids_per_message=settings.ids_per_message,
        name=name,
        queue_type=settings.amqp_queue_type,
    )
    broker.start()
    await broker.wait_connected(timeout=BROKER_CONNECT_SECONDS)
    return broker


@asynccontextmanager
async def worker_runtime(
    settings: Settings,
    registry: Registry,
    *,
    concurrency: int | None = None,
    worker_id: str | None = None,
    burst: bool = False,
    use_broker: bool = True,
) -> AsyncIterator[Worker]:
    """A worker and what it runs on; ``burst`` or ``use_broker=False`` claim
    from Postgres only."""
    worker_id = worker_id or new_worker_id()
    database = await Database.open(
        _dsn(settings),
        min_size=2,
        max_size=4,
        application_name=f"taskflow-worker {worker_id}",
        actor=f"worker:{worker_id}",
    )
    broker = None
    try:
        if use_broker and not burst:
            broker = await _started_broker(settings, f"taskflow-worker {worker_id}")
        yield Worker(
            settings,
            registry,
            EngineStore(database.pool),
            DispatchStore(database.pool),
            broker=broker,
            listener=Listener(
                _dsn(settings), LISTEN_CHANNELS, name=f"taskflow-worker-listen {worker_id}"
            ),
            worker_id=worker_id,
            concurrency=concurrency,
            burst=burst,
        )
    finally:
        if broker is not None:
            await broker.close()
        await database.close()


@asynccontextmanager
async def scheduler_runtime(settings: Settings) -> AsyncIterator[Scheduler]:
    database = await Database.open(
        _dsn(settings),
        min_size=2,
        max_size=4,
        application_name="taskflow-scheduler",
        actor="scheduler",
    )
    broker = None
    try:
        broker = await _started_broker(settings, "taskflow-scheduler")
        dispatcher = None
        if broker is not None:
            dispatcher = Dispatcher(
                settings,
                DispatchStore(database.pool),
                broker,
                Listener(_dsn(settings), [QUEUED_CHANNEL, WORKERS_CHANNEL], name=LISTENER_NAME),
            )
        yield Scheduler(
            settings,
            EngineStore(database.pool),
            OperatorStore(database.pool),
            dispatcher=dispatcher,
            schedules=ScheduleStore(database.pool),
        )
    finally:
        if broker is not None:
            await broker.close()
        await database.close()


@asynccontextmanager
async def api_services(settings: Settings, registry: Registry) -> AsyncIterator[ApiServices]:
    """The API's services, for as long as the app serves (``create_app``)."""
    database = await Database.open(
        _dsn(settings),
        min_size=2,
        max_size=20,
        application_name="taskflow-api",
        actor="api",
    )
    broker = None
    enqueuer = None
    revocations = None
    password_hashing = PasswordHashing(
        settings.password_hash_concurrency, settings.password_hash_wait_seconds
    )
    try:
        broker = await _started_broker(settings, f"taskflow-api {socket.gethostname()}")
        accounts = AccountStore(database.pool)
        revocations = Revocations(
            accounts,
            Listener(_dsn(settings), [ACCOUNTS_CHANNEL], name="taskflow-api-accounts"),
            login_window_seconds=settings.login_window_seconds,
        )
        await revocations.start()
        tasks = TaskStore(database.pool)
        enqueuer = Enqueuer(
            tasks,
            registry,
            reject_past_run_at=settings.reject_past_run_at,
            group_inserts=True,
            admission=Admission.from_settings(settings),
        )
        enqueuer.start()
        yield ApiServices(
            database=database,
            accounts=accounts,
            tasks=tasks,
            events=LiveEventsStore(database.pool),
            operators=OperatorStore(database.pool),
            admin=AdminStore(database.pool),
            schedules=ScheduleStore(database.pool),
            dependencies=DependencyStore(database.pool),
            limits=LimitsStore(database.pool),
            enqueuer=enqueuer,
            broker=broker,
            event_listener=Listener(_dsn(settings), [EVENTS_CHANNEL], name="taskflow-api-events"),
            password_hashing=password_hashing,
            revocations=revocations,
        )
    finally:
        if enqueuer is not None:
            await enqueuer.close()
        if revocations is not None:
            await revocations.stop()
        password_hashing.close()
        if broker is not None:
            await broker.close()
        await database.close()
