"""Broker-side operations on subscriber-id queues, run through the publisher's connection.

Each function takes a channel of its own (see :meth:`Publisher.call`), so an error that
closes the channel (say, a queue deleted under us) cannot disturb other requests. Only
``declare`` and ``rebind`` (PUT of the subscription) create queues; everything else looks
them up passively, so nothing recreates the queues of a subscription being deleted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from config import topology

#: Longest pause between two polls of an empty queue in a long poll.
POLL_INTERVAL_MAX = 0.1


async def _declare(channel: Any, sid: str) -> Any:
    queue_spec, dead_spec = topology.subscription_queue_specs(sid)
    dead_exchange = await channel.declare_exchange(topology.DEAD_LETTER_EXCHANGE, "direct", durable=True)
    dead = await channel.declare_queue(dead_spec.name, durable=True, arguments=dead_spec.arguments)
    for _, routing_key in dead_spec.bindings:
        await dead.bind(dead_exchange, routing_key)
    return await channel.declare_queue(queue_spec.name, durable=True, arguments=queue_spec.arguments)


def declare(sid: str) -> Callable[[Any], Awaitable[None]]:
    """Declare the queue and dead-letter queue of ``sid``."""

    async def operation(channel: Any) -> None:
        await _declare(channel, sid)

    return operation


def rebind(sid: str, add: list[str], remove: list[str]) -> Callable[[Any], Awaitable[None]]:
    """Bind ``sid``'s queue to the posts exchange with ``add`` keys; unbind ``remove`` keys."""

    async def operation(channel: Any) -> None:
        queue = await _declare(channel, sid)
        exchange = await channel.declare_exchange(topology.POSTS_EXCHANGE, "topic", durable=True)
        for key in add:
            await queue.bind(exchange, key)
        for key in remove:
            await queue.unbind(exchange, key)

    return operation


def delete(sid: str) -> Callable[[Any], Awaitable[None]]:
    """Delete the queues of ``sid`` (whatever is in them goes too)."""

    async def operation(channel: Any) -> None:
        for name in (topology.subscription_queue(sid), topology.subscription_dead_queue(sid)):
            await channel.queue_delete(name)

    return operation


def depth(sid: str) -> Callable[[Any], Awaitable[int]]:
    """Return how many posts wait (ready) in ``sid``'s queue."""

    async def operation(channel: Any) -> int:
        queue = await channel.declare_queue(topology.subscription_queue(sid), passive=True)
        return queue.declaration_result.message_count

    return operation


def take(
    sid: str,
    maximum: int,
    wait: float,
    keep: Callable[[list[Any]], list[Any]],
) -> Callable[[Any], Awaitable[list[Any]]]:
    """Take up to ``maximum`` posts from ``sid``'s queue, waiting up to ``wait`` s for the first.

    ``keep(messages)`` runs in a thread (it writes the leases to the database) and returns
    what the caller gets; only after it returned are the messages acked. If it fails, the
    channel closes and the broker requeues them.
    """

    async def operation(channel: Any) -> list[Any]:
        # Passive: a pull racing a DELETE must not declare the queue again (an orphan).
        queue = await channel.declare_queue(topology.subscription_queue(sid), passive=True)
        deadline = time.monotonic() + wait
        pause = 0.01
        messages: list[Any] = []
        while True:
            while len(messages) < maximum:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                messages.append(message)
            if messages or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, POLL_INTERVAL_MAX)
        if not messages:
            return []
        result = await asyncio.get_running_loop().run_in_executor(None, keep, messages)
        for message in messages:
            await message.ack()
        return result

    return operation


def peek_dead(sid: str, limit: int) -> Callable[[Any], Awaitable[list[tuple[bytes, dict]]]]:
    """Return up to ``limit`` dead letters of ``sid`` without removing them."""

    async def operation(channel: Any) -> list[tuple[bytes, dict]]:
        queue = await channel.declare_queue(topology.subscription_dead_queue(sid), passive=True)
        seen = []
        for _ in range(limit):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            seen.append((message.body, dict(message.headers or {})))
        # Not acked: closing the channel puts them back.
        return seen

    return operation
