"""The base of every queue worker: connection, prefetch, batching, ack, dead letters, shutdown.

The one module of the workers that imports the AMQP client. A worker subclass says which
queue it reads, how to decode a body and how to store a batch; this class makes sure that

- a message is acked only after the batch that holds it was committed (at-least-once; the
  store is idempotent by message id, so a redelivery never duplicates);
- input that can never be stored goes to the dead-letter queue with the reason, then is
  acked, so it neither loops nor vanishes;
- a transient database error is retried with backoff for as long as it lasts, never
  dead-lettered and never acked;
- blocking database work runs in a thread, so heartbeats flow however slow it is (C7);
- SIGTERM finishes the batch in hand and hands back (nack, requeue) what was prefetched;
- a broker restart or a cancelled consumer (queue deleted) leads to a fresh session that
  declares the topology again and consumes again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

import aio_pika
import aio_pika.abc
import peewee

from app import wire
from app.rules import RuleError
from app.store.archive import Outcome
from app.store.db import TRANSIENT_ERRORS, database_proxy, reset_connection
from config import topology
from config.settings import Settings

logger = logging.getLogger(__name__)

Item = TypeVar("Item")

#: Registered workers by name, filled by :func:`register`.
REGISTRY: dict[str, type["BatchConsumer"]] = {}


def register(name: str):
    """Register a consumer class under ``name`` for ``python -m workers <name>``."""

    def decorate(cls: type["BatchConsumer"]) -> type["BatchConsumer"]:
        REGISTRY[name] = cls
        return cls

    return decorate


class SessionEnded(Exception):
    """The broker cancelled our consumer or the connection broke: start a new session."""


class BatchConsumer(Generic[Item]):
    """Consumes one queue in batches; subclasses implement :meth:`decode` and :meth:`store`."""

    queue_name: ClassVar[str]
    dead_routing_key: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = wire.Limits(settings.max_body_bytes, settings.max_subject_chars, settings.max_recipients)
        self.stopping = asyncio.Event()
        self.cancelled = asyncio.Event()
        # One thread: the database connection lives there, and a batch commits at a time.
        self.db_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")
        self.stats = {"stored": 0, "duplicate": 0, "dead": 0, "batches": 0, "db_retries": 0, "sessions": 0}

    # -- what subclasses provide ----------------------------------------------------------

    def parse(self, body: bytes) -> Item:
        """Return the item in a message body, or raise RuleError saying why it is unusable."""
        raise NotImplementedError

    def store(self, items: Sequence[Item]) -> list[Outcome]:
        """Store ``items`` in one transaction (runs in the database thread)."""
        raise NotImplementedError

    def decode(self, message: aio_pika.abc.AbstractIncomingMessage) -> Item:
        """Parse a message and check its envelope: the id it travels under and its sender.

        RabbitMQ rejects a publish whose ``user_id`` is not the publishing connection's user,
        so ``user_id`` is verified: a service user may send for anyone, anyone else only as
        themself (AMQP applications logged in with their Postroom identity).
        """
        item = self.parse(message.body)
        if message.message_id is not None and message.message_id != item.id:
            raise RuleError("id_mismatch", "the AMQP message_id differs from the body's id")
        if message.user_id not in self.settings.trusted_publishers() and message.user_id != item.sender:
            raise RuleError("unverified_sender", f"user_id {message.user_id!r} may not send as {item.sender!r}")
        return item

    async def after_store(self, outcomes: Sequence[Outcome]) -> None:
        """Act on what was stored, before the batch is acked (a failure means redelivery)."""

    # -- the run loop -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the batch in hand, hand back the rest, and return from :meth:`run`."""
        logger.info("%s: stop requested", type(self).__name__)
        self.stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`request_stop`, starting a new session after any failure."""
        while not self.stopping.is_set():
            self.stats["sessions"] += 1
            try:
                await self._session()
            except SessionEnded as exc:
                logger.warning("%s: session ended (%s); starting a new one", type(self).__name__, exc)
            except Exception:  # at the process boundary: log, wait a little, go again
                logger.exception("%s: session failed; starting a new one", type(self).__name__)
                await self._sleep(1.0)
        self.db_thread.shutdown(wait=True)

    async def _session(self) -> None:
        self.cancelled.clear()
        connection = await connect_unless_stopped(
            self.settings.amqp_url, f"postroom-worker-{self.queue_name}-{os.getpid()}", self.stopping
        )
        if connection is None:
            return
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self.settings.worker_prefetch)
            declared = await topology.declare_topology(channel)
            self.exchanges = declared.exchanges
            self.dead_exchange = declared.exchanges[topology.DEAD_LETTER_EXCHANGE]
            await self._watch_cancel(channel)
            inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
            queue = declared.queues[self.queue_name]
            tag = await queue.consume(self._enqueue(inbox))
            logger.info("%s: consuming %s", type(self).__name__, self.queue_name)
            try:
                await self._drain(inbox)
            finally:
                # Bounded: with the broker gone these would wait for a reconnect forever;
                # unacked messages go back to the queue when the connection closes anyway.
                await _bounded(self._hand_back(queue, tag, inbox), 5.0)
        finally:
            await _bounded(connection.close(), 5.0)

    async def _watch_cancel(self, channel: aio_pika.abc.AbstractRobustChannel) -> None:
        """Notice a broker-side consumer cancel (e.g. the queue was deleted, case C11)."""

        def on_cancel(*_: Any) -> None:
            logger.warning("%s: the broker cancelled our consumer", type(self).__name__)
            self.cancelled.set()

        async def attach(*_: Any) -> None:
            underlay = await channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.add(on_cancel)

        await attach()
        channel.reopen_callbacks.add(attach)

    @staticmethod
    def _enqueue(inbox: asyncio.Queue):
        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)

        return on_message

    async def _drain(self, inbox: asyncio.Queue) -> None:
        while not self.stopping.is_set():
            if self.cancelled.is_set():
                raise SessionEnded("consumer cancelled by the broker")
            batch = await self._next_batch(inbox)
            if batch:
                await self._process(batch)

    async def _next_batch(self, inbox: asyncio.Queue) -> list[aio_pika.abc.AbstractIncomingMessage]:
        try:
            first = await asyncio.wait_for(inbox.get(), timeout=0.5)
        except asyncio.TimeoutError:
            return []
        batch = [first]
        deadline = time.monotonic() + self.settings.worker_batch_wait_seconds
        while len(batch) < self.settings.worker_batch_size:
            if inbox.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(inbox.get(), timeout=remaining))
                except asyncio.TimeoutError:
                    break
            else:
                batch.append(inbox.get_nowait())
        return batch

    async def _hand_back(self, queue: Any, tag: str, inbox: asyncio.Queue) -> None:
        """Stop deliveries and requeue what was prefetched but not processed."""
        try:
            await queue.cancel(tag)
        except Exception:  # the channel may already be gone; the broker requeues then
            logger.debug("cancel failed", exc_info=True)
        while not inbox.empty():
            message = inbox.get_nowait()
            try:
                await message.nack(requeue=True)
            except Exception:  # closed channel: the broker requeues unacked messages itself
                logger.debug("nack failed", exc_info=True)

    # -- one batch ----------------------------------------------------------------------------

    async def _process(self, batch: list[aio_pika.abc.AbstractIncomingMessage]) -> None:
        items: list[Item] = []
        holders: list[aio_pika.abc.AbstractIncomingMessage] = []
        for message in batch:
            try:
                items.append(self.decode(message))
                holders.append(message)
            except RuleError as exc:
                await self._dead_letter(message, exc.code, exc.detail)
            except Exception as exc:  # decoding is pure: what fails once fails on every redelivery
                logger.exception("cannot decode message %s", message.message_id)
                await self._dead_letter(message, "undecodable", f"{type(exc).__name__}: {exc}")
        outcomes = await self._store_with_retry(items) if items else []
        if outcomes is None:  # stopping while the database was down: hand the batch back
            for message in batch:
                await message.nack(requeue=True)
            return
        _failpoint("after_commit")
        for message, outcome in zip(holders, outcomes):
            if outcome.status == "rejected":
                await self._dead_letter(message, outcome.code, outcome.detail)  # counts it as dead
            else:
                self.stats[outcome.status] += 1
        await self.after_store(outcomes)
        self.stats["batches"] += 1
        await _ack_all(batch)

    async def _store_with_retry(self, items: list[Item]) -> list[Outcome] | None:
        loop = asyncio.get_running_loop()
        delay = 0.05
        integrity_retries = 0
        while True:
            try:
                return await loop.run_in_executor(self.db_thread, self._store_in_thread, items)
            except peewee.IntegrityError:
                # Another worker committed one of these ids first; the retry sees it as a duplicate.
                integrity_retries += 1
                if integrity_retries > 5:
                    raise
            except TRANSIENT_ERRORS as exc:
                self.stats["db_retries"] += 1
                logger.warning("database error, retrying in %.2fs: %r", delay, exc)
            if self.stopping.is_set():
                return None
            await self._sleep(delay)
            delay = min(delay * 2, self.settings.db_retry_max_seconds)

    def _store_in_thread(self, items: list[Item]) -> list[Outcome]:
        try:
            return self.store(items)
        except TRANSIENT_ERRORS:
            reset_connection(database_proxy.obj)
            raise

    async def _dead_letter(self, message: aio_pika.abc.AbstractIncomingMessage, code: str, detail: str) -> None:
        """Publish a copy to the dead-letter queue with the reason (confirmed) before it is acked."""
        logger.warning("dead-lettering message %s: %s: %s", message.message_id, code, detail[:200])
        headers = dict(message.headers or {})
        headers.update({
            topology.HEADER_DEAD_REASON: code,
            topology.HEADER_DEAD_DETAIL: detail[:1000],
            topology.HEADER_DEAD_QUEUE: self.queue_name,
        })
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            type=message.type,
            timestamp=message.timestamp,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self.dead_exchange.publish(copy, routing_key=self.dead_routing_key, mandatory=True, timeout=10)
        self.stats["dead"] += 1

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass


async def connect_unless_stopped(
    url: str, name: str, stopping: asyncio.Event
) -> aio_pika.abc.AbstractRobustConnection | None:
    """Connect (retrying while the broker is down); return None if ``stopping`` is set first."""
    connecting = asyncio.ensure_future(
        aio_pika.connect_robust(url, fail_fast=False, reconnect_interval=1, timeout=10,
                                client_properties={"connection_name": name})
    )
    # A stop request must not wait for a broker that is down.
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({connecting, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not connecting.done():
        connecting.cancel()
        return None
    return connecting.result()


async def _bounded(operation: Any, seconds: float) -> None:
    """Await ``operation`` for at most ``seconds``; log instead of raising."""
    try:
        await asyncio.wait_for(operation, timeout=seconds)
    except Exception:  # shutting down: nothing more to do about it
        logger.debug("shutdown step failed or timed out", exc_info=True)


async def _ack_all(batch: Sequence[aio_pika.abc.AbstractIncomingMessage]) -> None:
    """Ack a processed batch: one ``multiple`` ack per channel the messages came on.

    Delivery tags belong to a channel; after a reconnect the old channel is closed and its
    messages will be redelivered, so they are skipped here rather than acked on the new one.
    """
    last_per_channel: dict[int, aio_pika.abc.AbstractIncomingMessage] = {}
    for message in batch:
        try:
            channel = message.channel
        except Exception:  # its channel is closed: the broker redelivers it
            continue
        last_per_channel[id(channel)] = message
    for message in last_per_channel.values():
        try:
            await message.ack(multiple=True)
        except Exception:
            logger.warning("ack failed; the broker will redeliver (stored idempotently)", exc_info=True)


def _failpoint(name: str) -> None:
    """Crash here when ``POSTROOM_FAILPOINTS`` names this point (fault-injection tests only)."""
    if name in os.environ.get("POSTROOM_FAILPOINTS", "").split(","):
        logger.error("failpoint %s: exiting without ack", name)
        os._exit(17)
