"""RabbitMQ, as TaskFlow uses it: a durable queue of task ids and nothing else.

The only importer of aio_pika. Postgres stays the truth: a message is a
doorbell ("task X may be ready"), so a lost, duplicated or late message can
delay a task but never change its state. The connection is kept by one
background loop that reconnects with backoff; publishing while disconnected
fails fast (the scheduler republishes what was missed).

A message carries one task id per line, up to ``ids_per_message`` of them:
ids published together (a bulk enqueue, a scheduler tick, requests that
arrive in the same moment) share one message, one confirm and one ack, which
is most of what RabbitMQ costs per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from uuid import UUID

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from taskflow.batching import Batcher
from taskflow.config import DEFAULT_IDS_PER_MESSAGE, MAX_IDS_PER_MESSAGE
from taskflow.metrics import PUBLISH_FAILURES
from taskflow.waiting import wait_any, wait_event

log = logging.getLogger(__name__)

# Called with the task ids of a delivery and a function that acks it.
Delivery = Callable[[list[UUID], Callable[[], Awaitable[None]]], Awaitable[None]]


BROKER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    RuntimeError,  # aio-pika raises it for a channel closed underneath a call
)


class Broker:
    """One connection, one confirming channel for publishing, and optionally
    a consumer, all restored together after any disconnect."""

    def __init__(
        self,
        url: str,
        queue_name: str,
        *,
        publish_timeout: float = 5.0,
        ids_per_message: int = DEFAULT_IDS_PER_MESSAGE,
        name: str = "taskflow",
        queue_type: str = "classic",
    ) -> None:
        if not 1 <= ids_per_message <= MAX_IDS_PER_MESSAGE:
            raise ValueError(f"ids_per_message must be 1..{MAX_IDS_PER_MESSAGE}")
        self.url = url
        self.ids_per_message = ids_per_message
        self.queue_name = queue_name
        # Declared with x-queue-type only when not classic: a classic queue
        # declared before the argument existed must still match.
        self._queue_arguments: dict[str, Any] = (
            {} if queue_type == "classic" else {"x-queue-type": queue_type}
        )
        self.prefetch = 0
        self.on_delivery: Delivery | None = None
        self.publish_timeout = publish_timeout
        self.name = name
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consume_channel: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Concurrent publishers share messages and confirms (group commit).
        # Each submission: its ids, and how many share a message.
        self._publisher: Batcher[tuple[list[UUID], int], None] = Batcher(self._publish_now)
        self._publisher_task: asyncio.Task[None] | None = None

    # ----- lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"broker:{self.queue_name}")
        self._publisher_task = asyncio.create_task(
            self._publisher.run(), name=f"broker-publisher:{self.queue_name}"
        )

    async def wait_connected(self, timeout: float) -> bool:
        return await wait_event(self.connected, timeout)

    async def close(self) -> None:
        """Stop the connection loop; it closes the connection on its way out."""
        self._stopping.set()
        if self._task is not None:
            finished, _ = await asyncio.wait({self._task}, timeout=10)
            if not finished:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self._publisher_task is not None:
            self._publisher_task.cancel()
            await asyncio.gather(self._publisher_task, return_exceptions=True)
        self._publisher.fail_pending(ConnectionError("the broker connection was closed"))

    async def stop_consuming(self) -> None:
        """Stop taking new deliveries; unacked ones go back to the queue on close."""
        self.on_delivery = None
        queue, tag = self._queue, self._consumer_tag
        self._consumer_tag = None
        if queue is not None and tag is not None and self.connected.is_set():
            try:
                await asyncio.wait_for(queue.cancel(tag), 5)
            except BROKER_ERRORS as exc:
                log.warning("cancel consumer failed", extra={"event": "broker", "error": str(exc)})

    async def _run(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            established = False
            try:
                await self._connect()
                established = True
                delay = 0.2
                log.info("broker connected", extra={"event": "broker_connected"})
                await wait_any(self.disconnected, self._stopping, timeout=None)
            except asyncio.CancelledError:
                raise
            except BROKER_ERRORS as exc:
                if not self._stopping.is_set():
                    log.warning(
                        "broker unavailable", extra={"event": "broker_down", "error": str(exc)}
                    )
            finally:
                self._on_connection_closed()
                self._channel = self._queue = self._consume_channel = None
                self._consumer_tag = None
                connection, self._connection = self._connection, None
                if connection is not None and not connection.is_closed:
                    with contextlib.suppress(*BROKER_ERRORS):
                        await asyncio.wait_for(connection.close(), 5)
                if established and not self._stopping.is_set():
                    log.warning("broker connection lost", extra={"event": "broker_lost"})
            if self._stopping.is_set():
                return
            await wait_event(self._stopping, delay)
            delay = min(delay * 2, 5.0)

    async def _connect(self) -> None:
        connection = await aio_pika.connect(
            self.url, timeout=5, client_properties={"connection_name": self.name}
        )
        self._connection = connection
        # Mark the link down the moment it closes, so publishers fail fast and
        # workers fall back to Postgres without waiting for the reconnect loop.
        connection.close_callbacks.add(self._on_connection_closed)
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            self.queue_name, durable=True, arguments=self._queue_arguments
        )
        self._channel, self._queue = channel, queue
        if self.on_delivery is not None:
            await self._start_consumer(connection)
        self.disconnected.clear()
        self.connected.set()

    async def _start_consumer(self, connection: AbstractConnection) -> None:
        # Consuming on its own channel: its prefetch must not throttle publishing.
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=self.prefetch)
        consume_queue = await consume_channel.declare_queue(
            self.queue_name, durable=True, arguments=self._queue_arguments
        )
        self._consume_channel, self._queue = consume_channel, consume_queue
        self._consumer_tag = await consume_queue.consume(self._on_message)

    async def consume(self, on_delivery: Delivery, *, prefetch: int) -> None:
        """Hand deliveries to ``on_delivery``, at most ``prefetch`` unacked at a
        time, from now on and after every reconnect."""
        self.on_delivery, self.prefetch = on_delivery, prefetch
        connection = self._connection
        if connection is not None and self.connected.is_set() and self._consumer_tag is None:
            try:
                await self._start_consumer(connection)
            except BROKER_ERRORS as exc:
                # The connection loop sets the consumer up again once it reconnects.
                log.warning("consume failed", extra={"event": "broker", "error": str(exc)})

    def _on_connection_closed(self, *_args: object) -> None:
        self.connected.clear()
        self.disconnected.set()

    # ----- publishing

    async def publish_ids(
        self, task_ids: Iterable[UUID], *, per_message: int | None = None
    ) -> bool:
        """Publish persistent messages of ``per_message`` ids each (default
        ``ids_per_message``; fewer spread a small batch over more consumers),
        and wait for the broker's confirms. Returns False (and logs) when they
        are not all confirmed. Concurrent calls share one round of confirms."""
        ids = list(task_ids)
        size = max(1, min(per_message or self.ids_per_message, self.ids_per_message))
        if not ids:
            return True
        if self._channel is None or not self.connected.is_set():
            PUBLISH_FAILURES.inc(len(ids))
            return False
        try:
            if self._publisher_task is None:  # not started: nobody to share with
                await self._publish_now([(ids, size)])
            else:
                await self._publisher.submit((ids, size))
        except BROKER_ERRORS as exc:
            log.warning(
                "publish failed",
                extra={"event": "publish_failed", "count": len(ids), "error": str(exc)},
            )
            PUBLISH_FAILURES.inc(len(ids))
            return False
        return True

    async def _publish_now(self, batches: list[tuple[list[UUID], int]]) -> None:
        # Submissions of one size share messages (many single ids make full
        # messages); each size is cut into its own.
        by_size: dict[int, list[UUID]] = {}
        for ids, size in batches:
            by_size.setdefault(size, []).extend(ids)
        bodies = [
            encode_ids(ids[lo : lo + size])
            for size, ids in by_size.items()
            for lo in range(0, len(ids), size)
        ]
        channel = self._channel
        if channel is None or not self.connected.is_set():
            raise ConnectionError("not connected to RabbitMQ")
        exchange = channel.default_exchange
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=self.queue_name,
                    )
                    for body in bodies
                )
            ),
            self.publish_timeout,
        )

    async def queue_depth(self) -> int | None:
        """Messages ready in the queue (not counting ones delivered, unacked)."""
        channel = self._channel
        if channel is None or not self.connected.is_set():
            return None
        try:
            queue = await channel.declare_queue(self.queue_name, passive=True)
        except BROKER_ERRORS:
            return None
        count = queue.declaration_result.message_count
        return int(count) if count is not None else None

    async def delete_queue(self) -> None:
        if self._channel is not None:
            await self._channel.queue_delete(self.queue_name)

    # ----- consuming

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        handler = self.on_delivery
        task_ids = decode_ids(message.body)
        if task_ids is None:
            log.warning("dropping malformed message", extra={"event": "bad_message"})
            await message.ack()
            return
        if handler is None:
            # Shutting down: hand it straight back for another worker.
            await message.nack(requeue=True)
            return

        async def ack() -> None:
            # If the channel is gone the broker redelivers, and the claim guard
            # drops the duplicate.
            with contextlib.suppress(*BROKER_ERRORS):
                await message.ack()

        await handler(task_ids, ack)


def encode_ids(task_ids: Sequence[UUID]) -> bytes:
    return "\n".join(map(str, task_ids)).encode()


def decode_ids(body: bytes) -> list[UUID] | None:
    """The ids of a message, or None when it is not a list of task ids: such a
    message is dropped whole rather than half-trusted."""
    try:
        lines = body.decode("ascii", "strict").split()
        if not 1 <= len(lines) <= MAX_IDS_PER_MESSAGE:
            return None
        return [UUID(line) for line in lines]
    except (UnicodeDecodeError, ValueError):
        return None
