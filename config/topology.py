"""The RabbitMQ topology of Postroom: every exchange, queue and routing key, declared once.

The API (publisher) and the workers (consumers) both import this module and call
:func:`declare_topology` on their channel, so whichever starts first creates the same
objects with the same arguments. AMQP applications find these names in ``docs/amqp.md``.

This module holds data and one coroutine that uses only channel methods; it imports no
AMQP client itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Direct exchange that receives every mail; the routing key is :data:`MAIL_ROUTING_KEY`.
MAIL_EXCHANGE = "postroom.mail"
MAIL_ROUTING_KEY = "mail.v1"
#: Quorum queue the archive workers consume.
MAIL_ARCHIVE_QUEUE = "postroom.mail.archive"

#: Direct exchange for messages no worker can process; queues are keyed by kind.
DEAD_LETTER_EXCHANGE = "postroom.dead"
MAIL_DEAD_ROUTING_KEY = "mail"
MAIL_DEAD_QUEUE = "postroom.mail.dead"

#: Redeliveries after which the broker itself dead-letters a message that keeps
#: killing its consumer (the worker dead-letters known-bad input at once).
DELIVERY_LIMIT = 20

#: Headers a dead-lettered message carries to say why.
HEADER_DEAD_REASON = "x-postroom-dead-reason"
HEADER_DEAD_DETAIL = "x-postroom-dead-detail"
HEADER_DEAD_QUEUE = "x-postroom-dead-queue"


@dataclass(frozen=True)
class ExchangeSpec:
    """A durable exchange."""

    name: str
    type: str


@dataclass(frozen=True)
class QueueSpec:
    """A durable queue and the bindings that feed it."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[tuple[str, str], ...] = ()  # (exchange, routing key)


EXCHANGES: tuple[ExchangeSpec, ...] = (
    ExchangeSpec(MAIL_EXCHANGE, "direct"),
    ExchangeSpec(DEAD_LETTER_EXCHANGE, "direct"),
)

QUEUES: tuple[QueueSpec, ...] = (
    QueueSpec(
        MAIL_ARCHIVE_QUEUE,
        arguments={
            # Quorum: replicated when clustered, and it counts deliveries.
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": MAIL_DEAD_ROUTING_KEY,
            # at-least-once dead lettering never drops a message on the way to the DLQ.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
        bindings=((MAIL_EXCHANGE, MAIL_ROUTING_KEY),),
    ),
    QueueSpec(
        MAIL_DEAD_QUEUE,
        arguments={"x-queue-type": "quorum"},
        bindings=((DEAD_LETTER_EXCHANGE, MAIL_DEAD_ROUTING_KEY),),
    ),
)


@dataclass
class Declared:
    """The declared objects of one channel, by name."""

    exchanges: dict[str, Any]
    queues: dict[str, Any]


async def declare_topology(channel: Any) -> Declared:
    """Declare every exchange, queue and binding on ``channel`` (idempotent); return them by name."""
    declared = Declared({}, {})
    for spec in EXCHANGES:
        declared.exchanges[spec.name] = await channel.declare_exchange(spec.name, spec.type, durable=True)
    for spec in QUEUES:
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        for exchange, routing_key in spec.bindings:
            await queue.bind(declared.exchanges[exchange], routing_key)
        declared.queues[spec.name] = queue
    return declared
