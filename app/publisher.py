"""The one place the API talks to RabbitMQ: confirmed, persistent, mandatory publishes.

Flask views run in gunicorn's threads, aio-pika in an event loop. Each process owns one
event-loop thread and one robust connection, created on first use *in that process*: with
``gunicorn --preload`` the app is built before fork, and a connection or loop inherited
across fork would be shared by several processes (pika #1133, gunicorn #1953). Views hand
publishes to the loop with ``run_coroutine_threadsafe`` and wait, bounded, for the confirm,
so many publishes from many threads are in flight at once on one channel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar
from urllib.parse import unquote, urlsplit

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions

from config import topology

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PublishFailed(Exception):
    """The broker did not take the message: down, blocked, unroutable, nacked or too slow."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotOnBroker(PublishFailed):
    """An operation named a queue or exchange that does not exist (AMQP 404)."""


@dataclass(frozen=True)
class Outgoing:
    """A message to publish, already encoded to the wire schema."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    type: str
    headers: dict[str, Any] = field(default_factory=dict)


class Publisher:
    """Publishes from any thread of this process through the process's own connection."""

    def __init__(self, amqp_url: str, timeout: float = 5.0, name: str = "postroom-api") -> None:
        self.amqp_url = amqp_url
        self.timeout = timeout
        self.name = name
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: _LoopState | None = None

    # -- public, called from request threads -------------------------------------------

    def publish(self, message: Outgoing) -> None:
        """Publish ``message`` and wait for the broker's confirm; raise PublishFailed otherwise."""
        loop, state = self._started()
        future = asyncio.run_coroutine_threadsafe(state.publish(message, self.timeout), loop)
        try:
            # The coroutine bounds itself; the margin covers scheduling on a busy loop.
            future.result(timeout=self.timeout + 0.5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PublishFailed("no confirm from the broker in time") from None

    def call(self, operation: Callable[[Any], Awaitable[T]], timeout: float, confirms: bool = False) -> T:
        """Run ``operation(channel)`` on this process's loop with a channel of its own.

        The channel is closed afterwards, so anything the operation took from a queue and
        did not ack goes back to the queue, also when the operation fails.
        """
        loop, state = self._started()
        future = asyncio.run_coroutine_threadsafe(state.call(operation, timeout, confirms), loop)
        try:
            return future.result(timeout=timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PublishFailed("the broker did not answer in time") from None

    def message(self, body: bytes, **properties: Any) -> aio_pika.Message:
        """Build a persistent message (for operations given to :meth:`call`)."""
        return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties)

    @property
    def user_id(self) -> str:
        """Return the broker user this process publishes as."""
        return unquote(urlsplit(self.amqp_url).username or "guest")

    def start(self) -> None:
        """Start connecting now (in this process) instead of on the first publish."""
        self._started()

    def is_connected(self, wait: float = 0.0) -> bool:
        """Return whether this process's connection is up, waiting up to ``wait`` seconds for it."""
        _, state = self._started()
        deadline = time.monotonic() + wait
        while not state.connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        return state.connected()

    def close(self) -> None:
        """Close the connection and stop the loop thread of this process (if started)."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                return
            loop, state = self._loop, self._state
            self._loop = self._state = None
            self._pid = None
        try:
            asyncio.run_coroutine_threadsafe(state.close(), loop).result(timeout=5)
        except Exception:  # closing is best effort; the process is going away
            logger.debug("publisher close failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)

    # -- internals ----------------------------------------------------------------------

    def _started(self) -> tuple[asyncio.AbstractEventLoop, "_LoopState"]:
        pid = os.getpid()
        if self._pid == pid and self._loop is not None:
            return self._loop, self._state  # type: ignore[return-value]
        with self._lock:
            if self._pid != pid or self._loop is None:
                # A loop inherited from the parent process is dead here: start our own.
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=f"{self.name}-amqp", daemon=True)
                thread.start()
                state = _LoopState(self.amqp_url, f"{self.name}-{pid}")
                state.starting = asyncio.run_coroutine_threadsafe(state.start(), loop)
                self._loop, self._state, self._pid = loop, state, pid
            return self._loop, self._state  # type: ignore[return-value]


class _LoopState:
    """Everything that lives on the publisher's event loop."""

    def __init__(self, url: str, connection_name: str) -> None:
        self.url = url
        # Every publish names the service's broker user: RabbitMQ checks it, and the workers
        # trust the body's sender only from a service user (or from that same user).
        self.user_id = unquote(urlsplit(url).username or "guest")
        self.connection_name = connection_name
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self.ready = asyncio.Event()
        self.closing = False
        self.starting: concurrent.futures.Future | None = None
        self.down_since: float | None = time.monotonic()
        # aiormq matches returned messages to publishes by message id; two publishes of
        # one id in flight on a channel can leave a confirm unresolved (aio-pika #689).
        self.in_flight: dict[str, asyncio.Future] = {}
        # Set when a publish got no confirm in time; cleared by the next confirm or a new
        # connection. Meanwhile publishes fail at once, sending nothing, and a probe of our
        # own waits for the broker: one that stops confirming (a memory or disk alarm blocks
        # publishers) would otherwise hold every request thread for the whole timeout, and
        # the requests queued behind them would answer after twice that or more.
        self.stalled_since: float | None = None
        self.probe: asyncio.Task | None = None

    async def start(self) -> None:
        """Connect (retrying until the broker answers), open a confirming channel, declare."""
        def keep(*args: Any, **kwargs: Any) -> aio_pika.RobustConnection:
            # Hold the connection before it is up, so that close() can stop its retries.
            self.connection = aio_pika.RobustConnection(*args, **kwargs)
            return self.connection

        await aio_pika.connect_robust(
            self.url,
            fail_fast=False,
            reconnect_interval=1,
            timeout=5,
            client_properties={"connection_name": self.connection_name},
            connection_class=keep,
        )
        self.connection.close_callbacks.add(self._on_down)
        self.connection.reconnect_callbacks.add(self._on_up)
        while True:
            try:
                channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
                self.exchanges = (await topology.declare_topology(channel)).exchanges
                self.exchanges[""] = channel.default_exchange
                break
            except Exception:  # keep trying: the API answers 503 until this succeeds
                logger.exception("publisher %s could not declare the topology; retrying", self.connection_name)
                await asyncio.sleep(1)
        self.down_since = None
        self.ready.set()
        logger.info("publisher %s connected", self.connection_name)

    def _on_down(self, *_: Any) -> None:
        if self.down_since is None and not self.closing:
            self.down_since = time.monotonic()
            logger.warning("publisher %s lost the broker", self.connection_name)

    def _on_up(self, *_: Any) -> None:
        self.down_since = None
        self.stalled_since = None
        logger.info("publisher %s reconnected", self.connection_name)

    def connected(self) -> bool:
        """Return whether the connection is up."""
        return self.connection is not None and self.connection.connected.is_set() and self.ready.is_set()

    async def publish(self, message: Outgoing, timeout: float) -> None:
        """Publish once, within ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        if not self.connected() and self.down_since is not None and time.monotonic() - self.down_since > timeout:
            # Known to be down for longer than a publish may wait: fail now, not in 5 s.
            raise PublishFailed("the broker is unreachable")
        if self.stalled_since is not None:
            raise PublishFailed("the broker is not confirming publishes; nothing was sent")
        if self.connected() and await self._blocked():
            raise PublishFailed("the broker is blocking publishers (resource alarm); nothing was sent")
        try:
            await asyncio.wait_for(self._publish(message, deadline), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            self._stalled(timeout)
            raise PublishFailed("the broker did not confirm in time") from None
        except aio_pika.exceptions.PublishError:
            raise PublishFailed("the message was returned unroutable") from None
        except aio_pika.exceptions.DeliveryError:
            raise PublishFailed("the broker refused the message (nack)") from None
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # The client gets a plain reason; the broker's own words (queue names...) go to the log.
            logger.warning("publish of %s failed: %r", message.message_id, exc)
            raise PublishFailed("the connection to the broker failed") from None
        self.stalled_since = None  # confirmed: whatever stalled the broker is over

    async def _blocked(self) -> bool:
        """Return whether the broker has told this connection that it blocks publishers
        (``connection.blocked``: a memory or disk alarm). aiormq's ``ready()`` returns at once
        unless it is blocked; a publish written now would wait for the whole timeout, holding
        its request thread, and be delivered once the alarm clears although the client got a 503."""
        transport = self.connection.transport
        if transport is None:
            return False
        ready = asyncio.ensure_future(transport.connection.ready())
        await asyncio.sleep(0)  # one loop step: enough for ready() unless it waits for an unblock
        if ready.done():
            if not ready.cancelled():
                ready.exception()  # a broken connection shows in the publish itself
            return False
        ready.cancel()
        return True

    def _stalled(self, timeout: float) -> None:
        """A publish got no confirm in time: fail the next ones at once until the probe is confirmed."""
        if self.stalled_since is None:
            self.stalled_since = time.monotonic()
            logger.warning("publisher %s: no confirm within %.1f s; refusing publishes until the broker confirms",
                           self.connection_name, timeout)
        if self.probe is None or self.probe.done():
            self.probe = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        """Publish an empty message that routes nowhere and is not mandatory (the broker
        confirms and drops it) until one is confirmed; then let publishes through again."""
        while self.stalled_since is not None and not self.closing:
            try:
                await self.exchanges[topology.MAIL_EXCHANGE].publish(
                    aio_pika.Message(b""), routing_key=topology.PROBE_ROUTING_KEY, mandatory=False)
            except Exception:  # the connection broke: a reconnect ends the stall too
                logger.debug("probe publish failed", exc_info=True)
                await asyncio.sleep(1)
                continue
            if self.stalled_since is not None:
                logger.info("publisher %s: the broker confirms again after %.1f s", self.connection_name,
                            time.monotonic() - self.stalled_since)
                self.stalled_since = None

    async def _publish(self, message: Outgoing, deadline: float) -> None:
        while message.message_id in self.in_flight:
            await asyncio.shield(self.in_flight[message.message_id])
        done = asyncio.get_running_loop().create_future()
        self.in_flight[message.message_id] = done
        try:
            await self.ready.wait()
            exchange = self.exchanges[message.exchange]
            amqp_message = aio_pika.Message(
                message.body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message.message_id,
                type=message.type,
                headers=message.headers,
                user_id=self.user_id,
                timestamp=time.time(),
            )
            await exchange.publish(
                amqp_message,
                routing_key=message.routing_key,
                mandatory=True,
                timeout=max(0.1, deadline - time.monotonic()),
            )
        finally:
            del self.in_flight[message.message_id]
            done.set_result(None)

    async def call(self, operation: Callable[[Any], Awaitable[T]], timeout: float, confirms: bool = False) -> T:
        """Run ``operation`` with a fresh channel, within ``timeout``; close the channel after."""
        if not self.connected() and self.down_since is not None and time.monotonic() - self.down_since > timeout:
            raise PublishFailed("the broker is unreachable")

        async def run() -> T:
            await self.ready.wait()
            channel = await self.connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
            try:
                return await operation(channel)
            finally:
                if not channel.is_closed:
                    await channel.close()

        try:
            return await asyncio.wait_for(run(), timeout=timeout)
        except asyncio.TimeoutError:
            raise PublishFailed("the broker did not answer in time") from None
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise NotOnBroker("no such queue or exchange") from None
        except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
            logger.warning("broker operation failed: %r", exc)
            raise PublishFailed("the broker refused or dropped the operation") from None

    async def close(self) -> None:
        """Close the connection (or stop trying to open it)."""
        self.closing = True
        if self.starting is not None and not self.starting.done():
            self.starting.cancel()
        if self.probe is not None and not self.probe.done():
            self.probe.cancel()
        if self.connection is not None:
            await self.connection.close()
